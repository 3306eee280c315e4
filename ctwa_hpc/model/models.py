r"""Builders for the CTWA paper's spin-chain models (Pauli matrices, ħ = 1).

==================  ==========================================================================
``tfim``            eq. (24): :math:`J\sum_j σ^z_jσ^z_{j+1} + h_x\sum_j σ^x_j (+ h_z\sum_j σ^z_j)`
``ising_chaotic``   eq. (39): :math:`\sum_i J σ^x_iσ^x_{i+1} + h_x σ^x_i + h_z σ^z_i`,
                    defaults J = 1, h_x = 0.8090, h_z = -0.9045, periodic
``heisenberg``      eq. (41): :math:`J\sum_{\langle ij\rangle} \vec σ_i\cdot\vec σ_j
                    + h_z\sum_i δ_i σ^z_i`, δ_i uniform in [-1, 1] (seeded per realization)
``xy``              eq. (49): :math:`J\sum_i (σ^x_iσ^x_{i+1} + σ^y_iσ^y_{i+1})`
``custom``          terms listed by the user: ``{coef = 0.5, ops = "Z0 Z1", f = "cos(t)"}``
==================  ==========================================================================

Disorder convention: with σ's, the paper's h_z in eq. (41) equals W = h_z/2 of the
S = σ/2 convention (H = Σ S·S + Σ h_i S^z, h_i ∈ [-W, W]) after dividing H by 4J.
"""
from __future__ import annotations

import numpy as np

from .hamiltonian import Hamiltonian
from .hamiltonian import TimeFunction

MODEL_PARAMS = {
    "tfim": {"J": 0.125, "hx": 1.0, "hz": 0.0},
    "ising_chaotic": {"J": 1.0, "hx": 0.8090, "hz": -0.9045},
    "heisenberg": {"J": 1.0, "hz": 0.0},
    "xy": {"J": 1.0},
    "custom": {},
    "couplings": {},
    "lattice": {},
}
DEFAULT_BOUNDARY = {"tfim": "open", "ising_chaotic": "periodic", "heisenberg": "periodic",
                    "xy": "periodic", "custom": "open", "couplings": "open", "lattice": "open"}


def bonds(n_sites, boundary):
    """Nearest-neighbour bonds (i, i+1) of a chain; periodic adds (N-1, 0) for N > 2."""
    if boundary not in ("open", "periodic"):
        raise ValueError(f"model.boundary: expected 'open' or 'periodic', got {boundary!r}")
    out = [(i, i + 1) for i in range(n_sites - 1)]
    if boundary == "periodic" and n_sites > 2:
        out.append((n_sites - 1, 0))
    return out


def tfim(n_sites=4, J=0.125, hx=1.0, hz=0.0, boundary="open"):
    """Transverse-field Ising chain, eq. (24) (the paper's 4-spin example: J = 1/8, hx = 1)."""
    h = Hamiltonian(n_sites, name="tfim", info=dict(J=J, hx=hx, hz=hz, boundary=boundary))
    for i, j in bonds(n_sites, boundary):
        h.add(J, [(i, "Z"), (j, "Z")])
    for i in range(n_sites):
        h.add(hx, [(i, "X")])
        h.add(hz, [(i, "Z")])
    return h


def ising_chaotic(n_sites=20, J=1.0, hx=0.8090, hz=-0.9045, boundary="periodic"):
    """Chaotic (ETH) Ising chain in transverse and longitudinal fields, eq. (39)."""
    h = Hamiltonian(n_sites, name="ising_chaotic",
                    info=dict(J=J, hx=hx, hz=hz, boundary=boundary))
    for i, j in bonds(n_sites, boundary):
        h.add(J, [(i, "X"), (j, "X")])
    for i in range(n_sites):
        h.add(hx, [(i, "X")])
        h.add(hz, [(i, "Z")])
    return h


