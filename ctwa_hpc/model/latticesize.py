"""Sizing a ``lattice`` model before it is built, and the checks on what was built.

* :func:`check_sites` / :func:`check_couplings`: the bytes of the sites and of the couplings
  (dense (N, N) arrays for long-range interactions, coupling lists for short-range ones:
  ``interaction = "nearest"`` or a ``cutoff``), estimated by arithmetic on the config and the
  geometry and refused with the number when they exceed the memory budget
  (:func:`~ctwa_hpc.model.limits.memory_budget`).
* :func:`check_strongest`: a pair so strongly coupled that no RK4 step of ``time.dt`` resolves
  it (near-coincident sites) is refused naming the pair, its distance and its coupling.

Errors are ValueErrors starting with the config field to change.
"""
from __future__ import annotations

import numpy as np

from . import geometry, limits
from .geometry.lattice import lattice_sites
from .geometry.pairs import PairCouplings, pair_displacements

MAX_COUPLING_DT = 2.0
"""|J_ij|·dt above this cannot be integrated by RK4 (its stability limit is 2√2 for ω = 2J)."""

_POSITIONS_FIELD = {"file": "model.positions_file", "box": "model.box",
                    "blockade": "model.blockade_radius"}
_SIZE_FIELD = {"file": "model.positions_file", "box": "model.n_sites",
               "blockade": "model.n_sites"}


def positions_field(m):
    """The config field that places the sites (named in messages about site pairs)."""
    return _POSITIONS_FIELD.get(m.get("positions") or "lattice", "model.spacing")


def size_field(m):
    """The config field that sets the number of sites."""
    return _SIZE_FIELD.get(m.get("positions") or "lattice", "model.size")


def expected_sites(m):
    """Sites the geometry will have (the parent lattice for "filled"), or None if unknown
    before it is built (positions files) or the keys are bad (the builder says why)."""
    kind = m.get("positions") or "lattice"
    try:
        if kind in ("lattice", "filled"):
            return lattice_sites(m.get("lattice"), m.get("size"))
    except (ValueError, TypeError):
        return None
    n = m.get("n_sites")
    if kind in ("box", "blockade") and isinstance(n, int) and not isinstance(n, bool):
        return n
    return None


def check_sites(m, n, budget):
    """Refuse n sites whose set-up alone exceeds ``budget`` bytes."""
    if budget is None or n is None or n * limits.SITE_BYTES <= budget:
        return
    raise ValueError(f"{size_field(m)}: {n} sites need about "
                     f"{limits.size_text(n * limits.SITE_BYTES)} just to set up, more than the "
                     f"{limits.size_text(budget)} available; use fewer sites")


def _families(spec):
    aniso = spec.get("anisotropy")
    return len(aniso) if isinstance(aniso, dict) and aniso else 1


def _volume(geom):
    ext = np.ptp(geom.positions, axis=0).astype(float) if geom.n_sites else np.zeros(geom.dim)
    if geom.box is not None:
        ext = np.where(geom.periodic, geom.box, np.maximum(ext, 0.0))
    use = ext > 0
    return float(np.prod(ext[use])) if use.any() else 0.0, int(use.sum())


def check_dense(m, n, spec, budget):
    """Refuse dense (long-range) couplings of n sites that do not fit ``budget`` (before
    anything is built when n is known from the config)."""
    if n is None or budget is None or geometry.is_short_range(spec):
        return
    need = limits.dense_coupling_bytes(n, _families(spec))
    if need > budget:
        raise ValueError(
            f"{size_field(m)}: interaction = {spec.get('interaction')!r} without model.cutoff "
            f"couples all {n} sites pairwise ({n * (n - 1) // 2:.3g} pairs): building them "
            f"needs about {limits.size_text(need)}, more than the {limits.size_text(budget)} "
            f"available; give model.cutoff (short-range couplings are built as lists) or "
            f"use fewer sites ({size_field(m)})")


def check_couplings(m, geom, spec, budget):
    """Refuse couplings of ``geom`` that do not fit ``budget``; returns the largest number of
    candidate pairs the sparse builder may examine (None: no limit)."""
    n, f = geom.n_sites, _families(spec)
    if not geometry.is_short_range(spec):
        check_dense(m, n, spec, budget)
        return None
    per_pair = limits.pair_bytes(1, f, geom.dim)
    if budget is None:
        return None
    cutoff = spec.get("cutoff")
    if spec.get("interaction") != "nearest" and isinstance(cutoff, (int, float)):
        vol, d = _volume(geom)
        pairs = limits.pairs_within(n, vol, max(d, 1), float(cutoff))
        need = pairs * per_pair + n * limits.SITE_BYTES
        if need > budget:
            raise ValueError(
                f"model.cutoff: {cutoff:g} leaves about {pairs:.3g} coupled pairs among the "
                f"{n} sites: building them needs about {limits.size_text(need)}, more than "
                f"the {limits.size_text(budget)} available; lower model.cutoff or use fewer "
                f"sites ({size_field(m)})")
    return max(budget // per_pair, 1)


def _strongest(couplings):
    """(i, j, |J|) of the pair with the largest coupling magnitude, or None."""
    if isinstance(couplings, PairCouplings):
        if couplings.n_pairs == 0 or not len(couplings):
            return None
        big = np.max([np.abs(v) for v in couplings.values.values()], axis=0)
        k = int(np.argmax(big))
        return int(couplings.i[k]), int(couplings.j[k]), float(big[k])
    if not couplings:
        return None
    big = np.max([np.abs(v) for v in couplings.values()], axis=0)
    k = int(np.argmax(big))
    i, j = divmod(k, big.shape[0])
    return min(i, j), max(i, j), float(big.reshape(-1)[k])


def check_strongest(m, couplings, geom, dt):
    """Refuse a pair coupled so strongly that RK4 steps of ``dt`` cannot resolve it."""
    if not isinstance(dt, (int, float)) or not dt > 0:
        return
    top = _strongest(couplings)
    if top is None or top[2] * dt <= MAX_COUPLING_DT:
        return
    i, j, J = top
    _, r2 = pair_displacements(geom.positions, geom.box, geom.periodic, np.array([i]),
                               np.array([j]))
    field = positions_field(m)
    raise ValueError(
        f"{field}: sites {i} and {j} are only {np.sqrt(r2[0]):.3g} apart and couple with "
        f"|J| = {J:.3g}: |J|·time.dt = {J * dt:.3g} is far beyond what an RK4 step resolves "
        f"(it must stay below {MAX_COUPLING_DT:g}); {_FIX.get(field, _FIX[None])}, or lower "
        f"time.dt below {MAX_COUPLING_DT / J:.3g}")


_FIX = {"model.positions_file": "move them apart or remove one in model.positions_file",
        "model.spacing": "increase model.spacing or lower model.J",
        "model.box": "random positions put them this close: use positions = 'blockade' with "
                     "a model.blockade_radius, or lower model.J",
        "model.blockade_radius": "increase model.blockade_radius or lower model.J",
        None: "lower model.J"}
