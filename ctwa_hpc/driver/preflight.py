r"""Pre-flight estimate: memory per rank, output and checkpoint size, run time; refusal.

Before any work the command line calls :func:`gate` (``ctwa-hpc estimate`` prints the same
without running).  Every number is arithmetic on the config plus one short calibration of
the real kernel on realization 0, so impossible runs (``method.samples = 10**18``,
``disorder.realizations = 10**12``, N = 10⁵ with 10⁹ samples) are refused in seconds.

Memory per rank (bytes; R realizations, O offsets, n_t output times, K statistics columns,
P cross products, S = method.batch, P_r ranks, c output values per time)::

    row      = 8 · (1 + n_t (3K + P))              (one row's sums: count, s1, s2, shift, sx)
    flight   = 2 rows (stop.stderr_target: 2·⌈R·O/P_r⌉ + 2; see ctwa_hpc.driver.rowstore)
    done     = ⌈R/P_r⌉ · O · (2 · 8 · n_t · c  [+ row if /moments is kept])
    block    = S · (16 · A·V · 8  +  8 · n_t (K (1 + ½·antithetic) + 2P))
    during   = base + flight · row + done + block + tables                  (every rank)
    rank 0   = during + one other rank's rows (gather writer) + 2 · all rows if ≤ 64 MiB
    node     = rank 0 + (L − 1) · during                                 (L ranks on the node)

``base`` is this process's resident size after realization 0 was built (interpreter,
libraries, model), A·V the amplitudes × vectors of one sample (its RK4 stages and buffers
counted 8 times), ``tables`` the compiled kernel tables and the RK4 time-function table.
A rank holds sums only for the rows in flight (:mod:`ctwa_hpc.driver.rowstore`), so the memory
does not grow with R, and the done rows shrink as 1/P_r.

Output file (bytes)::

    observables 3·8·n_t·c  +  realizations 2·8·R·n_t·c + 8R   (+ R·O·row if /moments kept)
    + disorder record + exact reference                          (independent of P_r)

Checkpoint per save: every rank writes its fragments and done rows
(``flight · row + done`` each, P_r files).

Run time::

    T = (R·O · t_setup + n_items · t_call
         + R·O·samples · (t_draw + n_steps · t_step + n_t · t_add)) / P_r

with t_setup (model, partition and kernel tables of one replica), t_call (fixed cost of one
kernel call), t_draw (sampling one initial condition, its per-block part spread over the
block), t_step (one RK4 step of one sample, output evaluation included at the run's output
ratio) and t_add (accumulating one sample at one output time), measured on this problem in
at most a few seconds (:func:`calibrate`).  When the set-up of one replica would exceed that
budget (or 10⁻⁴ of the run), T is a lower bound from the sampling alone (``time_lower_bound``).
With ``stop.stderr_target`` T is an upper bound.

Refusal (:func:`check`): the node's need above its ``MemAvailable`` (``/proc/meminfo``,
lowered by a cgroup limit), or the need of one rank above ``output.max_memory_gb``; or T
above :data:`MAX_RUN_TIME_S` (one year of wall time at the requested rank count: no
allocation grants that).  The ``config.ConfigError`` names the fields to change;
``--ignore-limits`` overrides it.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import warnings

import numpy as np

from .calibration import calibrate, MAX_RUN_TIME_S, MIN_AMP_STEP_S, TABLE_BYTES_PER_TERM, YEAR_S
from ..tools.exceptions import ConfigError
from ..tools import parallel
from ..method import stats
from .. import config
from . import guards
from ..tools.nodeinfo import memory_available, memory_limit, process_rss, ranks_on_node
from .runner import Simulation

log = logging.getLogger("ctwa_hpc")

PSI_COPIES = 8                     # psi0, psi, RK4 stages k1..k4, stage argument, result
MAX_STORED_COUPLINGS = 4_000_000   # runner.Simulation.MAX_STORED_COUPLINGS


# -- the estimate ---------------------------------------------------------------------------------
def _output_components(obs):
    """{output name: components per time} of every output (shapes of a 1×2 estimate)."""
    mom = stats.Moments.zeros(1, 2, obs.n_stat_columns, obs.cross)
    mom.count[:] = 3.0
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        est = stats.realization_estimates(obs.outputs, mom)
    return {name: int(np.prod(mean.shape[2:], dtype=np.int64)) for name, (mean, _) in
            est.items()}


def _disorder_bytes(sim, R, O):
    inst, N = sim.instance(0), sim.n_sites
    d = np.shape(inst.positions)[-1] if inst.positions is not None else 1
    total = 8 * R * N * (d + O + len(getattr(inst, "fields", None) or {})) + 8 * R
    coup = getattr(inst, "couplings", None)
    if coup is not None and R * N * N * len(coup) <= MAX_STORED_COUPLINGS:
        total += 8 * R * N * N * len(coup)
    return total


def estimate(sim, comm=None, ranks=None, node_ranks=None, calibrate_time=True):
    """The pre-flight estimate of ``sim`` on ``ranks`` ranks (default comm.size) as a dict.

    Keys (bytes unless noted): ``ranks``, ``ranks_on_node``, ``n_items``, ``replicas``,
    ``n_times``, ``columns``, ``cross``, ``moments``, ``block``, ``tables``, ``base``,
    ``memory_per_rank`` (every rank while working), ``memory_rank0`` (rank 0 at the end),
    ``memory_node`` (rank 0 plus the other ranks of this node), ``memory_available``,
    ``memory_limit`` (output.max_memory_gb in bytes, or None; ``limit_source``), ``output`` (and
    ``output_parts``), ``checkpoint_per_rank``, ``checkpoint_per_save``, ``time_s``
    (None without calibration), ``calibration``, ``core_hours``, ``estimate_s``.
    """
    t_start = time.perf_counter()
    comm = comm if comm is not None else parallel.SerialComm()
    P = int(ranks or comm.size)
    L = int(node_ranks or (ranks_on_node(comm) if ranks is None else min(P, os.cpu_count() or 1)))
    cfg = sim.cfg
    plan = sim.plan_work()
    R, O = cfg["disorder"]["realizations"], sim.n_offsets
    n_t = len(sim.times)
    obs = sim.observable_set(0)
    est = dict(ranks=P, ranks_on_node=L, n_items=plan.n_items, replicas=R * O, n_times=n_t,
               columns=obs.n_stat_columns, cross=len(obs.cross),
               samples_total=plan.total_samples, n_steps=sim.n_steps, method=sim.method)
    held = _rows_held(sim, obs, est)
    # (h5py, the writer's library, is imported with the package: it is in the process size)
    base, _ = process_rss()
    cal = calibrate(sim, plan, P) if calibrate_time else None
    vec = (cal or {}).get("vector_bytes") or 16 * 2 * sim.n_sites * 2
    tables = (cal or {}).get("tables_bytes")
    if tables is None:
        n_terms = int(getattr(sim.build_model(0), "n_terms", 0) or 0)
        tables = TABLE_BYTES_PER_TERM * n_terms + 16 * (2 * sim.n_steps + 1)
    est.update(_memory(sim, plan, obs, est, held, (base, vec, tables)))
    est.update(calibration=cal, time_s=None, core_hours=None, time_lower_bound=None)
    est.update(_run_time(sim, plan, cal, vec, est))
    est["estimate_s"] = time.perf_counter() - t_start
    return est


def _rows_held(sim, obs, est):
    """(bytes of one row's sums, rows in flight on a rank, whether /moments is kept)."""
    P, rows = est["ranks"], est["replicas"]
    row = 8 * (1 + est["n_times"] * (3 * est["columns"] + est["cross"])) + \
        stats.group_bytes(est["n_times"], obs.n_grouped)
    stop_rule = bool((sim.cfg.get("stop") or {}).get("stderr_target"))
    # rows in flight: the current one and a boundary fragment; with a stopping rule every
    # row a rank worked on in a stage stays a fragment until the stage's consolidation
    flight = (2 * -(-rows // P) + 2) if stop_rule else min(rows, 2)
    return row, flight, sim.keep_moments(obs)


def _file_parts(sim, obs, est, row, keep):
    """(bytes of all output values at one time, {part: bytes} of the output file)."""
    R, O, K, Pc = sim.cfg["disorder"]["realizations"], sim.n_offsets, est["columns"], \
        est["cross"]
    comps = _output_components(obs)
    per_time = 8 * est["n_times"] * sum(comps.values())
    parts = dict(observables=3 * per_time, realizations=2 * R * per_time + 8 * R,
                 moments=(est["replicas"] * row + 16 * Pc) if keep else 0,
                 disorder=_disorder_bytes(sim, R, O), metadata=256 * 1024 + 64 * K)
    if sim.cfg["output"].get("compare_exact"):
        parts["exact"] = (2 + R) * per_time
    return per_time, parts


_memory_limit = memory_limit   # (limit per rank or None, its source): output.max_memory_gb


def _memory(sim, plan, obs, est, held, sizes):
    """The memory, output-file and checkpoint keys of the estimate (the module docstring);
    ``held`` from :func:`_rows_held`, ``sizes`` = (process size, one sample's vectors,
    tables) in bytes."""
    P, L, n_t, K, Pc = (est[k] for k in ("ranks", "ranks_on_node", "n_times", "columns",
                                         "cross"))
    R, O = sim.cfg["disorder"]["realizations"], sim.n_offsets
    row, flight, keep = held
    base, vec, tables = sizes
    share = -(-R // P)                        # realizations owned by one rank
    moments = row * flight
    S = plan.largest_block
    block = S * (PSI_COPIES * vec + 8 * n_t * (K * (1.5 if sim.antithetic else 1.0) + 2 * Pc))
    per_time, parts = _file_parts(sim, obs, est, row, keep)
    # this rank's done rows: estimates (mean, stderr) per row, plus their sums if kept
    done = share * O * (2 * per_time + (row if keep else 0))
    rows_total = parts["realizations"] + parts["moments"] + parts["disorder"]
    during = base + moments + block + tables + done
    # rank 0 at the end: its own rows, one other rank's rows (gather writer), and a small
    # run's rows gathered into the in-memory result
    gathered = rows_total if rows_total <= sim.GATHER_BYTES else 0
    rank0 = during + min(rows_total, done + parts["disorder"] // max(P, 1)) + 2 * gathered \
        + 3 * parts["observables"]
    node = max(during, rank0) + (L - 1) * during
    avail = memory_available()
    limit, source = _memory_limit(sim.cfg["output"])
    ck_rank = moments + done + 16 * flight * plan.blocks_per_row + 4096
    return dict(moments=int(moments), row=int(row), rows_in_flight=int(flight),
                keep_moments=bool(keep), done_rows=int(done), block=int(block),
                tables=int(tables), base=int(base),
                memory_per_rank=int(during), memory_rank0=int(rank0), memory_node=int(node),
                memory_available=avail, memory_limit=limit, limit_source=source,
                output=int(sum(parts.values())), output_parts={k: int(v) for k, v in
                                                                 parts.items() if v},
                checkpoint_per_rank=int(ck_rank), checkpoint_per_save=int(P * ck_rank))


def _run_time(sim, plan, cal, vec, est):
    """The run-time keys of the estimate (the module docstring): calibrated, a lower bound
    from the sampling alone when not fully calibrated, none without calibration."""
    P = est["ranks"]
    if cal is not None and cal["complete"]:
        per_sample = cal["draw_s"] + sim.n_steps * cal["step_s"] + est["n_times"] * cal["add_s"]
        total = est["replicas"] * cal["setup_s"] + plan.n_items * cal["call_s"] + \
            plan.total_samples * per_sample
        return dict(time_s=float(total / P), core_hours=float(total / 3600.0),
                    time_per_sample_s=float(total / max(plan.total_samples, 1)),
                    time_lower_bound=False)
    if cal is not None and cal["draw_s"] is not None:
        # not fully calibrated: sampling plus the least any RK4 step of the vectors can cost
        per_sample = cal["draw_s"] + sim.n_steps * MIN_AMP_STEP_S * vec / 16
        total = plan.total_samples * per_sample
        return dict(time_s=float(total / P), core_hours=float(total / 3600.0),
                    time_per_sample_s=float(per_sample), time_lower_bound=True)
    return {}


# -- report and refusal ----------------------------------------------------------------------------
def _size(n):
    if n is None:
        return "?"
    n, units = float(n), ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    k = 0
    while abs(n) >= 1024 and k < len(units) - 1:
        n, k = n / 1024, k + 1
    return f"{int(n)} B" if k == 0 else f"{n:.3g} {units[k]}"


def _duration(s):
    if s is None or not math.isfinite(s):
        return "?" if s is None else "inf"
    for limit, unit, scale in ((120, "s", 1), (7200, "min", 60), (259200, "h", 3600),
                               (YEAR_S, "days", 86400)):
        if s < limit:
            return f"{s / scale:.3g} {unit}"
    y = f"{s / YEAR_S:.3g}"
    return f"{y} year{'' if y == '1' else 's'}"


def lines(est):
    """The estimate as a few human-readable lines (logged on rank 0 before the work)."""
    p = est["output_parts"]
    out = [f"estimate: {est['n_items']} work blocks of {est['replicas']} replica(s) "
           f"(realization x offset), {est['samples_total']} samples in all, "
           f"{est['n_steps']} RK4 steps, {est['n_times']} output times, {est['columns']} "
           f"columns + {est['cross']} cross products, {est['ranks']} rank(s) "
           f"({est['ranks_on_node']} on this node)",
           f"estimate: memory per rank {_size(est['memory_per_rank'])} (rows in flight "
           f"{est['rows_in_flight']} x {_size(est['row'])}, done rows "
           f"{_size(est['done_rows'])}, block {_size(est['block'])}, tables "
           f"{_size(est['tables'])}, process {_size(est['base'])}), rank 0 at the end "
           f"{_size(est['memory_rank0'])}; this node ({est['ranks_on_node']} rank(s)) "
           f"{_size(est['memory_node'])} of MemAvailable {_size(est['memory_available'])}; "
           f"limit per rank: {est['limit_source']}",
           f"estimate: output file {_size(est['output'])} (" +
           ", ".join(f"{k} {_size(v)}" for k, v in p.items()) + ")",
           f"estimate: checkpoint {_size(est['checkpoint_per_save'])} per save "
           f"({_size(est['checkpoint_per_rank'])} per rank file)"]
    cal = est.get("calibration")
    if est.get("time_s") is not None and not est.get("time_lower_bound"):
        out.append(f"estimate: run time {_duration(est['time_s'])} on {est['ranks']} rank(s) "
                   f"({est['core_hours']:.3g} core-hours; {est['time_per_sample_s']:.3g} s per "
                   f"sample; calibrated on {cal['samples']} samples x {cal['steps']} steps in "
                   f"{est['estimate_s']:.2f} s)")
    elif est.get("time_s") is not None:
        out.append(f"estimate: run time at least {_duration(est['time_s'])} on {est['ranks']} "
                   f"rank(s) ({est['core_hours']:.3g} core-hours; not fully calibrated: "
                   f"{cal['skipped']})")
    return out


def _memory_message(est, need, limit, where):
    R_O, n_t, K, Pc = est["replicas"], est["n_times"], est["columns"], est["cross"]
    mom, block = est["moments"], est["block"]
    if est["base"] + est["tables"] >= 0.5 * limit:
        field = "output.max_memory_gb"  # the process itself is near the limit
    elif est.get("keep_moments") and est["done_rows"] >= max(mom, block):
        field = "output.moments"
    elif est["done_rows"] >= max(mom, block):
        field = "disorder.realizations"
    elif mom >= block:
        field = "time.output_dt" if n_t >= K else "observables.names"
    else:
        field = "method.batch"
    what = (f"{field}: this run needs about {_size(need)} {where}, more than "
            f"{_size(limit)}; per rank {_size(est['memory_per_rank'])}, rank 0 at the end "
            f"{_size(est['memory_rank0'])}; the moment sums of the rows in flight are "
            f"{_size(mom)} ({est['rows_in_flight']} of {R_O} realization x offset rows x "
            f"{n_t} output times x (3 x {K} columns + {Pc} cross products) x 8 B), the done "
            f"rows {_size(est['done_rows'])}, one work block {_size(block)} "
            f"(method.batch x output times x columns). Change disorder.realizations (split the "
            f"study into jobs with disorder.first, they merge exactly), a larger "
            f"time.output_dt (fewer "
            f"output times), fewer observables.names / observables.pairs / "
            f"observables.subsystems, a smaller method.batch, more ranks (the done rows "
            f"split), fewer ranks per node, output.moments = 'never'")
    return what + "; or override with --ignore-limits"


def check(est, limit_bytes=None, ignore=False):
    """Refuse an estimate that cannot run: ConfigError naming the fields to change.

    Memory: every rank's need against ``limit_bytes`` (default: ``output.max_memory_gb``),
    and the node's need (rank 0's peak plus the other ranks on the node) against its
    ``MemAvailable``.  Time: above :data:`MAX_RUN_TIME_S`.  ``ignore``: log the refusals as
    warnings instead (``--ignore-limits``).  Returns the messages.
    """
    problems = []
    limit = est.get("memory_limit") if limit_bytes is None else limit_bytes
    peak = max(est["memory_per_rank"], est["memory_rank0"])
    if limit is not None and peak > limit:
        src = est["limit_source"] if limit_bytes is None else "the given limit"
        problems.append(_memory_message(est, peak, limit, f"per rank (limit: {src})"))
    avail = est.get("memory_available")
    if avail is not None and est["memory_node"] > avail:
        problems.append(_memory_message(
            est, est["memory_node"], avail,
            f"on this node ({est['ranks_on_node']} rank(s); MemAvailable)"))
    t = est.get("time_s")
    if t is not None and t > MAX_RUN_TIME_S:
        how = "at least" if est.get("time_lower_bound") else "about"
        problems.append(
            f"method.samples: this run would take {how} {_duration(t)} on {est['ranks']} "
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
    logging.basicConfig(level=logging.WARNING, format="ctwa-hpc %(levelname)s :: %(message)s",
                        stream=sys.stderr, force=True)
    try:
        if args.ranks is not None and args.ranks < 1:
            raise ConfigError(f"--ranks: must be >= 1, got {args.ranks}")
        cfg = config.load(args.config, args.set)
        guards.check_time_grid(cfg, node_ranks=args.ranks_per_node)
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
        try:
            with open(args.json, "w") as fh:
                json.dump(est, fh, indent=1, default=str)
        except OSError as exc:
            print(f"ctwa-hpc: error: --json: cannot write {args.json}: "
                  f"{exc.strerror or exc}; give a writable path", file=sys.stderr)
            return 2
    try:
        check(est)
    except ConfigError as exc:
        print(f"ctwa-hpc: refused: {exc}", file=sys.stderr)
        return 2
    print("estimate: within the limits (ctwa-hpc run would start)")
    return 0
