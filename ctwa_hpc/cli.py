"""Command line: ``ctwa-hpc run|exact|bench|info|plot`` (also ``python -m ctwa_hpc``).

    ctwa-hpc run CONFIG.toml [-o OUT.h5] [--set section.key=value ...] [--force] [--resume] [-q]
    ctwa-hpc exact CONFIG.toml [-o OUT.h5] [--set ...] [--force]
    ctwa-hpc bench [--quick] [--json PATH]
    ctwa-hpc info OUT.h5
    ctwa-hpc plot [fig4 ... | --all] [--outdir DIR] [--force]      (the paper's figures)
    ctwa-hpc plot --file OUT.h5 --obs NAME [--index I] [-o PNG]       (any output file)

Under MPI launch it as ``mpirun -n P python -m mpi4py -m ctwa_hpc run CONFIG.toml`` so that a
failing rank aborts the whole job instead of hanging it.

Exit codes: 0 done (or nothing left to resume), 1 unexpected error, 2 bad configuration or
refused overwrite/checkpoint, 3 interrupted by SIGTERM/SIGUSR1/SIGINT with a checkpoint saved
(continue with the same command plus ``--resume``).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys

import numpy as np

log = logging.getLogger("ctwa_hpc")


def setup_logging(comm, quiet):
    fmt = f"%(asctime)s ctwa-hpc {comm.rank}/{comm.size} %(levelname)s :: %(message)s"
    level = logging.WARNING if (quiet or comm.rank != 0) else logging.INFO
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", stream=sys.stderr,
                        force=True)


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
    p = sub.add_parser("exact", help="exact dynamics for the same config (N <= 20)")
    _common(p)
    p = sub.add_parser("bench", help="kernel benchmark (sample-steps/s, GFLOP/s vs dgemm)")
    try:
        from . import bench
        bench.add_arguments(p)
    except ImportError:  # pragma: no cover
        pass
    p = sub.add_parser("info", help="summarize an output file")
    p.add_argument("path")
    p = sub.add_parser("plot", help="the paper's figures 4-9, or one observable of a file")
    p.add_argument("figures", nargs="*", help="fig4 fig5 fig6 fig7 fig8 fig9 discrete")
    p.add_argument("--all", action="store_true", help="every figure")
    p.add_argument("--outdir", default="figures", help="figure and data directory")
    p.add_argument("--force", action="store_true", help="recompute cached runs")
    p.add_argument("--format", default="png", choices=["png", "pdf"], help="image format")
    p.add_argument("--file", help="plot an output file instead of the paper's figures")
    p.add_argument("--obs", help="observable name (with --file)")
    p.add_argument("--index", type=int, default=0, help="component, e.g. the site (with --file)")
    p.add_argument("-o", "--output", help="image path (with --file)")
    return ap


def plot_command(args):
    from . import figures
    if args.file:
        if not args.obs:
            print("ctwa-hpc: error: plot --file needs --obs", file=sys.stderr)
            return 2
        out = args.output or os.path.splitext(args.file)[0] + f"_{args.obs}.{args.format}"
        print(figures.plot_file(args.file, args.obs, out, args.index))
        return 0
    names = list(figures.FIGURES) if args.all else args.figures
    if not names:
        print("ctwa-hpc: error: name figures or use --all", file=sys.stderr)
        return 2
    from . import parallel
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
        from . import bench
        return bench.main(args) or 0
    if args.command == "info":
        from . import io
        print_summary(io.load(args.path))
        return 0
    if args.command == "plot":
        return plot_command(args)
    from . import parallel
    comm = parallel.get_comm()
    code = run_command(args, comm)
    if code and comm.size > 1:
        # every rank has the same code: leave cleanly instead of python -m mpi4py's MPI_Abort
        parallel.finalize_and_exit(comm, code)
    return code


def _decide(cfg, sim, args, comm):
    """Rank 0's verdict before any work: (error message or None, 'run' | 'complete')."""
    from . import checkpoint, io
    if comm.rank != 0:
        return None
    path = cfg["output"]["path"]
    try:
        if (getattr(args, "resume", False) and sim.method != "exact" and os.path.exists(path)
                and not args.force):
            if io.stored_config_hash(path) == checkpoint.config_hash(cfg):
                # finished earlier (a checkpoint left by a kill after the write is stale)
                shutil.rmtree(checkpoint.directory_for(path), ignore_errors=True)
                return None, "complete"
            return (f"output.path: {path} exists (another configuration); use --force to "
                    "overwrite it"), "run"
        io.check_writable(path, args.force)
    except (FileExistsError, FileNotFoundError) as exc:
        return str(exc), "run"
    return None, "run"