def disorder_fields(n_sites, seed, realization):
    """δ_i uniform in [-1, 1], keyed by (seed, realization) only (independent of MPI layout)."""
    ss = np.random.SeedSequence([int(seed), int(realization), 0xD15])
    return np.random.default_rng(ss).uniform(-1.0, 1.0, n_sites)


def heisenberg(n_sites=16, J=1.0, hz=0.0, boundary="periodic", seed=0, realization=0,
               deltas=None):
    """Disordered Heisenberg chain, eq. (41); ``deltas`` overrides the seeded δ_i."""
    if deltas is None:
        deltas = disorder_fields(n_sites, seed, realization)
    deltas = np.asarray(deltas, dtype=float)
    if deltas.shape != (n_sites,):
        raise ValueError(f"model.deltas: expected {n_sites} values, got shape {deltas.shape}")
    h = Hamiltonian(n_sites, name="heisenberg",
                    info=dict(J=J, hz=hz, boundary=boundary, realization=realization,
                              deltas=deltas.tolist()))
    for i, j in bonds(n_sites, boundary):
        for a in "XYZ":
            h.add(J, [(i, a), (j, a)])
    for i in range(n_sites):
        h.add(hz * deltas[i], [(i, "Z")])
    return h


def xy(n_sites=64, J=1.0, boundary="periodic"):
    """XY chain, eq. (49) (free fermions)."""
    h = Hamiltonian(n_sites, name="xy", info=dict(J=J, boundary=boundary))
    for i, j in bonds(n_sites, boundary):
        h.add(J, [(i, "X"), (j, "X")])
        h.add(J, [(i, "Y"), (j, "Y")])
    return h


def add_terms(h, terms, params=None, where="model.terms"):
    """Append ``{coef, ops, f}`` tables to ``h``; ``f`` may use the names in ``params``."""
    if not isinstance(terms, list) or not terms:
        raise ValueError(f"{where}: expected a non-empty list of {{coef, ops}} tables")
    shared = {}
    for k, t in enumerate(terms):
        w = f"{where}[{k}]"
        if not isinstance(t, dict):
            raise ValueError(f"{w}: expected a table with keys coef, ops (and optional f)")
        unknown = set(t) - {"coef", "ops", "f"}
        if unknown:
            raise ValueError(f"{w}: unknown key(s) {sorted(unknown)}")
        if "coef" not in t or "ops" not in t:
            raise ValueError(f"{w}: needs both 'coef' and 'ops'")
        f = t.get("f")
        if f is not None:
            if not isinstance(f, str):
                raise ValueError(f"{w}.f: expected an expression in t, got {f!r}")
            if f not in shared:     # one TimeFunction per distinct expression (one family)
                shared[f] = TimeFunction(f, w + ".f", **({"params": params} if params else {}))
            f = shared[f]
        h.add(t["coef"], t["ops"], f, where=w)
    return h


def custom(n_sites, terms, where="model.terms", params=None):
    """Hamiltonian from a list of ``{coef, ops, f}`` tables (``f`` optional)."""
    return add_terms(Hamiltonian(n_sites, name="custom"), terms, params, where)


def build(kind, n_sites, params, boundary=None, disorder_seed=0, realization=0, terms=None,
          tparams=None):
    """Build a chain model by name with validated parameters (used by the config loader).

    ``tparams`` are the named parameters of the custom terms' time functions.
    """
    if kind not in MODEL_PARAMS:
        raise ValueError(f"model.kind: unknown model {kind!r} (known: {sorted(MODEL_PARAMS)})")
    boundary = boundary or DEFAULT_BOUNDARY[kind]
    p = dict(MODEL_PARAMS[kind])
    p.update(params)
    if kind == "tfim":
        return tfim(n_sites, boundary=boundary, **p)
    if kind == "ising_chaotic":
        return ising_chaotic(n_sites, boundary=boundary, **p)
    if kind == "heisenberg":
        return heisenberg(n_sites, boundary=boundary, seed=disorder_seed,
                          realization=realization, **p)
    if kind == "xy":
        return xy(n_sites, boundary=boundary, **p)
    return custom(n_sites, terms, params=tparams)
