r"""``ctwa-hpc bench``: throughput of the RK4 kernels against the core's dgemm rate.

Cases (SB method, R = 1, Néel state, observables ``sz``, ``mz_staggered``, ``czz``, ``energy``
read every 10 steps, dt = 0.01):

===============  ==========================================================================
``heis64_c2``    disordered Heisenberg eq. (41), N = 64, h_z = 1, contiguous clusters of 2
``heis64_c4``    the same with clusters of 4
``heis64_c6``    clusters of 6 (D = 64; 64 = 10·6 + 4, the last cluster has 4 sites)
``ising20_c4``   chaotic Ising chain eq. (39), N = 20, clusters of 4
``heis1024_c4``  Heisenberg N = 1024, clusters of 4 (per-site cost must match heis64_c4)
``heis64_c4_tangent``  heis64_c4 with the tangent δψ integrated alongside (linear response,
                 :func:`~ctwa_hpc.kernels.integrate_tangent`; kick σz on site 0)
===============  ==========================================================================

Every rate is single-core: the kernel runs with one thread and the dgemm reference
(``numpy`` matmul of two 1000×1000 float64 matrices) runs in a subprocess with
``OPENBLAS_NUM_THREADS = OMP_NUM_THREADS = MKL_NUM_THREADS = 1``.  Each figure is the best of
several short repetitions (8 with ``--quick``, 20 otherwise), interleaved round robin over
the cases so that all cases see the same conditions (the node may be shared).

Reported per case: ``sample_steps_per_s`` (RK4 steps × samples per second), ``gflops``
(analytic flop count × rate), ``ratio_to_dgemm``, ``speedup_vs_numpy`` (the NumPy reference
:class:`~ctwa_hpc.dynamics.NumpyPropagator` timed on the same case with fewer steps and
normalized per sample-step), ``ns_per_site_step`` (``site_cost_vs_heis64_c4`` for the large
chain), ``ns_per_cluster_step`` and ``ns_per_unit`` = ns per cluster-step divided by the mean
of D_c × (distinct masks of c) — constant when a cluster costs O(D × masks).  A tangent case
(trajectory + tangent per sample-step) also reports ``tangent`` (true),
``trajectory_sample_steps_per_s`` (the same case without the tangent, timed interleaved with
it) and ``cost_vs_trajectory`` (the ratio of the two rates: the cost of trajectory + tangent in
units of the trajectory alone); its flop count and NumPy reference include the tangent.

Flop count (per sample, as the kernel executes it; an FMA counts 2, nothing counts twice)
---------------------------------------------------------------------------------------
Per RK4 stage:

* mean fields: 4 per coupling (field_a += J f E_b and field_b += J f E_a, one FMA each);
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

With the tangent (``flop_count(..., tangent=True)``), in addition: the tangent fields (4 per
coupling); per vector and term the product c·δψ (4 or 8) and, for terms with coupling items,
δc = Σ coef · δfield (2 per item) and δc·ψ (4 or 8); the RK4 update of δψ (28); the tangent
Weyl symbols, per pair 14 (R = 1) or 18 per vector (δQ = conj(ψ_b) δψ_{b^m} +
conj(δψ_b) ψ_{b^m}), 4 or 6 on the diagonal, plus 2 per (operator, pair); per output column
term 3 per factor (product rule) plus one add.  Not counted: sign
flips, copies in and out, finite checks and the per-chunk update of time-dependent
coefficients.  The count is that of the algorithm as implemented: the Hermitian pairing,
the merging of masks and the dropping of zero coefficients make it *smaller* than the count
of a straightforward per-entry implementation, so no work is counted that is not done.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import clusters, kernels, models, observables, sampling, states

OBSERVABLES = ("sz", "mz_staggered", "czz", "energy")
DT = 0.01
OUT_EVERY = 10


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    n_sites: int
    cluster_size: int
    tangent: bool = False


CASES = (
    Case("heis64_c2", "heisenberg", 64, 2),
    Case("heis64_c4", "heisenberg", 64, 4),
    Case("heis64_c6", "heisenberg", 64, 6),
    Case("ising20_c4", "ising_chaotic", 20, 4),
    Case("heis1024_c4", "heisenberg", 1024, 4),
    Case("heis64_c4_tangent", "heisenberg", 64, 4, tangent=True),
)
KICK = ((0, "Z"),)   # tangent cases: δψ(0) of the kick e^{-iεσz_0}
REFERENCE_CASE = "heis64_c4"


# ------------------------------------------------------------------------------------------
# flop count
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
    n_fac = np.diff(tables["term_ptr"])
    output = _weyl_flops(tables["oex"], R, tangent) + float(np.sum(n_fac + 1))
    if tangent:
        output += float(np.sum(3 * n_fac + 1))
    return float(step + output / out_every)


# ------------------------------------------------------------------------------------------
# dgemm reference
# ------------------------------------------------------------------------------------------
_DGEMM_CODE = """
import time, numpy as np
n = {n}
rng = np.random.default_rng(0)
a, b = rng.random((n, n)), rng.random((n, n))
a @ b
best = 1e300
for _ in range({reps}):
    t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