def run_command(args, comm=None):
    from . import checkpoint, config, io, parallel
    from .runner import Simulation
    comm = comm if comm is not None else parallel.get_comm()
    setup_logging(comm, args.quiet)
    if comm.size > 1 and comm.rank == 0 and "OMP_NUM_THREADS" not in os.environ:
        log.warning("OMP_NUM_THREADS is not set: set it to 1 (or cores per rank) under MPI")
    overrides = list(args.set)
    if args.output:
        overrides.append(f'output.path="{args.output}"')
    if args.command == "exact":
        overrides.append('method.kind="exact"')
    try:
        cfg = config.load(args.config, overrides)
        sim = Simulation(cfg, comm, backend=getattr(args, "backend", None), quiet=args.quiet)
        if sim.method != "exact":
            sim.backend_used()  # method.backend = "cython" without a build fails here
        err, action = comm.bcast(_decide(cfg, sim, args, comm), root=0)
        if err:
            raise ValueError(err)
    except (ValueError, FileExistsError, RuntimeError) as exc:
        if comm.rank == 0:
            print(f"ctwa-hpc: error: {exc}", file=sys.stderr)
        return 2
    path = cfg["output"]["path"]
    if action == "complete":
        log.info("nothing to resume: %s is complete for this configuration (--force recomputes)",
                 path)
        return 0
    log.info("%s; method %s, %d realization(s), %d sample(s), %d rank(s)",
             sim.build_model(0).summary(), cfg["method"]["kind"],
             cfg["disorder"]["realizations"], sim.samples, comm.size)
    ck = None
    if sim.method != "exact":
        ck = checkpoint.Checkpoint(checkpoint.directory_for(path), comm, cfg,
                                   len(sim.plan_work()), cfg["output"]["checkpoint_every_s"])
    # stop signals stay caught until the output is written: a late SIGTERM/SIGUSR1 (e.g.
    # from the job script) is then ignored instead of killing a finished run
    flag = checkpoint.StopFlag().install() if ck is not None else None
    try:
        result = sim.run(checkpoint=ck, resume=getattr(args, "resume", False), force=args.force,
                         stop_flag=flag)
        io.write_output(path, result, comm, partial=sim.partial, force=args.force)
        if ck is not None:
            ck.remove()
        if flag is not None and flag.reason and not flag.acted:
            log.warning("%s arrived after the last work block: ignored", flag.reason)
    except checkpoint.CheckpointError as exc:
        if comm.rank == 0:
            print(f"ctwa-hpc: error: {exc}", file=sys.stderr)
        return 2
    except checkpoint.Interrupted as exc:
        if comm.rank == 0:
            log.warning("%s; resume with: %s", exc, checkpoint.resume_hint())
        return checkpoint.EXIT_INTERRUPTED
    finally:
        if flag is not None:
            flag.restore()
    if comm.rank == 0:
        log.info("wrote %s", path)
        print_summary(io.load(path))
    return 0


def print_summary(data):
    """A short human-readable table of an output file."""
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
            line = f"    vs exact: max |dev| = {dev.max():.4f}"
            if se is not None:
                z = dev / np.maximum(se, 1e-300)
                line += f", max z = {z.max():.2f}, mean z = {z.mean():.2f}"
            print(line)
