r"""Couplings as data: validated coupling matrices and files (``model.kind = "couplings"``).

The model is

.. math::  \hat H = \sum_{i<j} \sum_{a,b\in\{x,y,z\}} J^{ab}_{ij}\, σ^a_i σ^b_j
                  + \sum_i \sum_a h^a_i\, σ^a_i

(Pauli matrices, ħ = 1).  Arrays and keys:

* ``J_xx``, ``J_yy``, ``J_zz`` (or dict keys ``"xx"``, ...): (N, N), symmetric, zero diagonal;
* ``J_xy``, ``J_xz``, ``J_yz`` and their mirrors ``J_yx``, ``J_zx``, ``J_zy``: (N, N), zero
  diagonal; only the upper triangle is used, entry (i, j) with i < j being the coefficient of
  σ^a_i σ^b_j (``J_yx[i, j]`` multiplies σ^y_i σ^x_j).  The lower triangle must be zero or
  mirror the upper one (a symmetric matrix), so that no coupling is silently dropped;
* ``h_x``, ``h_y``, ``h_z`` (or ``"x"``, ...): (N,).

A couplings file (``.npz`` written by :func:`save_couplings` or NumPy, or ``.h5``/``.hdf5``
read through :func:`ctwa_hpc.tools.h5.read_arrays`) holds these arrays by name.  A leading
realization axis, (R, N, N) and (R, N), gives one Hamiltonian per disorder realization; arrays
without it are shared by all realizations.  At least one ``J_ab`` array is required (a missing
``J_zz`` is fine).  Other ``J_*``/``h_*`` names are errors; arrays with other names (e.g.
``positions``) are kept in :attr:`CouplingsFile.extra`.  The SHA-256 of the file's bytes is
:attr:`CouplingsFile.content_hash` (for the config hash and the output provenance).
"""
from __future__ import annotations


import numpy as np

from .timefunc import TimeFunction

PAIR_KEYS = ("xx", "yy", "zz", "xy", "yx", "xz", "zx", "yz", "zy")
FIELD_KEYS = ("x", "y", "z")
FILE_SUFFIXES = (".npz", ".h5", ".hdf5")


def _prefix(where, name):
    return f"{where}: {name}" if where else name


def _canonical(key, prefix, allowed, where, expected):
    k = key.lower() if isinstance(key, str) else None
    if k is not None and k.startswith(prefix):
        k = k[len(prefix):]
    if k not in allowed:
        raise ValueError(f"{where}: unknown {expected[0]} key {key!r} (expected {expected[1]})")
    return k


def pair_key(key, where="J"):
    """Canonical pair family of ``key``: "xx", "J_xx", "J_XY" → "xx", "xy"; else ValueError."""
    return _canonical(key, "j_", PAIR_KEYS, where,
                      ("coupling", f"one of {', '.join(PAIR_KEYS)}, optionally as J_xx, ..."))


def field_key(key, where="h"):
    """Canonical field component of ``key``: "z", "h_z" → "z"; else ValueError."""
    return _canonical(key, "h_", FIELD_KEYS, where, ("field", "x, y, z or h_x, h_y, h_z"))


def _real_array(value, name):
    try:
        arr = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - any conversion failure is bad input
        raise ValueError(f"{name}: cannot read as an array ({exc})") from None
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer)
                                 or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    return arr.astype(float)