print(2.0 * n ** 3 / best / 1e9)
"""


def dgemm_gflops(n=1000, reps=5):
    """Single-core dgemm GFLOP/s of numpy's BLAS, measured in a one-thread subprocess."""
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = "1"
    out = subprocess.run([sys.executable, "-c", _DGEMM_CODE.format(n=n, reps=reps)],
                         env=env, capture_output=True, text=True, check=True, timeout=300)
    return float(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------
# cases
# ------------------------------------------------------------------------------------------
def build_case(case, n_samples, seed=1):
    """(problem, plan, psi0, weights) of a benchmark case (tangent cases: see :func:`kick`)."""
    if case.model == "heisenberg":
        ham = models.heisenberg(case.n_sites, hz=1.0, seed=seed)
    elif case.model == "ising_chaotic":
        ham = models.ising_chaotic(case.n_sites)
    else:  # pragma: no cover
        raise ValueError(case.model)
    part = clusters.Partition.contiguous(case.n_sites, case.cluster_size)
    problem = clusters.compile_problem(ham, part)
    plan = observables.ObservableSet(case.n_sites, OBSERVABLES, hamiltonian=ham).compile(part)
    batch = sampling.draw_batch(problem, states.make_state("neel", case.n_sites), "sb", seed, 0,
                                np.arange(n_samples))
    return problem, plan, batch.psi, batch.weights


def kick(problem, psi, weights):
    """δψ(0) of the tangent cases: the kick e^{-iεσz_0} (:func:`ctwa_hpc.dynamics.kick`)."""
    from .dynamics import kick as _kick
    return _kick(problem, KICK, psi, weights)[0]


def _sizes(case, quick):
    """(samples, steps) of the compiled-path timing and (samples, steps) of NumPy's.

    A timing covers ~5e6 site-steps (0.1 s at 20 ns per site-step): many short runs, of which
    the best counts, are more robust against other jobs than one long run.
    """
    n_samples = 64 if case.n_sites > 256 else 256
    steps = int(max(OUT_EVERY, 5e6 / (n_samples * case.n_sites)) // OUT_EVERY * OUT_EVERY)
    return n_samples, steps, min(n_samples, 64), OUT_EVERY


class _Timed:
    """One case prepared for timing: ``once(backend, steps, samples)`` runs one integration."""

    def __init__(self, case, quick):
        self.case = case
        self.n_samples, self.steps, self.np_samples, self.np_steps = _sizes(case, quick)
        self.problem, self.plan, self.psi, self.weights = build_case(case, self.n_samples)
        self.dpsi = kick(self.problem, self.psi, self.weights) if case.tangent else None
        self.best = np.inf
        self.best_traj = np.inf      # tangent cases: the same case without the tangent

    def once(self, backend, steps, samples=None, tangent=None):
        """Time one integration (``tangent``: default the case's; False: trajectory only)."""
        tangent = self.case.tangent if tangent is None else tangent
        cut = (lambda x: x) if samples is None else (
            lambda x: np.ascontiguousarray(x[:, :, :samples]))
        psi = cut(self.psi)
        tf = np.zeros((len(self.problem.tfuncs), 2 * steps + 1))
        every = OUT_EVERY if steps % OUT_EVERY == 0 else steps
        if tangent:
            dpsi = cut(self.dpsi)
            t = time.perf_counter()
            kernels.integrate_tangent(self.problem, self.plan, psi, dpsi, self.weights, 0.0, DT,
                                      steps, every, tf, backend=backend, threads=1)
            return time.perf_counter() - t
        t = time.perf_counter()
        kernels.integrate(self.problem, self.plan, psi, self.weights, 0.0, DT, steps, every, tf,
                          backend=backend, threads=1)
        return time.perf_counter() - t

    def record(self, backend, dgemm, t_np):
        problem, case = self.problem, self.case
        rate = self.n_samples * self.steps / self.best
        rate_np = self.np_samples * self.np_steps / t_np
        flops = flop_count(kernels.compile_tables(problem, self.plan), self.psi.shape[1],
                           OUT_EVERY, tangent=case.tangent)
        units = problem.dims * problem.n_distinct_masks()
        gflops = flops * rate / 1e9
        extra = {}
        if case.tangent:
            rate_traj = self.n_samples * self.steps / self.best_traj
            extra = dict(tangent=True, trajectory_sample_steps_per_s=rate_traj,
                         cost_vs_trajectory=rate_traj / rate)
        return dict(
            name=case.name, model=case.model, n_sites=case.n_sites,
            cluster_size=case.cluster_size, n_clusters=int(problem.partition.n_clusters),
            backend=backend, samples=self.n_samples, steps=self.steps, seconds=self.best,
            sample_steps_per_s=rate, flops_per_sample_step=flops, gflops=gflops,
            dgemm_gflops=dgemm, ratio_to_dgemm=(gflops / dgemm) if dgemm else None,
            numpy_sample_steps_per_s=rate_np, speedup_vs_numpy=rate / rate_np,
            ns_per_site_step=1e9 / (rate * case.n_sites),
            ns_per_cluster_step=1e9 / (rate * problem.partition.n_clusters),
            mean_D_times_masks=float(units.mean()),
            ns_per_unit=1e9 / (rate * units.sum()),
            **extra,
        )


def bench_cases(cases, quick=False, backend="cython", dgemm=None):
    """Time the cases; the repetitions of all cases are interleaved (round robin) so that
    every case sees the same conditions on a shared node.  Returns the JSON records."""
    timed = [_Timed(c, quick) for c in cases]
    reps = 8 if quick else 20
    if backend == "numpy":                            # the slow reference: keep it short
        reps = 2
        for t in timed:
            t.steps = OUT_EVERY
    for t in timed:                                   # warm-up: tables, imports, caches
        t.once(backend, OUT_EVERY)
    for _ in range(reps):
        for t in timed:
            t.best = min(t.best, t.once(backend, t.steps))
            if t.case.tangent:                        # its trajectory alone, same conditions
                t.best_traj = min(t.best_traj, t.once(backend, t.steps, tangent=False))
    records = []
    for t in timed:
        t.once("numpy", 1, t.np_samples)
        t_np = min(t.once("numpy", t.np_steps, t.np_samples) for _ in range(1 if quick else 2))
        records.append(t.record(backend, dgemm, t_np))
    return records


def machine_info():
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "cpus": os.cpu_count(), "kernel": kernels.compiled_info()}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover
        pass
    return info


def run_bench(quick=False, json_path=None, backend="auto", cases=None, out=sys.stdout):
    """Run the benchmark cases, print a table, optionally write JSON; return the report."""
    used = kernels.resolve_backend(backend)
    dgemm = dgemm_gflops(n=1000, reps=5 if quick else 10)
    selected = [c for c in CASES if cases is None or c.name in cases]
    records = bench_cases(selected, quick=quick, backend=used, dgemm=dgemm)
    ref = next((r for r in records if r["name"] == REFERENCE_CASE), None)
    for r in records:
        r["site_cost_vs_heis64_c4"] = (r["ns_per_site_step"] / ref["ns_per_site_step"]
                                       if ref and r["model"] == "heisenberg" else None)
    report = {"cases": records, "dgemm_gflops": dgemm, "machine": machine_info(),
              "quick": bool(quick), "backend": used, "dt": DT, "out_every": OUT_EVERY}
    print_table(report, out)
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"wrote {json_path}", file=out)
    return report


