r"""NumPy reference dynamics: fixed-step RK4 for all CTWA flavours (the twin of the kernels).

R-vector Gross–Pitaevskii equations (eq. (19) for R = 1; eq. (61) for the reduced operator
CTWA with R = 2, weights ±1): for every cluster c and vector r,

.. math::  i\,\partial_t ψ_{c,r} = \Big[H_c(t) + \sum_{k:\,a_k\in c} J_k f_k(t)\,(B_k)_W\,A_k
           + \sum_{k:\,b_k\in c} J_k f_k(t)\,(A_k)_W\,B_k\Big]ψ_{c,r},
   \qquad (O)_W = \sum_r w_r\,ψ_r^†Oψ_r .

These are Hamilton's equations i ∂_t b = ∂H_W/∂b* of H_W = Σ_c (H_c)_W + Σ_k J_k f_k (A_k)_W (B_k)_W;
they conserve every norm |ψ_{c,r}|², the Gram matrix of the R vectors of a cluster (hence λ± of
eq. (57)) and, for static H, H_W.  Operator CTWA (eq. (10)) is integrated in density-matrix form
∂_t ρ_c = −i[H_eff,c, ρ_c] by :class:`DensityPropagator` (D² variables per cluster).

Layout: ``psi[A, R, S]`` complex128, samples innermost (the layout of the Cython kernels).
The sparse matrices below are built from the same :class:`~ctwa_hpc.method.clusters.EntryTable`
arrays that the kernels read.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from .clusters import EntryTable


class NonFiniteError(FloatingPointError):
    """A trajectory became non-finite (dt too large?); carries the sample and the time."""

    def __init__(self, sample, time):
        self.sample, self.time = int(sample), float(time)
        super().__init__(f"trajectory of sample {self.sample} became non-finite at t = "
                         f"{self.time:g}; reduce time.dt")


def _applied_stack(table, offsets, n_amp):
    """CSR G with (G ψ)[doff[e] + b] = d_e[b] ψ[o_c + (b ^ m_e)], and the row → amplitude map."""
    rows, cols, vals, pidx = [], [], [], []
    for e in range(len(table.mask)):
        o = int(offsets[table.cluster[e]])
        d = table.diag[table.doff[e]:table.doff[e + 1]]
        b = np.arange(len(d))
        rows.append(table.doff[e] + b)
        cols.append(o + (b ^ table.mask[e]))
        vals.append(d)
        pidx.append(o + b)
    n_rows = int(table.doff[-1])
    if not rows:
        return sp.csr_matrix((0, n_amp), dtype=complex), np.zeros(0, np.int64)
    G = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n_rows, n_amp))
    return G, np.concatenate(pidx)


def _entry_sum(values, doff):
    """Sum rows of ``values`` (rows, S) over each entry's slice doff[e]:doff[e+1]."""
    if len(doff) == 1:
        return np.zeros((0,) + values.shape[1:])
    return np.add.reduceat(values, doff[:-1], axis=0)