def _where_first(mask):
    """Index tuple of the first True entry of ``mask``, as plain ints."""
    return tuple(int(x) for x in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _check_matrix(name, key, M):
    """Finite, zero diagonal; symmetric (xx/yy/zz) or lower triangle zero/mirrored (mixed).

    ``M`` has shape (R, N, N); indices in messages carry the realization when R > 1."""
    R, n, _ = M.shape
    loc = (lambda idx: idx) if R > 1 else (lambda idx: idx[1:])  # noqa: E731
    bad = ~np.isfinite(M)
    if bad.any():
        raise ValueError(f"{name}: {int(bad.sum())} non-finite entries (first at "
                         f"{loc(_where_first(bad))})")
    diag = np.abs(np.diagonal(M, axis1=1, axis2=2))
    if diag.max(initial=0.0) > 0:
        r, i = _where_first(diag == diag.max())
        raise ValueError(f"{name}: diagonal must be zero (max |J_ii| = {diag.max():.3g} at "
                         f"i = {i}" + (f", realization {r})" if R > 1 else ")"))
    scale = np.abs(M).max(initial=0.0)
    tol = 1e-12 * scale
    MT = np.swapaxes(M, 1, 2)
    if key[0] == key[1]:
        asym = np.abs(M - MT)
        if asym.max(initial=0.0) > tol:
            raise ValueError(f"{name}: not symmetric (max |J - J^T| = {asym.max():.3g} at "
                             f"{loc(_where_first(asym == asym.max()))})")
        return
    il, jl = np.tril_indices(n, -1)
    low, mirror = M[:, il, jl], MT[:, il, jl]
    zero = np.abs(low).max(axis=1, initial=0.0) == 0
    sym = np.abs(low - mirror).max(axis=1, initial=0.0) <= tol
    if not np.all(zero | sym):
        r = int(np.flatnonzero(~(zero | sym))[0])
        raise ValueError(f"{name}: the lower triangle (i > j) must be zero or mirror the upper "
                         f"one" + (f" (realization {r})" if R > 1 else "") +
                         f"; only entries i < j are used, J_{key}[i, j] multiplying "
                         f"σ^{key[0]}_i σ^{key[1]}_j (put σ^{key[1]}_i σ^{key[0]}_j couplings in "
                         f"J_{key[::-1]})")


def normalize_couplings(J, h=None, n_sites=None, where="", realizations=False):
    """Validate and canonicalise coupling and field arrays.

    Parameters
    ----------
    J : dict key → array (N, N) (keys as :func:`pair_key`), or None/empty
    h : dict key → array (N,) (keys as :func:`field_key`), or None
    n_sites : int, optional — required N (default: taken from the arrays)
    where : prefix of error messages (e.g. ``"model.file (x.npz)"``)
    realizations : allow a leading realization axis, (R, N, N) / (R, N)

    Returns
    -------
    (J, h, n_sites, n_realizations): dicts of float arrays keyed "xx", ... / "x", ... in
    canonical order, shapes as given (no broadcasting); n_realizations is the common length of
    the leading axes (1 when there are none).
    """
    J = {} if J is None else J
    h = {} if h is None else h
    if not isinstance(J, dict):
        raise ValueError(f"{_prefix(where, 'J')}: expected a dict of (N, N) arrays keyed "
                         f"'xx', 'yy', ..., got {type(J).__name__}")
    if not isinstance(h, dict):
        raise ValueError(f"{_prefix(where, 'h')}: expected a dict of (N,) arrays keyed "
                         f"'x', 'y', 'z', got {type(h).__name__}")
    items = []
    seen = {}
    for key, value in J.items():
        k = pair_key(key, _prefix(where, "J"))
        items.append(("J", k, key, value))
    for key, value in h.items():
        k = field_key(key, _prefix(where, "h"))
        items.append(("h", k, key, value))
    for kind, k, key, _ in items:
        if (kind, k) in seen:
            raise ValueError(f"{_prefix(where, kind)}: keys {seen[(kind, k)]!r} and {key!r} name "
                             f"the same array {kind}_{k}")
        seen[(kind, k)] = key
    if not items:
        raise ValueError(f"{_prefix(where, 'J')}: no couplings or fields given (expected arrays "
                         "such as J_xx, J_zz, h_z)")
    n, n_real, real_from = n_sites, None, None
    arrays = {}
    for kind, k, _, value in items:
        name = _prefix(where, f"{kind}_{k}")
        arr = _real_array(value, name)
        core = 2 if kind == "J" else 1
        if arr.ndim not in ((core, core + 1) if realizations else (core,)):
            want = "(N, N)" if kind == "J" else "(N,)"
            also = f" or (R, {want[1:]}" if realizations else ""
            raise ValueError(f"{name}: expected shape {want}{also}, got {arr.shape}")
        shape = arr.shape[arr.ndim - core:]
        if n is None:
            n = shape[0]
        if n < 1 or shape != (n,) * core:
            raise ValueError(f"{name}: shape {arr.shape} does not match N = {n} (expected "
                             f"{(n,) * core} per realization)")
        if arr.ndim > core:
            if n_real is None:
                n_real, real_from = arr.shape[0], name
            elif arr.shape[0] != n_real:
                raise ValueError(f"{name}: {arr.shape[0]} realizations, but {real_from} has "
                                 f"{n_real}")
            if arr.shape[0] < 1:
                raise ValueError(f"{name}: empty realization axis")
        if kind == "J":
            _check_matrix(name, k, arr.reshape((-1, n, n)))
        else:
            bad = ~np.isfinite(arr)
            if bad.any():
                idx = _where_first(bad)
                raise ValueError(f"{name}: {int(bad.sum())} non-finite entries (first at "
                                 f"{idx if arr.ndim > 1 else idx[0]})")
        arrays[(kind, k)] = arr
    Jn = {k: arrays[("J", k)] for k in PAIR_KEYS if ("J", k) in arrays}
    hn = {k: arrays[("h", k)] for k in FIELD_KEYS if ("h", k) in arrays}
    return Jn, hn, int(n), int(n_real or 1)


def normalize_pairs(pairs, n_sites=None, where=""):
    """Validate coupling lists (a :class:`~ctwa_hpc.model.geometry.pairs.PairCouplings`):
    0 <= i < j < N, pairs sorted by (i, j) without repeats, finite real values; returns a
    PairCouplings with canonical family keys in canonical order (as :func:`normalize_couplings`
    does for arrays)."""
    n = int(pairs.n_sites if n_sites is None else n_sites)
    if pairs.n_sites != n:
        raise ValueError(f"{_prefix(where, 'J')}: coupling lists for {pairs.n_sites} sites, "
                         f"the model has {n}")
    i = np.asarray(pairs.i)
    j = np.asarray(pairs.j)
    if i.shape != j.shape or i.ndim != 1 or (i.size and not (
            np.issubdtype(i.dtype, np.integer) and np.issubdtype(j.dtype, np.integer))):
        raise ValueError(f"{_prefix(where, 'J')}: pair indices i, j must be 1-D integer arrays "
                         "of one length")
    i, j = i.astype(np.int64), j.astype(np.int64)
    if i.size:
        if i.min() < 0 or j.max() >= n or np.any(i >= j):
            k = int(np.flatnonzero((i < 0) | (j >= n) | (i >= j))[0])
            raise ValueError(f"{_prefix(where, 'J')}: pair {k} = ({int(i[k])}, {int(j[k])}) "
                             f"is not 0 <= i < j < {n}")
        key = i * n + j
        if np.any(np.diff(key) <= 0):
            raise ValueError(f"{_prefix(where, 'J')}: pairs must be sorted by (i, j) without "
                             "repeats")
    vals = {}
    for name, value in pairs.items():
        k = pair_key(name, _prefix(where, "J"))
        if k in vals:
            raise ValueError(f"{_prefix(where, 'J')}: family {k!r} is given twice")
        v = _real_array(value, _prefix(where, f"J_{k}"))
        if v.shape != i.shape:
            raise ValueError(f"{_prefix(where, f'J_{k}')}: {v.shape} values for {i.size} pairs")
        bad = ~np.isfinite(v)
        if bad.any():
            b = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{_prefix(where, f'J_{k}')}: {int(bad.sum())} non-finite values "
                             f"(first at ({int(i[b])}, {int(j[b])}))")
        vals[k] = v
    ordered = {k: vals[k] for k in PAIR_KEYS if k in vals}
    return type(pairs)(n, i, j, ordered)


