"""MPI scaling benchmark: ``make bench-mpi`` → ``python -m ctwa_hpc.bench_mpi``.

Launches ``mpirun -n P python -m mpi4py -m ctwa_hpc run`` subprocesses on one workload (the
disordered Heisenberg chain of ``jobs/heis16.toml``, eq. (41), one realization, 4-site
clusters) and reports

* **strong scaling**: a fixed total number of samples on 1 and 2 ranks (speed-up, efficiency);
* **weak scaling**: samples ∝ ranks (efficiency = t₁ / t_P);
* **correctness**: 8 ranks (oversubscribed on a small machine) give the same means as 1 rank
  (not a speed measurement).

Times are the run's own ``wall_time_s`` (sampling, integration, reduction; the HDF5 write and
interpreter start-up are excluded) and the launch-to-exit time of the whole command; each
point is the best of ``--repeat`` runs.  ``cpu`` is the CPU time of all ranks together (user +
system): a 2-rank run whose CPU time is twice its wall time really had two cores, so a poor
speed-up with full CPU use points at other work competing for the cores (the load average is
printed too).  Prints a table and writes JSON (``--json``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "jobs", "heis16.toml")
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1",
           "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def workload(samples, t_max):
    return ["--set", "disorder.realizations=1", "--set", f"method.samples={samples}",
            "--set", "method.batch=256", "--set", f"time.t_max={t_max}",
            "--set", "output.compare_exact=false", "--set", "output.progress_every_s=1e9"]


def launch(n, out, args, timeout=900):
    """One ``mpirun -n n`` run; returns (run wall time, command wall time, loaded file)."""
    from . import io
    cmd = ["mpirun", "-n", str(n), sys.executable, "-m", "mpi4py", "-m", "ctwa_hpc", "run",
           CONFIG, "-o", out, "--force", "-q", *args]
    env = {**os.environ, **MPI_ENV,
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0, c0 = time.perf_counter(), _child_cpu()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    total = time.perf_counter() - t0
    launch.cpu = _child_cpu() - c0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    data = io.load(out)
    return float(data["attrs"]["wall_time_s"]), total, data


def _child_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def best_of(n, out, args, repeat):
    """Best of ``repeat`` launches: (run wall, command wall, data, CPU seconds of all ranks)."""
    runs = []
    for _ in range(repeat):
        runs.append(launch(n, out, args) + (launch.cpu,))
    return runs[int(np.argmin([r[0] for r in runs]))]


def max_diff(a, b):
    return max(float(np.max(np.abs(a["observables"][k]["mean"] - b["observables"][k]["mean"])))
               for k in a["observables"])


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m ctwa_hpc.bench_mpi",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=16384, help="samples of the strong-scaling run")
    ap.add_argument("--t-max", type=float, default=10.0, help="time.t_max (steps = t_max/0.01)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per point (best is kept)")
    ap.add_argument("--ranks", type=int, default=2, help="largest rank count timed")
    ap.add_argument("--check-ranks", type=int, default=8, help="ranks of the correctness run")
    ap.add_argument("--quick", action="store_true", help="small workload (a smoke test)")
    ap.add_argument("--json", default="bench_mpi.json", help="JSON report path")
    a = ap.parse_args(argv)
    if a.quick:
        a.samples, a.t_max, a.repeat = 2048, 2.0, 1
    if shutil.which("mpirun") is None:
        print("bench_mpi: mpirun not found", file=sys.stderr)
        return 1
    from . import kernels, parallel
    report = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
              "mpi_library": parallel.library_version(), "backend": kernels.resolve_backend("auto"),
              "config": os.path.relpath(CONFIG, ROOT), "samples": a.samples, "t_max": a.t_max,
              "n_steps": int(round(a.t_max / 0.01)), "repeat": a.repeat,
              "load_average_before": os.getloadavg()[0], "strong": [], "weak": []}
    ranks = list(range(1, a.ranks + 1))
    with tempfile.TemporaryDirectory(prefix="ctwa-bench-") as tmp:
        out = os.path.join(tmp, "b.h5")
        base = None
        for n in ranks:
            wall, total, data, cpu = best_of(n, out, workload(a.samples, a.t_max), a.repeat)
            base = base or (wall, total, data)
            report["strong"].append(dict(ranks=n, samples=a.samples, wall_s=wall,
                                         command_s=total, cpu_s=cpu, speedup=base[0] / wall,
                                         efficiency=base[0] / wall / n,
                                         samples_per_s=a.samples / wall,
                                         max_diff_vs_1=max_diff(base[2], data)))
        per_rank = a.samples // a.ranks
        wbase = None
        for n in ranks:
            wall, total, _, cpu = best_of(n, out, workload(per_rank * n, a.t_max), a.repeat)
            wbase = wbase or wall
            report["weak"].append(dict(ranks=n, samples=per_rank * n, wall_s=wall,
                                       command_s=total, cpu_s=cpu, efficiency=wbase / wall,
                                       samples_per_s=per_rank * n / wall))
        check_args = workload(max(512, a.samples // 8), min(a.t_max, 2.0))
        _, _, d1 = launch(1, out, check_args)
        _, total, d8 = launch(a.check_ranks, out, check_args)
        report["correctness"] = dict(ranks=a.check_ranks, samples=max(512, a.samples // 8),
                                     max_diff_vs_1=max_diff(d1, d8),
                                     mpi_size=int(d8["attrs"]["mpi_size"]), command_s=total,
                                     ok=bool(max_diff(d1, d8) < 1e-12))
    report["load_average_after"] = os.getloadavg()[0]
    print_table(report)
    with open(a.json, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"wrote {a.json}")
    return 0 if report["correctness"]["ok"] else 1


def print_table(rep):
    print(f"ctwa-hpc MPI scaling on {rep['host']} ({rep['cpus']} cpus, {rep['mpi_library']}, "
          f"backend {rep['backend']}); {rep['config']}, {rep['n_steps']} RK4 steps, "
          f"best of {rep['repeat']}")
    print(f"load average before/after: {rep['load_average_before']:.2f} / "
          f"{rep['load_average_after']:.2f} (other work on the machine distorts the numbers)")
    print(f"{'kind':8s} {'ranks':>5s} {'samples':>8s} {'run [s]':>8s} {'cmd [s]':>8s} "
          f"{'cpu [s]':>8s} {'samples/s':>10s} {'speed-up':>8s} {'effic.':>7s}")
    for kind in ("strong", "weak"):
        for row in rep[kind]:
            sp = f"{row['speedup']:8.2f}" if "speedup" in row else " " * 8
            print(f"{kind:8s} {row['ranks']:5d} {row['samples']:8d} {row['wall_s']:8.2f} "
                  f"{row['command_s']:8.2f} {row['cpu_s']:8.2f} {row['samples_per_s']:10.1f} "
                  f"{sp} {row['efficiency']:7.1%}")
    c = rep["correctness"]
    print(f"correctness: {c['ranks']} ranks (oversubscribed) vs 1 rank, {c['samples']} samples: "
          f"max |Δmean| = {c['max_diff_vs_1']:.2e} -> {'OK' if c['ok'] else 'FAIL'}")


if __name__ == "__main__":
    sys.exit(main())
