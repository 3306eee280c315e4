r"""Exact XY-chain dynamics by free fermions (Jordan–Wigner), the reference of fig. 8.

For H = J Σ_i (σx_i σx_{i+1} + σy_i σy_{i+1}) (eq. (49)) and a product state of ±z spins,
n_i = (1 − σz_i)/2 maps to fermions with hopping 2J.  With periodic boundaries the boundary
bond carries the fermion parity: in the sector with N_f particles its hopping has the sign
−(−1)^{N_f} relative to the bulk (checked against exact diagonalization in the tests).
With G_ij(t) = ⟨c_i† c_j⟩(t) = (U* G(0) U^T)_ij, U = e^{−iht}, Wick's theorem gives

.. math::  ⟨σz_i⟩ = 1 − 2G_{ii},\qquad ⟨σz_iσz_j⟩_c = −4|G_{ij}|^2\quad(i ≠ j).

Cost O(N³) per time, so N = 64 (or 1024) is immediate.
"""
from __future__ import annotations

import numpy as np


def hopping_matrix(n_sites, J=1.0, boundary="periodic", n_particles=0):
    h = np.zeros((n_sites, n_sites))
    for i in range(n_sites - 1):
        h[i, i + 1] = h[i + 1, i] = 2.0 * J
    if boundary == "periodic" and n_sites > 2:
        s = -((-1.0) ** n_particles)
        h[n_sites - 1, 0] = h[0, n_sites - 1] = 2.0 * J * s
    return h


def xy_correlations(n_sites, occupied, times, J=1.0, boundary="periodic"):
    """(⟨σz_i⟩(t) (n_t, N), ⟨σz_iσz_j⟩_c(t) (n_t, N, N)) for down spins at ``occupied``."""
    occ = np.zeros(n_sites)
    occ[list(occupied)] = 1.0
    h = hopping_matrix(n_sites, J, boundary, int(occ.sum()))
    eps, V = np.linalg.eigh(h)
    G0 = np.diag(occ).astype(complex)
    sz = np.empty((len(times), n_sites))
    czz = np.empty((len(times), n_sites, n_sites))
    for k, t in enumerate(times):
        U = (V * np.exp(-1j * eps * t)) @ V.T
        G = U.conj() @ G0 @ U.T
        sz[k] = 1.0 - 2.0 * G.diagonal().real
        c = -4.0 * np.abs(G) ** 2
        np.fill_diagonal(c, 1.0 - sz[k] ** 2)
        czz[k] = c
    return sz, czz


def xy_reference(hamiltonian, state, times, pairs):
    """Exact ⟨σz_i⟩ and connected ⟨σz_iσz_j⟩ for the config's xy model and a ±z product state."""
    info = hamiltonian.info
    if hamiltonian.name != "xy":
        raise ValueError("free-fermion reference: model.kind must be 'xy'")
    n_down = state.sz_sector()
    if n_down is None:
        raise ValueError("free-fermion reference: the state must be a product of ±z spins")
    occupied = np.flatnonzero(np.isclose(np.mod(state.theta, 2 * np.pi), np.pi))
    sz, czz = xy_correlations(hamiltonian.n_sites, occupied, times, info["J"], info["boundary"])
    pairs = np.asarray(pairs)
    return sz, czz[:, pairs[:, 0], pairs[:, 1]]


__all__ = ["hopping_matrix", "xy_correlations", "xy_reference"]
