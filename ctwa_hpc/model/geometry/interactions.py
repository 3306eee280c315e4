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

r_ij is the minimum-image distance (periodic axes wrap).  ``cutoff`` zeroes J_ij for
r_ij > cutoff (1 + 1e-9).  All of it is vectorised over pairs (no Python loop per pair).
"""
from __future__ import annotations

import numpy as np

from .base import Geometry

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


def _check_geometry(geom):
    if not isinstance(geom, Geometry):
        raise ValueError(f"model.positions: expected a Geometry, got {type(geom).__name__}")
    return geom


def _offdiag_r2(geom):
    """Squared distances with +inf on the diagonal; raises on coincident sites."""
    r2 = geom.squared_distances()
    np.fill_diagonal(r2, np.inf)
    if geom.n_sites > 1:
        scale = max(1.0, float(np.max(np.abs(geom.positions))))
        tiny = (1e-12 * scale) ** 2
        if r2.min() <= tiny:
            i, j = np.unravel_index(np.argmin(r2), r2.shape)
            i, j = min(i, j), max(i, j)
            raise ValueError(f"model.positions: sites {i} and {j} coincide (distance "
                             f"{np.sqrt(r2[i, j]):.3g}); couplings diverge")
    return r2


def _apply_cutoff(K, r2, cutoff):
    if cutoff is not None:
        rc = _number(cutoff, "model.cutoff", positive=True) * (1 + REL_TOL)
        K[r2 > rc * rc] = 0.0
    return K


def _expand(K, anisotropy):
    """{ab: c_ab K}; K is (N, N) with zero diagonal."""
    c = check_anisotropy(anisotropy)
    np.fill_diagonal(K, 0.0)
    return {k: coef * K for k, coef in c.items()}


def nearest_neighbour(geom, anisotropy, J=1.0):
    """J_ij = J on the pairs at the smallest distance (relative tolerance 1e-9), else 0."""
    geom = _check_geometry(geom)
    Jv = _number(J, "model.J")
    check_anisotropy(anisotropy)
    n = geom.n_sites
    if n < 2:
        return _expand(np.zeros((n, n)), anisotropy)
    r2 = _offdiag_r2(geom)
    rmin = np.sqrt(r2.min())
    r = np.sqrt(r2)
    K = np.where(np.abs(r - rmin) <= REL_TOL * rmin, Jv, 0.0)
    return _expand(K, anisotropy)


def power_law(geom, alpha, anisotropy, J=1.0, cutoff=None):
    """J_ij = J / r_ij^alpha (alpha >= 0), zero beyond ``cutoff``."""
    geom = _check_geometry(geom)
    a = _number(alpha, "model.alpha", nonnegative=True)
    Jv = _number(J, "model.J")
    check_anisotropy(anisotropy)
    r2 = _offdiag_r2(geom)
    K = Jv * r2 ** (-0.5 * a)
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


def dipolar(geom, anisotropy, J=1.0, axis=(0.0, 0.0, 1.0), cutoff=None):
    """J_ij = J (1 - 3 cos^2 theta_ij) / r_ij^3, theta_ij = angle between r_j - r_i and ``axis``."""
    geom = _check_geometry(geom)
    if geom.dim > 3:
        raise ValueError(f"model.positions: dipolar couplings need d <= 3, got d = {geom.dim}")
    Jv = _number(J, "model.J")
    n = _unit_axis(axis)
    check_anisotropy(anisotropy)
    r2 = _offdiag_r2(geom)
    proj = np.zeros_like(r2)
    for a in range(geom.dim):
        if n[a] != 0.0:
            proj += n[a] * geom.axis_displacement(a)
    with np.errstate(invalid="ignore"):
        cos2 = proj * proj / r2
    np.fill_diagonal(cos2, 0.0)
    K = Jv * (1.0 - 3.0 * cos2) * r2 ** -1.5
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
