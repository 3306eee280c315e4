"""Pair couplings from a geometry: nearest neighbour, power law, dipolar; XXZ/XYZ anisotropy.

Every builder returns the coupling dict of the design (keys "xx", "yy", "zz", optionally "xy",
"xz", "yz"): (N, N) float arrays, symmetric with zero diagonal, the entry (i, j), i < j, being the
coefficient of sigma^a_i sigma^b_j in

.. math::  H = \\sum_{i<j} \\sum_{ab} c_{ab}\\, J_{ij}\\, \\sigma^a_i \\sigma^b_j ,
           \\qquad J^{ab}_{ij} = c_{ab} J_{ij},

with c_ab = ``anisotropy[ab]`` (e.g. XXZ: {"xx": 1, "yy": 1, "zz": Delta}; the PRB 110, 054204
model (J_ij/4)(XX + YY + 2 Delta ZZ) is {"xx": 0.25, "yy": 0.25, "zz": 0.5 Delta}) and the
distance dependence

* nearest neighbour: J_ij = J if r_ij is the smallest pair distance (relative tolerance 1e-9),
* power law:         J_ij = J / r_ij^alpha,
* dipolar:           J_ij = J (1 - 3 cos^2 theta_ij) / r_ij^3, cos theta_ij = (r_ij . n)/r_ij with
                     the unit quantization axis n; 1D/2D positions are embedded as (x, 0, 0) /
                     (x, y, 0), so a pair along n gives -2J/r^3 and a pair perpendicular +J/r^3.

r_ij is the minimum-image distance (periodic axes wrap); a pair exactly half a periodic box
apart has two equally near images, and the dipolar coupling (whose angle depends on the image
when the axis has components along other axes) is their mean, so the torus stays translation
invariant.  ``cutoff`` zeroes J_ij for r_ij > cutoff (1 + 1e-9).  All of it is vectorised over
pairs (no Python loop per pair).

``sparse=True`` (nearest neighbour, or power law / dipolar with a cutoff) returns the same
couplings as a :class:`~ctwa_hpc.model.geometry.pairs.PairCouplings` (coupling lists from a cell
list, no (N, N) array).  Coincident sites, coordinates whose squares overflow and couplings
that overflow are refused naming ``where`` (the config field that placed the sites),
``model.alpha`` or ``model.J`` and the pair.
"""
from __future__ import annotations

import numpy as np

from .base import Geometry
from .pairs import PairCouplings, close_pairs, nearest_pairs

COMPONENTS = ("xx", "yy", "zz", "xy", "xz", "yz")
REL_TOL = 1e-9


def check_anisotropy(anisotropy, where="model.anisotropy"):
    """Validate an anisotropy dict -> {key: float} with lowercase keys from COMPONENTS."""
    if not isinstance(anisotropy, dict) or not anisotropy:
        raise ValueError(f"{where}: expected a table of coefficients such as "
                         "{xx = 1, yy = 1, zz = 2} (XXZ with Delta = 2), got "
                         f"{anisotropy!r}")
    out = {}
    for key, val in anisotropy.items():
        k = str(key).lower()
        if k not in COMPONENTS:
            raise ValueError(f"{where}: unknown component {key!r}; expected some of "
                             f"{list(COMPONENTS)}")
        if k in out:
            raise ValueError(f"{where}: component {k!r} given twice")
        if isinstance(val, bool):
            raise ValueError(f"{where}.{k}: expected a number, got {val!r}")
        try:
            c = float(val)
        except (TypeError, ValueError):
            raise ValueError(f"{where}.{k}: expected a number, got {val!r}") from None
        if not np.isfinite(c):
            raise ValueError(f"{where}.{k}: must be finite, got {val!r}")
        out[k] = c
    return out


