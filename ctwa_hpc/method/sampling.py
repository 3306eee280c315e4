r"""Gaussian Wigner sampling of cluster initial conditions (paper sections II B, V B–V E).

Every method is an *ensemble of R vectors per cluster with fixed weights* w_r, stored as one
complex array ``psi[A, R, S]`` (A stacked cluster amplitudes, samples innermost):

=============  ===  =========  ==============================================================
method          R   weights    vectors before rotation (reference state |0> = |↑…↑>)
=============  ===  =========  ==============================================================
``sb``          1   (1,)       b = √(1+r_D)|0> + Σ_{a≥1} z_a|a>,  E|z_a|² = r_D,
                               r_D = (√(1+D) − 1)/D  (eq. 18, circular complex Gaussian)
``reduced``     2   (+1, −1)   p = |0> + w, q = w, w = Σ_{n≥1} (δ_n + iσ_n)/2 |n>,
                               δ, σ ~ N(0, 1): ρ = |p><p| − |q><q| is eq. (54) exactly
``operator``    —   —          ρ = |p><p| − |q><q| as a D×D matrix (eqs. 52–54, D² variables)
``meanfield``   1   (1,)       |0> (zero noise)
=============  ===  =========  ==============================================================

Each vector is then rotated to the sample's product state by ``U_c = ⊗_k u_k`` (section V C).

Discrete cluster sampling (``scheme="discrete"``, operator CTWA; Braemer, Vahedi, Gärttner,
PRB 110, 054204 (2024)): every site draws a discrete-TWA phase-space point s = (s_x, s_y, 1)
with s_x, s_y = ±1 (rotated with the site's Bloch direction), and the cluster matrix is the
product of the single-site phase-point operators ρ_c = ⊗_k (I + s_k·σ)/2.  Each factor has
eigenvalues λ± = (1 ± √3)/2 with coherent-state eigenvectors along ±ŝ_k, so ρ_c is an exact
sum of R = 2^n product vectors with weights Π_k λ: the vectors carry √|Π λ| and the weights
are the signs (−1)^{#λ−}.  With clusters of one site this is the discrete TWA.

Random numbers are keyed by (seed, realization, sample) through a Philox counter-based
generator, never by MPI rank or batch, so results do not depend on how work is split.  With
antithetic pairs, samples 2k and 2k+1 share one stream and carry noise ξ and −ξ.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model.pauli import apply_site_unitaries, single_site_unitary
from .dynamics import DensityPropagator

METHOD_VECTORS = {"sb": (1.0,), "reduced": (1.0, -1.0), "operator": (1.0, -1.0),
                  "meanfield": (1.0,)}


def r_D(D):
    """Schwinger-boson noise per empty mode, eq. (18): r_D = (√(1+D) − 1)/D."""
    return (np.sqrt(1.0 + D) - 1.0) / D


def sample_generator(seed, realization, stream):
    """Counter-based generator of one (seed, realization, stream) triple."""
    key = np.random.SeedSequence([int(seed), int(realization), 0xC7A]).generate_state(2, np.uint64)
    return np.random.Generator(np.random.Philox(key=key, counter=[0, 0, int(stream), 0]))


@dataclass
class InitialBatch:
    """Initial conditions of a batch: ``psi[A, R, S]`` plus the weights w_r."""

    psi: np.ndarray
    weights: np.ndarray
    sample_ids: np.ndarray


def draw_batch(problem, state, method, seed, realization, sample_ids, antithetic=False,
               scheme="gaussian"):
    """Draw initial vectors for the given global sample indices.

    Returns an :class:`InitialBatch` whose ``psi`` is C-contiguous complex128 of shape
    (A, R, S).  For ``method == "operator"`` the same (p, q) pair is returned (R = 2); build
    the D×D matrices with :func:`density_matrices`.
    """
    if method not in METHOD_VECTORS:
        raise ValueError(f"method.kind: unknown method {method!r}")
    if scheme == "discrete":
        if method not in ("operator", "reduced"):
            raise ValueError("method.sampling: 'discrete' applies to operator/reduced CTWA only")
        return _draw_discrete(problem, state, seed, realization, sample_ids, antithetic)
    if scheme != "gaussian":
        raise ValueError(f"method.sampling: expected 'gaussian' or 'discrete', got {scheme!r}")
    part = problem.partition
    dims, offs = part.dims, part.offsets
    A, C = int(offs[-1]), part.n_clusters
    weights = np.array(METHOD_VECTORS[method])
    R = len(weights)
    sample_ids = np.asarray(sample_ids, dtype=np.int64)
    S = len(sample_ids)
    n_noise = 2 * (A - C)
    noise = np.empty((n_noise, S))
    theta = np.empty((state.n_sites, S))
    phi = np.empty((state.n_sites, S))
    for j, s in enumerate(sample_ids):
        stream, sign = (s // 2, 1.0 - 2.0 * (s % 2)) if antithetic else (s, 1.0)
        g = sample_generator(seed, realization, stream)
        theta[:, j], phi[:, j] = state.draw_angles(g)
        if method != "meanfield":
            noise[:, j] = sign * g.standard_normal(n_noise)
    psi = np.zeros((A, R, S), dtype=np.complex128)
    k = 0
    for c, sites in enumerate(part.clusters):
        D, o = int(dims[c]), int(offs[c])
        m = 2 * (D - 1)
        z = noise[k:k + m:2] + 1j * noise[k + 1:k + m:2] if method != "meanfield" else None
        k += m
        if method == "sb":
            rd = r_D(D)
            psi[o, 0] = np.sqrt(1.0 + rd)
            psi[o + 1:o + D, 0] = np.sqrt(rd / 2.0) * z
        elif method == "meanfield":
            psi[o, 0] = 1.0
        else:
            w = 0.5 * z
            psi[o, 0] = 1.0
            psi[o + 1:o + D, 0] = w
            psi[o + 1:o + D, 1] = w
        psi[o:o + D] = _rotate(psi[o:o + D], theta[list(sites)], phi[list(sites)], state.is_pure)
    return InitialBatch(np.ascontiguousarray(psi), weights, sample_ids)


def _draw_discrete(problem, state, seed, realization, sample_ids, antithetic):
    """Discrete cluster sampling: R = 2^{n_max} product vectors per cluster, weights ±1."""
    part = problem.partition
    n_max = max(len(c) for c in part.clusters)
    R = 1 << n_max
    weights = np.array([(-1.0) ** bin(r).count("1") for r in range(R)])
    sample_ids = np.asarray(sample_ids, dtype=np.int64)
    S, N = len(sample_ids), state.n_sites
    theta, phi = np.empty((N, S)), np.empty((N, S))
    sxy = np.empty((2, N, S))
    for j, s in enumerate(sample_ids):
        stream, sign = (s // 2, 1.0 - 2.0 * (s % 2)) if antithetic else (s, 1.0)
        g = sample_generator(seed, realization, stream)
        theta[:, j], phi[:, j] = state.draw_angles(g)
        sxy[:, :, j] = sign * (2.0 * g.integers(0, 2, size=(2, N)) - 1.0)
    # rotate s = (sx, sy, 1) by R_z(φ) R_y(θ), which maps ẑ to the site's Bloch vector
    ct, st_, cp, sp_ = np.cos(theta), np.sin(theta), np.cos(phi), np.sin(phi)
    x1 = ct * sxy[0] + st_
    z1 = -st_ * sxy[0] + ct
    sx, sy, sz = cp * x1 - sp_ * sxy[1], sp_ * x1 + cp * sxy[1], z1
    norm = np.sqrt(3.0)
    th_s = np.arccos(np.clip(sz / norm, -1.0, 1.0))
    ph_s = np.arctan2(sy, sx)
    lam = np.array([(1.0 + norm) / 2.0, (1.0 - norm) / 2.0])
    # per site: branch 0 = coherent state along +ŝ (λ+), branch 1 = along −ŝ (λ−)
    c0, s0 = np.cos(th_s / 2), np.sin(th_s / 2)
    e = np.exp(1j * ph_s)
    up_vec = np.array([c0, e * s0])            # (2, N, S)
    dn_vec = np.array([s0, -e * c0])           # orthogonal: coherent state along −ŝ
    branch = [np.sqrt(abs(lam[0])) * up_vec, np.sqrt(abs(lam[1])) * dn_vec]
    psi = np.zeros((problem.n_amp, R, S), dtype=np.complex128)
    for c, sites in enumerate(part.clusters):
        o = int(part.offsets[c])
        for r in range(1 << len(sites)):
            v = np.ones((1, S), dtype=complex)
            for k, site in enumerate(sites):
                f = branch[(r >> k) & 1][:, site]   # (2, S)
                v = np.concatenate([v * f[0], v * f[1]], axis=0)
            psi[o:o + (1 << len(sites)), r] = v
    return InitialBatch(np.ascontiguousarray(psi), weights, sample_ids)


def _rotate(block, theta, phi, pure):
    """Apply ⊗_k u_k(θ_k, φ_k) to block[D, R, S] (per-sample unitaries for mixed states)."""
    D, R, S = block.shape
    if pure:
        us = [single_site_unitary(t, p) for t, p in zip(theta[:, 0], phi[:, 0])]
        return apply_site_unitaries(block.reshape(D, R * S), us).reshape(D, R, S)
    out = np.empty_like(block)
    for r in range(R):
        us = [np.moveaxis(np.array([single_site_unitary(t, p) for t, p in zip(th, ph)]), 0, -1)
              for th, ph in zip(theta, phi)]
        out[:, r] = apply_site_unitaries(block[:, r], us)
    return out


def density_matrices(problem, psi, weights):
    """Per-cluster ρ_c = Σ_r w_r |ψ_r><ψ_r| as a list of arrays (S, D, D) (operator CTWA)."""
    return DensityPropagator.from_vectors(problem, psi, weights)
