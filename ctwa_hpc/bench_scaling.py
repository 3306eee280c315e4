r"""The machine's reference and the scaling measurements of ``ctwa-hpc bench``.

* :func:`machine_info`: platform, CPU, load average, kernel build;
* :func:`blas_reference`: single-core dgemm/sgemm GFLOP/s of numpy's BLAS in a subprocess,
  best (``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` removed) and pinned, with the kernel that
  ran (see the docstring of :mod:`ctwa_hpc.bench`);
* :func:`thread_scaling`: the kernel rate of benchmark cases with 1, 2, ... OpenMP threads in
  one process, and whether the columns and the final state are bit-identical to one
  thread's (the chunks of samples are independent, each sample's arithmetic is the same
  whatever thread runs it);
* :func:`hybrid_scaling`: the same samples on ranks × threads layouts (1 × 1, 1 × 2, 2 × 1
  here), ``mpirun --bind-to none -n P python -m mpi4py -m ctwa_hpc.bench_scaling
  --hybrid-worker CASE --threads T``, each rank integrating its contiguous block of the
  samples; the time is that of the slowest rank (barriers around each repetition), the
  columns are gathered and compared bit for bit with 1 × 1;
* :func:`dense_crossover`: rates of the sparse and the dense mean-field path against the
  density of the couplings, the measurement behind ``kernels.DENSE_THRESHOLD``.

All need the compiled kernel; the thread measurements an OpenMP build (``make bench-threads``
builds one in ``build/omp`` and runs them).  The node may be shared: rates are best-of-few
and noisy, ratios within one run are the meaningful figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from . import clusters, kernels, observables, sampling, states
from .bench import DT, LR_OBSERVABLES, _Timed, _case, _sizes, powerlaw_chain

# ------------------------------------------------------------------------------------------
# BLAS reference
# ------------------------------------------------------------------------------------------
_GEMM_CODE = """
import json, time, numpy as np
try:
    import threadpoolctl
    blas = [{k: i.get(k) for k in ("internal_api", "architecture", "version", "num_threads")}
            for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
except ImportError:
    blas = None
rng = np.random.default_rng(0)
out = {}
for dtype in ("float64", "float32"):
    best = 0.0
    for n in %(sizes)r:
        a, b = rng.random((n, n)).astype(dtype), rng.random((n, n)).astype(dtype)
        a @ b
        for _ in range(%(reps)d):
            t = time.thread_time()
            a @ b
            best = max(best, 2.0 * n ** 3 / (time.thread_time() - t))
    out[dtype] = best / 1e9
print(json.dumps({"dgemm": out["float64"], "sgemm": out["float32"], "blas": blas}))
"""
PIN_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _gemm_subprocess(env, sizes, reps):
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = "1"
    out = subprocess.run([sys.executable, "-c", _GEMM_CODE % dict(sizes=sizes, reps=reps)],
                         env=env, capture_output=True, text=True, check=True, timeout=600)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    blas = res.get("blas") or []
    res["kernel"] = ", ".join(f"{b['internal_api']} {b['version']} {b['architecture']}"
                              for b in blas) or "unknown (no threadpoolctl)"
    return res


def blas_reference(quick=False):
    """Single-core dgemm/sgemm GFLOP/s of numpy's BLAS: best (pinning variables removed) and
    pinned (``OPENBLAS_CORETYPE`` of the environment, else Haswell); see the docstring."""
    sizes, reps = ((1000,), 3) if quick else ((1000, 2000), 5)
    env = {k: v for k, v in os.environ.items() if k not in PIN_VARS}
    best = _gemm_subprocess(env, sizes, reps)
    pin = dict(env, OPENBLAS_CORETYPE=os.environ.get("OPENBLAS_CORETYPE") or "Haswell")
    if "OPENBLAS_L2_SIZE" in os.environ:
        pin["OPENBLAS_L2_SIZE"] = os.environ["OPENBLAS_L2_SIZE"]
    pinned = _gemm_subprocess(pin, sizes, reps)
    return {"dgemm_gflops": max(best["dgemm"], pinned["dgemm"]),
            "sgemm_gflops": max(best["sgemm"], pinned["sgemm"]),
            "dgemm_best_gflops": best["dgemm"], "dgemm_best_kernel": best["kernel"],
            "dgemm_pinned_gflops": pinned["dgemm"], "dgemm_pinned_kernel": pinned["kernel"],
            "dgemm_pinned_coretype": pin["OPENBLAS_CORETYPE"],
            "environment_coretype": os.environ.get("OPENBLAS_CORETYPE"), "gemm_sizes": sizes}


def _best_of(a, b):
    """The better of two :func:`blas_reference` measurements, entry by entry."""
    out = dict(a)
    for kind in ("best", "pinned"):
        g, k = f"dgemm_{kind}_gflops", f"dgemm_{kind}_kernel"
        if b[g] > a[g]:
            out[g], out[k] = b[g], b[k]
    out["dgemm_gflops"] = max(a["dgemm_gflops"], b["dgemm_gflops"])
    out["sgemm_gflops"] = max(a["sgemm_gflops"], b["sgemm_gflops"])
    return out


def _rescale(r, ref):
    """Ratios of a case record against the reference ``ref``."""
    d = ref["dgemm_gflops"]
    r["dgemm_gflops"] = d
    r["ratio_to_dgemm"] = r["gflops"] / d
    if r.get("mm_flops_per_sample_step") is not None:
        r["mm_ratio_to_dgemm"] = r["mm_flops_per_sample_step"] * r["sample_steps_per_s"] / 1e9 / d
    if "ratio_to_sgemm" in r:
        r["ratio_to_sgemm"] = r["gflops"] / ref["sgemm_gflops"]


def dgemm_gflops(n=1000, reps=5):
    """Single-core dgemm GFLOP/s with the best OpenBLAS kernel (pinning variables removed)."""
    env = {k: v for k, v in os.environ.items() if k not in PIN_VARS}
    return _gemm_subprocess(env, (n,), reps)["dgemm"]


def machine_info():
    """Platform, CPU, load average and the compiled kernel of this run."""
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
    try:
        info["load_average"] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    return info


# ------------------------------------------------------------------------------------------
# threads: OpenMP inside a rank, and hybrid MPI × OpenMP
# ------------------------------------------------------------------------------------------
THREAD_CASES = ("heis64_c4", "lr256_c2", "lr1024_c2")


def thread_scaling(names=THREAD_CASES, threads=(1, 2), reps=5):
    """Kernel rate (wall clock) with 1, 2, ... OpenMP threads (one process) and whether the
    columns and the final state are bit-identical to one thread's.  ``cpu_share``: process CPU
    time / (wall × threads) of the best repetition — below 1 when other jobs held cores, which
    caps the speed-up on a shared node.  Needs an OpenMP build."""
    if not kernels.compiled_info().get("openmp"):
        return {"openmp": False, "cases": []}
    out = []
    for name in names:
        t = _Timed(_case(name))
        t.once("cython", t.steps)
        res, ref = {}, None
        for th in threads:
            best, share = np.inf, None
            for _ in range(reps):
                c0 = time.process_time()
                wall = t.once("cython", t.steps, threads=th)
                if wall < best:
                    best, share = wall, (time.process_time() - c0) / (wall * th)
            cols, psi = t.last
            if ref is None:
                ref = (cols, psi)
            res[th] = dict(sample_steps_per_s=t.n_samples * t.steps / best, cpu_share=share,
                           identical=bool(np.array_equal(cols, ref[0])
                                          and np.array_equal(psi, ref[1])))
        one = res[threads[0]]["sample_steps_per_s"]
        for th in threads:
            res[th]["speedup"] = res[th]["sample_steps_per_s"] / one
        out.append(dict(name=name, samples=t.n_samples, steps=t.steps,
                        threads={str(k): v for k, v in res.items()}))
    return {"openmp": True, "cases": out}


def _hybrid_worker(name, threads, reps, out_path):
    """One rank of a hybrid run: this rank's block of the samples, ``threads`` OpenMP threads;
    rank 0 writes the slowest rank's best time and the gathered columns to ``out_path``."""
    from . import parallel
    comm = parallel.get_comm()
    t = _Timed(_case(name))
    own = parallel.split_items(t.n_samples, comm)
    t.psi = np.ascontiguousarray(t.psi[:, :, own])
    t.n_samples = len(own)
    t.once("cython", t.steps, threads=threads)
    best, cpu = np.inf, 0.0
    for _ in range(reps):
        comm.Barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        t.once("cython", t.steps, threads=threads)
        c1 = time.process_time() - c0
        comm.Barrier()
        wall = time.perf_counter() - t0
        if wall < best:
            best, cpu = wall, c1
    parts = parallel.gather_arrays(comm, {"cols": t.last[0], "cpu": np.array([cpu])})
    if comm.rank == 0:
        cols = np.concatenate([p["cols"] for p in parts], axis=-1)
        share = sum(float(p["cpu"][0]) for p in parts) / (best * comm.size * threads)
        np.savez(out_path, cols=cols, seconds=best, ranks=comm.size, threads=threads,
                 cpu_share=share)


def hybrid_scaling(names=("lr256_c2", "lr1024_c2"), layouts=((1, 1), (1, 2), (2, 1)), reps=3):
    """Hybrid MPI × OpenMP: the same samples on ``ranks × threads`` layouts (``mpirun``,
    ``--bind-to none``); rate, speed-up against 1 × 1 and bit-identity of the columns."""
    import shutil
    import tempfile
    from .bench_mpi import MPI_ENV
    if not kernels.compiled_info().get("openmp") or shutil.which("mpirun") is None:
        return {"available": False, "cases": []}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            res, ref = {}, None
            for ranks, th in layouts:
                path = os.path.join(tmp, f"{name}_{ranks}x{th}.npz")
                env = {**os.environ, **MPI_ENV, "OMP_NUM_THREADS": str(th),
                       "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
                cmd = ["mpirun", "--bind-to", "none", "-n", str(ranks), sys.executable, "-m",
                       "mpi4py", "-m", "ctwa_hpc.bench_scaling", "--hybrid-worker", name,
                       "--threads", str(th), "--reps", str(reps), "--out", path]
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env,
                                   cwd=root)
                if r.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd)} -> exit {r.returncode}\n{r.stderr}")
                d = np.load(path)
                samples, steps = _sizes(_case(name))[:2]
                cols = d["cols"]
                ref = cols if ref is None else ref
                rate = samples * steps / float(d["seconds"])
                res[f"{ranks}x{th}"] = dict(ranks=ranks, threads=th, sample_steps_per_s=rate,
                                            cpu_share=float(d["cpu_share"]),
                                            identical=bool(np.array_equal(cols, ref)))
            one = res["1x1"]["sample_steps_per_s"]
            for v in res.values():
                v["speedup"] = v["sample_steps_per_s"] / one
            out.append(dict(name=name, layouts=res))
    return {"available": True, "cases": out}


