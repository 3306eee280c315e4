r"""Pre-flight estimate: memory per rank, output and checkpoint size, run time; refusal.

Before any work the command line calls :func:`gate` (``ctwa-hpc estimate`` prints the same
without running).  Every number is arithmetic on the config plus one short calibration of
the real kernel on realization 0, so impossible runs (``method.samples = 10**18``,
``disorder.realizations = 10**12``, N = 10⁵ with 10⁹ samples) are refused in seconds.

Memory per rank (bytes; R realizations, O offsets, n_t output times, K statistics columns,
P cross products, S = method.batch, P_r ranks)::

    moments  = 8 · R·O · (1 + n_t (2K + P))                (stats.Moments: count, s1, s2, sx)
    block    = S · (16 · A·V · 8  +  8 · n_t (K (1 + ½·antithetic) + 2P))
    during   = base + moments + block + tables
    rank 0   = base + 3 · moments + 2 · results (+ P_r · moments: gather writer with /partial)

``base`` is this process's resident size after realization 0 was built (interpreter,
libraries, model), A·V the amplitudes × vectors of one sample (its RK4 stages and buffers
counted 8 times), ``tables`` the compiled kernel tables and the RK4 time-function table, and
``results`` the estimates written to ``/observables`` and ``/realizations``.  Today every
rank holds the moments of every replica, so ``moments`` does not shrink with P_r.

Output file (bytes)::

    observables 3·8·n_t·c  +  realizations 2·8·R·n_t·c   (c components per output)
    + moments + (P_r · moments if output.write_partial) + disorder record + exact reference

Checkpoint per save: every rank writes its moments and finished item list
(``moments + 8·n_items/P_r`` each, P_r files).

Run time::

    T = (R·O · t_setup + R·O·samples · (t_draw + n_steps · t_step + n_t · t_add)) / P_r

with t_setup (model, partition and kernel tables of one replica), t_draw (sampling one
initial condition), t_step (one RK4 step of one sample, output evaluation included at the
run's output ratio) and t_add (accumulating one sample at one output time) measured on this
problem in at most a few seconds.  With ``stop.stderr_target`` T is an upper bound.

Refusal (:func:`check`): memory per rank above the limit, which is this node's
``MemAvailable`` (``/proc/meminfo``, lowered by a cgroup limit) divided by the ranks on this
node, or ``output.max_memory_gb`` if smaller; or T above :data:`MAX_RUN_TIME_S`.  The
``config.ConfigError`` names the fields to change; ``--ignore-limits`` overrides it.
"""
from __future__ import annotations

import logging
import math
import os
import time
import warnings

import numpy as np

from .config import ConfigError

log = logging.getLogger("ctwa_hpc")

YEAR_S = 365.25 * 86400.0
MAX_RUN_TIME_S = 10 * YEAR_S       # wall time at the given rank count
CALIBRATION_BUDGET_S = 2.0         # target time of the timed kernel call
PSI_COPIES = 8                     # psi0, psi, RK4 stages k1..k4, stage argument, result
ROOT_MOMENT_COPIES = 3             # local sums, reduced sums, estimator temporaries
MAX_STORED_COUPLINGS = 4_000_000   # runner.Simulation.MAX_STORED_COUPLINGS


# -- this node ----------------------------------------------------------------------------------
def _read_int(path):
    try:
        with open(path) as fh:
            text = fh.read().strip()
        return int(text)
    except (OSError, ValueError):
        return None


