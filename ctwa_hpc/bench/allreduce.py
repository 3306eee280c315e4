"""Allreduce timing of ``make bench-mpi`` (``python -m ctwa_hpc.bench.mpi --allreduce-only``).

:func:`allreduce_table` launches ``mpirun -n P python -m mpi4py -m ctwa_hpc.bench.allreduce
OUT.json REPEAT SIZE...`` for every rank count P; each rank runs :func:`allreduce_main`, which
times ``Allreduce`` (sum) of a float64 buffer of every SIZE bytes (1 KiB, 64 KiB, 1 MiB and
16 MiB by default), and rank 0 writes OUT.json.  Reported: the median time per (P, size), the
effective bandwidth (message bytes / time) and the fit t(P, m) ≈ a·log2(P) + m/B
(:func:`fit_allreduce`) that the README's scaling model to 10⁴ ranks extrapolates
(:func:`allreduce_model`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from ..tools import parallel
from .machine import ROOT, launch_env

ALLREDUCE_SIZES = (2**10, 2**16, 2**20, 2**24)     # message bytes (float64 buffers)
ALLREDUCE_WARMUP = 3


def allreduce_main(argv):
    """One rank of the allreduce timing: ``OUT.json REPEAT SIZE...`` (SIZE in bytes).

    For every size: a float64 buffer of SIZE bytes, ``ALLREDUCE_WARMUP`` untimed calls, then
    REPEAT timed ``Allreduce`` (sum, in-package through :func:`parallel.raw`) calls (a quarter
    of them, at least 5, from 16 MiB on), each one after a ``Barrier``.  A call's time is that
    of the slowest rank (what the collective costs the job); the median over the calls is
    reported, with the fastest and slowest call.  The sum is checked against P(P+1)/2.  Rank 0
    writes OUT.json."""
    comm = parallel.get_comm()
    mpi = parallel.raw(comm)
    if mpi is None:
        print("bench.allreduce: needs mpi4py under mpirun", file=sys.stderr)
        return 1
    out, repeat, sizes = argv[0], int(argv[1]), [int(x) for x in argv[2:]]
    expect = comm.size * (comm.size + 1) / 2
    rows = []
    for size in sizes:
        send = np.full(size // 8, comm.rank + 1.0)
        recv = np.empty_like(send)
        n_rep = repeat if size < 2**24 else max(5, repeat // 4)
        for _ in range(ALLREDUCE_WARMUP):
            mpi.Allreduce(send, recv)            # mpi4py's default op is MPI.SUM
        times = []
        for _ in range(n_rep):
            comm.Barrier()
            t0 = time.perf_counter()
            mpi.Allreduce(send, recv)
            times.append(time.perf_counter() - t0)
        ok = bool(recv[0] == expect and recv[-1] == expect)
        gathered = comm.gather((times, ok), root=0)
        if comm.rank == 0:
            worst = np.max([g[0] for g in gathered], axis=0)
            rows.append(dict(bytes=size, repeat=n_rep, seconds=float(np.median(worst)),
                             min_s=float(worst.min()), max_s=float(worst.max()),
                             ok=all(g[1] for g in gathered)))
    if comm.rank == 0:
        with open(out, "w") as fh:
            json.dump({"ranks": comm.size, "sizes": rows,
                       "mpi_library": parallel.library_version()}, fh)
    return 0


def allreduce_table(ranks, sizes=ALLREDUCE_SIZES, repeat=21, timeout=120):
    """``mpirun -n P`` of :func:`allreduce_main` for every P of ``ranks``: one row per
    (P, size) with the median time and the effective bandwidth bytes / time, and the fit."""
    rows, cpus, library = [], os.cpu_count() or 1, None
    env = launch_env()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ctwa-allreduce-") as tmp:
        for n in ranks:
            out = os.path.join(tmp, f"allreduce{n}.json")
            cmd = ["mpirun", "-n", str(n), sys.executable, "-m", "mpi4py", "-m",
                   "ctwa_hpc.bench.allreduce", out, str(repeat), *map(str, sizes)]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                               env=env)
            if r.returncode != 0 or not os.path.exists(out):
                rows.append(dict(ranks=n, ok=False, error=(r.stderr or r.stdout)[-2000:]))
                continue
            with open(out) as fh:
                got = json.load(fh)
            library = got["mpi_library"]
            for row in got["sizes"]:
                rows.append(dict(ranks=n, oversubscribed=n > cpus,
                                 gb_per_s=row["bytes"] / row["seconds"] / 1e9, **row))
    return {"rows": rows, "fit": fit_allreduce([r for r in rows if "seconds" in r]),
            "cpus": cpus, "mpi_library": library, "load_average_before": load,
            "load_average_after": os.getloadavg()[0]}


def fit_allreduce(rows):
    """Least-squares fit t(P, m) = a·log2(P) + m/B over the rows, in relative error (each point
    weighted by 1/t, so the 1 KiB and the 16 MiB points count alike): a [s], B [bytes/s].

    Also a pessimistic pair from the largest P alone (the most oversubscribed run here):
    ``a_bound_s`` = t(smallest message) / log2 P and ``bandwidth_bound`` = largest message / its
    time, i.e. as if every stage cost what it costs with P ranks sharing the cores."""
    if len(rows) < 2:
        return None
    t = np.array([r["seconds"] for r in rows])
    A = np.array([[np.log2(r["ranks"]), r["bytes"]] for r in rows]) / t[:, None]
    (a, inv_b), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    model = a * np.log2([r["ranks"] for r in rows]) + inv_b * np.array([r["bytes"] for r in rows])
    top = [r for r in rows if r["ranks"] == max(q["ranks"] for q in rows)]
    small, large = min(top, key=lambda r: r["bytes"]), max(top, key=lambda r: r["bytes"])
    return dict(a_s=float(a), bandwidth_bytes_per_s=float(1 / inv_b) if inv_b > 0 else None,
                max_rel_residual=float(np.max(np.abs(model / t - 1))),
                bound_ranks=top[0]["ranks"],
                a_bound_s=small["seconds"] / max(np.log2(small["ranks"]), 1.0),
                bandwidth_bound=large["bytes"] / large["seconds"])


def allreduce_model(fit, ranks, nbytes, bound=False):
    """The fitted t(P, m) [s] (``bound``: with the pessimistic pair); an extrapolation, see the
    README's scaling model."""
    if bound:
        return fit["a_bound_s"] * np.log2(ranks) + nbytes / fit["bandwidth_bound"]
    return fit["a_s"] * np.log2(ranks) + nbytes / fit["bandwidth_bytes_per_s"]