def print_table(report, out=sys.stdout):
    k = report["machine"]["kernel"]
    kern = (f"{k['isa']} (vector {k['vector_width']}, chunk {k['chunk_width']} samples, "
            f"OpenMP {'on' if k['openmp'] else 'off'})" if k.get("compiled") else "not compiled")
    print(f"ctwa-hpc bench — backend {report['backend']}, kernel {kern}", file=out)
    print(f"single-core dgemm: {report['dgemm_gflops']:.1f} GFLOP/s", file=out)
    head = (f"{'case':<17} {'samp-steps/s':>13} {'GFLOP/s':>8} {'/dgemm':>7} {'vs numpy':>9} "
            f"{'ns/site-step':>12} {'ns/cluster':>10} {'D*masks':>8} {'ns/unit':>8}")
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in report["cases"]:
        ratio = f"{r['ratio_to_dgemm']:.0%}" if r["ratio_to_dgemm"] is not None else "-"
        print(f"{r['name']:<17} {r['sample_steps_per_s']:>13,.0f} {r['gflops']:>8.1f} "
              f"{ratio:>7} {r['speedup_vs_numpy']:>8.0f}x {r['ns_per_site_step']:>12.1f} "
              f"{r['ns_per_cluster_step']:>10.1f} {r['mean_D_times_masks']:>8.1f} "
              f"{r['ns_per_unit']:>8.3f}", file=out)
    big = next((r for r in report["cases"] if r["name"] == "heis1024_c4"), None)
    if big and big["site_cost_vs_heis64_c4"]:
        print(f"heis1024_c4 cost per site-step = {big['site_cost_vs_heis64_c4']:.2f} × heis64_c4",
              file=out)
    for r in report["cases"]:
        if r.get("tangent"):
            print(f"{r['name']}: trajectory + tangent cost {r['cost_vs_trajectory']:.2f} × "
                  f"the trajectory alone ({r['trajectory_sample_steps_per_s']:,.0f} "
                  "sample-steps/s)", file=out)


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
def add_arguments(parser):
    """Options of ``ctwa-hpc bench``."""
    parser.add_argument("--quick", action="store_true",
                        help="short timings (the whole run takes well under a minute)")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="also write the report as JSON to PATH")
    parser.add_argument("--backend", choices=kernels.BACKENDS, default="auto",
                        help="kernel backend to time (default: auto)")
    parser.add_argument("--case", action="append", default=None, metavar="NAME",
                        help=f"run only this case (repeatable): {[c.name for c in CASES]}")
    return parser


def main(args=None):
    """Entry point: ``args`` is an argparse Namespace (from the CLI) or a list of strings."""
    if args is None or isinstance(args, (list, tuple)):
        parser = add_arguments(argparse.ArgumentParser(prog="ctwa-hpc bench",
                                                       description=__doc__.splitlines()[0]))
        args = parser.parse_args(args)
    cases = getattr(args, "case", None)
    if cases:
        unknown = sorted(set(cases) - {c.name for c in CASES})
        if unknown:
            raise SystemExit(f"bench: unknown case(s) {unknown}")
    run_bench(quick=args.quick, json_path=args.json, backend=getattr(args, "backend", "auto"),
              cases=cases)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
