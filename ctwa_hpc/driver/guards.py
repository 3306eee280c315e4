"""Run guards: checks before any work, the output lock, free space, stale temporaries.

A long job should fail in its first second, not after hours, and never leave a state that a
rerun cannot get past.  The command line (:mod:`ctwa_hpc.cli`) calls these in order:

1. :func:`check_output_path` (every rank): ``-o`` is a plain path, not the config file itself,
   not a directory, no control characters.
2. :func:`check_time_grid` (every rank, before the time grid is allocated): the number of RK4
   steps and output times must be sane and their arrays must fit in memory
   (``time.dt = 1e-12`` would need terabytes).
3. :func:`check_simulation` (every rank, after the model is built): every time function is
   finite on the RK4 stage grid, realization 0 compiles on every cluster partition (a term
   spanning three clusters), every requested output measures something (the memory and run
   time estimate that follows is :mod:`ctwa_hpc.driver.preflight`).
4. :class:`OutputLock` (rank 0): ``OUT.h5.lock``, created with ``O_CREAT | O_EXCL`` and
   holding pid, host, process start time and SLURM job id.  A second run on the same output
   is refused, naming the holder; a lock left by a dead process on this host (or by an
   earlier incarnation of the same SLURM job) is taken over.  Creating it also proves the
   output directory is writable.
5. :func:`remove_output_temporaries` (rank 0, under the lock): ``OUT.h5.tmp.<pid>`` files of
   killed writers.
6. :func:`check_free_space` (rank 0): before work (output plus checkpoint) and again right
   before the final write (the exact size of what will be written).

Every refusal is a ``ValueError`` (``config.ConfigError`` for config fields) whose message
starts with the field name; the command line turns it into exit code 2.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import socket
import time

import numpy as np

from ..tools.exceptions import ConfigError
from ..method import clusters

log = logging.getLogger("ctwa_hpc")

MAX_STEPS = 10**9           # RK4 steps per trajectory
MAX_OUTPUT_TIMES = 10**7
MEMORY_FRACTION = 0.5       # of this rank's share of physical memory


# -- paths -----------------------------------------------------------------------------------------
def check_output_path(output, config_path=None):
    """Refuse output paths that cannot be right (ConfigError naming ``output.path``)."""
    if not isinstance(output, str) or not output:
        raise ConfigError("output.path: must not be empty")
    bad = sorted({repr(c) for c in output if ord(c) < 32 or ord(c) == 127})
    if bad:
        raise ConfigError(f"output.path: {output!r} contains control characters ({', '.join(bad)})")
    if os.path.isdir(output):
        raise ConfigError(f"output.path: {output} is a directory; give a file name such as "
                          f"{os.path.join(output, 'out.h5')}")
    if config_path is not None and os.path.exists(output) and os.path.exists(config_path):
        same = os.path.samefile(output, config_path)
    else:
        same = config_path is not None and \
            os.path.realpath(output) == os.path.realpath(config_path)
    if same:
        raise ConfigError(f"output.path: {output} is the config file itself; refusing to "
                          "overwrite it (even with --force)")


def remove_output_temporaries(path):
    """Delete ``<path>.tmp.*`` left by killed writers (call under the output lock)."""
    found = sorted(glob.glob(glob.escape(os.path.abspath(path)) + ".tmp.*"))
    for p in found:
        try:
            os.remove(p)
            log.info("removed stale temporary %s", p)
        except OSError as exc:
            log.warning("cannot remove stale temporary %s: %s", p, exc)
    return found


# -- memory ----------------------------------------------------------------------------------------
def physical_memory():
    """Bytes of RAM of this node (None when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def ranks_per_node():
    for var in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"):
        v = os.environ.get(var, "").split("(")[0].split(",")[0]
        if v.isdigit() and int(v) > 0:
            return int(v)
    return 1


def memory_budget():
    mem = physical_memory()
    return None if mem is None else MEMORY_FRACTION * mem / ranks_per_node()


def _gib(n):
    return f"{n / 2**30:.3g} GiB"


def check_time_grid(cfg):
    """Steps and output times of the config, refused when absurd (before any allocation)."""
    t = cfg["time"]
    out_every = int(round(t["output_dt"] / t["dt"]))
    n_out = int(round(t["t_max"] / t["output_dt"]))
    n_steps = n_out * out_every
    if n_steps > MAX_STEPS:
        raise ConfigError(f"time.dt: {t['dt']:g} gives {n_steps:.3g} RK4 steps up to t_max = "
                          f"{t['t_max']:g} (at most {MAX_STEPS:.0e}); use a larger time.dt")
    if n_out + 1 > MAX_OUTPUT_TIMES:
        raise ConfigError(f"time.output_dt: {t['output_dt']:g} gives {n_out + 1:.3g} output "
                          f"times (at most {MAX_OUTPUT_TIMES:.0e}); use a larger time.output_dt")
    need = 8 * (n_out + 1) + 2 * 8 * (2 * n_steps + 1)   # times, RK4 stage grid + one table
    budget = memory_budget()
    if budget is not None and need > budget:
        raise ConfigError(f"time.dt: {t['dt']:g} gives {n_steps:.3g} RK4 steps; their time grid "
                          f"alone needs {_gib(need)}, more than this rank's memory budget "
                          f"{_gib(budget)}; use a larger time.dt")
    return n_steps, n_out


def _time_functions(H):
    fs = getattr(H, "time_functions", None)
    return list(fs()) if callable(fs) else []


def check_simulation(sim):
    """Checks that need the built model (realization 0); raise ValueError/ConfigError."""
    t_stage = np.arange(2 * sim.n_steps + 1) * (0.5 * sim.dt)
    H = sim.build_model(0)
    for f in _time_functions(H):
        if hasattr(f, "check_grid"):
            f.check_grid(t_stage)
        elif not np.all(np.isfinite(np.asarray(f(t_stage), dtype=float))):
            raise ConfigError("model.terms.f: a time function is not finite on the time grid")
    obs = sim.observable_set(0)
    for name, o in obs.outputs.items():
        if np.size(getattr(o, "cols", 1)) == 0:
            raise ConfigError(f"observables.names: {name!r} has nothing to measure in this "
                              f"model (N = {sim.n_sites}: no site pairs or subsystems)")
    if sim.method != "exact":
        for part in sim.partitions(0):
            clusters.compile_problem(H, part)
            obs.compile(part)


# -- disk ----------------------------------------------------------------------------------------
def check_free_space(path, need, what):
    """ValueError if the directory of ``path`` has less than ``need`` bytes free (+5 %, 64 KiB)."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        free = shutil.disk_usage(d).free
    except OSError:
        return
    want = int(1.05 * need) + 2**16
    if free < want:
        raise ValueError(f"output.path: only {free / 2**20:.3g} MiB free in {d}, {what} needs "
                         f"about {want / 2**20:.3g} MiB")


def result_bytes(result, mpi_size=None):
    """Bytes of the arrays of ``result`` (rank 0; the per-realization rows held by the ranks
    come on top, see :attr:`ctwa_hpc.output.rows.LocalRows.nbytes`)."""
    total = 0

    def add(obj):
        nonlocal total
        if isinstance(obj, np.ndarray):
            total += obj.nbytes
        elif isinstance(obj, dict):
            for v in obj.values():
                add(v)
        elif isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], np.ndarray):
            for v in obj:
                add(v)

    add(result.outputs)
    if result.exact is not None:
        add(result.exact)
    add(getattr(result, "extra", {}))
    return total + 8 * len(result.times) + 256 * 1024


# -- lock ----------------------------------------------------------------------------------------
def _proc_start(pid):
    """Start time of a local process in clock ticks (None when unknown)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid, start):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False  # exited, not yet reaped
    except (OSError, IndexError):
        pass
    now = _proc_start(pid)
    return start is None or now is None or now == start