class NumpyPropagator:
    """RHS and RK4 of the R-vector equations with sparse matrices built once per problem."""

    def __init__(self, problem, plan, weights):
        self.problem, self.plan = problem, plan
        self.weights = np.asarray(weights, dtype=float)
        A = problem.n_amp
        self.A = A
        loc = problem.local
        G_loc, _ = _applied_stack(loc, problem.offsets, A)
        # H(t) = H_static + Σ_g f_g(t) H_g ; each local entry contributes its rows of G_loc
        pidx_loc = np.concatenate([int(problem.offsets[loc.cluster[e]]) + np.arange(
            loc.doff[e + 1] - loc.doff[e]) for e in range(len(loc.mask))]) if len(loc.mask) \
            else np.zeros(0, np.int64)
        G_loc = G_loc.tocoo()
        rows_amp = pidx_loc[G_loc.row]
        ent_of_row = np.repeat(np.arange(len(loc.mask)), np.diff(loc.doff))
        tf_of_nz = problem.local_tf[ent_of_row[G_loc.row]] if len(loc.mask) else np.zeros(0, int)
        self.n_tf = len(problem.tfuncs)
        self.H = []
        for g in range(-1, self.n_tf):
            sel = tf_of_nz == g
            self.H.append(sp.csr_matrix((G_loc.data[sel], (rows_amp[sel], G_loc.col[sel])),
                                        shape=(A, A)))
        # coupling operators
        self.G_ops, self.pidx_ops = _applied_stack(problem.ops, problem.offsets, A)
        self.ops_doff = problem.ops.doff
        n_ops = len(problem.ops.mask)
        self.row_entry = np.repeat(np.arange(n_ops), np.diff(problem.ops.doff))
        self.scatter = sp.csr_matrix((np.ones(len(self.pidx_ops)),
                                      (self.pidx_ops, np.arange(len(self.pidx_ops)))),
                                     shape=(A, len(self.pidx_ops)))
        self.F = []
        for g in range(-1, self.n_tf):
            sel = problem.cp_tf == g
            a, b, J = problem.cp_a[sel], problem.cp_b[sel], problem.cp_J[sel]
            self.F.append(sp.csr_matrix((np.concatenate([J, J]),
                                         (np.concatenate([a, b]), np.concatenate([b, a]))),
                                        shape=(n_ops, n_ops)))
        # observables
        self.G_obs, self.pidx_obs = _applied_stack(plan.ops, problem.offsets, A)

    # -- pieces -------------------------------------------------------------------------------
    def _weighted(self, psi, G, pidx, doff):
        """Σ_r w_r Re ψ_r† O_e ψ_r for every entry e of a table: (n_entries, S)."""
        A, R, S = psi.shape
        Y = (G @ psi.reshape(A, R * S)).reshape(-1, R, S)
        v = (psi[pidx].conj() * Y).real
        v = np.einsum("r,nrs->ns", self.weights, v)
        return _entry_sum(v, doff), Y

    def expectations(self, psi):
        """Weyl symbols of the observable entries, (n_obs_entries, S)."""
        return self._weighted(psi, self.G_obs, self.pidx_obs, self.plan.ops.doff)[0]

    def columns(self, psi):
        return self.plan.columns_from_expectations(self.expectations(psi))

    def apply_local(self, flat, fvals):
        """H_loc(t) applied to amplitudes (A, ·): Σ_c H_c(t), time functions at ``fvals``."""
        out = self.H[0] @ flat
        for g in range(self.n_tf):
            out += fvals[g] * (self.H[g + 1] @ flat)
        return out

    def field(self, E, fvals):
        """field_o = Σ_k J_k f_k(t) (partner)_W for coupling-operator Weyl symbols E (O, S)."""
        out = self.F[0] @ E
        for g in range(self.n_tf):
            out += fvals[g] * (self.F[g + 1] @ E)
        return out

    def rhs(self, psi, fvals):
        """∂_t ψ for time-function values ``fvals`` (G,) at the stage time."""
        A, R, S = psi.shape
        out = self.apply_local(psi.reshape(A, R * S), fvals)
        if len(self.row_entry):
            E, Y = self._weighted(psi, self.G_ops, self.pidx_ops, self.ops_doff)
            field = self.field(E, fvals)
            out += self.scatter @ (field[self.row_entry][:, None, :] * Y).reshape(-1, R * S)
        return (-1j * out).reshape(A, R, S)

    def energy(self, psi, fvals=None):
        """H_W per sample (static part of the time functions evaluated at ``fvals``)."""
        fvals = np.ones(self.n_tf) if fvals is None else fvals
        A, R, S = psi.shape
        hpsi = self.apply_local(psi.reshape(A, R * S), fvals)
        e = np.einsum("r,ars->s", self.weights, (psi.conj() * hpsi.reshape(A, R, S)).real)
        if len(self.row_entry):
            E, _ = self._weighted(psi, self.G_ops, self.pidx_ops, self.ops_doff)
            p = self.problem
            f = np.concatenate([[1.0], fvals])[p.cp_tf + 1]
            e += np.einsum("k,ks,ks->s", p.cp_J * f, E[p.cp_a], E[p.cp_b])
        return e


