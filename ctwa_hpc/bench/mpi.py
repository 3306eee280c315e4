"""MPI scaling benchmark: ``make bench-mpi`` → ``python -m ctwa_hpc.bench.mpi``.

Launches ``mpirun -n P python -m mpi4py -m ctwa_hpc run`` subprocesses on one workload (the
disordered Heisenberg chain of ``jobs/heis16.toml``, eq. (41), one realization, 4-site
clusters) and reports

* **strong scaling**: a fixed total number of samples on 1 and 2 ranks (speed-up, efficiency);
* **weak scaling**: samples ∝ ranks (efficiency = t₁ / t_P);
* **correctness**: 8 ranks (oversubscribed on a small machine) give the same means as 1 rank
  (not a speed measurement);
* **scale** (``--scale-ranks``, default 1, 2, 4, 8, 16, 32; oversubscribed here): one fixed job
  (8 realizations of the N = 16 chain, 64 work blocks, 101 output times) per rank count, with
  peak RSS per rank, output bytes, checkpoint bytes per save, restart time (the checkpoint
  load of ``--resume`` after a stop at one block per rank) and the busy-time imbalance.
  The output and the per-rank checkpoint file stay flat in P (streaming rows,
  :mod:`ctwa_hpc.driver.rowstore`); the checkpoint round over all ranks grows only by the rows in
  flight (≤ 2 per rank);
* **allreduce** (``--allreduce-ranks``, default 2, 4, 8; oversubscribed from 4 ranks on a
  2-core machine): the time of one ``Allreduce`` (sum) of a float64 buffer of 1 KiB, 64 KiB,
  1 MiB and 16 MiB per rank count, the effective bandwidth (message bytes / time) and the fit
  t(P, m) ≈ a·log2(P) + m/B that the README's scaling model to 10⁴ ranks extrapolates.

Each rank of the scale runs is launched as ``python -m ctwa_hpc.bench.rankprobe PREFIX run
...`` (:mod:`ctwa_hpc.bench.rankprobe`): it runs the ordinary command line and writes
``PREFIX.rank<k>.json`` with its ``ru_maxrss``, the duration and bytes of every checkpoint
save, the duration of the checkpoint start (load and adopt), the pre-flight estimate and the
load balance.  Nothing in the production code paths is changed by it.  The allreduce timing
is :mod:`ctwa_hpc.bench.allreduce` (its ranks run ``python -m ctwa_hpc.bench.allreduce
OUT.json REPEAT SIZE...``).

Times are the run's own ``wall_time_s`` (sampling, integration, reduction; the HDF5 write and
interpreter start-up are excluded) and the launch-to-exit time of the whole command; each
point is the best of ``--repeat`` runs.  ``cpu`` is the CPU time of all ranks together (user +
system): a 2-rank run whose CPU time is twice its wall time really had two cores, so a poor
speed-up with full CPU use points at other work competing for the cores (the load average is
printed too).  Prints a table and writes JSON (``--json``).
"""
from __future__ import annotations

import argparse
import glob
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

from ..method import kernels
from ..output import hdf5
from ..tools import parallel
from .allreduce import allreduce_table, print_allreduce
from .machine import ROOT, launch_env

CONFIG = os.path.join(ROOT, "jobs", "heis16.toml")


def workload(samples, t_max):
    return ["--set", "disorder.realizations=1", "--set", f"method.samples={samples}",
            "--set", "method.batch=256", "--set", f"time.t_max={t_max}",
            "--set", "output.compare_exact=false", "--set", "output.progress_every_s=1e9"]


def launch(n, out, args, timeout=900):
    """One ``mpirun -n n`` run; returns (run wall time, command wall time, loaded file)."""
    cmd = ["mpirun", "-n", str(n), sys.executable, "-m", "mpi4py", "-m", "ctwa_hpc", "run",
           CONFIG, "-o", out, "--force", "-q", *args]
    env = launch_env()
    t0, c0 = time.perf_counter(), _child_cpu()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    total = time.perf_counter() - t0
    launch.cpu = _child_cpu() - c0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    data = hdf5.load(out)
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


def _parser():
    ap = argparse.ArgumentParser(prog="python -m ctwa_hpc.bench.mpi",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=16384, help="samples of the strong-scaling run")
    ap.add_argument("--t-max", type=float, default=10.0, help="time.t_max (steps = t_max/0.01)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per point (best is kept)")
    ap.add_argument("--ranks", type=int, default=2, help="largest rank count timed")
    ap.add_argument("--check-ranks", type=int, default=8, help="ranks of the correctness run")
    ap.add_argument("--quick", action="store_true", help="small workload (a smoke test)")
    ap.add_argument("--json", default="bench_mpi.json", help="JSON report path")
    ap.add_argument("--scale-ranks", default="1,2,4,8,16,32",
                    help="rank counts of the scale table (comma separated; '' to skip)")
    ap.add_argument("--scale-only", action="store_true", help="only the scale table")
    ap.add_argument("--allreduce-ranks", default="2,4,8",
                    help="rank counts of the allreduce timing (comma separated; '' to skip)")
    ap.add_argument("--allreduce-repeat", type=int, default=21,
                    help="timed Allreduce calls per message size (median kept)")
    ap.add_argument("--allreduce-only", action="store_true", help="only the allreduce timing")
    return ap


