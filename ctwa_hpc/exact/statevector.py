"""Exact unitary dynamics from the same Hamiltonian, state and observable objects (N ≤ 20).

The full-chain basis follows :mod:`ctwa_hpc.model.pauli` with bit i = site i.  When the Hamiltonian
commutes with total σz (checked term group by term group, :meth:`Hamiltonian.conserves_sz`) and
the initial state is a product of ±z spins, only its Sz sector is built (e.g. 12 870 states for
the N = 16 Néel state instead of 65 536).  Static Hamiltonians are propagated between output
times with ``scipy.sparse.linalg.expm_multiply``; time-dependent ones with an adaptive DOP853
integrator at rtol = 1e-10.

Mixed initial states (sites uniformly random on the Bloch sphere, i.e. ρ = I/2 on those sites)
use quantum typicality: each draw is one exact evolution of |φ> = ⊗_fixed |n_i> ⊗ |g>, with |g>
a normalized random (complex Gaussian) state of the random sites, E[|g><g|] = I/2^{n_r}, so
E⟨φ|O(t)|φ⟩ = Tr ρ O(t) and a single draw deviates only by O(2^{−n_r/2}) (15 bath spins:
~0.006).  The result carries the standard error over draws.

Static Ising models (only Z and ZZ terms, any geometry) from product states, pure or mixed, are
solved in closed form at any N by :mod:`ctwa_hpc.exact.ising`; :func:`evolve` dispatches there
automatically and :func:`available` tells whether any exact reference exists for a model.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import expm_multiply

from . import ising as exact_ising
from ..model.pauli import popcount, string_action
from ..model.states import product_vector
from ..method.sampling import sample_generator

MAX_SITES = 20


def sector_states(n_sites, n_down=None):
    """Sorted basis indices: all 2**N, or those with ``n_down`` bits set."""
    if n_down is None:
        return np.arange(1 << n_sites, dtype=np.int64)
    out = np.array([sum(1 << k for k in c) for c in combinations(range(n_sites), n_down)],
                   dtype=np.int64)
    return np.sort(out)


class Basis:
    """A list of basis states with a lookup; ``full`` when it is the whole space."""

    def __init__(self, n_sites, n_down=None):
        self.n_sites = n_sites
        self.states = sector_states(n_sites, n_down)
        self.full = n_down is None
        self.n_down = n_down

    def __len__(self):
        return len(self.states)

    def lookup(self, b):
        """Index of each basis state b in the list (-1 when outside the sector)."""
        if self.full:
            return b
        idx = np.searchsorted(self.states, b)
        idx = np.minimum(idx, len(self.states) - 1)
        return np.where(self.states[idx] == b, idx, -1)

    def string_matrix_parts(self, ops):
        """(rows, cols, vals) of a global Pauli string: <b|P|b^m> = d[b]."""
        mask, d = string_action(ops, self.n_sites, self.states)
        src = self.lookup(self.states ^ mask)
        keep = src >= 0
        return np.flatnonzero(keep), src[keep], d[keep]

    def expectation(self, ops, psi):
        """<ψ|P|ψ> for a global Pauli string (terms leaving the sector contribute 0)."""
        rows, cols, vals = self.string_matrix_parts(ops)
        return float(np.real(np.sum(psi[rows].conj() * vals * psi[cols])))


def hamiltonian_matrices(hamiltonian, basis):
    """Sparse static part and one sparse matrix per time function: H(t) = H0 + Σ f_g(t) H_g."""
    tfuncs = hamiltonian.time_functions()
    parts = [[] for _ in range(len(tfuncs) + 1)]
    index = {id(f): g + 1 for g, f in enumerate(tfuncs)}
    for t in hamiltonian.terms:
        r, c, v = basis.string_matrix_parts(t.ops)
        parts[index[id(t.tfunc)] if t.tfunc else 0].append((r, c, t.coef * v))
    n = len(basis)
    mats = []
    for p in parts:
        if p:
            r, c, v = (np.concatenate(x) for x in zip(*p))
            m = sp.csr_matrix((v, (r, c)), shape=(n, n))
        else:
            m = sp.csr_matrix((n, n), dtype=complex)
        mats.append(m)
    if not basis.full:  # sector must be closed under H
        for m in mats:
            if abs(m - m.getH()).max() > 1e-10 if m.nnz else False:
                raise RuntimeError("Hamiltonian is not Hermitian in the chosen sector")
    return mats[0], mats[1:], tfuncs


def choose_basis(hamiltonian, theta, phi):
    """Sz sector when H conserves Sz and the state is a ±z product state, else full space."""
    n = hamiltonian.n_sites
    if n > MAX_SITES:
        raise ValueError(f"model.n_sites: exact dynamics is limited to N ≤ {MAX_SITES} (got {n})")
    up = np.isclose(np.mod(theta, 2 * np.pi), 0.0)
    down = np.isclose(np.mod(theta, 2 * np.pi), np.pi)
    if np.all(up | down) and hamiltonian.conserves_sz():
        return Basis(n, int(np.count_nonzero(down)))
    return Basis(n)


def evolve_pure(hamiltonian, theta, phi, times, columns, vector=None):
    """Exact ⟨column⟩(t) for a pure product state (or a given full-space ``vector``).

    Returns an array (n_times, n_columns).
    """
    times = np.asarray(times, dtype=float)
    if times.ndim != 1 or np.any(times < 0) or np.any(np.diff(times) < 0):
        raise ValueError("time: output times must be non-negative and non-decreasing")
    if vector is None:
        basis = choose_basis(hamiltonian, theta, phi)
        full = product_vector(theta, phi)
    else:
        basis, full = Basis(hamiltonian.n_sites), vector
    psi = full[basis.states].astype(complex)
    H0, Hg, tfuncs = hamiltonian_matrices(hamiltonian, basis)
    # precompute observable sparse parts once
    col_parts = [[(coef, basis.string_matrix_parts(ops)) for coef, ops in col] for col in columns]

    def measure(v):
        out = np.empty(len(col_parts))
        for k, terms in enumerate(col_parts):
            out[k] = sum(coef * np.real(np.sum(v[r].conj() * d * v[c]))
                         for coef, (r, c, d) in terms)
        return out

    res = np.empty((len(times), len(columns)))
    if not tfuncs:
        t_prev = 0.0
        for i, t in enumerate(times):
            if t > t_prev:
                psi = expm_multiply(-1j * (t - t_prev) * H0, psi)
                t_prev = t
            res[i] = measure(psi)
        return res

    def rhs(t, y):
        v = y[:len(psi)] + 1j * y[len(psi):]
        h = H0 @ v
        for f, m in zip(tfuncs, Hg):
            h = h + float(f(t)) * (m @ v)
        dv = -1j * h
        return np.concatenate([dv.real, dv.imag])

    if times[-1] == 0.0:
        res[:] = measure(psi)
        return res
    y0 = np.concatenate([psi.real, psi.imag])
    # start-up cost: scipy.integrate adds ~0.45 s to every process; only time-dependent
    # exact runs need it
    from scipy.integrate import solve_ivp
    sol = solve_ivp(rhs, (0.0, float(times[-1])), y0, method="DOP853", t_eval=times,
                    rtol=1e-10, atol=1e-12)
    if not sol.success:
        raise RuntimeError(f"exact time-dependent integration failed: {sol.message}")
    for i in range(len(times)):
        v = sol.y[:len(psi), i] + 1j * sol.y[len(psi):, i]
        res[i] = measure(v)
    return res


EVOLVE_METHODS = ("auto", "ed", "ising")


def _ising_reason(hamiltonian, state, columns):
    """(IsingModel, "") when the closed form applies to (H, state, columns), else (None, why)."""
    if state.n_sites != hamiltonian.n_sites:
        raise ValueError(f"state: the state has {state.n_sites} sites but the model has "
                         f"{hamiltonian.n_sites}")
    model, why = exact_ising.detect(hamiltonian)
    if model is None:
        return None, f"the model is not an Ising model ({why})"
    for col in columns or ():
        for _, ops in col:
            nflip = sum(lab in ("X", "Y") for _, lab in ops)
            if nflip > exact_ising.MAX_FLIP_SITES:
                text = " ".join(f"{lab}{s}" for s, lab in ops)
                return None, (f"the observable {text!r} has {nflip} X/Y factors (closed form: "
                              f"at most {exact_ising.MAX_FLIP_SITES})")
    return model, ""


def available(hamiltonian, state, columns=None, kick=None):
    """Whether an exact reference exists: ``(True, how)`` or ``(False, reason)``.

    True for N ≤ :data:`MAX_SITES` (exact diagonalization; mixed states by typicality), and for
    a static Ising model (Z and ZZ terms only) from any product state at any N (closed form,
    :mod:`ctwa_hpc.exact.ising`).  ``columns`` (optional, observable columns) are checked
    against the closed form's limit on X/Y factors per string; with a two-time ``kick``
    (:func:`two_time`, exact diagonalization only) N must be ≤ :data:`MAX_SITES`.
    """
    n = hamiltonian.n_sites
    model, why = _ising_reason(hamiltonian, state, columns)
    if kick is not None and n > MAX_SITES:
        return False, (f"no exact reference: N = {n} > {MAX_SITES} and two-time correlators "
                       "(observables.kick) need exact diagonalization")
    if model is not None:
        return True, f"closed-form Ising solution (N = {n})"
    if n <= MAX_SITES:
        return True, f"exact diagonalization (N = {n} <= {MAX_SITES})"
    return False, _no_reference(n, why)


def _no_reference(n, why):
    return f"no exact reference: N = {n} > {MAX_SITES} and {why}"


def evolve(hamiltonian, state, times, columns, seed=0, realization=0, draws=1, method="auto"):
    """Exact dynamics for a pure or mixed (random-site) product state.

    ``method``: ``"auto"`` (closed form for static Ising models at any N, else exact
    diagonalization for N ≤ :data:`MAX_SITES`), ``"ed"`` or ``"ising"`` to force one.
    Returns (mean (n_t, K), stderr (n_t, K) or None for a pure state); the closed form is
    exact also for mixed states, whose stderr is then zero.
    """
    if method not in EVOLVE_METHODS:
        raise ValueError(f"exact.method: expected one of {list(EVOLVE_METHODS)}, got {method!r}")
    if method != "ed":
        model, why = _ising_reason(hamiltonian, state, columns)
        if model is not None:
            mean = exact_ising.evolve(model, state.theta, state.phi, times, columns,
                                      random=state.random)
            return mean, (None if state.is_pure else np.zeros_like(mean))
        if method == "ising":
            raise ValueError(f"exact.method: the closed form does not apply: {why}")
        if hamiltonian.n_sites > MAX_SITES:
            raise ValueError("model.n_sites: " + _no_reference(hamiltonian.n_sites, why))
    if state.is_pure:
        return evolve_pure(hamiltonian, state.theta, state.phi, times, columns), None
    vals = []
    for s in range(draws):
        vec = typical_vector(state, sample_generator(seed, realization, s))
        vals.append(evolve_pure(hamiltonian, None, None, times, columns, vector=vec))
    vals = np.array(vals)
    err = vals.std(axis=0, ddof=1) / np.sqrt(draws) if draws > 1 else np.zeros(vals.shape[1:])
    return vals.mean(axis=0), err


__all__ = ["Basis", "available", "choose_basis", "evolve", "evolve_pure",
           "hamiltonian_matrices", "popcount", "EVOLVE_METHODS", "MAX_SITES"]


def typical_vector(state, rng):
    """⊗_fixed |n_i> ⊗ |g> in the full space (bit i = site i), with |g> a normalized random
    state over the random sites' configurations, E[|g><g|] = I/2^{n_r}."""
    n = state.n_sites
    b = np.arange(1 << n, dtype=np.int64)
    amp = np.ones(1 << n, dtype=complex)
    rindex = np.zeros(1 << n, dtype=np.int64)
    k = 0
    for i in range(n):
        bit = (b >> i) & 1
        if state.random[i]:
            rindex |= bit << k
            k += 1
        else:
            th, ph = state.theta[i], state.phi[i]
            amp *= np.where(bit == 0, np.cos(th / 2), np.exp(1j * ph) * np.sin(th / 2))
    g = rng.standard_normal(1 << k) + 1j * rng.standard_normal(1 << k)
    g /= np.linalg.norm(g)   # a normalized typical state: bias O(2^{-n_r}), noise O(2^{-n_r/2})
    return amp * g[rindex]


