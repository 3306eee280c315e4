"""Command line: ``ctwa-hpc run|exact|bench|info|plot`` (also ``python -m ctwa_hpc``).

    ctwa-hpc run CONFIG.toml [-o OUT.h5] [--set section.key=value ...] [--force] [--resume] [-q]
    ctwa-hpc exact CONFIG.toml [-o OUT.h5] [--set ...] [--force]
    ctwa-hpc bench [--quick] [--json PATH]
    ctwa-hpc estimate CONFIG.toml [--set ...] [--ranks P] [--ranks-per-node L]  (pre-flight)
    ctwa-hpc info OUT.h5                                  (layout, config, provenance)
    ctwa-hpc merge A.h5 B.h5 ... -o C.h5 [--force]        (jobs over disjoint ranges)
    ctwa-hpc check-dt CONFIG.toml [--samples S] [--realizations R] [--set ...]
    ctwa-hpc plot [fig4 ... | --all] [--outdir DIR] [--force]      (the paper's figures)
    ctwa-hpc plot --file A.h5 [--file B.h5] --obs NAME [--obs ...] [--index I ...] [-o PNG]

Under MPI launch it as ``mpirun -n P python -m mpi4py -m ctwa_hpc run CONFIG.toml`` so that a
failing rank aborts the whole job instead of hanging it.

Exit codes (the same on every rank; under MPI ``mpirun`` returns it too):

  0  done, or nothing left to resume (``--resume`` on a finished output)
  1  unexpected error, or the output could not be written (disk full, also during the
     final write; I/O error): one message, the checkpoint is kept with every finished
     block, the temporary and the lock removed; free space and rerun with ``--resume``
  2  bad input or refused: configuration errors (the message starts with the field), an
     existing output without ``--force``, ``-o`` equal to the config file or to an input
     file of the run (even with ``--force``), an output in use by another run (lock
     ``OUT.h5.lock``), a damaged or foreign checkpoint, a checkpoint holding finished work
     that this command would discard (``--force`` discards it), errors found during the
     run (a non-finite trajectory: reduce time.dt), a run the pre-flight estimate refuses
     (memory of the node or ``output.max_memory_gb`` exceeded by the time grid, one work
     block, an exact reference or the run; over a year of run time; ``--ignore-limits``
     overrides it, ``--force`` does not)
  3  interrupted by SIGTERM/SIGUSR1/SIGINT with a checkpoint saved (continue with the same
     command plus ``--resume``), or during the set-up, before any work (nothing written:
     run the same command again)

An error on one rank only (e.g. the config file not visible on one node) stops every rank
within seconds, and its message is printed.  Signals: send SIGUSR1 to ``mpirun`` (it forwards
it to every rank) or SIGTERM to the ranks themselves (``srun``/``scancel --signal``), as
``jobs/single.slurm`` does; SIGTERM or SIGINT to ``mpirun`` itself makes Open MPI kill the
ranks: it forwards SIGTERM, SIGKILLs them 1 s later (``odls_base_sigkill_timeout``) and exits
1 whatever they return; Open MPI 4.1 refuses to forward SIGTERM as an ordinary signal
(``ess_base_forward_signals``).  The checkpoint is saved if the ranks got the time to write it.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np

from . import config
from .bench import throughput as bench
from .driver import checkpoint, merge, preflight
from .driver.session import RunError, Session, report
from .extras import checkdt, figures, plotting
from .output import hdf5
from .tools import parallel
from .tools.log import setup_logging

log = logging.getLogger("ctwa_hpc")


def _common(p):
    p.add_argument("config", help="TOML run file")
    p.add_argument("-o", "--output", help="output HDF5 file (overrides output.path)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def build_parser():
    ap = argparse.ArgumentParser(prog="ctwa-hpc", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a CTWA (or exact) simulation from a TOML file")
    _common(p)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--backend", choices=["auto", "cython", "numpy"], help="kernel backend")
    p.add_argument("--ignore-limits", action="store_true", help="start even when the "
                   "pre-flight estimate exceeds the memory limit per rank or a year of run "
                   "time (--force only overwrites the output)")
    p = sub.add_parser("exact", help="exact dynamics for the same config (N <= 20)")
    _common(p)
    p = sub.add_parser("bench", help="kernel benchmark (sample-steps/s, GFLOP/s vs dgemm)")
    bench.add_arguments(p)
    p = sub.add_parser("estimate", help="pre-flight estimate: memory per rank, output and "
                       "checkpoint size, run time (nothing is run)")
    preflight.add_arguments(p)
    p = sub.add_parser("info", help="layout, config and provenance of an output file")
    p.add_argument("path")
    p = sub.add_parser("merge", help="merge jobs over disjoint realizations or sample ranges")
    p.add_argument("inputs", nargs="+", metavar="IN.h5", help="output files of the jobs")
    p.add_argument("-o", "--output", required=True, help="merged output file")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p = sub.add_parser("check-dt", help="integrator error at dt vs dt/2 against the Monte "
                       "Carlo error (same random numbers)")
    p.add_argument("config", help="TOML run file")
    p.add_argument("--samples", type=int, help="samples per realization and offset "
                   "(default: min(method.samples, 100))")
    p.add_argument("--realizations", type=int, help="realizations checked (default: "
                   "min(disorder.realizations, 2))")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p = sub.add_parser("plot", help="the paper's figures 4-9, or one observable of a file")
    p.add_argument("figures", nargs="*", help="fig4 fig5 fig6 fig7 fig8 fig9 discrete")
    p.add_argument("--all", action="store_true", help="every figure")
    p.add_argument("--outdir", default="figures", help="figure and data directory")
    p.add_argument("--force", action="store_true", help="recompute cached runs")
    p.add_argument("--format", default="png", choices=["png", "pdf"], help="image format")
    p.add_argument("--file", action="append", help="plot output files instead of the paper's "
                   "figures (repeatable: curves overlaid)")
    p.add_argument("--obs", action="append", help="observable name (with --file; repeatable)")
    p.add_argument("--index", type=int, action="append", help="component, e.g. the site (with "
                   "--file; repeatable; default 0)")
    p.add_argument("-o", "--output", help="image path (with --file)")
    return ap


def plot_command(args):
    if args.file:
        return plotting.plot_command(args)
    names = list(figures.FIGURES) if args.all else args.figures
    if not names:
        print("ctwa-hpc: error: name figures or use --all", file=sys.stderr)
        return 2
    comm = parallel.get_comm()
    setup_logging(comm, True)
    try:
        figures.make(names, args.outdir, args.force, comm, args.format)
    except ValueError as exc:
        print(f"ctwa-hpc: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        return bench.main(args) or 0
    if args.command == "estimate":
        return preflight.estimate_command(args)
    if args.command == "info":
        return hdf5.info_command(args, print_summary)
    if args.command == "merge":
        return merge.merge_command(args)
    if args.command == "check-dt":
        code = checkdt.check_dt_command(args)
        comm = parallel.get_comm()
        if code and comm.size > 1:   # agreed by every rank: a clean exit, not MPI_Abort
            parallel.finalize_and_exit(comm, code)
        return code
    if args.command == "plot":
        return plot_command(args)
    comm = parallel.get_comm()
    code = run_command(args, comm)
    if _HARD_EXIT is not None:
        # a failed HDF5 write leaves h5py objects whose cleanup can segfault (HDF5 after
        # ENOSPC): leave without running finalizers; the message is printed, the checkpoint
        # kept and the temporaries removed already
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code and comm.size > 1:
        # every rank has the same code: leave cleanly instead of python -m mpi4py's MPI_Abort
        parallel.finalize_and_exit(comm, code)
    return code


def _load_config(args):
    """The resolved config of ``run``/``exact``: the file, ``--set``, ``-o`` (never re-parsed)."""
    overrides = list(args.set)
    if args.command == "exact":
        overrides.append('method.kind="exact"')
    cfg = config.load(args.config, overrides)
    if args.output is not None:  # the path as given: never re-parsed as TOML
        cfg["output"]["path"] = args.output
    return cfg


def run_command(args, comm=None):
    """``run`` and ``exact``: the stages of :class:`~ctwa_hpc.driver.session.Session`; returns
    the exit code (the same on every rank), or aborts the MPI job with the failing rank's code
    when an error cannot be agreed on."""
    global _HARD_EXIT
    comm = comm if comm is not None else parallel.get_comm()
    setup_logging(comm, args.quiet)
    if comm.size > 1 and comm.rank == 0 and "OMP_NUM_THREADS" not in os.environ:
        log.warning("OMP_NUM_THREADS is not set: set it to 1 (or cores per rank) under MPI")
    # stop signals are caught from the start until the output is written: a stop during the
    # setup ends the run at its first block boundary (exit 3), a late one is ignored
    flag = checkpoint.StopFlag().install()
    sess = Session(lambda: _load_config(args), comm, config_path=args.config,
                   force=args.force, resume=getattr(args, "resume", False),
                   backend=getattr(args, "backend", None), quiet=args.quiet,
                   ignore_limits=getattr(args, "ignore_limits", False), stop_flag=flag,
                   summary=print_summary)
    try:
        sess.run()
    except RunError as err:
        report(err.lines, comm)
        return err.code
    finally:
        flag.restore()
        _HARD_EXIT = sess.hard_exit
    return 0


_HARD_EXIT = None   # a failed HDF5 write: main leaves with os._exit (see there)



def _zline(dev, se, what):
    """' vs exact' line: max |dev|, and z = |dev|/se where se > 0 (no z without an error)."""
    line = f"    vs exact: max |dev| = {dev.max():.4g}"
    if se is None:
        return line + " (no error estimate)"
    se = np.broadcast_to(se, dev.shape)
    pos = se > 0
    if not pos.any():
        return line + " (no sampling error: deterministic run)"
    z = dev[pos] / se[pos]
    line += f", z = |dev|/{what}: max {z.max():.2f}, mean {z.mean():.2f}"
    if not pos.all():
        line += f"; {int((~pos).sum())} point(s) without error, max |dev| there " \
                f"{dev[~pos].max():.3g}"
    return line


def print_summary(data):
    """A short human-readable table of an output file.

    Against the exact reference the z-scores use ``stderr_within``, the Monte Carlo error
    alone: CTWA and the exact reference share the disorder realizations, so the disorder spread
    is not part of their difference.  For a correct run |z| averages ≈ 0.8 (half-normal).
    """
    a = data["attrs"]
    t = data["time"]
    print(f"ctwa-hpc {a.get('ctwa_hpc_version')}  method={a.get('method')}  "
          f"samples={a.get('n_samples')}  realizations={a.get('n_realizations')}  "
          f"ranks={a.get('mpi_size')}  backend={a.get('backend')}  wall={a.get('wall_time_s', 0):.2f}s")
    idx = sorted(set(np.linspace(0, len(t) - 1, min(len(t), 6)).round().astype(int).tolist()))
    for name, o in data["observables"].items():
        mean = o["mean"].reshape(len(t), -1)
        se = o.get("stderr")
        se = se.reshape(len(t), -1) if se is not None else None
        label = name if mean.shape[1] == 1 else f"{name}[0] (of {mean.shape[1]})"
        cells = []
        for i in idx:
            s = f"{mean[i, 0]:+.4f}"
            if se is not None:
                s += f"±{se[i, 0]:.4f}"
            cells.append(f"t={t[i]:g}: {s}")
        print(f"  {label:24s} " + "  ".join(cells))
        if name in data.get("exact", {}):
            ex = data["exact"][name]["mean"].reshape(len(t), -1)
            dev = np.abs(mean - ex)
            within = o.get("stderr_within")
            if within is not None:
                print(_zline(dev, within.reshape(len(t), -1), "stderr_within"))
            else:
                print(_zline(dev, se, "stderr"))
    compare = (data.get("config") or {}).get("output", {}).get("compare_exact")
    if compare and not data.get("exact") and a.get("method") != "exact":
        reason = a.get("exact_skipped") or "no exact reference for this run"
        print(f"  exact reference skipped: {reason}")
