"""Python objects given where a run file names a file (``ctwa_hpc.run``): the registry.

A Hamiltonian (or a list of them, one per realization) as ``model.file``, a Geometry or an
(N, d) array as ``model.positions_file``: the config holds a reference "python:<content
hash>" (so the config hash and the provenance name the content) and :func:`lookup` gives the
object back.  :func:`check_object` refuses anything else before it is registered.
"""
from __future__ import annotations

import hashlib

import numpy as np

from ..tools.exceptions import ConfigError
from . import geometry

_OBJECTS = {}
OBJECT_PREFIX = "python:"


def short_repr(v):
    """repr(v), shortened to 40 characters."""
    text = repr(v)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


_ACCEPTED = {"file": "a path (str or os.PathLike), a Hamiltonian or a non-empty list of "
                     "Hamiltonians",
             "positions_file": "a path (str or os.PathLike), a Geometry or an (N, d) numpy "
                               "array of positions"}


def check_object(key, obj):
    """Refuse a Python object given as ``model.<key>`` that the builder cannot use (ConfigError
    naming the field and the accepted types)."""
    where = f"model.{key}"

    def is_ham(h):
        return hasattr(h, "n_sites") and hasattr(h, "terms")

    if key == "file":
        ok = is_ham(obj) or (isinstance(obj, (list, tuple)) and len(obj) > 0
                             and all(is_ham(h) for h in obj))
    else:
        ok = isinstance(obj, geometry.Geometry) or (
            isinstance(obj, np.ndarray) and obj.ndim in (1, 2) and obj.size > 0
            and (np.issubdtype(obj.dtype, np.integer) or np.issubdtype(obj.dtype, np.floating)))
    if not ok:
        raise ConfigError(f"{where}: expected {_ACCEPTED[key]}, got {type(obj).__name__} "
                          f"{short_repr(obj)}")
    return obj


def register_object(obj):
    """Keep ``obj`` (a Hamiltonian, list of Hamiltonians, Geometry or positions array) and
    return the reference string that stands for it in a config."""
    if isinstance(obj, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(obj, dtype=float).tobytes()).hexdigest()
    elif hasattr(obj, "positions") and not hasattr(obj, "terms"):
        digest = hashlib.sha256(np.ascontiguousarray(obj.positions, dtype=float).tobytes()
                                ).hexdigest()
    else:
        digest = object_hash(obj)
    ref = OBJECT_PREFIX + digest[:32]
    _OBJECTS[ref] = obj
    return ref


def lookup(value, where):
    """The object behind a config value: a reference string → the registered object."""
    if isinstance(value, str) and value.startswith(OBJECT_PREFIX):
        if value not in _OBJECTS:
            raise ConfigError(f"{where}: {value!r} refers to a Python object of another "
                              "session (pass the object again through ctwa_hpc.run)")
        return _OBJECTS[value]
    return value


def object_sizes(obj):
    """(n_sites, n_realizations) of a Hamiltonian or list of Hamiltonians given in Python."""
    if isinstance(obj, (list, tuple)):
        if not obj:
            raise ConfigError("model.file: an empty list of Hamiltonians")
        ns = {getattr(h, "n_sites", None) for h in obj}
        if len(ns) != 1 or None in ns:
            raise ConfigError("model.file: the Hamiltonians must all have the same n_sites")
        return ns.pop(), len(obj)
    if not hasattr(obj, "n_sites") or not hasattr(obj, "terms"):
        raise ConfigError(f"model.file: expected a path, a Hamiltonian or a list of "
                          f"Hamiltonians, got {type(obj).__name__}")
    return obj.n_sites, None


def object_hash(obj):
    """Content hash of a Hamiltonian (or list of them) given through the Python API."""
    h = hashlib.sha256()
    for ham in (obj if isinstance(obj, (list, tuple)) else [obj]):
        h.update(str(ham.n_sites).encode())
        for t in ham.terms:
            h.update(repr((t.coef, t.ops, t.tfunc.expr if t.tfunc is not None else None))
                     .encode())
    return h.hexdigest()