class DensityPropagator:
    """Operator CTWA, eq. (10), in density-matrix form ∂_t ρ_c = −i[H_eff,c, ρ_c] (D² per cluster).

    The state is a list of per-cluster arrays ρ_c[S, D, D] (the D×D matrix
    y = Σ_{nm} y_{nm}|n><m| of section V D, which carries all D² operator variables
    x_α = Tr(ρ_c X_α)); the Weyl symbol of a cluster operator O is
    Tr(ρ_c O) = Σ_b d[b] ρ_c[b ^ m, b].  Reference path only: O(D³) per cluster and sample.
    """

    def __init__(self, problem, plan):
        self.problem, self.plan = problem, plan
        C = problem.partition.n_clusters
        self.n_tf = len(problem.tfuncs)
        dims = problem.dims
        loc = problem.local
        self.H = np.zeros((self.n_tf + 1, C), dtype=object)
        for g in range(self.n_tf + 1):
            for c in range(C):
                self.H[g, c] = np.zeros((dims[c], dims[c]), complex)
        for e in range(len(loc.mask)):
            self.H[problem.local_tf[e] + 1, loc.cluster[e]] += loc.dense(e)
        self.ops_dense = [problem.ops.dense(e) for e in range(len(problem.ops.mask))]
        self.F = np.zeros((self.n_tf + 1, len(self.ops_dense), len(self.ops_dense)))
        for a, b, J, g in zip(problem.cp_a, problem.cp_b, problem.cp_J, problem.cp_tf):
            self.F[g + 1, a, b] += J
            self.F[g + 1, b, a] += J

    @staticmethod
    def from_vectors(problem, psi, weights):
        """ρ_c = Σ_r w_r |ψ_r><ψ_r| per cluster, as arrays (S, D, D)."""
        offs = problem.offsets
        return [np.einsum("r,ars,brs->sab", weights, psi[offs[c]:offs[c + 1]],
                          psi[offs[c]:offs[c + 1]].conj())
                for c in range(problem.partition.n_clusters)]

    @staticmethod
    def _expect(table, rhos):
        out = np.empty((len(table.mask), rhos[0].shape[0]))
        for e in range(len(table.mask)):
            d = table.diag[table.doff[e]:table.doff[e + 1]]
            b = np.arange(len(d))
            out[e] = (rhos[table.cluster[e]][:, b ^ table.mask[e], b] @ d).real
        return out

    def columns(self, rhos):
        return self.plan.columns_from_expectations(self._expect(self.plan.ops, rhos))

    def rhs(self, rhos, fvals):
        f = np.concatenate([[1.0], np.asarray(fvals, float)[:self.n_tf]])
        if self.ops_dense:
            field = np.tensordot(f, self.F, axes=1) @ self._expect(self.problem.ops, rhos)
        out = []
        for c, rho in enumerate(rhos):
            heff = np.broadcast_to(sum(f[g] * self.H[g, c] for g in range(self.n_tf + 1)),
                                   rho.shape)
            for e in np.flatnonzero(self.problem.ops.cluster == c):
                heff = heff + field[e][:, None, None] * self.ops_dense[e][None]
            hr = np.matmul(heff, rho)
            out.append(-1j * (hr - hr.conj().transpose(0, 2, 1)))
        return out


def _axpy(y, a, x):
    if isinstance(y, (list, tuple)):
        return type(y)(yi + a * xi for yi, xi in zip(y, x))
    return y + a * x


def _finite_check(cols, sample_ids, t):
    bad = ~np.all(np.isfinite(cols), axis=0)
    if np.any(bad):
        raise NonFiniteError(sample_ids[np.flatnonzero(bad)[0]], t)


