r"""The scaling measurements of ``ctwa-hpc bench`` (``--threads``, ``--crossover``); the
machine's description and BLAS reference are in :mod:`ctwa_hpc.bench.machine`.

* :func:`thread_scaling`: the kernel rate of benchmark cases with 1, 2, ... OpenMP threads in
  one process, and whether the columns and the final state are bit-identical to one
  thread's (the chunks of samples are independent, each sample's arithmetic is the same
  whatever thread runs it);
* :func:`hybrid_scaling`: the same samples on ranks × threads layouts (1 × 1, 1 × 2, 2 × 1
  here), ``mpirun --bind-to none -n P python -m mpi4py -m ctwa_hpc.bench.scaling
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
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from ..method import clusters, kernels, observables, sampling
from ..model import states
from ..model.hamiltonian import Hamiltonian
from ..tools import parallel
from .cases import DT, LR_OBSERVABLES, get_case, powerlaw_chain, timing_sizes
from .machine import ROOT, launch_env
from .timing import TimedCase

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
        t = TimedCase(get_case(name))
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
    comm = parallel.get_comm()
    t = TimedCase(get_case(name))
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
    if not kernels.compiled_info().get("openmp") or shutil.which("mpirun") is None:
        return {"available": False, "cases": []}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            res, ref = {}, None
            for ranks, th in layouts:
                path = os.path.join(tmp, f"{name}_{ranks}x{th}.npz")
                env = launch_env({"OMP_NUM_THREADS": str(th)})
                cmd = ["mpirun", "--bind-to", "none", "-n", str(ranks), sys.executable, "-m",
                       "mpi4py", "-m", "ctwa_hpc.bench.scaling", "--hybrid-worker", name,
                       "--threads", str(th), "--reps", str(reps), "--out", path]
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env,
                                   cwd=ROOT)
                if r.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd)} -> exit {r.returncode}\n{r.stderr}")
                d = np.load(path)
                samples, steps = timing_sizes(get_case(name))[:2]
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
    """``python -m ctwa_hpc.bench.scaling --hybrid-worker CASE --threads T --reps R --out F``:
    one rank of :func:`hybrid_scaling`."""
    w = argparse.ArgumentParser(prog="python -m ctwa_hpc.bench.scaling")
    w.add_argument("--hybrid-worker", required=True, metavar="CASE")
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--reps", type=int, default=3)
    w.add_argument("--out", required=True)
    a = w.parse_args(argv)
    _hybrid_worker(a.hybrid_worker, a.threads, a.reps, a.out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
