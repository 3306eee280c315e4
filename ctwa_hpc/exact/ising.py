r"""Closed-form dynamics of Ising models from product states, at any N.

Model: :math:`H = \sum_{i<j} J_{ij} σ^z_i σ^z_j + \sum_i h_i σ^z_i` (static, any geometry),
σ^± = (σ^x ± iσ^y)/2, σ^+ = |↑><↓|, σ^z|↑> = +|↑> (conventions of :mod:`ctwa_hpc.model.pauli`).

Derivation.  H is diagonal, E(z) = Σ_{i<j} J_ij z_i z_j + Σ_i h_i z_i with z_i = ±1.  Write a
Pauli string with X/Y on a set A and Z on a set B (disjoint) as a sum over sign patterns
s ∈ {+,−}^A of Π_{a∈A} c_a^{s_a} σ_a^{s_a} Π_{b∈B} σ^z_b, with X = σ^+ + σ^-, Y = −iσ^+ + iσ^-
(c_X^± = 1, c_Y^± = ∓i).  The string Π_a σ_a^{s_a} maps |z> with z_a = −s_a to |z'> with
z'_a = s_a; in the Heisenberg picture it picks up e^{i(E(z') − E(z))t}, and

.. math::  E(z') − E(z) = 2 \sum_{a∈A} s_a \Big(h_a + \sum_{k∉A} J_{ak} z_k\Big)

(couplings inside A cancel).  For one site this is σ^+_i(t) = σ^+_i e^{2it(h_i + Σ_k J_ik Z_k)}.
In a product state ρ = ⊗_k ρ_k the trace factorises over sites:

.. math::  ⟨P(t)⟩ = \sum_s \Big[\prod_{a∈A} c_a^{s_a} m_a^{s_a} e^{2i s_a h_a t}\Big]
                    \prod_{k∉A} f_k(2t w_k), \qquad w_k = \sum_{a∈A} s_a J_{ak},

with m^+_a = ⟨σ^+_a⟩_0, m^-_a = ⟨σ^-_a⟩_0 = (m^+_a)^*, c_k = ⟨σ^z_k⟩_0 and

.. math::  f_k(φ) = \cos φ + i c_k \sin φ \;(k ∉ B), \qquad
           f_k(φ) = c_k \cos φ + i \sin φ \;(k ∈ B).

For a pure site (θ, φ) of :mod:`ctwa_hpc.model.states`, m^+ = e^{iφ} sin θ / 2 and c = cos θ; a
random site (uniform on the Bloch sphere, ρ_k = I/2) has m^+ = 0 and c = 0, so mixed product
states are exact too.  For A = {i} this is the result of Foss-Feig, Hazzard, Bollinger & Rey,
PRA 87, 042101 (2013): ⟨σ^+_i(t)⟩ = ⟨σ^+_i⟩_0 e^{2ih_i t} Π_{k≠i}[cos 2J_ik t + i cos θ_k
sin 2J_ik t]; A = {i, j} gives their two-point functions with J_ik ± J_jk.  Every sign is
checked against exact diagonalization in ``tests/test_exact_ising.py``.

The pattern −s gives the complex conjugate of pattern s, so only patterns with s = + on the
first site of A are evaluated and ⟨P⟩ = 2 Re Σ_s(...).  Cost: 2^{|A|−1} · N per string and time,
vectorised over strings, sites and times (no logarithms: every |f_k| ≤ 1, so the products can
only underflow to 0, which is the correct limit, and exact zeros of cos are harmless).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product as _iproduct

import numpy as np
import scipy.sparse as sp
from ..model.pauli import normalize_label, parse_pauli_string

MAX_FLIP_SITES = 6          # X/Y factors per string: 2^(|A|-1) sign patterns each
_CHUNK_ELEMENTS = 1_000_000  # (kernels × sites) per vectorised block (16 MB complex)
_RESTART = 64               # uniform time grid: exact phases every _RESTART steps
_COEF = {"X": (1.0 + 0.0j, 1.0 + 0.0j), "Y": (-1.0j, 1.0j)}   # c^+, c^- of X and Y


@dataclass(frozen=True)
class IsingModel:
    """H = Σ_{i<j} J[i, j] Z_i Z_j + Σ_i h[i] Z_i; ``J`` symmetric (N, N) with zero diagonal."""

    J: np.ndarray
    h: np.ndarray

    @property
    def n_sites(self):
        return len(self.h)


def _stores(hamiltonian):
    """The Hamiltonian's two stores: explicit :class:`~ctwa_hpc.model.hamiltonian.Term` objects and
    vectorised :class:`~ctwa_hpc.model.hamiltonian.CouplingBlock` arrays (the one place that knows
    the storage; a Hamiltonian without blocks is read through ``terms``)."""
    explicit = getattr(hamiltonian, "explicit_terms", None)
    if explicit is None:
        return hamiltonian.terms, []
    return explicit, list(getattr(hamiltonian, "blocks", ()))


def detect(hamiltonian):
    """``(IsingModel, "")`` if ``hamiltonian`` is a static Ising model, else ``(None, reason)``.

    Accepted terms: coef·Z_i and coef·Z_i Z_j (repeated terms add up), explicit or in coupling
    arrays.  Anything else (an X or Y factor, three or more sites, a time function) makes the
    model non-Ising; the reason names the first offending term.
    """
    n = hamiltonian.n_sites
    explicit, blocks = _stores(hamiltonian)
    si, sc, pi, pj, pc = [], [], [], [], []
    for t in explicit:
        ops = t.ops
        if t.tfunc is None:
            if len(ops) == 2:
                (i, a), (j, b) = ops
                if a == "Z" and b == "Z":
                    pi.append(i)
                    pj.append(j)
                    pc.append(t.coef)
                    continue
            elif len(ops) == 1 and ops[0][1] == "Z":
                si.append(ops[0][0])
                sc.append(t.coef)
                continue
        return None, _not_ising(t.coef, ops, t.tfunc is not None)
    si, sc = [np.asarray(si, np.int64)], [np.asarray(sc, float)]
    pi, pj, pc = [np.asarray(pi, np.int64)], [np.asarray(pj, np.int64)], [np.asarray(pc, float)]
    z = 2                                   # label code of Z in the coupling arrays ("XYZ")
    for blk in blocks:
        for kind, bad in (("pair", (blk.pair_tf >= 0) | (blk.pair_a != z) | (blk.pair_b != z)),
                          ("site", (blk.site_tf >= 0) | (blk.site_a != z))):
            if np.any(bad):
                k = int(np.flatnonzero(bad)[0])
                if kind == "pair":
                    ops = ((int(blk.pair_i[k]), "XYZ"[blk.pair_a[k]]),
                           (int(blk.pair_j[k]), "XYZ"[blk.pair_b[k]]))
                    return None, _not_ising(float(blk.pair_coef[k]), ops, blk.pair_tf[k] >= 0)
                ops = ((int(blk.site_i[k]), "XYZ"[blk.site_a[k]]),)
                return None, _not_ising(float(blk.site_coef[k]), ops, blk.site_tf[k] >= 0)
        pi.append(blk.pair_i)
        pj.append(blk.pair_j)
        pc.append(blk.pair_coef)
        si.append(blk.site_i)
        sc.append(blk.site_coef)
    h = np.bincount(np.concatenate(si), weights=np.concatenate(sc), minlength=n)
    pi, pj, pc = np.concatenate(pi), np.concatenate(pj), np.concatenate(pc)
    J = np.bincount(pi * n + pj, weights=pc, minlength=n * n).reshape(n, n)
    return IsingModel(J + J.T, h), ""


def _not_ising(coef, ops, timed):
    label = f"{coef:+g} " + " ".join(f"{lab}{s}" for s, lab in ops)
    if timed:
        return f"term {label} is time dependent"
    if any(lab != "Z" for _, lab in ops):
        return f"term {label} is not diagonal in σz"
    return f"term {label} acts on {len(ops)} sites (Ising: 1 or 2)"


def is_ising(hamiltonian):
    """True for a static Hamiltonian with only Z and ZZ terms."""
    return detect(hamiltonian)[0] is not None


def site_moments(theta, phi, random=None):
    """Per-site ⟨σ^+⟩_0 (complex) and ⟨σ^z⟩_0 of a product state (random sites: ρ = I/2)."""
    theta = np.asarray(theta, dtype=float)
    phi = np.asarray(phi, dtype=float)
    sin, cz = np.sin(theta), np.cos(theta)
    # θ = 0, π/2, π in floating point: cos(π/2) = 6e-17 is a zero (exact real products for x
    # states, skipped kernels for z states); the snapping changes values by < 1e-14
    sin[np.abs(sin) < 1e-14] = 0.0
    cz[np.abs(cz) < 1e-14] = 0.0
    splus = 0.5 * sin * np.exp(1j * phi)
    if random is not None:
        random = np.asarray(random, dtype=bool)
        splus = np.where(random, 0.0, splus)
        cz = np.where(random, 0.0, cz)
    return splus, cz


def _split_string(ops, where):
    flips = tuple((s, lab) for s, lab in ops if lab in ("X", "Y"))
    zs = tuple(s for s, lab in ops if lab == "Z")
    if len(flips) > MAX_FLIP_SITES:
        text = " ".join(f"{lab}{s}" for s, lab in ops)
        raise ValueError(f"{where}: the closed-form Ising reference handles Pauli strings with at "
                         f"most {MAX_FLIP_SITES} X/Y factors, got {len(flips)} in {text!r}")
    return flips, zs


class _Plan:
    """Distinct kernels z_K(t) (K = flip sites A, signs s with s_0 = +, Z sites B) and the
    linear map columns = 2 Re(z · C) + (constant Z-only strings)."""

    def __init__(self, columns, n_sites, splus):
        self.kernels, index = [], {}
        self.zonly = []                   # (column, coef, Z sites) of strings without X/Y
        rows, cols, vals = [], [], []
        for k, col in enumerate(columns):
            for coef, ops in col:
                for s, _ in ops:
                    if not 0 <= s < n_sites:
                        raise ValueError(f"observables: site {s} outside 0..{n_sites - 1}")
                flips, zs = _split_string(ops, "observables")
                if not flips:
                    self.zonly.append((k, coef, zs))
                    continue
                sites = tuple(s for s, _ in flips)
                for rest in _iproduct((1, -1), repeat=len(flips) - 1):
                    signs = (1,) + rest
                    m = np.prod([splus[a] if sg > 0 else np.conj(splus[a])
                                 for a, sg in zip(sites, signs)])
                    if m == 0:
                        continue                 # a z-polarized or random site in A
                    c = np.prod([_COEF[lab][0 if sg > 0 else 1]
                                 for (_, lab), sg in zip(flips, signs)])
                    key = (sites, signs, zs)
                    if key not in index:
                        index[key] = len(self.kernels)
                        self.kernels.append(key)
                    rows.append(index[key])
                    cols.append(k)
                    vals.append(2.0 * coef * c)
        self.C = sp.csr_matrix((np.array(vals, dtype=complex), (rows, cols)),
                               shape=(len(self.kernels), len(columns)))


def _kernel_arrays(model, kernels, splus, cz):
    """W (M, N) with zeros on A ∪ B, Z-site phases wB/PB/QB (M, maxB), prefactors, h sums."""
    n, M = model.n_sites, len(kernels)
    W = np.zeros((M, n))
    pref = np.empty(M, dtype=complex)
    hsum = np.empty(M)
    maxb = max((len(k[2]) for k in kernels), default=0)
    wB = np.zeros((M, maxb))
    PB = np.ones((M, maxb))
    QB = np.zeros((M, maxb))
    for m, (sites, signs, zs) in enumerate(kernels):
        sg = np.array(signs, dtype=float)
        idx = np.array(sites)
        W[m] = sg @ model.J[idx]
        pref[m] = np.prod([splus[a] if s > 0 else np.conj(splus[a]) for a, s in zip(sites, signs)])
        hsum[m] = sg @ model.h[idx]
        if zs:
            zb = np.array(zs)
            wB[m, :len(zs)] = W[m, zb]
            PB[m, :len(zs)] = cz[zb]
            QB[m, :len(zs)] = 1.0
            W[m, zb] = 0.0
        W[m, idx] = 0.0
    return W, wB, PB, QB, pref, hsum


def _uniform_grid(times):
    """True when times[n] = times[0] + n·Δ to rounding (phases can then be advanced)."""
    if len(times) < 3:
        return False
    grid = times[0] + np.arange(len(times)) * ((times[-1] - times[0]) / (len(times) - 1))
    return bool(np.all(np.abs(grid - times) <= 1e-13 * max(1.0, float(np.abs(times).max()))))


def _site_products(W, cz, times):
    """P[t, m] = Π_k f_k(2t W[m, k]) with f_k(φ) = cos φ + i cz_k sin φ, shape (n_t, M).

    On a uniform time grid the phases E = e^{2itW} are advanced by one complex multiplication
    per step and recomputed exactly every _RESTART steps (rounding drift ≤ _RESTART·ε);
    otherwise they are evaluated at every time.
    """
    out = np.empty((len(times), W.shape[0]), dtype=complex)
    real_only = not np.any(cz)           # e.g. x-polarized: f_k = cos φ, real products
    uniform = _uniform_grid(times)
    step = np.exp(2j * W * ((times[-1] - times[0]) / (len(times) - 1))) if uniform else None
    f = None if real_only else np.empty(W.shape, dtype=complex)
    E = None
    for ti, t in enumerate(times):
        if E is None or not uniform or ti % _RESTART == 0:
            E = np.exp(2j * t * W)
        else:
            E *= step
        if real_only:
            out[ti] = np.prod(E.real, axis=-1)
        else:
            f.real = E.real
            np.multiply(E.imag, cz, out=f.imag)
            out[ti] = np.prod(f, axis=-1)
    return out


def _kernel_values(model, kernels, splus, cz, times):
    """z_K(t) = pref_K e^{2i t Σ s_a h_a} Π_{k∉A∪B} f_k(2t w_k) Π_{b∈B} f_b(2t w_b), (n_t, M).

    Kernels are processed in blocks of ≈ _CHUNK_ELEMENTS (kernel, site) entries, which bounds
    the memory at any N and number of observables."""
    out = np.empty((len(times), len(kernels)), dtype=complex)
    rows = max(1, _CHUNK_ELEMENTS // max(model.n_sites, 1))
    for a in range(0, len(kernels), rows):
        W, wB, PB, QB, pref, hsum = _kernel_arrays(model, kernels[a:a + rows], splus, cz)
        main = _site_products(W, cz, times)
        phb = (2.0 * times)[:, None, None] * wB[None]               # (n_t, M, max|B|)
        zf = np.prod(PB * np.cos(phb) + 1j * QB * np.sin(phb), axis=-1)
        out[:, a:a + rows] = pref * np.exp(2j * times[:, None] * hsum) * main * zf
    return out


def evolve(model, theta, phi, times, columns, random=None):
    """Exact ⟨column⟩(t) of an Ising model from a product state, shape (n_times, n_columns).

    ``columns``: sequence of columns, each a sequence of (coef, ops) with ops a sorted tuple of
    (site, label) (:class:`ctwa_hpc.method.observables.ObservableSet` columns).  ``random``: optional
    boolean mask of sites in the mixed state ρ = I/2.  Strings may carry at most
    :data:`MAX_FLIP_SITES` X/Y factors and any number of Z factors.
    """
    times = np.asarray(times, dtype=float)
    if times.ndim != 1 or not np.all(np.isfinite(times)):
        raise ValueError("time: output times must be a finite 1-D array")
    theta = np.asarray(theta, dtype=float)
    if theta.shape != (model.n_sites,):
        raise ValueError(f"state: {theta.shape[0] if theta.ndim else 0} angles for a model of "
                         f"{model.n_sites} sites")
    splus, cz = site_moments(theta, phi, random)
    plan = _Plan(columns, model.n_sites, splus)
    z = _kernel_values(model, plan.kernels, splus, cz, times)
    res = np.real(np.asarray(plan.C.T @ z.T)).T if plan.kernels else \
        np.zeros((len(times), len(columns)))
    for k, coef, zs in plan.zonly:      # Z strings commute with H: constant Π_b ⟨σz_b⟩_0
        res[:, k] += coef * float(np.prod(cz[list(zs)]))
    return res


def pauli_expectation(model, theta, phi, times, ops, random=None):
    """⟨P(t)⟩ for one Pauli string ``ops`` (a string "X0 Z3" or (site, label) pairs), (n_t,)."""
    if isinstance(ops, str):
        ops = parse_pauli_string(ops, "observables")
    else:
        ops = tuple(sorted((int(s), normalize_label(lab, "observables")) for s, lab in ops))
    return evolve(model, theta, phi, times, [((1.0, ops),)], random)[:, 0]


__all__ = ["IsingModel", "MAX_FLIP_SITES", "detect", "evolve", "is_ising", "pauli_expectation",
           "site_moments"]