def rk4(prop, y, t0, dt, n_steps, out_every, tf_tab, sample_ids=None):
    """Integrate with fixed-step RK4; return columns at steps 0, out_every, ... (n_out, K, S).

    ``tf_tab[g, j]`` holds f_g(t0 + j·dt/2) for j = 0 .. 2·n_steps (stage times).
    """
    if n_steps % out_every:
        raise ValueError("time.output_dt must be a multiple of time.dt")
    first = prop.columns(y)
    S = first.shape[1]
    sample_ids = np.arange(S) if sample_ids is None else sample_ids
    out = np.empty((n_steps // out_every + 1,) + first.shape)
    out[0] = first
    _finite_check(first, sample_ids, t0)
    for n in range(n_steps):
        f0, fh, f1 = tf_tab[:, 2 * n], tf_tab[:, 2 * n + 1], tf_tab[:, 2 * n + 2]
        k1 = prop.rhs(y, f0)
        k2 = prop.rhs(_axpy(y, 0.5 * dt, k1), fh)
        k3 = prop.rhs(_axpy(y, 0.5 * dt, k2), fh)
        k4 = prop.rhs(_axpy(y, dt, k3), f1)
        y = _axpy(y, dt / 6.0, k1)
        y = _axpy(y, dt / 3.0, k2)
        y = _axpy(y, dt / 3.0, k3)
        y = _axpy(y, dt / 6.0, k4)
        if (n + 1) % out_every == 0:
            cols = prop.columns(y)
            _finite_check(cols, sample_ids, t0 + (n + 1) * dt)
            out[(n + 1) // out_every] = cols
    return out, y


class TangentPropagator:
    """Trajectory plus its tangent (Jacobian–vector product), for linear response.

    The response of Q to an infinitesimal kick ψ(0) → e^{−iεO}ψ(0) at t = 0 is

    .. math::  \\frac{d Q_W(t)}{dε} = i\\langle[\\hat O(0), \\hat Q(t)]\\rangle ,

    the classical form of eqs. (12) and (22)–(23) (the Poisson bracket with O_W(0)); it is exact
    for one cluster.  The tangent δψ obeys the linearized R-vector equations

    .. math::  i\\,∂_t δψ = H_{eff}\\,δψ + \\sum_o δ\\text{field}_o\\, O_o ψ,\\qquad
               δ(O)_W = \\sum_r w_r\\, 2\\,\\mathrm{Re}\\,ψ_r^† O\\, δψ_r .

    ``columns`` returns the observable columns followed by their tangents (2K rows), so the
    generic :func:`rk4` collects both.
    """

    def __init__(self, base):
        self.base = base
        self.plan = base.plan

    def _dweighted(self, psi, dpsi, G, pidx, doff):
        A, R, S = psi.shape
        Yd = (G @ dpsi.reshape(A, R * S)).reshape(-1, R, S)
        v = 2.0 * (psi[pidx].conj() * Yd).real
        return _entry_sum(np.einsum("r,nrs->ns", self.base.weights, v), doff), Yd

    def columns(self, y):
        psi, dpsi = y
        b = self.base
        E = b.expectations(psi)
        dE, _ = self._dweighted(psi, dpsi, b.G_obs, b.pidx_obs, self.plan.ops.doff)
        return np.concatenate([self.plan.columns_from_expectations(E),
                               tangent_columns(self.plan, E, dE)])

    def rhs(self, y, fvals):
        psi, dpsi = y
        b = self.base
        A, R, S = psi.shape
        out = b.apply_local(dpsi.reshape(A, R * S), fvals)
        if len(b.row_entry):
            E, Y = b._weighted(psi, b.G_ops, b.pidx_ops, b.ops_doff)
            dE, Yd = self._dweighted(psi, dpsi, b.G_ops, b.pidx_ops, b.ops_doff)
            field, dfield = b.field(E, fvals), b.field(dE, fvals)
            z = field[b.row_entry][:, None, :] * Yd + dfield[b.row_entry][:, None, :] * Y
            out += b.scatter @ z.reshape(-1, R * S)
        return (b.rhs(psi, fvals), (-1j * out).reshape(A, R, S))


def tangent_columns(plan, E, dE):
    """δ(column) = Σ_t c_t Σ_f δE_f Π_{g≠f} E_g for every column (K, S)."""
    out = np.zeros((len(plan.term_coef), E.shape[1]))
    for t in range(len(plan.term_coef)):
        facs = plan.fac[plan.term_ptr[t]:plan.term_ptr[t + 1]]
        for i, f in enumerate(facs):
            p = dE[f].copy()
            for j, g in enumerate(facs):
                if j != i:
                    p *= E[g]
            out[t] += p
    out *= plan.term_coef[:, None]
    return np.add.reduceat(out, plan.col_ptr[:-1], axis=0)


def kick(problem, kick_ops, psi, weights):
    """Tangent δψ(0) of the kick e^{−iεO}: the Hamiltonian flow of O_W = Π_c (O|_c)_W.

    For a string on one cluster δψ_c = −i O_c ψ_c; for a string on several clusters each
    factor is multiplied by the Weyl symbols of the others.  Also returns O_W per sample.
    """
    part = problem.partition
    table = EntryTable(part)
    ents = [table.add_string(c, bl) for c, bl in part.split_string(kick_ops).items()]
    table.freeze()
    G, pidx = _applied_stack(table, problem.offsets, problem.n_amp)
    A, R, S = psi.shape
    Y = (G @ psi.reshape(A, R * S)).reshape(-1, R, S)
    E = _entry_sum(np.einsum("r,nrs->ns", weights, (psi[pidx].conj() * Y).real), table.doff)
    dpsi = np.zeros_like(psi)
    for i, e in enumerate(ents):
        other = np.prod([E[j] for j in range(len(ents)) if j != i], axis=0) \
            if len(ents) > 1 else np.ones(S)
        rows = slice(table.doff[e], table.doff[e + 1])
        dpsi[pidx[rows]] += -1j * other[None, None, :] * Y[rows]
    return dpsi, np.prod(E, axis=0)
