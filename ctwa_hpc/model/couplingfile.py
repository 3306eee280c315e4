"""Couplings files: ``.npz`` or ``.h5`` arrays ``J_<ab>`` (N, N) or (R, N, N) and ``h_<a>``
(N,) or (R, N) read into a validated :class:`CouplingsFile` (README, "Couplings files").

The arrays are checked by :func:`~ctwa_hpc.model.couplings.normalize_couplings` (symmetric,
finite, zero diagonal, one N); the content hash (SHA-256 of the file's bytes) goes into the
config hash of every run that uses the file, so a changed file never resumes or merges with
an old run.
"""
from __future__ import annotations

import hashlib
import io as _bytes_io
import os
from dataclasses import dataclass, field

import zipfile

import numpy as np

from ..tools import h5
from . import limits
from .couplings import FILE_SUFFIXES, field_key, normalize_couplings, pair_key
from .hamiltonian import Hamiltonian


@dataclass(frozen=True, eq=False)
class CouplingsFile:
    """A validated couplings file: J arrays keyed "xx", ... ((N, N) or (R, N, N)), h arrays
    keyed "x", ... ((N,) or (R, N)); arrays without a realization axis serve every realization.

    ``per_realization`` is False when no array has a realization axis: the file then serves
    any number of realizations (``n_realizations`` is 1)."""

    path: str
    n_sites: int
    n_realizations: int
    content_hash: str
    J: dict
    h: dict
    extra: dict = field(default_factory=dict)
    per_realization: bool = True

    def arrays(self, r=0):
        """(J, h) of realization ``r``: dicts of (N, N) and (N,) arrays."""
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0 \
                or (self.per_realization and r >= self.n_realizations):
            raise ValueError(f"model.file ({self.path}): realization {r!r} does not exist (the "
                             f"file holds {self.n_realizations})")
        J = {k: (v[r] if v.ndim == 3 else v) for k, v in self.J.items()}
        h = {k: (v[r] if v.ndim == 2 else v) for k, v in self.h.items()}
        return J, h

    def hamiltonian(self, r=0, tfuncs=None, name="couplings", info=None):
        """The Hamiltonian of realization ``r`` (:meth:`Hamiltonian.from_couplings`)."""
        J, h = self.arrays(r)
        meta = {"file": self.path, "content_hash": self.content_hash, "realization": int(r)}
        meta.update(info or {})
        return Hamiltonian.from_couplings(J, h, tfuncs=tfuncs, name=name, info=meta,
                                          where=f"model.file ({self.path})")


def _file_bytes(path, where, max_memory_gb=0.0):
    limits.check_file(path, where, max_memory_gb)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ValueError(f"{where}: cannot read {path!r}: {exc.strerror or exc}") from None


def load_couplings(path, where="model.file", max_memory_gb=0.0):
    """Read and validate a couplings file (``.npz`` or ``.h5``/``.hdf5``) → :class:`CouplingsFile`.

    Errors are ValueErrors naming ``where`` and the array, e.g.
    ``"model.file (J.npz): J_xx: not symmetric (max |J - J^T| = 0.5 at (0, 1))"``.  A path
    that is not a regular file, or a file too large to read and check in memory
    (:func:`~ctwa_hpc.model.limits.check_file`; ``max_memory_gb`` as ``output.max_memory_gb``),
    is refused before it is read; so are two arrays whose names differ only in case.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FILE_SUFFIXES:
        raise ValueError(f"{where}: {path!r} has an unsupported extension {suffix!r} (expected "
                         f"{', '.join(FILE_SUFFIXES)})")
    raw = _file_bytes(path, where, max_memory_gb)
    digest = hashlib.sha256(raw).hexdigest()
    w = f"{where} ({path})"
    if suffix == ".npz":
        if not zipfile.is_zipfile(_bytes_io.BytesIO(raw)):
            raise ValueError(f"{w}: cannot read as .npz: not a valid .npz file (a .npz is a "
                             "zip archive of .npy arrays and this file is not a zip archive); "
                             "write it with numpy.savez or ctwa_hpc.model.couplingfile."
                             "save_couplings")
        try:
            with np.load(_bytes_io.BytesIO(raw), allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as exc:  # noqa: BLE001 - zip/npy errors of a corrupt file
            why = ("it holds object (pickled) arrays, not numeric ones" if "pickle" in str(exc)
                   else str(exc))
            raise ValueError(f"{w}: cannot read as .npz: not a valid .npz file of numeric "
                             f"arrays: {why}") from None
    else:
        try:
            data = h5.read_arrays(path)
        except Exception as exc:  # noqa: BLE001 - HDF5 errors of a corrupt file
            raise ValueError(f"{w}: cannot read as HDF5: {exc}") from None
    J, h, extra, names = {}, {}, {}, {}
    for name, arr in data.items():
        low = name.lower()
        if low.startswith("j_") or low.startswith("h_"):
            kind, key = (("J", pair_key(name, w)) if low.startswith("j_")
                         else ("h", field_key(name, w)))
            if (kind, key) in names:
                raise ValueError(f"{w}: the arrays {names[(kind, key)]!r} and {name!r} both name "
                                 f"{kind}_{key} (names are case-insensitive); keep only one")
            names[(kind, key)] = name
            (J if kind == "J" else h)[key] = arr
        else:
            extra[name] = arr
    if not J:
        raise ValueError(f"{w}: no coupling array (expected at least one of J_xx, J_yy, J_zz, "
                         f"J_xy, J_xz, J_yz; found {sorted(data) or 'nothing'})")
    Jn, hn, n, R = normalize_couplings(J, h, where=w, realizations=True)
    axis = any(v.ndim == 3 for v in Jn.values()) or any(v.ndim == 2 for v in hn.values())
    return CouplingsFile(path, n, R, digest, Jn, hn, extra, per_realization=axis)


def save_couplings(path, J, h=None):
    """Write coupling/field arrays (validated as for :func:`load_couplings`, realization axis
    allowed) to an ``.npz`` file with the names J_xx, ..., h_z; returns the path."""
    path = os.fspath(path)
    if not path.lower().endswith(".npz"):
        raise ValueError(f"save_couplings: {path!r} must end in .npz")
    Jn, hn, _, _ = normalize_couplings(J, h, where="save_couplings", realizations=True)
    arrays = {f"J_{k}": v for k, v in Jn.items()}
    arrays.update({f"h_{k}": v for k, v in hn.items()})
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)
    return path


__all__ = ["CouplingsFile", "load_couplings", "save_couplings"]