def _write(report, path):
    with open(path, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"wrote {path}")


def main(argv=None):
    """``python -m ctwa_hpc.bench.mpi [options]`` (``make bench-mpi``); exit code 0 if every
    check passed."""
    a = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    if a.quick:
        a.samples, a.t_max, a.repeat = 2048, 2.0, 1
    if shutil.which("mpirun") is None:
        print("bench.mpi: mpirun not found", file=sys.stderr)
        return 1
    scale_ranks = [int(x) for x in a.scale_ranks.split(",") if x.strip()]
    allreduce_ranks = [int(x) for x in a.allreduce_ranks.split(",") if x.strip()]
    if a.allreduce_only:
        rep = {"host": platform.node(), "cpus": os.cpu_count(),
               "allreduce": allreduce_table(allreduce_ranks, repeat=a.allreduce_repeat)}
        print_allreduce(rep["allreduce"])
        _write(rep, a.json)
        return 0 if all(r["ok"] for r in rep["allreduce"]["rows"]) else 1
    if a.scale_only:
        rep = {"host": platform.node(), "cpus": os.cpu_count(),
               "scale": scale_table(scale_ranks)}
        print_scale(rep["scale"])
        _write(rep, a.json)
        return 0 if all(r["ok"] for r in rep["scale"]["rows"]) else 1
    report = scaling_report(a)
    print_table(report)
    ok = report["correctness"]["ok"]
    if scale_ranks:
        report["scale"] = scale_table(scale_ranks)
        print_scale(report["scale"])
        ok = ok and all(r["ok"] for r in report["scale"]["rows"])
    if allreduce_ranks:
        report["allreduce"] = allreduce_table(allreduce_ranks, repeat=a.allreduce_repeat)
        print_allreduce(report["allreduce"])
        ok = ok and all(r["ok"] for r in report["allreduce"]["rows"])
    _write(report, a.json)
    return 0 if ok else 1


def scaling_report(a):
    """Strong and weak scaling and the correctness run of the options ``a`` (see the module
    docstring): the report without the scale and allreduce tables."""
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
    return report


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


# -- scale table -------------------------------------------------------------------------------
SCALE_JOB = ["--set", "disorder.realizations=8", "--set", "method.samples=256",
             "--set", "method.batch=32", "--set", "time.t_max=2.0",
             "--set", "time.output_dt=0.02",
             "--set", 'observables.names=["mz_staggered", "sz", "czz_connected"]',
             "--set", "output.compare_exact=false", "--set", "output.progress_every_s=1e9"]


def _launch_ranks(n, prefix, args, extra_env=None, timeout=900):
    """``mpirun -n n`` of the rank probe (:mod:`ctwa_hpc.bench.rankprobe`); returns (exit
    code, seconds, [per-rank reports], stderr)."""
    for old in glob.glob(glob.escape(prefix) + ".rank*.json"):
        os.remove(old)
    cmd = ["mpirun", "-n", str(n), sys.executable, "-m", "mpi4py", "-m",
           "ctwa_hpc.bench.rankprobe", prefix, "run", CONFIG, *args]
    env = launch_env(extra_env)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    reps = []
    for k in range(n):
        path = f"{prefix}.rank{k}.json"
        if os.path.exists(path):
            with open(path) as fh:
                reps.append(json.load(fh))
    return r.returncode, wall, reps, r.stderr