def family_tfuncs(tfuncs, J, h, where=""):
    """Map of canonical family key → TimeFunction from a user dict; values: a TimeFunction, an
    expression or callable, or a table ``{"f": "cos(omega*t)", "params": {"omega": 2.0}}``.
    Every family must be present in J or h."""
    if not tfuncs:
        return {}
    if not isinstance(tfuncs, dict):
        raise ValueError(f"{_prefix(where, 'tfuncs')}: expected a dict family → time function, "
                         f"got {type(tfuncs).__name__}")
    out = {}
    for key, f in tfuncs.items():
        w = _prefix(where, f"tfuncs.{key}")
        try:
            fam = pair_key(key, w)
            present = fam in J
            arr = f"J_{fam}"
        except ValueError:
            try:
                fam = field_key(key, w)
            except ValueError:
                raise ValueError(f"{w}: unknown family {key!r} (expected a coupling key such as "
                                 "'xx', 'J_xy' or a field key such as 'z', 'h_x')") from None
            present = fam in h
            arr = f"h_{fam}"
        if not present:
            raise ValueError(f"{w}: the model has no {arr} array to modulate")
        if fam in out:
            raise ValueError(f"{w}: family {fam!r} is given twice")
        if isinstance(f, TimeFunction):
            out[fam] = f
        elif isinstance(f, dict):
            if "f" not in f or set(f) - {"f", "params"}:
                raise ValueError(f"{w}: expected a table {{f = '...', params = {{...}}}}, got "
                                 f"keys {sorted(f)}")
            out[fam] = TimeFunction(f["f"], w, params=f.get("params"))
        else:
            out[fam] = TimeFunction(f, w)
    return out


__all__ = ["FIELD_KEYS", "PAIR_KEYS", "family_tfuncs", "field_key", "normalize_couplings",
           "normalize_pairs", "pair_key"]