def two_time(hamiltonian, theta, phi, times, columns, kick_ops):
    """Exact ⟨{O(0), Q(t)}⟩ and i⟨[O(0), Q(t)]⟩ for a pure product state.

    With ψ(t) = U ψ and φ(t) = U O ψ, z = ⟨ψ|O Q(t)|ψ⟩ = ⟨φ(t)|Q|ψ(t)⟩:
    anticommutator = 2 Re z, response = i⟨[O, Q(t)]⟩ = −2 Im z.  Returns two (n_t, K) arrays.
    """
    if hamiltonian.time_dependent:
        raise ValueError("two-time correlators: time-dependent Hamiltonians are not supported")
    mask, _ = string_action(kick_ops, hamiltonian.n_sites)
    basis = choose_basis(hamiltonian, theta, phi) if mask == 0 else Basis(hamiltonian.n_sites)
    psi = product_vector(theta, phi)[basis.states].astype(complex)
    r, c, d = basis.string_matrix_parts(kick_ops)
    phi_v = np.zeros_like(psi)
    np.add.at(phi_v, r, d * psi[c])
    H0, _, _ = hamiltonian_matrices(hamiltonian, basis)
    parts = [[(coef, basis.string_matrix_parts(ops)) for coef, ops in col] for col in columns]
    anti = np.empty((len(times), len(columns)))
    resp = np.empty_like(anti)
    t_prev = 0.0
    for i, t in enumerate(times):
        if t > t_prev:
            psi = expm_multiply(-1j * (t - t_prev) * H0, psi)
            phi_v = expm_multiply(-1j * (t - t_prev) * H0, phi_v)
            t_prev = t
        for k, terms in enumerate(parts):
            z = sum(coef * np.sum(phi_v[rr].conj() * dd * psi[cc]) for coef, (rr, cc, dd) in terms)
            anti[i, k], resp[i, k] = 2 * z.real, -2 * z.imag
    return anti, resp
