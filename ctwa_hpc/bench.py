r"""``ctwa-hpc bench``: throughput of the RK4 kernels against the core's best dgemm rate.

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
                       :func:`~ctwa_hpc.kernels.integrate_tangent`; kick σz on site 0)
``lr{N}_c{n}``         all-to-all power-law XXZ chain, J_ij = 1/|i − j|^α (α = 1),
                       H = Σ_{i<j} J_ij (σxσx + σyσy + Δ σzσz), Δ = 0.5, open chain,
                       N = 64, 256, 1024, contiguous clusters of n = 1, 2, 4
``dip16x16_c2``        16 × 16 square lattice (spacing 1, open), dipolar XXZ,
                       J_ij = (1 − 3 cos²θ_ij)/r_ij³ with the dipole axis in-plane along x
                       (θ: angle between r_ij and the axis), Δ = 0.5, horizontal pairs
``*_single``           the case in single precision (``precision="single"``)
=====================  ====================================================================

The long-range Hamiltonians are built with
:meth:`~ctwa_hpc.hamiltonian.Hamiltonian.from_couplings` (the couplings-file model), the
mean fields take the dense path (``kernels.DENSE_THRESHOLD``; the density is reported).

Every rate is single-core: the kernel runs with one thread.  Each figure is the best of
several short repetitions, interleaved round robin over the cases so that all cases see the
same conditions (the node may be shared; slow cases get fewer repetitions).  Times are the
CPU time of the thread that runs the kernel (``time.thread_time``), so that a repetition
during which other jobs held the core is not counted as the kernel's; the wall-clock time of
the same repetition and their ratio (``cpu_share``) are reported too.  The BLAS reference is
timed the same way.  Cache and memory-bandwidth sharing with other jobs are *not* removed
by this: on a shared node the figures are noisy, and the ratios within one run are what
counts.

BLAS reference (:func:`ctwa_hpc.bench_scaling.blas_reference`)
--------------------------------------
dgemm (numpy matmul of two n × n float64 matrices, n = 1000 and 2000, best rate) runs in a
subprocess with one thread and with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` *removed*
from its environment, so OpenBLAS picks its best kernel for the CPU (SkylakeX = AVX-512 here);
the kernel it ran is reported (threadpoolctl).  The same measurement pinned to the AVX2
kernel (``OPENBLAS_CORETYPE`` as set in the environment, else ``Haswell``) is reported beside
it; every ratio is taken against the best of the two (``dgemm_gflops``).  sgemm (float32) is
reported for the single-precision cases.  The benchmark changes no environment of its own.

Reported per case: ``sample_steps_per_s`` (RK4 steps × samples per second), ``gflops``
(analytic flop count × rate), ``ratio_to_dgemm``, ``speedup_vs_numpy`` (the NumPy reference
:func:`~ctwa_hpc.kernels.numpy_propagator` timed on the same case with fewer steps and
normalized per sample-step), ``ns_per_site_step``, ``ns_per_cluster_step`` and
``ns_per_unit`` = ns per cluster-step divided by the mean of D_c × (distinct masks of c).
Long-range cases also report ``mm_flops_per_sample_step``, ``mm_ratio_to_dgemm`` (the count
"as matrix products" below, the figure of the targets) and ``dense_density``; single cases
``speedup_vs_double`` (their double twin timed in the same rounds), ``ratio_to_sgemm``.
A tangent case reports ``trajectory_sample_steps_per_s`` and ``cost_vs_trajectory``.

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

import argparse
import json
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import clusters, kernels, models, observables, sampling, states

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


def _case(name):
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
    from .hamiltonian import Hamiltonian
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
# cases
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
    """δψ(0) of the tangent cases: the kick e^{-iεσz_0} (:func:`ctwa_hpc.dynamics.kick`)."""
    from .dynamics import kick as _kick
    return _kick(problem, KICK, psi, weights)[0]


def _sizes(case):
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


def _every(steps):
    """Output interval of a timing of ``steps`` steps."""
    return OUT_EVERY if steps % OUT_EVERY == 0 else steps


class _Timed:
    """One case prepared for timing: ``once(backend, steps, samples)`` runs one integration."""

    def __init__(self, case):
        self.case = case
        self.n_samples, self.steps, self.np_samples, self.np_steps = _sizes(case)
        t0 = time.perf_counter()
        self.problem, self.plan, self.psi, self.weights = build_case(case, self.n_samples)
        kernels.compile_tables(self.problem, self.plan)
        self.setup_s = time.perf_counter() - t0
        self.dpsi = kick(self.problem, self.psi, self.weights) if case.tangent else None
        self.best = self.best_wall = np.inf     # CPU seconds of the best repetition, its wall
        self.best_traj = np.inf      # tangent cases: the same case without the tangent
        self.reps = 1

    def once(self, backend, steps, samples=None, tangent=None, precision=None, threads=1):
        """Time one integration (``tangent``: default the case's; False: trajectory only).

        Returns the wall-clock seconds; ``self.last_cpu`` holds the CPU seconds of the calling
        thread (the single-thread kernel runs in it), which exclude the time the thread waited
        for the core on a shared node."""
        tangent = self.case.tangent if tangent is None else tangent
        precision = precision or self.case.precision
        if backend == "numpy":
            precision = "double"
        cut = (lambda x: x) if samples is None else (
            lambda x: np.ascontiguousarray(x[:, :, :samples]))
        psi = cut(self.psi)
        tf = np.zeros((len(self.problem.tfuncs), 2 * steps + 1))
        every = _every(steps)
        kw = dict(backend=backend, threads=threads, precision=precision)
        c = time.thread_time()
        t = time.perf_counter()
        if tangent:
            self.last = kernels.integrate_tangent(self.problem, self.plan, psi, cut(self.dpsi),
                                                  self.weights, 0.0, DT, steps, every, tf, **kw)
        else:
            self.last = kernels.integrate(self.problem, self.plan, psi, self.weights, 0.0, DT,
                                          steps, every, tf, **kw)
        wall = time.perf_counter() - t
        self.last_cpu = time.thread_time() - c
        return wall

    def record(self, backend, ref, t_np):
        problem, case = self.problem, self.case
        rate = self.n_samples * self.steps / self.best
        rate_np = self.np_samples * self.np_steps / t_np
        tables = kernels.compile_tables(problem, self.plan)
        flops = flop_count(tables, self.psi.shape[1], _every(self.steps), tangent=case.tangent)
        units = problem.dims * problem.n_distinct_masks()
        gflops = flops * rate / 1e9
        dgemm = ref.get("dgemm_gflops")
        extra = {}
        if case.tangent:
            rate_traj = self.n_samples * self.steps / self.best_traj
            extra = dict(tangent=True, trajectory_sample_steps_per_s=rate_traj,
                         cost_vs_trajectory=rate_traj / rate)
        if case.long_range:
            mm = matrix_product_flops(tables, case.tangent)
            blocks = kernels.coupling_blocks(problem)
            extra.update(mm_flops_per_sample_step=mm,
                         mm_ratio_to_dgemm=mm * rate / 1e9 / dgemm if dgemm else None,
                         dense_blocks=int(len(tables["dense"]["n"])),
                         dense_density=float(min((b["density"] for b in blocks), default=0)))
        if case.precision == "single" and ref.get("sgemm_gflops"):
            extra["ratio_to_sgemm"] = gflops / ref["sgemm_gflops"]
        return dict(
            name=case.name, model=case.model, n_sites=case.n_sites,
            cluster_size=case.cluster_size, n_clusters=int(problem.partition.n_clusters),
            precision=case.precision, backend=backend, samples=self.n_samples,
            steps=self.steps, out_every=_every(self.steps), seconds=self.best,
            wall_seconds=self.best_wall, cpu_share=self.best / self.best_wall,
            repetitions=self.reps,
            setup_seconds=self.setup_s,
            sample_steps_per_s=rate, flops_per_sample_step=flops, gflops=gflops,
            dgemm_gflops=dgemm, ratio_to_dgemm=(gflops / dgemm) if dgemm else None,
            numpy_sample_steps_per_s=rate_np, speedup_vs_numpy=rate / rate_np,
            ns_per_site_step=1e9 / (rate * case.n_sites),
            ns_per_cluster_step=1e9 / (rate * problem.partition.n_clusters),
            mean_D_times_masks=float(units.mean()),
            ns_per_unit=1e9 / (rate * units.sum()),
            **extra,
        )


def bench_cases(cases, quick=False, backend="cython", ref=None):
    """Time the cases; the repetitions of all cases are interleaved (round robin) so that
    every case sees the same conditions on a shared node.  Returns the JSON records."""
    ref = ref or {}
    timed = [_Timed(c) for c in cases]
    reps = 8 if quick else 20
    if backend == "numpy":                            # the slow reference: keep it short
        reps = 2
        for t in timed:
            t.steps = OUT_EVERY
    for t in timed:                                   # warm-up (tables, caches) and budget
        w = t.once(backend, t.steps)
        t.reps = int(max(3, min(reps, reps * 0.5 / max(w, 1e-9))))
    for r in range(reps):
        for t in timed:
            if r < t.reps:
                wall = t.once(backend, t.steps)
                if t.last_cpu < t.best:
                    t.best, t.best_wall = t.last_cpu, wall
                if t.case.tangent:                    # its trajectory alone, same conditions
                    t.once(backend, t.steps, tangent=False)
                    t.best_traj = min(t.best_traj, t.last_cpu)
    records = []
    for t in timed:
        _limit_blas_threads()
        t.once("numpy", 1, t.np_samples)
        t_np = np.inf
        for _ in range(1 if quick else 2):
            t.once("numpy", t.np_steps, t.np_samples)
            t_np = min(t_np, t.last_cpu)
        records.append(t.record(backend, ref, t_np))
    by_name = {r["name"]: r for r in records}
    for r in records:                                 # single vs its double twin
        twin = by_name.get(r["name"].removesuffix("_single"))
        if r["precision"] == "single" and twin is not None:
            r["speedup_vs_double"] = r["sample_steps_per_s"] / twin["sample_steps_per_s"]
    return records


def _limit_blas_threads():
    """One BLAS thread for the NumPy reference (a single-core comparison)."""
    try:
        import threadpoolctl
        threadpoolctl.threadpool_limits(1)
    except ImportError:  # pragma: no cover
        pass


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------
def run_bench(quick=False, json_path=None, backend="auto", cases=None, out=sys.stdout,
              threads=None, crossover=False):
    """Run the benchmark cases, print a table, optionally write JSON; return the report.

    ``cases``: names (default: all, or ``QUICK_CASES`` with ``quick``); ``threads``: also the
    OpenMP and hybrid MPI × OpenMP measurements with these thread counts (OpenMP build);
    ``crossover``: also the sparse/dense crossover (:mod:`ctwa_hpc.bench_scaling`).
    """
    from .bench_scaling import _best_of, _rescale, blas_reference, machine_info
    used = kernels.resolve_backend(backend)
    ref = blas_reference(quick)
    names = cases or (QUICK_CASES if quick else [c.name for c in CASES])
    selected = [c for c in CASES if c.name in names]
    records = bench_cases(selected, quick=quick, backend=used, ref=ref)
    after = blas_reference(quick)                     # the node may be shared: best of both
    if after["dgemm_gflops"] > ref["dgemm_gflops"] or after["sgemm_gflops"] > ref["sgemm_gflops"]:
        ref = _best_of(ref, after)
        for r in records:
            _rescale(r, ref)
    base = next((r for r in records if r["name"] == REFERENCE_CASE), None)
    for r in records:
        r["site_cost_vs_heis64_c4"] = (r["ns_per_site_step"] / base["ns_per_site_step"]
                                       if base and r["model"] == "heisenberg"
                                       and r["precision"] == "double" else None)
    report = {"cases": records, **ref, "machine": machine_info(), "quick": bool(quick),
              "backend": used, "dt": DT, "out_every": OUT_EVERY}
    from . import bench_scaling as sc
    if threads:
        report["threads"] = sc.thread_scaling(threads=tuple(threads))
        report["hybrid"] = sc.hybrid_scaling(layouts=((1, 1), (1, max(threads)),
                                                      (max(threads), 1)))
    if crossover:
        report["crossover"] = sc.dense_crossover()
    print_table(report, out)
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"wrote {json_path}", file=out)
    return report


def _pct(x):
    return f"{x:.0%}" if x is not None else "-"


def print_table(report, out=sys.stdout):
    k = report["machine"]["kernel"]
    kern = (f"{k['isa']} (vector {k['vector_width']}, chunk {k['chunk_width']} samples; single "
            f"{k.get('single_vector_width', '-')}/{k.get('single_chunk_width', '-')}; OpenMP "
            f"{'on' if k['openmp'] else 'off'})" if k.get("compiled") else "not compiled")
    p = print
    p(f"ctwa-hpc bench — backend {report['backend']}, kernel {kern}", file=out)
    p(f"single-core dgemm (n = {report['gemm_sizes']}): best {report['dgemm_best_gflops']:.1f} "
      f"GFLOP/s [{report['dgemm_best_kernel']}; OPENBLAS_CORETYPE/L2_SIZE unset], pinned "
      f"{report['dgemm_pinned_gflops']:.1f} GFLOP/s [OPENBLAS_CORETYPE="
      f"{report['dgemm_pinned_coretype']}: {report['dgemm_pinned_kernel']}]; ratios against "
      f"{report['dgemm_gflops']:.1f}; sgemm {report['sgemm_gflops']:.1f}", file=out)
    p(f"load average {report['machine'].get('load_average')}; times: CPU time of the kernel "
      "thread (cpu share = CPU / wall of that repetition)", file=out)
    head = (f"{'case':<17} {'samp-steps/s':>13} {'GFLOP/s':>8} {'/dgemm':>7} {'mm/dgemm':>8} "
            f"{'vs numpy':>9} {'ns/site-step':>12} {'ns/unit':>8} {'set-up s':>8} {'cpu':>4}")
    p(head, file=out)
    p("-" * len(head), file=out)
    for r in report["cases"]:
        p(f"{r['name']:<17} {r['sample_steps_per_s']:>13,.0f} {r['gflops']:>8.1f} "
          f"{_pct(r['ratio_to_dgemm']):>7} {_pct(r.get('mm_ratio_to_dgemm')):>8} "
          f"{r['speedup_vs_numpy']:>8.0f}x {r['ns_per_site_step']:>12.1f} "
          f"{r['ns_per_unit']:>8.3f} {r['setup_seconds']:>8.1f} {r['cpu_share']:>4.0%}",
          file=out)
    big = next((r for r in report["cases"] if r["name"] == "heis1024_c4"), None)
    if big and big["site_cost_vs_heis64_c4"]:
        p(f"heis1024_c4 cost per site-step = {big['site_cost_vs_heis64_c4']:.2f} × heis64_c4",
          file=out)
    for r in report["cases"]:
        if r.get("tangent"):
            p(f"{r['name']}: trajectory + tangent cost {r['cost_vs_trajectory']:.2f} × "
              f"the trajectory alone ({r['trajectory_sample_steps_per_s']:,.0f} "
              "sample-steps/s)", file=out)
        if r.get("speedup_vs_double"):
            p(f"{r['name']}: {r['speedup_vs_double']:.2f} × double "
              f"({_pct(r.get('ratio_to_sgemm'))} of sgemm)", file=out)
    for key, title in (("threads", "OpenMP threads (one process)"),
                       ("hybrid", "hybrid MPI × OpenMP (ranks x threads)")):
        sec = report.get(key)
        if not sec:
            continue
        if not sec["cases"]:
            p(f"{title}: not available (OpenMP build / mpirun needed: make bench-threads)",
              file=out)
        for c in sec["cases"]:
            items = c.get("threads") or c.get("layouts")
            txt = ", ".join(f"{k}: {v['sample_steps_per_s']:,.0f}/s ({v['speedup']:.2f}×, "
                            f"cpu {v['cpu_share']:.0%}, "
                            f"{'identical' if v['identical'] else 'DIFFERENT'})"
                            for k, v in items.items())
            p(f"{title} {c['name']}: {txt}", file=out)
    cr = report.get("crossover")
    if cr:
        p(f"sparse/dense crossover (N = {cr['N']}, clusters of {cr['cluster_size']}): "
          + ", ".join(f"density {r['density']:.2f}: dense/sparse {r['dense_over_sparse']:.2f}"
                      for r in cr["rows"])
          + f"; dense faster from {cr['crossover_density']}, threshold "
            f"{cr['threshold_in_use']}", file=out)


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
def add_arguments(parser):
    """Options of ``ctwa-hpc bench``."""
    parser.add_argument("--quick", action="store_true",
                        help=f"short timings of the cases {list(QUICK_CASES)}")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="also write the report as JSON to PATH")
    parser.add_argument("--backend", choices=kernels.BACKENDS, default="auto",
                        help="kernel backend to time (default: auto)")
    parser.add_argument("--case", action="append", default=None, metavar="NAME",
                        help=f"run only this case (repeatable): {[c.name for c in CASES]}")
    parser.add_argument("--threads", default=None, metavar="LIST",
                        help="also measure OpenMP threads and hybrid MPI × OpenMP, e.g. 1,2 "
                             "(needs an OpenMP build: make bench-threads)")
    parser.add_argument("--crossover", action="store_true",
                        help="also measure the sparse/dense crossover density")
    return parser


def main(args=None):
    """Entry point: ``args`` is an argparse Namespace (from the CLI) or a list of strings."""
    if args is None or isinstance(args, (list, tuple)):
        argv = list(args or [])
        parser = add_arguments(argparse.ArgumentParser(prog="ctwa-hpc bench",
                                                       description=__doc__.splitlines()[0]))
        args = parser.parse_args(argv)
    cases = getattr(args, "case", None)
    if cases:
        unknown = sorted(set(cases) - {c.name for c in CASES})
        if unknown:
            raise SystemExit(f"bench: unknown case(s) {unknown}")
    threads = getattr(args, "threads", None)
    if threads:
        try:
            threads = [int(x) for x in str(threads).split(",")]
        except ValueError:
            raise SystemExit(f"bench: --threads expects a list like 1,2, got {threads!r}")
    run_bench(quick=args.quick, json_path=args.json, backend=getattr(args, "backend", "auto"),
              cases=cases, threads=threads, crossover=getattr(args, "crossover", False))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
