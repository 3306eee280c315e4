r"""The benchmark cases of ``ctwa-hpc bench``, their inputs, timing sizes and flop counts.

Cases (SB method, R = 1, Néel state, dt = 0.01, observables read every 10 steps: ``sz``,
``mz_staggered``, ``czz`` (nearest-neighbour pairs) and, for the short-range cases,
``energy``):

=====================  ====================================================================
``heis64_c2``          disordered Heisenberg eq. (41), N = 64, h_z = 1, contiguous clusters of 2
``heis64_c4``          the same with clusters of 4
``heis64_c6``          clusters of 6 (D = 64; 64 = 10·6 + 4, the last cluster has 4 sites)
``ising20_c4``         chaotic Ising chain eq. (39), N = 20, clusters of 4
``heis1024_c4``        Heisenberg N = 1024, clusters of 4 (per-site cost must match heis64_c4)
``heis64_c4_tangent``  heis64_c4 with the tangent δψ integrated alongside (linear response,
                       :func:`~ctwa_hpc.method.kernels.integrate_tangent`; kick σz on site 0)
``lr{N}_c{n}``         all-to-all power-law XXZ chain, J_ij = 1/|i − j|^α (α = 1),
                       H = Σ_{i<j} J_ij (σxσx + σyσy + Δ σzσz), Δ = 0.5, open chain,
                       N = 64, 256, 1024, contiguous clusters of n = 1, 2, 4
``dip16x16_c2``        16 × 16 square lattice (spacing 1, open), dipolar XXZ,
                       J_ij = (1 − 3 cos²θ_ij)/r_ij³ with the dipole axis in-plane along x
                       (θ: angle between r_ij and the axis), Δ = 0.5, horizontal pairs
``*_single``           the case in single precision (``precision="single"``)
=====================  ====================================================================

The long-range Hamiltonians are built with
:meth:`~ctwa_hpc.model.hamiltonian.Hamiltonian.from_couplings` (the couplings-file model), the
mean fields take the dense path (``kernels.DENSE_THRESHOLD``; the density is reported).

Flop count (per sample, as the kernel executes it; an FMA counts 2, nothing counts twice)
---------------------------------------------------------------------------------------
Per RK4 stage:

* sparse mean fields: 4 per coupling outside the dense blocks (field_a += J f E_b and
  field_b += J f E_a, one FMA each);
* dense mean fields: 2 n² per matrix M_g of a dense block of n operators (F = M E; padding
  rows of the panels not counted);
* right-hand side, for every vector r and every term t of the row programs (one term per
  amplitude b and distinct flip mask m with a non-zero coefficient): 2 per item (building
  c = h + Σ coef · field) plus 4 (real or imaginary c: ψ·c is two FMAs) or 8 (complex c);
* RK4 update: 28 per complex amplitude and vector and *step* (4, 12, 4 and 8 in the four
  stages: the regrouped update of ``gp_core.rk_update``);
* Weyl symbols of the coupling operators, per Hermitian pair (b, b^m) of a mask group:
  6 (R = 1) or 10 per vector (R > 1, weighted) for conj(ψ_b) ψ_{b^m}, 3 or 5 on the
  diagonal (|ψ_b|²), plus 2 per (operator, pair).

Per output step (amortized over ``out_every``): the Weyl symbols of the observable entries
(same rule) and, per column term, one multiply per factor plus one add.

With the tangent (``flop_count(..., tangent=True)``), in addition: the tangent fields (the
same count again); per vector and term the product c·δψ (4 or 8) and, for terms with
coupling items, δc = Σ coef · δfield (2 per item) and δc·ψ (4 or 8); the RK4 update of δψ
(28); the tangent Weyl symbols, per pair 14 (R = 1) or 18 per vector, 4 or 6 on the
diagonal, plus 2 per (operator, pair); per output column term 3 per factor plus one add.
Not counted: sign flips, copies in and out, finite checks and the per-stage update of
time-dependent coefficients.  The Hermitian pairing, the merging of masks and the dropping of
zero coefficients make the count *smaller* than that of a straightforward implementation.

Counted as matrix products (``matrix_product_flops``): 8 n² per sample-step for every dense
matrix of n operators (4 stages × 2 n²).  For XXZ couplings among all N sites the σx, σy and
σz operators form three blocks of n = N, so 24 N² flop per sample-step, whatever the
clusters (couplings inside a cluster are zeros of M and still counted); general 3 × 3
coupling tensors (all of J^{ab}) form one block of 3N operators: 72 N²; in general 8 N² per
non-zero N × N block J^{ab} of the 3N × 3N coupling matrix (J^{xy} ≠ 0 gives two, [x, y] and
[y, x]).  Everything else the kernel does (local terms, Weyl symbols, RK4 update,
observables) is not in this count.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..method import clusters, observables, sampling
from ..method.dynamics import kick as _kick
from ..model import models, states
from ..model.hamiltonian import Hamiltonian

OBSERVABLES = ("sz", "mz_staggered", "czz", "energy")
LR_OBSERVABLES = ("sz", "mz_staggered", "czz")   # energy: a column of ~N² terms, skipped
DT = 0.01
OUT_EVERY = 10
LR_ALPHA, LR_DELTA = 1.0, 0.5
DIP_L, DIP_AXIS, DIP_DELTA = 16, (1.0, 0.0, 0.0), 0.5
LONG_RANGE = ("powerlaw_xxz", "dipolar_xxz")


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    n_sites: int
    cluster_size: int
    tangent: bool = False
    precision: str = "double"

    @property
    def long_range(self):
        return self.model in LONG_RANGE


CASES = (
    Case("heis64_c2", "heisenberg", 64, 2),
    Case("heis64_c4", "heisenberg", 64, 4),
    Case("heis64_c6", "heisenberg", 64, 6),
    Case("ising20_c4", "ising_chaotic", 20, 4),
    Case("heis1024_c4", "heisenberg", 1024, 4),
    Case("heis64_c4_tangent", "heisenberg", 64, 4, tangent=True),
    Case("heis64_c4_single", "heisenberg", 64, 4, precision="single"),
    *(Case(f"lr{n}_c{c}", "powerlaw_xxz", n, c) for n in (64, 256, 1024) for c in (1, 2, 4)),
    Case("lr256_c2_single", "powerlaw_xxz", 256, 2, precision="single"),
    Case("lr1024_c2_single", "powerlaw_xxz", 1024, 2, precision="single"),
    Case("dip16x16_c2", "dipolar_xxz", DIP_L * DIP_L, 2),
)
QUICK_CASES = ("heis64_c4", "heis64_c4_single", "heis1024_c4", "lr256_c2", "lr256_c2_single",
               "lr1024_c2", "dip16x16_c2")
KICK = ((0, "Z"),)   # tangent cases: δψ(0) of the kick e^{-iεσz_0}
REFERENCE_CASE = "heis64_c4"


def get_case(name):
    """The case called ``name``."""
    for c in CASES:
        if c.name == name:
            return c
    raise ValueError(f"bench: unknown case {name!r} (known: {[c.name for c in CASES]})")


# ------------------------------------------------------------------------------------------
# long-range models (couplings as data)
# ------------------------------------------------------------------------------------------
def powerlaw_chain(N, alpha=LR_ALPHA, delta=LR_DELTA):
    """XXZ couplings {"xx", "yy", "zz"} of J_ij = 1/|i − j|^α on an open chain."""
    r = np.abs(np.subtract.outer(np.arange(N), np.arange(N))).astype(float)
    J = np.zeros((N, N))
    off = r > 0
    J[off] = r[off] ** -alpha
    return {"xx": J, "yy": J.copy(), "zz": delta * J}


def dipolar_square(L, axis=DIP_AXIS, delta=DIP_DELTA):
    """XXZ couplings of J_ij = (1 − 3 cos²θ_ij)/r³ on an L × L open square lattice (site
    i = y·L + x), θ_ij the angle between r_ij and the dipole axis."""
    y, x = np.divmod(np.arange(L * L), L)
    pos = np.stack([x, y, np.zeros_like(x)], axis=1).astype(float)
    d = pos[:, None, :] - pos[None, :, :]
    r = np.sqrt((d ** 2).sum(-1))
    ax = np.asarray(axis, float) / np.linalg.norm(axis)
    J = np.zeros_like(r)
    off = r > 0
    cos = (d @ ax)[off] / r[off]
    J[off] = (1.0 - 3.0 * cos ** 2) / r[off] ** 3
    return {"xx": J, "yy": J.copy(), "zz": delta * J}


def long_range_hamiltonian(model, N):
    """Hamiltonian of a long-range case from its coupling matrices."""
    J = powerlaw_chain(N) if model == "powerlaw_xxz" else dipolar_square(int(round(N ** 0.5)))
    if hasattr(Hamiltonian, "from_couplings"):
        return Hamiltonian.from_couplings(J, name=model)
    H = Hamiltonian(N, name=model)             # fallback: one term per pair (slow set-up)
    iu, ju = np.triu_indices(N, 1)
    for key, M in J.items():
        lab = key[0].upper()
        for i, j, c in zip(iu.tolist(), ju.tolist(), M[iu, ju].tolist()):
            H.add(c, [(i, lab), (j, lab)])
    return H


# ------------------------------------------------------------------------------------------
# flop counts
# ------------------------------------------------------------------------------------------
def _weyl_flops(ex, R, tangent=False):
    """Flops of one evaluation of the Weyl symbols of an expectation table (per sample);
    with ``tangent`` also of their tangents."""
    mask, npair = ex["g_mask"], ex["g_np"]
    n_items = np.diff(ex["g_it"])
    per_pair = np.where(mask == 0, 3 if R == 1 else 5, 6 if R == 1 else 10) * R
    flops = float(np.sum(npair * per_pair) + 2 * np.sum(npair * n_items))
    if tangent:
        per_pair = np.where(mask == 0, 4 if R == 1 else 6, 14 if R == 1 else 18) * R
        flops += float(np.sum(npair * per_pair) + 2 * np.sum(npair * n_items))
    return flops


def matrix_product_flops(tables, tangent=False):
    """Flops per sample-step of the dense mean fields, 4 stages × 2 n² per dense matrix
    (doubled with the tangent): the count "as matrix products" (module docstring)."""
    n = tables["dense"]["n"].astype(float)
    return float(8.0 * np.sum(n * n)) * (2 if tangent else 1)


def flop_count(tables, R, out_every, tangent=False):
    """Flops per sample and RK4 step of the compiled kernel (see the module docstring);
    ``tangent``: of the trajectory plus its tangent (``integrate_tangent``)."""
    rows = tables["rows"]
    n_items = np.diff(rows["t_it"])
    mac = np.where(rows["t_kind"] == 3, 8, 4)
    rhs = R * (2 * n_items.sum() + mac.sum())
    fields = 4 * len(tables["cp_J"])
    if tangent:
        rhs += R * (mac.sum() + np.sum((n_items > 0) * (2 * n_items + mac)))
        fields *= 2
    stage = fields + rhs + _weyl_flops(tables["dex"], R, tangent)
    step = 4 * stage + (2 if tangent else 1) * 28 * tables["A"] * R
    step += matrix_product_flops(tables, tangent)
    n_fac = np.diff(tables["term_ptr"])
    output = _weyl_flops(tables["oex"], R, tangent) + float(np.sum(n_fac + 1))
    if tangent:
        output += float(np.sum(3 * n_fac + 1))
    return float(step + output / out_every)


# ------------------------------------------------------------------------------------------
# inputs and sizes of a timing
# ------------------------------------------------------------------------------------------
_HAM = {}


def build_case(case, n_samples, seed=1):
    """(problem, plan, psi0, weights) of a benchmark case (tangent cases: see :func:`kick`)."""
    N = case.n_sites
    if case.model == "heisenberg":
        ham = models.heisenberg(N, hz=1.0, seed=seed)
    elif case.model == "ising_chaotic":
        ham = models.ising_chaotic(N)
    elif case.long_range:
        key = (case.model, N)
        if key not in _HAM:
            _HAM.clear()
            _HAM[key] = long_range_hamiltonian(case.model, N)
        ham = _HAM[key]
    else:  # pragma: no cover
        raise ValueError(case.model)
    part = clusters.Partition.contiguous(N, case.cluster_size)
    problem = clusters.compile_problem(ham, part)
    names = LR_OBSERVABLES if case.long_range else OBSERVABLES
    plan = observables.ObservableSet(N, names, hamiltonian=ham).compile(part)
    batch = sampling.draw_batch(problem, states.make_state("neel", N), "sb", seed, 0,
                                np.arange(n_samples))
    return problem, plan, batch.psi, batch.weights


def kick(problem, psi, weights):
    """δψ(0) of the tangent cases: the kick e^{-iεσz_0} (:func:`ctwa_hpc.method.dynamics.kick`)."""
    return _kick(problem, KICK, psi, weights)[0]


def timing_sizes(case):
    """(samples, steps) of the compiled-path timing and (samples, steps) of NumPy's.

    A timing covers ~5e6 site-steps (0.1 s at 20 ns per site-step), or for the long-range
    cases ~3e9 matrix-product flops (0.05 s at 60 GFLOP/s; N = 1024: 128 samples, 1 step,
    observables at every step): many short runs, of which the best counts, are more robust
    against other jobs than one long run.
    """
    N = case.n_sites
    if case.long_range:
        n_samples = 128 if N > 256 else 256
        steps = max(1, int(round(3e9 / (n_samples * 24.0 * N * N))))
        if steps > OUT_EVERY:
            steps = steps // OUT_EVERY * OUT_EVERY
        return n_samples, steps, 64, 1 if N > 256 else min(steps, OUT_EVERY)
    n_samples = 64 if N > 256 else 256
    steps = int(max(OUT_EVERY, 5e6 / (n_samples * N)) // OUT_EVERY * OUT_EVERY)
    return n_samples, steps, min(n_samples, 64), OUT_EVERY


def output_every(steps):
    """Output interval of a timing of ``steps`` steps."""
    return OUT_EVERY if steps % OUT_EVERY == 0 else steps
