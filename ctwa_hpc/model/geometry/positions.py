"""Random and file-given site positions.

Every random builder takes a ``numpy.random.Generator``; the caller derives it from
(disorder.seed, realization) through ``np.random.SeedSequence``, so a realization's positions do
not depend on ranks or call order.

* :func:`random_box`: N points i.i.d. uniform in [0, L_0) x ... x [0, L_{d-1}).
* :func:`partial_fill`: keep n = round(f N_lattice) sites of a lattice (halves round up), chosen
  uniformly without replacement, in increasing site order.  The kept sites carry their lattice
  sublattice and cells; :meth:`Geometry.with_alternating_sublattice` gives the (-1)^k Néel
  pattern on the occupied sites used by Braemer, Vahedi & Gärttner, PRB 110, 054204 (2024).
* :func:`blockade`: random sequential placement, uniform candidates rejected while closer than
  r_b to an already placed atom (minimum image on periodic axes), so every pair has r >= r_b.
* :func:`from_file`: positions from .npy, .npz (array "positions", optional "box"), .txt or .csv.
"""
from __future__ import annotations

import math
import os

import numpy as np

from . import rsa
from .base import Geometry


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"disorder.seed: expected a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def _check_count(n, where="model.n_sites"):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{where}: expected a positive integer, got {n!r}")
    return int(n)


def _check_box(box):
    arr = np.asarray(box, dtype=float).reshape(-1) if not isinstance(box, str) else None
    if arr is None or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"model.box: expected positive edge lengths (a number for 1D or a list "
                         f"[Lx, Ly, ...]), got {box!r}")
    return arr


def _periodic(periodic, d):
    per = np.asarray(periodic)
    if per.ndim == 0:
        per = np.full(d, bool(per))
    if per.shape != (d,) or per.dtype != bool:
        raise ValueError(f"model.boundary: expected a bool or {d} bools, got {periodic!r}")
    return per


def random_box(N, box, rng, periodic=False):
    """N sites uniform in the box (edge lengths ``box``, one per dimension)."""
    n = _check_count(N)
    lengths = _check_box(box)
    rng = _check_rng(rng)
    per = _periodic(periodic, lengths.size)
    pos = rng.random((n, lengths.size)) * lengths
    return Geometry(positions=pos, box=lengths, periodic=per, kind="box")


def _kept_count(n_lattice, filling, n_keep):
    if n_keep is not None:
        n_keep = _check_count(n_keep)
        if n_keep > n_lattice:
            raise ValueError(f"model.n_sites: {n_keep} occupied sites exceed the {n_lattice} "
                             "lattice sites")
    if filling is None:
        if n_keep is None:
            raise ValueError("model.filling: required for positions = 'filled' (or give "
                             "model.n_sites)")
        return n_keep
    try:
        f = float(filling)
    except (TypeError, ValueError):
        raise ValueError(f"model.filling: expected a number in (0, 1], got {filling!r}") from None
    if not (0 < f <= 1):
        raise ValueError(f"model.filling: must be in (0, 1], got {filling!r}")
    n = int(math.floor(f * n_lattice + 0.5))
    if n < 1:
        raise ValueError(f"model.filling: {f} of {n_lattice} sites keeps no site")
    if n_keep is not None and n_keep != n:
        raise ValueError(f"model.n_sites: {n_keep} contradicts model.filling = {f} of "
                         f"{n_lattice} sites (= {n}); give one of them")
    return n


def partial_fill(geometry, filling, rng, *, n_keep=None):
    """Occupy a fraction ``filling`` of the sites of ``geometry`` at random.

    Keeps n = round(filling * N) sites (halves round up), or exactly ``n_keep`` sites when
    given (then ``filling`` may be None), drawn uniformly without replacement and listed in
    increasing order of the parent's site index.  Box, periodicity, sublattice (the parent's
    checkerboard) and cells carry over; see :meth:`Geometry.with_alternating_sublattice` for the
    (-1)^k convention by position in the kept list.
    """
    if not isinstance(geometry, Geometry):
        raise ValueError("model.lattice: partial_fill needs a Geometry")
    n = _kept_count(geometry.n_sites, filling, n_keep)
    rng = _check_rng(rng)
    kept = np.sort(rng.choice(geometry.n_sites, size=n, replace=False))
    return geometry.subset(kept, kind=f"{geometry.kind}-filled")


_PACKING = {1: 1.0, 2: math.pi / math.sqrt(12.0), 3: math.pi / math.sqrt(18.0)}
_JAMMING = {1: 0.7476, 2: 0.5472, 3: 0.3841}   # random sequential adsorption jamming coverage