def _size(b):
    return f"{b / 2**20:g} MiB" if b >= 2**20 else f"{b / 2**10:g} KiB"


def print_allreduce(rep):
    print(f"allreduce: float64 sum, median of the slowest rank per call after a barrier "
          f"({rep['mpi_library']}; {rep['cpus']} cpus: '*' = oversubscribed, the times then "
          f"include the ranks waiting for a core; load average {rep['load_average_before']:.2f}"
          f" / {rep['load_average_after']:.2f})")
    print(f"{'ranks':>6s} {'message':>9s} {'calls':>5s} {'median [s]':>11s} {'min [s]':>10s} "
          f"{'max [s]':>10s} {'GB/s':>7s}")
    for r in rep["rows"]:
        if "seconds" not in r:
            print(f"{r['ranks']:6d} FAILED: {r.get('error', '')[:300]}")
            continue
        star = "*" if r["oversubscribed"] else " "
        print(f"{r['ranks']:5d}{star} {_size(r['bytes']):>9s} {r['repeat']:5d} "
              f"{r['seconds']:11.3e} {r['min_s']:10.3e} {r['max_s']:10.3e} {r['gb_per_s']:7.3f}"
              + ("" if r["ok"] else "  WRONG SUM"))
    f = rep["fit"]
    if f and f["bandwidth_bytes_per_s"]:
        print(f"fit t(P, m) = a*log2(P) + m/B: a = {f['a_s']:.3e} s, "
              f"B = {f['bandwidth_bytes_per_s'] / 1e9:.3f} GB/s (largest relative residual "
              f"{f['max_rel_residual']:.0%})")
        print(f"bound from P = {f['bound_ranks']} alone: a = {f['a_bound_s']:.3e} s, "
              f"B = {f['bandwidth_bound'] / 1e9:.3f} GB/s")
        for p in (1000, 10000):
            print(f"extrapolated P = {p}: " + ", ".join(
                f"{_size(m)} {allreduce_model(f, p, m):.2e} s (bound "
                f"{allreduce_model(f, p, m, bound=True):.2e} s)" for m in (2**13, 2**14, 2**20)))


if __name__ == "__main__":
    sys.exit(allreduce_main(sys.argv[1:]))