def scale_table(ranks, job=None):
    """The fixed job on every rank count of ``ranks``: a dict with one row per count."""
    job = list(job or SCALE_JOB)
    rows = []
    ref = None
    with tempfile.TemporaryDirectory(prefix="ctwa-scale-") as tmp:
        for n in ranks:
            out, cut = os.path.join(tmp, f"full{n}.h5"), os.path.join(tmp, f"cut{n}.h5")
            prefix = os.path.join(tmp, f"r{n}")
            code, wall, reps, err = _launch_ranks(n, prefix, ["-o", out, "--force", "-q", *job])
            row = dict(ranks=n, ok=code == 0 and len(reps) == n, command_s=wall)
            if not row["ok"]:
                row["error"] = err[-2000:]
                rows.append(row)
                continue
            data = hdf5.load(out)
            ref = ref or data
            rss = np.array([r["maxrss"] for r in reps], dtype=float)
            saves = [s for r in reps for s in r["saves"]]
            est = next((r["estimate"] for r in reps if r.get("estimate")), None) or {}
            lb = next((r["load_balance"] for r in reps if r.get("load_balance")), None) or {}
            row.update(rss_max=float(rss.max()), rss_median=float(np.median(rss)),
                       rss_rank0=float(rss[0]), output_bytes=os.path.getsize(out),
                       moments_bytes=int(sum(np.asarray(v).nbytes for v in
                                             data.get("moments", {}).values())),
                       ckpt_rank_bytes=float(np.median([s["bytes"] for s in saves])),
                       ckpt_save_bytes=float(np.median([s["bytes"] for s in saves]) * n),
                       ckpt_save_s=float(max(s["seconds"] for s in saves)),
                       est_memory=max(est.get("memory_per_rank") or 0,
                                      est.get("memory_rank0") or 0) or None,
                       est_output=est.get("output"),
                       est_ckpt_save=est.get("checkpoint_per_save"), est_time=est.get("time_s"),
                       wall_s=float(data["attrs"]["wall_time_s"]),
                       imbalance=lb.get("imbalance"), cpu_imbalance=lb.get("cpu_imbalance"),
                       busy_max=lb.get("max"),
                       max_diff_vs_first=_max_diff(ref, data))
            # restart: stop after one block per rank, then time the checkpoint start of --resume
            code_b, _, _, err_b = _launch_ranks(
                n, prefix, ["-o", cut, "--force", "-q", *job],
                extra_env={"CTWA_TEST_STOP_AFTER_BLOCKS": "1"})
            if code_b != 3:
                row.update(ok=False, error=f"interrupted run: exit {code_b}\n{err_b[-2000:]}")
                rows.append(row)
                continue
            code_c, wall_c, reps_c, err_c = _launch_ranks(n, prefix,
                                                          ["-o", cut, "--resume", "-q", *job])
            starts = [r["start_s"] for r in reps_c if r.get("start_s") is not None]
            row.update(resume_command_s=wall_c, restart_s=float(max(starts)) if starts else None,
                       resume_ok=code_c == 0)
            if code_c == 0:
                row["resume_max_diff"] = _max_diff(data, hdf5.load(cut))
            else:
                row.update(ok=False, error=f"resume: exit {code_c}\n{err_c[-2000:]}")
            rows.append(row)
    return {"job": " ".join(job), "config": os.path.relpath(CONFIG, ROOT), "rows": rows}


def _max_diff(a, b):
    worst = 0.0
    for g in ("observables", "realizations"):
        for name, grp in a[g].items():
            for key, x in grp.items():
                with np.errstate(invalid="ignore"):
                    d = np.abs(np.asarray(x) - np.asarray(b[g][name][key]))
                if d.size:
                    worst = max(worst, float(np.nanmax(d)))
    return worst


def _mb(x):
    return "-" if x is None else f"{x / 2**20:.1f}"


def print_scale(rep):
    print(f"scale: {rep['config']} {rep['job']}")
    print(f"{'ranks':>5s} {'RSS max':>8s} {'RSS med':>8s} {'est mem':>8s} {'output':>8s} "
          f"{'moments':>8s} {'est out':>8s} {'ckpt/rk':>8s} {'ckpt/sv':>8s} {'est ck':>8s} "
          f"{'restart':>8s} "
          f"{'cmd':>6s} {'imbal':>6s} {'cpu':>5s} {'Δ vs 1':>8s}")
    print(f"{'':5s} {'[MiB]':>8s} {'[MiB]':>8s} {'[MiB]':>8s} {'[MiB]':>8s} {'[MiB]':>8s} "
          f"{'[MiB]':>8s} {'[MiB]':>8s} {'[MiB]':>8s} {'[MiB]':>8s} {'[s]':>8s} {'[s]':>6s} "
          f"{'':>6s}")
    for r in rep["rows"]:
        if not r["ok"] and "rss_max" not in r:
            print(f"{r['ranks']:5d} FAILED: {r.get('error', '')[:300]}")
            continue
        rs = "-" if r.get("restart_s") is None else f"{r['restart_s']:.3f}"
        imb = "-" if r.get("imbalance") is None else f"{100 * r['imbalance']:.0f}%"
        cpu = "-" if r.get("cpu_imbalance") is None else f"{100 * r['cpu_imbalance']:.0f}%"
        print(f"{r['ranks']:5d} {_mb(r['rss_max']):>8s} {_mb(r['rss_median']):>8s} "
              f"{_mb(r['est_memory']):>8s} {_mb(r['output_bytes']):>8s} "
              f"{_mb(r['moments_bytes']):>8s} {_mb(r['est_output']):>8s} "
              f"{_mb(r['ckpt_rank_bytes']):>8s} {_mb(r['ckpt_save_bytes']):>8s} {_mb(r['est_ckpt_save']):>8s} {rs:>8s} "
              f"{r['command_s']:6.1f} {imb:>6s} {cpu:>5s} {r['max_diff_vs_first']:8.1e}"
              + ("" if r["ok"] else f"  FAILED: {r.get('error', '')[:200]}"))


if __name__ == "__main__":
    sys.exit(main())