def _ball_volume(d, r):
    return math.pi ** (d / 2) / math.gamma(d / 2 + 1) * r ** d


def blockade(N, box, r_b, rng, periodic=False, max_attempts=20000):
    """N sites placed one by one uniformly in the box, no pair closer than ``r_b``.

    Random sequential adsorption: each site draws uniform candidates (in batches of growing size
    8, 16, ..., 1024) and takes the first one at distance >= r_b (minimum image on periodic
    axes) from every site placed before; after ``max_attempts`` rejected candidates for one
    site it gives up.  Raises ValueError naming ``model.blockade_radius`` then, or at once when
    the density exceeds close packing of r_b/2 balls.
    """
    n = _check_count(N)
    lengths = _check_box(box)
    d = lengths.size
    per = _periodic(periodic, d)
    try:
        rb = float(r_b)
    except (TypeError, ValueError):
        raise ValueError(f"model.blockade_radius: expected a number, got {r_b!r}") from None
    if not np.isfinite(rb) or rb <= 0:
        raise ValueError(f"model.blockade_radius: must be finite and > 0, got {r_b!r}")
    if rb < 1e-13 * float(lengths.max()):
        raise ValueError(f"model.blockade_radius: {rb:g} is below the floating-point "
                         f"resolution of positions in the box {lengths.tolist()} (1e-13 of its "
                         "largest edge); give a larger model.blockade_radius, or positions = "
                         "'box' for independent random sites")
    rng = _check_rng(rng)
    msg = (f"model.blockade_radius: could not place N = {n} atoms with r_b = {rb:g} in the box "
           f"{lengths.tolist()}")
    if d in _PACKING:
        # balls of radius r_b/2 around the atoms are disjoint and lie in the box grown by r_b/2
        # on each open side
        grown = np.prod(lengths + rb * (~per))
        most = _PACKING[d] * grown / _ball_volume(d, rb / 2)
        if n * _ball_volume(d, rb / 2) > _PACKING[d] * grown:
            jam = _JAMMING[d] * grown / _ball_volume(d, rb / 2)
            raise ValueError(msg + f" (denser than close packing: at most about {most:.4g} "
                             f"atoms fit, and random placement jams near {jam:.4g}); lower "
                             "model.n_sites or model.blockade_radius, or enlarge model.box")

    def fail(k):
        return ValueError(msg + f" (placed {k}, then {max_attempts} rejected candidates); "
                          "lower the density (model.n_sites, model.blockade_radius or "
                          "model.box)")

    pos = rsa.place(n, lengths, per, rb, rng, int(max_attempts), fail)
    return Geometry(positions=pos, box=lengths, periodic=per, kind="blockade")


def _load(path):
    ext = os.path.splitext(str(path))[1].lower()
    box = None
    if ext == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif ext == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "positions" not in data.files:
                raise ValueError(f"model.positions_file: {path} has no array 'positions' "
                                 f"(found {sorted(data.files)})")
            arr = data["positions"]
            if "box" in data.files:
                box = data["box"]
    elif ext in (".txt", ".dat", ".csv"):
        arr = np.loadtxt(path, delimiter="," if ext == ".csv" else None, comments="#", ndmin=2)
    else:
        raise ValueError(f"model.positions_file: unsupported extension {ext!r} of {path} "
                         "(expected .npy, .npz, .txt or .csv)")
    return arr, box


def from_file(path, box=None, periodic=False):
    """Positions (N, d) from a file; a 1D array is read as a chain (N, 1).

    ``box`` (or an array "box" inside an .npz) gives the box, needed for periodic axes.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"model.positions_file: expected a path, got {path!r}")
    if not os.path.exists(path):
        raise ValueError(f"model.positions_file: no such file {path}")
    if not os.path.isfile(path):
        raise ValueError(f"model.positions_file: {path} is not a regular file (a directory, "
                         "device or FIFO); give the path of a .npy/.npz/.txt/.csv file")
    try:
        arr, file_box = _load(path)
    except ValueError as exc:
        if str(exc).startswith("model.positions_file"):
            raise
        raise ValueError(f"model.positions_file: cannot read {path}: {exc}") from None
    arr = np.asarray(arr)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] < 1 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"model.positions_file: expected a numeric array of shape (N, d), "
                         f"got {arr.shape} ({arr.dtype})")
    if np.iscomplexobj(arr) or not np.all(np.isfinite(arr)):
        raise ValueError(f"model.positions_file: positions in {path} must be finite real numbers")
    if box is None:
        box = file_box
    lengths = None if box is None else _check_box(box)
    per = _periodic(periodic, arr.shape[1])
    return Geometry(positions=arr.astype(float), box=lengths, periodic=per, kind="file")
