"""Run guards: checks before any work, the output lock, free space, stale temporaries.

A long job should fail in its first second, not after hours, and never leave a state that a
rerun cannot get past.  The command line (:mod:`ctwa_hpc.cli`) calls these in order:

1. :func:`check_output_path` (every rank): ``-o`` is a plain path, not the config file itself,
   not an input file of the run (:func:`input_files`), not a directory, no control
   characters.
2. :func:`check_time_grid` (every rank, before the time grid is allocated): the number of RK4
   steps and output times must be sane and their arrays must fit in memory
   (``time.dt = 1e-12`` would need terabytes) under the limit of the pre-flight estimate
   (:func:`~ctwa_hpc.tools.nodeinfo.rank_budget`).
3. :func:`check_setup_size` (every rank, before realization 0 is built): one work block's
   state vectors must fit; a large set-up is announced with its cost.
4. :func:`check_simulation` (every rank, after the model is built): every time function is
   finite on the RK4 stage grid, realization 0 compiles on every cluster partition (a term
   spanning three clusters), every requested output measures something; then
   :func:`check_exact_memory` for an exact reference (the memory and run time estimate
   that follows is :mod:`ctwa_hpc.driver.preflight`).
5. :class:`OutputLock` (rank 0): ``OUT.h5.lock``, created with ``O_CREAT | O_EXCL`` and
   holding pid, host, process start time and SLURM job id.  A second run on the same output
   is refused, naming the holder; a lock left by a dead process on this host (or by an
   earlier incarnation of the same SLURM job) is taken over, a directory in its place is
   named.  Creating it also proves the output directory is writable.
6. :func:`remove_output_temporaries` (rank 0, under the lock): ``OUT.h5.tmp.<pid>`` files of
   killed writers.
7. :func:`check_free_space` (rank 0): before work (output plus checkpoint) and again right
   before the final write (the exact size of what will be written).

Every refusal is a ``ValueError`` (``config.ConfigError`` for config fields) whose message
starts with the field name; the command line turns it into exit code 2.
"""
from __future__ import annotations

import glob
import json
import logging
import math
import os
import shutil
import socket
import time

import numpy as np

from ..tools.exceptions import ConfigError
from ..exact import statevector as exact
from ..method import clusters
from ..model import objects
from ..tools.nodeinfo import rank_budget

log = logging.getLogger("ctwa_hpc")

MAX_STEPS = 10**9           # RK4 steps per trajectory
MAX_OUTPUT_TIMES = 10**7
MEMORY_FRACTION = 0.5       # of this rank's share of physical memory


# -- paths -----------------------------------------------------------------------------------------
def input_files(cfg):
    """{field: path} of the data files the run reads besides its config (``model.file``,
    ``model.positions_file``; Python objects of the API are not files)."""
    model = cfg.get("model") or {}
    return {f"model.{k}": model[k] for k in ("file", "positions_file")
            if isinstance(model.get(k), str) and model[k]
            and not model[k].startswith(objects.OBJECT_PREFIX)}


def _same_file(a, b):
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
        return os.path.realpath(a) == os.path.realpath(b)
    except (OSError, ValueError):
        return False


def check_output_path(output, config_path=None, inputs=None):
    """Refuse output paths that cannot be right (ConfigError naming ``output.path``): not a
    directory, not the config file, not an input of the run (``inputs``: {field: path},
    see :func:`input_files`), even with ``force``."""
    if not isinstance(output, str) or not output:
        raise ConfigError("output.path: must not be empty")
    bad = sorted({repr(c) for c in output if ord(c) < 32 or ord(c) == 127})
    if bad:
        raise ConfigError(f"output.path: {output!r} contains control characters ({', '.join(bad)})")
    if os.path.isdir(output):
        raise ConfigError(f"output.path: {output} is a directory; give a file name such as "
                          f"{os.path.join(output, 'out.h5')}")
    if config_path is not None and _same_file(output, config_path):
        raise ConfigError(f"output.path: {output} is the config file itself; refusing to "
                          "overwrite it (even with --force)")
    for field, path in (inputs or {}).items():
        if _same_file(output, path):
            raise ConfigError(f"output.path: {output} is an input of this run ({field} = "
                              f"{path}); refusing to overwrite it (even with --force): give "
                              "another output path")


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


def check_time_grid(cfg, comm=None, node_ranks=None):
    """Steps and output times of the config, refused when absurd (before any allocation):
    their arrays must fit this rank's share of physical memory and the limit the pre-flight
    estimate uses (``output.max_memory_gb``, the node's MemAvailable shared by its ranks)."""
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
    budget, source = memory_budget(), f"{MEMORY_FRACTION:g} of this node's physical memory"
    limit, why = rank_budget(cfg, comm, node_ranks)
    if limit is not None and (budget is None or limit < budget):
        budget, source = limit, why
    if budget is not None and need > budget:
        raise ConfigError(f"time.dt: {t['dt']:g} gives {n_steps:.3g} RK4 steps; their time grid "
                          f"alone needs {_gib(need)}, more than the memory limit of a rank "
                          f"{_gib(budget)} ({source}); use a larger time.dt")
    return n_steps, n_out