# ------------------------------------------------------------------------------------------
# sparse / dense crossover (the measurement behind kernels.DENSE_THRESHOLD)
# ------------------------------------------------------------------------------------------
def dense_crossover(N=256, cluster_size=2, densities=(0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0),
                    n_samples=256, steps=10, reps=5, seed=3):
    """Rates of the sparse and the dense path on the power-law XXZ chain with a random,
    symmetric fraction ``density`` of its couplings kept, and the density from which the
    dense path is faster."""
    from .hamiltonian import Hamiltonian
    rng = np.random.default_rng(seed)
    base = powerlaw_chain(N)
    rows = []
    for d in densities:
        keep = np.triu(rng.random((N, N)) < d, 1)
        keep = keep | keep.T
        J = {k: np.where(keep, v, 0.0) for k, v in base.items()}
        ham = Hamiltonian.from_couplings(J)
        part = clusters.Partition.contiguous(N, cluster_size)
        problem = clusters.compile_problem(ham, part)
        plan = observables.ObservableSet(N, LR_OBSERVABLES).compile(part)
        psi = sampling.draw_batch(problem, states.make_state("neel", N), "sb", seed, 0,
                                  np.arange(n_samples))
        tf = np.zeros((0, 2 * steps + 1))
        rate = {}
        for _ in range(reps):
            for fields in ("sparse", "dense"):
                t0 = time.thread_time()
                kernels.integrate(problem, plan, psi.psi, psi.weights, 0.0, DT, steps, steps, tf,
                                  threads=1, fields=fields)
                r = n_samples * steps / (time.thread_time() - t0)
                rate[fields] = max(rate.get(fields, 0.0), r)
        dens = kernels.coupling_blocks(problem, "dense")
        rows.append(dict(keep=d, density=float(np.mean([b["density"] for b in dens])),
                         sparse=rate["sparse"], dense=rate["dense"],
                         dense_over_sparse=rate["dense"] / rate["sparse"]))
    faster = [r["density"] for r in rows if r["dense_over_sparse"] > 1.0]
    return {"N": N, "cluster_size": cluster_size, "rows": rows,
            "crossover_density": min(faster) if faster else None,
            "threshold_in_use": kernels.DENSE_THRESHOLD}


def main(argv=None):
    """``python -m ctwa_hpc.bench_scaling --hybrid-worker CASE --threads T --reps R --out F``:
    one rank of :func:`hybrid_scaling`."""
    w = argparse.ArgumentParser(prog="python -m ctwa_hpc.bench_scaling")
    w.add_argument("--hybrid-worker", required=True, metavar="CASE")
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--reps", type=int, default=3)
    w.add_argument("--out", required=True)
    a = w.parse_args(argv)
    _hybrid_worker(a.hybrid_worker, a.threads, a.reps, a.out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