def _number(value, where, positive=False, nonnegative=False):
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if not np.isfinite(x):
        raise ValueError(f"{where}: must be finite, got {value!r}")
    if positive and x <= 0:
        raise ValueError(f"{where}: must be > 0, got {value!r}")
    if nonnegative and x < 0:
        raise ValueError(f"{where}: must be >= 0, got {value!r}")
    return x


MAX_COORDINATE = 1e150
"""Largest |coordinate| accepted: squared distances (summed over 3 axes) stay finite."""


def _check_geometry(geom, where="model.positions"):
    if not isinstance(geom, Geometry):
        raise ValueError(f"model.positions: expected a Geometry, got {type(geom).__name__}")
    big = float(np.max(np.abs(geom.positions))) if geom.n_sites else 0.0
    if geom.box is not None:
        big = max(big, float(np.max(geom.box)))
    if big > MAX_COORDINATE:
        raise ValueError(f"{where}: coordinates up to {big:.3g} are too large: squared "
                         f"distances overflow (every |coordinate| must stay below "
                         f"{MAX_COORDINATE:.0e}); rescale the positions")
    return geom


def _tiny_r2(geom):
    scale = max(1.0, float(np.max(np.abs(geom.positions))))
    return (1e-12 * scale) ** 2


def _coincide(geom, i, j, r2, where):
    raise ValueError(f"{where}: sites {i} and {j} coincide (distance {np.sqrt(r2):.3g}); "
                     "couplings diverge (move or remove one of them)")


def _offdiag_r2(geom, where="model.positions"):
    """Squared distances with +inf on the diagonal; raises on coincident sites."""
    r2 = geom.squared_distances()
    np.fill_diagonal(r2, np.inf)
    if geom.n_sites > 1 and r2.min() <= _tiny_r2(geom):
        i, j = np.unravel_index(np.argmin(r2), r2.shape)
        _coincide(geom, min(i, j), max(i, j), r2[i, j], where)
    return r2


def _cutoff_radius(cutoff):
    return _number(cutoff, "model.cutoff", positive=True) * (1 + REL_TOL)


def _apply_cutoff(K, r2, cutoff):
    if cutoff is not None:
        rc = _cutoff_radius(cutoff)
        K[r2 > rc * rc] = 0.0
    return K


def _expand(K, anisotropy):
    """{ab: c_ab K}; K is (N, N) with zero diagonal."""
    c = check_anisotropy(anisotropy)
    np.fill_diagonal(K, 0.0)
    return {k: coef * K for k, coef in c.items()}


def _expand_pairs(n, i, j, K, anisotropy):
    """PairCouplings {ab: c_ab K} of the pairs with K != 0."""
    c = check_anisotropy(anisotropy)
    keep = K != 0.0
    Kk = K[keep]
    return PairCouplings(int(n), i[keep], j[keep], {k: coef * Kk for k, coef in c.items()})


def _sparse_pairs(geom, radius, where, max_pairs):
    """(i, j, dxs, r2) of the pairs within ``radius`` (coincident sites refused)."""
    tiny = _tiny_r2(geom)
    i, j, dxs, r2 = close_pairs(geom.positions, geom.box, geom.periodic,
                                max(radius, np.sqrt(tiny)), max_pairs=max_pairs)
    if len(r2) and r2.min() <= tiny:
        k = int(np.argmin(r2))
        _coincide(geom, int(i[k]), int(j[k]), r2[k], where)
    return i, j, dxs, r2


def _check_finite(K, i, j, r2, what, where):
    bad = ~np.isfinite(K)
    if bad.any():
        k = int(np.argmax(bad.reshape(-1)))
        a, b = (int(i.reshape(-1)[k]), int(j.reshape(-1)[k]))
        a, b = min(a, b), max(a, b)
        raise ValueError(f"{what}: the coupling of sites {a} and {b} (distance "
                         f"{np.sqrt(r2.reshape(-1)[k]):.3g}) overflows; {where}")
    return K


def _dense_index(n):
    idx = np.arange(n)
    return np.broadcast_to(idx[:, None], (n, n)), np.broadcast_to(idx[None, :], (n, n))


def nearest_neighbour(geom, anisotropy, J=1.0, sparse=False, where="model.positions"):
    """J_ij = J on the pairs at the smallest distance (relative tolerance 1e-9), else 0.

    ``sparse``: a :class:`~ctwa_hpc.model.geometry.pairs.PairCouplings` (no (N, N) array)."""
    geom = _check_geometry(geom, where)
    Jv = _number(J, "model.J")
    check_anisotropy(anisotropy)
    n = geom.n_sites
    if sparse and n < 2:
        return _expand_pairs(n, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0),
                             anisotropy)
    if sparse:
        i, j, _, r2, rmin2 = nearest_pairs(geom.positions, geom.box, geom.periodic, REL_TOL)
        if n > 1 and rmin2 <= _tiny_r2(geom):
            k = int(np.argmin(r2))
            _coincide(geom, int(i[k]), int(j[k]), r2[k], where)
        return _expand_pairs(n, i, j, np.full(len(i), Jv), anisotropy)
    if n < 2:
        return _expand(np.zeros((n, n)), anisotropy)
    r2 = _offdiag_r2(geom, where)
    rmin = np.sqrt(r2.min())
    r = np.sqrt(r2)
    K = np.where(np.abs(r - rmin) <= REL_TOL * rmin, Jv, 0.0)
    return _expand(K, anisotropy)


def _needs_cutoff(cutoff, what):
    if cutoff is None:
        raise ValueError(f"model.cutoff: required for sparse {what} couplings")


def power_law(geom, alpha, anisotropy, J=1.0, cutoff=None, sparse=False,
              where="model.positions", max_pairs=None):
    """J_ij = J / r_ij^alpha (alpha >= 0), zero beyond ``cutoff`` (``sparse`` needs it)."""
    geom = _check_geometry(geom, where)
    a = _number(alpha, "model.alpha", nonnegative=True)
    Jv = _number(J, "model.J")
    check_anisotropy(anisotropy)
    fix = f"lower model.alpha or model.J, or move the sites apart ({where})"
    if sparse:
        _needs_cutoff(cutoff, "power_law")
        rc = _cutoff_radius(cutoff)
        i, j, _, r2 = _sparse_pairs(geom, rc, where, max_pairs)
        with np.errstate(over="ignore"):
            K = Jv * r2 ** (-0.5 * a)
        K = _check_finite(_apply_cutoff(K, r2, cutoff), i, j, r2, "model.alpha", fix)
        return _expand_pairs(geom.n_sites, i, j, K, anisotropy)
    r2 = _offdiag_r2(geom, where)
    with np.errstate(over="ignore"):
        K = Jv * r2 ** (-0.5 * a)
    np.fill_diagonal(K, 0.0)
    _check_finite(K, *_dense_index(geom.n_sites), r2, "model.alpha", fix)
    return _expand(_apply_cutoff(K, r2, cutoff), anisotropy)


def _unit_axis(axis):
    try:
        n = np.asarray(axis, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"model.axis: expected 3 numbers, got {axis!r}") from None
    if n.size != 3 or not np.all(np.isfinite(n)):
        raise ValueError(f"model.axis: expected 3 finite numbers (x, y, z), got {axis!r}")
    norm = np.linalg.norm(n)
    if norm == 0:
        raise ValueError("model.axis: the quantization axis must be nonzero")
    return n / norm


def _dipolar_kernel(dxs, r2, n, Jv):
    proj = np.zeros_like(r2)
    for a, dx in enumerate(dxs):
        if n[a] != 0.0:
            proj += n[a] * dx
    with np.errstate(invalid="ignore", over="ignore"):
        cos2 = proj * proj / r2
        return Jv * (1.0 - 3.0 * cos2) * r2 ** -1.5