# -- what the set-up and an exact reference will cost (before building them) ----------------------
PSI_COPIES = 8                # state copies of one work block (preflight.PSI_COPIES)
SETUP_S_PER_SITE = 1.5e-4     # set-up of realization 0 (model, observables, compiled problem,
                              # estimate): measured 16 s for the N = 10^5 TFIM chain
EXACT_B_PER_TERM = 84         # per basis state and Hamiltonian term: its COO parts while H is
                              # built (rows, cols, values: 32 B, twice) and the CSR matrix (20 B)
EXACT_B_PER_STRING = 16       # per basis state and Pauli string of the observables (kept)
EXACT_B_VECTORS = 200         # per basis state: ψ, expm_multiply's work vectors, the basis
EXACT_B_VECTORS_ODE = 700     # ... with the ODE solver (time-dependent), typicality, two-time


def _refuse(msg, ignore):
    if not ignore:
        raise ConfigError(msg + "; or override with --ignore-limits")
    log.warning("--ignore-limits: %s", msg)


def check_setup_size(cfg, comm=None, ignore=False, announce=False):
    """Before realization 0 is built: one work block's state vectors (at least 2 complex
    amplitudes per site, :data:`PSI_COPIES` copies per sample) must fit a rank's memory
    limit; ``announce``: say what a large set-up will cost (logged at once)."""
    N, batch = int(cfg["model"]["n_sites"]), int(cfg["method"]["batch"])
    amp = 8 if cfg["method"].get("precision") == "single" else 16   # bytes of one amplitude
    block = PSI_COPIES * batch * 2 * amp * N
    limit, source = rank_budget(cfg, comm)
    if limit is not None and block > limit:
        _refuse(f"method.batch: one work block of N = {N} sites needs at least {_gib(block)} "
                f"per rank (method.batch = {batch} samples x {PSI_COPIES} copies of the state "
                f"vectors x 2 amplitudes of {amp} B per site), more than the memory limit of a "
                f"rank {_gib(limit)} ({source}); use a smaller method.batch or model.n_sites",
                ignore)
    seconds = SETUP_S_PER_SITE * N
    if announce and seconds >= 2.0:
        log.info("set-up: N = %d sites: building and compiling realization 0 (model, initial "
                 "state, observables, clusters) takes roughly %.0f s or more at this size; "
                 "one work block needs at least %s per rank (a stop signal ends the set-up "
                 "at once)", N, seconds, _gib(block))
    return block


def exact_memory(sim):
    """(bytes, basis states, terms, Pauli strings) of the exact reference of realization 0 by
    exact diagonalization (:mod:`ctwa_hpc.exact.statevector`); None when another method (the
    closed-form Ising solution) or none applies."""
    H, state, obs = sim.build_model(0), sim.state_for(0), sim.observable_set(0)
    ok, how = exact.available(H, state, obs.columns, obs.kick)
    if not ok or "diagonalization" not in how:
        return None
    N = H.n_sites
    dim = 1 << N
    if state.is_pure and obs.kick is None:   # exact.choose_basis: the Sz sector if it applies
        th = np.mod(np.asarray(state.theta, dtype=float), 2 * np.pi)
        up, down = np.isclose(th, 0.0), np.isclose(th, np.pi)
        if np.all(up | down) and H.conserves_sz():
            dim = math.comb(N, int(np.count_nonzero(down)))
    T = len(H.terms)
    S = sum(len(col) for col in obs.columns)
    ode = H.time_dependent or not state.is_pure or obs.kick is not None
    per = 8 + EXACT_B_PER_TERM * T + EXACT_B_PER_STRING * S + \
        (EXACT_B_VECTORS_ODE if ode else EXACT_B_VECTORS)
    return dim * per, dim, T, S


def check_exact_memory(sim, comm=None, ignore=False):
    """Refuse an exact reference (``method.kind = "exact"`` or ``output.compare_exact``) whose
    state space, sparse Hamiltonian and observables exceed a rank's memory limit, before any
    of them is built (ConfigError with the number)."""
    cost = exact_memory(sim)
    limit, source = rank_budget(sim.cfg, comm)
    if cost is None or limit is None or cost[0] <= limit:
        return cost
    need, dim, T, S = cost
    field, fix = ("model.n_sites", "a smaller model.n_sites or fewer observables.names") \
        if sim.method == "exact" else \
        ("output.compare_exact", "output.compare_exact = false, or a smaller model.n_sites")
    _refuse(f"{field}: the exact reference at N = {sim.n_sites} needs about {_gib(need)} per "
            f"rank ({dim} basis states x ({T} Hamiltonian terms, {S} observable Pauli "
            f"strings)), more than the memory limit of a rank {_gib(limit)} ({source}); give "
            f"{fix}, or raise output.max_memory_gb", ignore)
    return cost


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
                if os.path.isdir(self.path):
                    raise ValueError(f"output.path: the lock {self.path} is a directory, not a "
                                     f"lock file of ctwa-hpc; if no run uses {self.output}, "
                                     f"remove it (rmdir {self.path}) and rerun") from None
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