def memory_available():
    """Bytes this job may still allocate on this node: MemAvailable, lowered by the cgroup
    limit (cgroup v2 ``memory.max`` − ``memory.current``, or v1), None when unknown."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    for lim, cur in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                     ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                      "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit = _read_int(lim)
        if limit is not None and limit < 2**60:
            room = max(limit - (_read_int(cur) or 0), 0)
            avail = room if avail is None else min(avail, room)
            break
    return avail


def ranks_on_node(comm):
    """Ranks of this job on this node: :func:`parallel.ranks_on_node` when it exists, else
    the launcher's variables, else all ranks when size <= cpu count (else one per core)."""
    from . import parallel
    fn = getattr(parallel, "ranks_on_node", None)
    if fn is not None:
        return int(fn(comm))
    size = comm.size
    for var in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE",
                "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        v = os.environ.get(var, "").split("(")[0].split(",")[0]
        if v.isdigit() and int(v) > 0:
            return min(int(v), size)
    cpus = os.cpu_count() or 1
    return size if size <= cpus else cpus


def process_rss():
    """(current, peak) resident bytes of this process (/proc/self/status; peak from
    getrusage when /proc is absent)."""
    cur = peak = None
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if peak is None:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return (cur if cur is not None else peak), peak


def _nbytes(obj, seen=None, depth=0):
    """Bytes of the numpy arrays reachable from ``obj`` (dicts, lists, attributes)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 6:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_nbytes(v, seen, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v, seen, depth + 1) for v in obj[:100000])
    d = getattr(obj, "__dict__", None)
    return _nbytes(d, seen, depth + 1) if isinstance(d, dict) else 0


# -- the estimate ---------------------------------------------------------------------------------
def _output_components(obs):
    """{output name: components per time} of every output (shapes of a 1×2 estimate)."""
    from . import stats
    mom = stats.Moments.zeros(1, 2, obs.n_stat_columns, obs.cross)
    mom.count[:] = 3.0
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        est = stats.realization_estimates(obs.outputs, mom)
    return {name: int(np.prod(mean.shape[2:], dtype=np.int64)) for name, (mean, _) in
            est.items()}


def _disorder_bytes(sim, R, O):
    inst = sim.instance(0)
    N = sim.n_sites
    d = np.shape(inst.positions)[-1] if inst.positions is not None else 1
    total = 8 * R * N * d + 8 * R * O * N + 8 * R
    total += 8 * R * N * len(getattr(inst, "fields", None) or {})
    coup = getattr(inst, "couplings", None)
    if coup is not None and R * N * N * len(coup) <= MAX_STORED_COUPLINGS:
        total += 8 * R * N * N * len(coup)
    return total


def _calibration_shape(sim, plan):
    """(samples, steps, output every) of the timed kernel call: about 50 steps at the run's
    output ratio (one output per 50 steps when the run outputs more rarely)."""
    S = min(plan.largest_block, 16)
    if sim.antithetic and S % 2:
        S += 1
    every = sim.out_every if sim.out_every <= 50 else 50
    steps = min(every * max(1, 50 // every), sim.n_steps)  # n_steps: a multiple of out_every
    return S, steps, every


def calibrate(sim, plan, budget_s=CALIBRATION_BUDGET_S):
    """Seconds per replica set-up, per sample draw, per sample·step, per sample·output time;
    also the bytes of one sample's vectors and of the compiled tables.  Uses realization
    1 (or 0) for the set-up, realization 0 for the kernel; never longer than a few seconds."""
    from . import kernels, sampling, stats
    from .runner import propagate, propagate_two_time
    out = {}
    R = sim.cfg["disorder"]["realizations"]
    t0 = time.perf_counter()
    ctx = sim._context(1 if R > 1 else 0, 0, {})
    tables = 0
    if sim.method != "operator" and kernels.resolve_backend(sim.backend) == "cython":
        tables = _nbytes(kernels.compile_tables(ctx["problem"], ctx["plan"]))
    out["setup_s"] = time.perf_counter() - t0
    ctx = sim._context(0, 0, {}) if R > 1 else ctx
    if sim.method != "operator" and kernels.resolve_backend(sim.backend) == "cython":
        kernels.compile_tables(ctx["problem"], ctx["plan"])
    out["tables_bytes"] = tables + _nbytes(ctx["problem"]) + _nbytes(ctx["plan"]) + \
        ctx["tf_tab"].nbytes
    meth = sim.cfg["method"]
    S, steps, every = _calibration_shape(sim, plan)

    def draw(n):
        ids = np.arange(n) + meth["first_sample"]
        return sampling.draw_batch(ctx["problem"], sim.state_for(0), sim.method, meth["seed"],
                                   sim.stream_key(0, 0), ids, antithetic=sim.antithetic,
                                   scheme=meth["sampling"])

    def integrate(init, n_steps, out_every):
        tf = ctx["tf_tab"][:, :2 * n_steps + 1]
        if ctx["obs"].kick is not None:
            return propagate_two_time(ctx["problem"], ctx["plan"], init, ctx["obs"].kick,
                                      sim.dt, n_steps, out_every, tf, sim.backend)
        return propagate(ctx["problem"], ctx["plan"], init, sim.method, sim.dt, n_steps,
                         out_every, tf, sim.backend, meth["precision"])

    t0 = time.perf_counter()
    init = draw(S)
    out["draw_s"] = (time.perf_counter() - t0) / S
    out["vector_bytes"] = int(init.psi[..., 0].nbytes) if init.psi.ndim == 3 else \
        int(init.psi.nbytes // S)
    if sim.method == "operator":
        dims = np.asarray(ctx["problem"].partition.dims)
        out["vector_bytes"] = max(out["vector_bytes"], int(16 * (dims ** 2).sum()))
    n2 = 2 if sim.antithetic else 1
    small = draw(n2)
    t0 = time.perf_counter()
    integrate(small, every, every)                      # warm-up (first call, caches)
    t_warm = time.perf_counter() - t0
    per_ss = t_warm / (n2 * every)
    if t_warm < 0.25 * budget_s:
        steps = min(steps, max(every, int(budget_s / max(per_ss * S, 1e-12)) // every * every))
        t0 = time.perf_counter()
        cols = integrate(init, steps, every)
        per_ss = (time.perf_counter() - t0) / (S * steps)
        mom = stats.Moments.zeros(1, cols.shape[0], cols.shape[1], ctx["obs"].cross)
        t0 = time.perf_counter()
        mom.add(0, cols, antithetic=sim.antithetic)
        out["add_s"] = (time.perf_counter() - t0) / (S * cols.shape[0])
    else:
        out["add_s"] = 0.0
        steps = every
    out["step_s"] = per_ss
    out.update(samples=S, steps=steps, out_every=every)
    return out


def estimate(sim, comm=None, ranks=None, node_ranks=None, calibrate_time=True):
    """The pre-flight estimate of ``sim`` on ``ranks`` ranks (default comm.size) as a dict.

    Keys (bytes unless noted): ``ranks``, ``ranks_on_node``, ``n_items``, ``replicas``,
    ``n_times``, ``columns``, ``cross``, ``moments``, ``block``, ``tables``, ``base``,
    ``memory_during``, ``memory_rank0``, ``memory_per_rank`` (their max),
    ``memory_available``, ``memory_limit`` (and ``limit_source``), ``output`` (and
    ``output_parts``), ``checkpoint_per_rank``, ``checkpoint_per_save``, ``time_s``
    (None without calibration), ``calibration``, ``core_hours``, ``estimate_s``.
    """
    from . import parallel
    t_start = time.perf_counter()
    comm = comm if comm is not None else parallel.SerialComm()
    P = int(ranks or comm.size)
    L = int(node_ranks or (ranks_on_node(comm) if ranks is None else min(P, os.cpu_count() or 1)))
    cfg = sim.cfg
    plan = sim.plan_work()
    R, O = cfg["disorder"]["realizations"], sim.n_offsets
    rows = R * O
    n_t = len(sim.times)
    obs = sim.observable_set(0)
    K, Pc = obs.n_stat_columns, len(obs.cross)
    est = dict(ranks=P, ranks_on_node=L, n_items=plan.n_items, replicas=rows, n_times=n_t,
               columns=K, cross=Pc, samples_total=plan.total_samples, n_steps=sim.n_steps,
               method=sim.method)
    moments = 8 * rows * (1 + n_t * (2 * K + Pc))
    base, _ = process_rss()
    cal = calibrate(sim, plan) if calibrate_time else None
    vec = cal["vector_bytes"] if cal else 16 * 2 * sim.n_sites * 2
    tables = cal["tables_bytes"] if cal else 8 * len(obs.outputs) * (2 * sim.n_steps + 1)
    S = plan.largest_block
    block = S * (PSI_COPIES * vec + 8 * n_t * (K * (1.5 if sim.antithetic else 1.0) + 2 * Pc))
    comps = _output_components(obs)
    per_time = 8 * n_t * sum(comps.values())
    parts = dict(observables=3 * per_time, realizations=2 * R * per_time,
                 moments=moments + 16 * Pc, disorder=_disorder_bytes(sim, R, O),
                 metadata=256 * 1024 + 64 * K)
    out_cfg = cfg["output"]
    if out_cfg.get("write_partial", True):
        parts["partial"] = P * moments
    if out_cfg.get("compare_exact"):
        parts["exact"] = (2 + R) * per_time
    results = parts["observables"] + parts["realizations"]
    gather_partial = 0
    if out_cfg.get("write_partial", True) and P > 1:
        from . import io
        try:
            if io.writer_kind(comm) != "mpio" or comm.size != P:
                gather_partial = P * moments
        except ImportError:
            gather_partial = P * moments
    during = base + moments + block + tables
    rank0 = base + ROOT_MOMENT_COPIES * moments + 2 * results + gather_partial + tables
    avail = memory_available()
    user = float(out_cfg.get("max_memory_gb") or 0.0)
    if user < 0 or not math.isfinite(user):
        raise ConfigError(f"output.max_memory_gb: must be >= 0 (0: node memory), got {user}")
    limit, source = None, "unknown (no /proc/meminfo)"
    if avail is not None:
        limit, source = avail / L, f"MemAvailable {_size(avail)} / {L} rank(s) on this node"
    if user > 0 and (limit is None or user * 2**30 < limit):
        limit, source = user * 2**30, f"output.max_memory_gb = {user:g}"
    ck_rank = moments + 8 * -(-plan.n_items // P) + 4096
    est.update(moments=moments, block=int(block), tables=int(tables), base=int(base),
               memory_during=int(during), memory_rank0=int(rank0),
               memory_per_rank=int(max(during, rank0)), memory_available=avail,
               memory_limit=None if limit is None else int(limit), limit_source=source,
               output=int(sum(parts.values())), output_parts={k: int(v) for k, v in
                                                                parts.items()},
               checkpoint_per_rank=int(ck_rank), checkpoint_per_save=int(P * ck_rank),
               gather_partial=int(gather_partial), calibration=cal, time_s=None,
               core_hours=None)
    if cal is not None:
        per_sample = cal["draw_s"] + sim.n_steps * cal["step_s"] + n_t * cal["add_s"]
        total = rows * cal["setup_s"] + plan.total_samples * per_sample
        est.update(time_s=float(total / P), core_hours=float(total / 3600.0),
                   time_per_sample_s=float(per_sample))
    est["estimate_s"] = time.perf_counter() - t_start
    return est


# -- report and refusal ----------------------------------------------------------------------------
def _size(n):
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} EiB"


def _duration(s):
    if s is None:
        return "? (not calibrated)"
    if not math.isfinite(s):
        return "inf"
    if s < 120:
        return f"{s:.3g} s"
    if s < 2 * 3600:
        return f"{s / 60:.3g} min"
    if s < 3 * 86400:
        return f"{s / 3600:.3g} h"
    if s < 2 * YEAR_S:
        return f"{s / 86400:.3g} days"
    return f"{s / YEAR_S:.3g} years"


def lines(est):
    """The estimate as a few human-readable lines (logged on rank 0 before the work)."""
    p = est["output_parts"]
    out = [f"estimate: {est['n_items']} work blocks of {est['replicas']} replica(s) "
           f"(realization x offset), {est['samples_total']} samples in all, "
           f"{est['n_steps']} RK4 steps, {est['n_times']} output times, {est['columns']} "
           f"columns + {est['cross']} cross products, {est['ranks']} rank(s) "
           f"({est['ranks_on_node']} on this node)",
           f"estimate: memory per rank {_size(est['memory_per_rank'])} (moments "
           f"{_size(est['moments'])}, block {_size(est['block'])}, tables "
           f"{_size(est['tables'])}, process {_size(est['base'])}; rank 0 at the end "
           f"{_size(est['memory_rank0'])}); limit {_size(est['memory_limit'])} "
           f"({est['limit_source']})",
           f"estimate: output file {_size(est['output'])} (" +
           ", ".join(f"{k} {_size(v)}" for k, v in p.items()) + ")",
           f"estimate: checkpoint {_size(est['checkpoint_per_save'])} per save "
           f"({_size(est['checkpoint_per_rank'])} per rank file)"]
    cal = est.get("calibration")
    if est.get("time_s") is not None:
        out.append(f"estimate: run time {_duration(est['time_s'])} on {est['ranks']} rank(s) "
                   f"({est['core_hours']:.3g} core-hours; {est['time_per_sample_s']:.3g} s per "
                   f"sample; calibrated on {cal['samples']} samples x {cal['steps']} steps in "
                   f"{est['estimate_s']:.2f} s)")
    return out


def _memory_message(est, limit):
    R_O, n_t, K, Pc = est["replicas"], est["n_times"], est["columns"], est["cross"]
    mom, block = est["moments"], est["block"]
    if mom >= block:
        if R_O > 1:
            field = "disorder.realizations"
        else:
            field = "time.output_dt" if n_t >= K else "observables.names"
    else:
        field = "method.batch"
    what = (f"{field}: this run needs about {_size(est['memory_per_rank'])} per rank, more "
            f"than the limit {_size(limit)} ({est['limit_source']}); the moment sums alone "
            f"are {_size(mom)} ({R_O} realization x offset replicas x {n_t} output times x "
            f"(2 x {K} columns + {Pc} cross products) x 8 B, held by every rank), one work "
            f"block {_size(block)}. Change disorder.realizations (split the study into jobs "
            f"with disorder.first, they merge exactly), a larger time.output_dt (fewer output "
            f"times), fewer observables.names / observables.pairs / observables.subsystems, "
            f"a smaller method.batch")
    if est.get("gather_partial"):
        what += (f", output.write_partial = false (rank 0 gathers {_size(est['gather_partial'])}"
                 " of /partial)")
    return what + "; or raise output.max_memory_gb, or override with --ignore-limits"


def check(est, limit_bytes=None, ignore=False):
    """Refuse an estimate that cannot run: ConfigError naming the fields to change.

    ``limit_bytes``: memory per rank allowed (default ``est["memory_limit"]``); ``ignore``:
    log the refusals as warnings instead (``--ignore-limits``).  Returns the messages.
    """
    problems = []
    limit = est.get("memory_limit") if limit_bytes is None else limit_bytes
    if limit is not None and est["memory_per_rank"] > limit:
        problems.append(_memory_message(est, limit))
    t = est.get("time_s")
    if t is not None and t > MAX_RUN_TIME_S:
        problems.append(
            f"method.samples: this run would take about {_duration(t)} on {est['ranks']} "
            f"rank(s) ({est['core_hours']:.3g} core-hours for {est['samples_total']:.3g} "
            f"samples of {est['n_steps']} RK4 steps), more than {_duration(MAX_RUN_TIME_S)}; "
            f"reduce method.samples or disorder.realizations, time.t_max, or use more ranks; "
            f"or override with --ignore-limits")
    if problems and not ignore:
        raise ConfigError(problems[0] + ("" if len(problems) == 1 else
                                         "; also: " + "; ".join(problems[1:])))
    for msg in problems:
        log.warning("--ignore-limits: %s", msg)
    return problems


def gate(sim, comm, ignore=False):
    """The pre-flight step of ``ctwa-hpc run`` (every rank, no collective): estimate (the
    time calibration on rank 0 only), log it on rank 0, refuse via :func:`check`."""
    est = estimate(sim, comm, calibrate_time=comm.rank == 0)
    if comm.rank == 0:
        for line in lines(est):
            log.info("%s", line)
    check(est, ignore=ignore)
    return est


# -- ctwa-hpc estimate ---------------------------------------------------------------------------
def add_arguments(p):
    p.add_argument("config", help="TOML run file")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--ranks", type=int, help="MPI ranks of the planned run (default 1)")
    p.add_argument("--ranks-per-node", type=int, help="ranks per node of the planned run "
                   "(default: min(ranks, cores of this machine))")
    p.add_argument("--no-calibrate", action="store_true", help="skip the run-time calibration")
    p.add_argument("--json", help="also write the estimate as JSON")


def estimate_command(args):
    """``ctwa-hpc estimate``: print the estimate; exit 0 if the run would start, 2 if not."""
    import json
    import sys

    from . import config, guards, parallel
    from .runner import Simulation
    logging.basicConfig(level=logging.WARNING, format="ctwa-hpc %(levelname)s :: %(message)s",
                        stream=sys.stderr, force=True)
    try:
        if args.ranks is not None and args.ranks < 1:
            raise ConfigError(f"--ranks: must be >= 1, got {args.ranks}")
        cfg = config.load(args.config, args.set)
        guards.check_time_grid(cfg)
        sim = Simulation(cfg, parallel.SerialComm(), quiet=True)
        if sim.method == "exact":
            raise ConfigError("method.kind: 'exact' runs have no CTWA estimate")
        ranks = args.ranks or 1
        est = estimate(sim, parallel.SerialComm(), ranks=ranks,
                       node_ranks=args.ranks_per_node, calibrate_time=not args.no_calibrate)
    except (ValueError, ArithmeticError, OSError, ImportError) as exc:
        print(f"ctwa-hpc: error: {exc}", file=sys.stderr)
        return 2
    for line in lines(est):
        print(line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(est, fh, indent=1, default=str)
    try:
        check(est)
    except ConfigError as exc:
        print(f"ctwa-hpc: refused: {exc}", file=sys.stderr)
        return 2
    print("estimate: within the limits (ctwa-hpc run would start)")
    return 0