def _tie_average(K, dxs, r2, n, Jv, geom):
    """Average K over the equally near images of pairs exactly half a periodic box apart.

    On a periodic axis of length L a pair with |dx| = L/2 has two nearest images ±L/2; the
    dipolar angle (with an axis that has other nonzero components) depends on which one is
    taken.  The mean over the tied images keeps the torus translation invariant.  Returns
    whether some pair was averaged (K is changed in place)."""
    tied = []
    for a, dx in enumerate(dxs):
        if geom.periodic[a] and n[a] != 0.0:
            length = float(geom.box[a])
            mask = np.abs(np.abs(dx) - 0.5 * length) <= 1e-9 * length
            if mask.any():
                tied.append((a, mask))
    if not tied:
        return False
    where = np.logical_or.reduce([m for _, m in tied])
    sub = [dx[where] for dx in dxs]
    acc = np.zeros(int(where.sum()))
    for signs in np.ndindex(*(2,) * len(tied)):
        img = list(sub)
        for (a, mask), s in zip(tied, signs):
            img[a] = np.where(mask[where], (1.0 - 2.0 * s) * np.abs(sub[a]), sub[a])
        acc += _dipolar_kernel(img, r2[where], n, Jv)
    K[where] = acc / 2 ** len(tied)
    return True


def dipolar(geom, anisotropy, J=1.0, axis=(0.0, 0.0, 1.0), cutoff=None, sparse=False,
            where="model.positions", max_pairs=None):
    """J_ij = J (1 - 3 cos^2 theta_ij) / r_ij^3, theta_ij = angle between r_j - r_i and ``axis``.

    Pairs exactly half a periodic box apart average their two nearest images."""
    geom = _check_geometry(geom, where)
    if geom.dim > 3:
        raise ValueError(f"model.positions: dipolar couplings need d <= 3, got d = {geom.dim}")
    Jv = _number(J, "model.J")
    n = _unit_axis(axis)
    check_anisotropy(anisotropy)
    fix = f"lower model.J or move the sites apart ({where})"
    if sparse:
        _needs_cutoff(cutoff, "dipolar")
        i, j, dxs, r2 = _sparse_pairs(geom, _cutoff_radius(cutoff), where, max_pairs)
        K = _dipolar_kernel(dxs, r2, n, Jv)
        _tie_average(K, dxs, r2, n, Jv, geom)
        K = _check_finite(_apply_cutoff(K, r2, cutoff), i, j, r2, "model.J", fix)
        return _expand_pairs(geom.n_sites, i, j, K, anisotropy)
    r2 = _offdiag_r2(geom, where)
    dxs = [geom.axis_displacement(a) for a in range(geom.dim)]
    K = _dipolar_kernel(dxs, r2, n, Jv)
    if _tie_average(K, dxs, r2, n, Jv, geom):
        iu = np.triu_indices(geom.n_sites, 1)
        K.T[iu] = K[iu]                  # averaged images: mirror the upper triangle exactly
    np.fill_diagonal(K, 0.0)
    _check_finite(K, *_dense_index(geom.n_sites), r2, "model.J", fix)
    return _expand(_apply_cutoff(K, r2, cutoff), anisotropy)


def coupling_strength(J):
    """(N, N) strength sqrt(sum_ab (J^ab_ij)^2) of a coupling dict (or |J| of one array)."""
    if isinstance(J, np.ndarray):
        arrays = [J]
    elif isinstance(J, dict) and J:
        arrays = [np.asarray(v, dtype=float) for v in J.values()]
    else:
        raise ValueError("method.clustering: coupling_strength needs a dict of (N, N) coupling "
                         "arrays or one (N, N) array")
    shape = arrays[0].shape
    if len(shape) != 2 or shape[0] != shape[1] or any(a.shape != shape for a in arrays):
        raise ValueError(f"method.clustering: coupling arrays must all be (N, N), got "
                         f"{[a.shape for a in arrays]}")
    s = np.zeros(shape)
    for a in arrays:
        s += np.abs(a) ** 2
    return np.sqrt(s)
