r"""``ctwa-hpc bench``: throughput of the RK4 kernels against the core's best dgemm rate.

The cases, their inputs and the flop count of the kernel are in :mod:`ctwa_hpc.bench.cases`,
the machine's BLAS reference in :mod:`ctwa_hpc.bench.machine`, the thread and hybrid
MPI × OpenMP scaling and the sparse/dense crossover in :mod:`ctwa_hpc.bench.scaling`.

Every rate is single-core: the kernel runs with one thread.  Each figure is the best of
several short repetitions, interleaved round robin over the cases so that all cases see the
same conditions (the node may be shared; slow cases get fewer repetitions).  Times are the
CPU time of the thread that runs the kernel (``time.thread_time``), so that a repetition
during which other jobs held the core is not counted as the kernel's; the wall-clock time of
the same repetition and their ratio (``cpu_share``) are reported too.  The BLAS reference is
timed the same way.  Cache and memory-bandwidth sharing with other jobs are *not* removed
by this: on a shared node the figures are noisy, and the ratios within one run are what
counts.

BLAS reference (:func:`ctwa_hpc.bench.machine.blas_reference`)
--------------------------------------------------------------
dgemm (numpy matmul of two n × n float64 matrices, n = 1000 and 2000, best rate) runs in a
subprocess with one thread and with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` *removed*
from its environment, so OpenBLAS picks its best kernel for the CPU (SkylakeX = AVX-512 here);
the kernel it ran is reported (threadpoolctl).  The same measurement pinned to the AVX2
kernel (``OPENBLAS_CORETYPE`` as set in the environment, else ``Haswell``) is reported beside
it; every ratio is taken against the best of the two (``dgemm_gflops``).  sgemm (float32) is
reported for the single-precision cases.  The benchmark changes no environment of its own.

Reported per case: ``sample_steps_per_s`` (RK4 steps × samples per second), ``gflops``
(analytic flop count × rate), ``ratio_to_dgemm``, ``speedup_vs_numpy`` (the NumPy reference
:func:`~ctwa_hpc.method.kernels.numpy_propagator` timed on the same case with fewer steps and
normalized per sample-step), ``ns_per_site_step``, ``ns_per_cluster_step`` and
``ns_per_unit`` = ns per cluster-step divided by the mean of D_c × (distinct masks of c).
Long-range cases also report ``mm_flops_per_sample_step``, ``mm_ratio_to_dgemm`` (the count
"as matrix products" of :mod:`ctwa_hpc.bench.cases`, the figure of the targets) and
``dense_density``; single cases ``speedup_vs_double`` (their double twin timed in the same
rounds), ``ratio_to_sgemm``.
A tangent case reports ``trajectory_sample_steps_per_s`` and ``cost_vs_trajectory``.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from ..method import kernels
from . import scaling
from .cases import CASES, DT, OUT_EVERY, QUICK_CASES, REFERENCE_CASE
from .machine import best_reference, blas_reference, machine_info, rescale
from .timing import TimedCase


def bench_cases(cases, quick=False, backend="cython", ref=None):
    """Time the cases; the repetitions of all cases are interleaved (round robin) so that
    every case sees the same conditions on a shared node.  Returns the JSON records."""
    ref = ref or {}
    timed = [TimedCase(c) for c in cases]
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
        import threadpoolctl   # optional dependency
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
    ``crossover``: also the sparse/dense crossover (:mod:`ctwa_hpc.bench.scaling`).
    """
    used = kernels.resolve_backend(backend)
    ref = blas_reference(quick)
    names = cases or (QUICK_CASES if quick else [c.name for c in CASES])
    selected = [c for c in CASES if c.name in names]
    records = bench_cases(selected, quick=quick, backend=used, ref=ref)
    after = blas_reference(quick)                     # the node may be shared: best of both
    if after["dgemm_gflops"] > ref["dgemm_gflops"] or after["sgemm_gflops"] > ref["sgemm_gflops"]:
        ref = best_reference(ref, after)
        for r in records:
            rescale(r, ref)
    base = next((r for r in records if r["name"] == REFERENCE_CASE), None)
    for r in records:
        r["site_cost_vs_heis64_c4"] = (r["ns_per_site_step"] / base["ns_per_site_step"]
                                       if base and r["model"] == "heisenberg"
                                       and r["precision"] == "double" else None)
    report = {"cases": records, **ref, "machine": machine_info(), "quick": bool(quick),
              "backend": used, "dt": DT, "out_every": OUT_EVERY}
    if threads:
        report["threads"] = scaling.thread_scaling(threads=tuple(threads))
        report["hybrid"] = scaling.hybrid_scaling(layouts=((1, 1), (1, max(threads)),
                                                      (max(threads), 1)))
    if crossover:
        report["crossover"] = scaling.dense_crossover()
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