def _local(h):
    return h.get("host") == socket.gethostname() and isinstance(h.get("pid"), int)


class OutputLock:
    """Exclusive use of one output path (and its checkpoint) by one run (rank 0 holds it)."""

    def __init__(self, output_path):
        self.output = output_path
        self.path = os.path.abspath(output_path) + ".lock"
        self.held = False
        self.info = {"pid": os.getpid(), "host": socket.gethostname(),
                     "start": _proc_start(os.getpid()),
                     "slurm_job": os.environ.get("SLURM_JOB_ID", ""),
                     "since": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def _holder(self):
        try:
            with open(self.path) as fh:
                obj = json.load(fh)
            return obj if isinstance(obj, dict) else {}
        except (OSError, ValueError):
            return None

    def _stale(self, h):
        if h is None:  # empty or unreadable: a writer killed between open and write
            try:
                return time.time() - os.path.getmtime(self.path) > 10.0
            except OSError:
                return True
        job = str(h.get("slurm_job") or "")
        if job and job == self.info["slurm_job"]:
            return True  # an earlier incarnation of this (requeued) job
        pid = h.get("pid")
        if h.get("host") == self.info["host"] and isinstance(pid, int):
            # our own pid: a previous run in this process, which is over
            return pid == os.getpid() or not _alive(pid, h.get("start"))
        return False

    def acquire(self):
        d = os.path.dirname(self.path)
        if not os.path.isdir(d):
            raise ValueError(f"output.path: directory {d} does not exist")
        grace = time.monotonic() + 1.5  # an aborted holder may take a moment to exit
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                h = self._holder()
                if self._stale(h):
                    log.warning("taking over the stale lock %s (%s)", self.path,
                                _describe(h) if h else "empty")
                    try:
                        os.remove(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                if h is None or (_local(h) and time.monotonic() < grace):
                    time.sleep(0.1)  # being written, or the holder is just exiting (aborted)
                    continue
                raise ValueError(f"output.path: {self.output} is in use by another run "
                                 f"({_describe(h)}); wait for it to finish, or delete "
                                 f"{self.path} if that run is gone") from None
            except OSError as exc:
                raise ValueError(f"output.path: directory {d} is not writable "
                                 f"({exc.strerror or exc})") from None
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(self.info, fh)
            except OSError as exc:
                _remove(self.path)
                raise ValueError(f"output.path: cannot write the lock {self.path} "
                                 f"({exc.strerror or exc})") from None
            self.held = True
            return self
        raise ValueError(f"output.path: cannot take the lock {self.path} (it keeps changing)")

    def release(self):
        if self.held:
            h = self._holder()
            if h is None or h.get("pid") == self.info["pid"]:
                _remove(self.path)
            self.held = False


def _describe(h):
    s = f"pid {h.get('pid')} on {h.get('host')}"
    if h.get("slurm_job"):
        s += f", SLURM job {h['slurm_job']}"
    return s + f", since {h.get('since', '?')}"


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass
