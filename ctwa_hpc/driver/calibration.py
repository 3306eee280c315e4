"""Calibration of the pre-flight run-time estimate: time the real kernel on this problem.

:func:`calibrate` (called by :func:`ctwa_hpc.driver.preflight.estimate` on rank 0) times the pieces
of one work block on realization 0 within a budget of about two seconds: a sample draw, the
set-up of one replica (cluster problem, observable plan, kernel tables), one RK4 step of one
sample (the output evaluation included at the run's output ratio, on one full kernel chunk)
and the accumulation of one sample at one output time.  The model of the run time built from
these is documented in :mod:`ctwa_hpc.driver.preflight`.
"""
from __future__ import annotations

import time
import types

import numpy as np

from ..method import kernels, sampling, stats, tables
from .problem import propagate, propagate_two_time

YEAR_S = 365.25 * 86400.0
MAX_RUN_TIME_S = YEAR_S            # wall time at the given rank count: beyond any allocation
CALIBRATION_BUDGET_S = 2.0         # target time of the timed kernel call
SETUP_S_PER_TERM = 5e-5            # predicted set-up seconds per Hamiltonian term (measured
                                   # 3e-5..8e-5: compile_problem + kernel tables, N = 1e5)
TABLE_BYTES_PER_TERM = 400         # compiled tables per term when not built (measured ~350)
CALIBRATION_FRACTION = 1e-4       # of the run-time lower bound the calibration may take
MIN_AMP_STEP_S = 1e-9              # lower bound: one RK4 step of one amplitude (4 stages)


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


def _calibration_shape(sim, plan):
    """(samples, steps, output every) of the timed kernel call: about 50 steps at the run's
    output ratio (one output per 50 steps when the run outputs more rarely), on one full
    chunk of the compiled kernel (a partial chunk costs a whole one: timing 16 samples of a
    64-sample single-precision chunk overestimated such runs by ~1.7×) or the run's block."""
    chunk = 16
    try:
        info = kernels.compiled_info()
        if info.get("compiled"):
            single = sim.cfg["method"].get("precision") == "single"
            chunk = int(info.get("single_chunk_width" if single else "chunk_width") or 16)
    except ImportError:
        pass
    S = min(plan.largest_block, max(16, chunk))
    if sim.antithetic and S % 2:
        S += 1
    every = sim.out_every if sim.out_every <= 50 else 50
    steps = min(every * max(1, 50 // every), sim.n_steps)  # n_steps: a multiple of out_every
    return S, steps, every


def calibrate(sim, plan, ranks=1, budget_s=CALIBRATION_BUDGET_S):
    """Time the pieces of one work block on this problem (realization 0), within a budget.

    Returns seconds per sample draw (``draw_s``), per replica set-up (``setup_s``: cluster
    problem, observable plan, kernel tables), per sample·step (``step_s``, the output
    evaluation included at the run's output ratio) and per sample·output time (``add_s``),
    the bytes of one sample's vectors and of the tables, and ``complete``.  The stages stop
    early (``complete = False``, ``skipped`` says why) when the draws alone already put the
    run beyond :data:`MAX_RUN_TIME_S`, or when the set-up would take longer than the budget
    (predicted from the number of Hamiltonian terms); the caller then uses a lower bound.
    """
    t_begin = time.perf_counter()
    S, steps, every = _calibration_shape(sim, plan)
    n2 = 2 if sim.antithetic else 1
    out = dict(samples=0, steps=0, out_every=every, draw_s=None, setup_s=None, step_s=None,
               call_s=0.0, add_s=0.0, complete=False, skipped=None, vector_bytes=None,
               tables_bytes=None)
    part = sim.partitions(0)[0]
    t_small, allowed = _first_draw(sim, plan, part, ranks, budget_s, n2, out)
    if out["skipped"] is None:
        _check_setup_cost(sim, allowed, out)
    if out["skipped"] is not None:
        return out
    ctx, other = _time_setup(sim, budget_s, out)
    init = _time_draw(sim, plan, part, ctx, (S, n2), t_small, out)
    cols = _time_steps(sim, ctx, init, (S, steps, every, n2),
                       (t_begin, max(allowed, budget_s)), out)
    _time_add(sim, ctx, cols, out)
    out["complete"] = True
    _forget_tables([ctx] + ([other] if other is not None else []))
    return out


def _draw(sim, problem, n):
    """Initial conditions of samples first_sample .. first_sample + n − 1 of realization 0."""
    meth = sim.cfg["method"]
    ids = np.arange(n) + meth["first_sample"]
    return sampling.draw_batch(problem, sim.state_for(0), sim.method, meth["seed"],
                               sim.stream_key(0, 0), ids, antithetic=sim.antithetic,
                               scheme=meth["sampling"])


def _integrate(sim, ctx, batch, n_steps, every):
    """The run's kernel call (one-time or two-time) on ``batch`` for ``n_steps`` steps."""
    tf = ctx["tf_tab"][:, :2 * n_steps + 1]
    if ctx["obs"].kick is not None:
        return propagate_two_time(ctx["problem"], ctx["plan"], batch, ctx["obs"].kick,
                                  sim.dt, n_steps, every, tf, sim.backend)
    return propagate(ctx["problem"], ctx["plan"], batch, sim.method, sim.dt, n_steps,
                     every, tf, sim.backend, sim.cfg["method"]["precision"])


def _first_draw(sim, plan, part, ranks, budget_s, n2, out):
    """Stage 1: one draw of n2 samples on the partition ``part`` alone; sets ``draw_s`` and
    ``vector_bytes``, or ``skipped`` when sampling alone exceeds :data:`MAX_RUN_TIME_S`.
    Returns (seconds of that draw or None, the time the calibration may take)."""
    batch = plan.largest_block
    t_small = None
    try:  # sampling needs the partition only: no compiled problem for the first stage
        light = types.SimpleNamespace(partition=part, n_amp=int(part.offsets[-1]))
        t0 = time.perf_counter()
        init = _draw(sim, light, n2)
        t_small = time.perf_counter() - t0
    except (AttributeError, TypeError):
        init = None
    allowed = budget_s
    if init is not None:
        # a draw of a whole block costs at least t_small (fixed per-cluster work included)
        out["draw_s"] = t_small / batch
        out["vector_bytes"] = int(init.psi.nbytes // n2)
        amps = out["vector_bytes"] / 16
        bound = plan.total_samples * (out["draw_s"] + sim.n_steps * MIN_AMP_STEP_S * amps)
        if bound / ranks > MAX_RUN_TIME_S:
            out["skipped"] = "sampling the initial conditions alone exceeds the limit"
            return t_small, allowed
        allowed = max(budget_s, CALIBRATION_FRACTION * bound / ranks)
    return t_small, allowed


def _check_setup_cost(sim, allowed, out):
    """Stage 2: ``skipped`` (and the predicted table bytes) when the set-up of one replica
    would take longer than ``allowed`` seconds (predicted from the Hamiltonian terms)."""
    n_terms = int(getattr(sim.build_model(0), "n_terms", 0) or 0)
    if n_terms * SETUP_S_PER_TERM > allowed:
        out["skipped"] = (f"the set-up of one replica ({n_terms} Hamiltonian terms) would take "
                          f"about {n_terms * SETUP_S_PER_TERM:.0f} s")
        out["tables_bytes"] = TABLE_BYTES_PER_TERM * n_terms


def _time_setup(sim, budget_s, out):
    """Stage 3: ``setup_s`` and ``tables_bytes`` of one replica (a second one timed when the
    first, which pays one-time costs, is fast); returns (context, the other context or None)."""
    compiled = sim.method != "operator" and kernels.resolve_backend(sim.backend) == "cython"
    t0 = time.perf_counter()
    ctx = sim._context(0, 0, {})
    nbytes = _nbytes(kernels.compile_tables(ctx["problem"], ctx["plan"])) if compiled else 0
    out["setup_s"] = time.perf_counter() - t0
    other = None
    if out["setup_s"] < 0.1 * budget_s:  # the first set-up pays one-time costs: time another
        t0 = time.perf_counter()
        other = sim._context(min(1, sim.cfg["disorder"]["realizations"] - 1), 0, {})
        if compiled:
            kernels.compile_tables(other["problem"], other["plan"])
        out["setup_s"] = time.perf_counter() - t0
    out["tables_bytes"] = nbytes + _nbytes(ctx["problem"]) + _nbytes(ctx["plan"]) + \
        ctx["tf_tab"].nbytes
    return ctx, other


def _time_draw(sim, plan, part, ctx, sizes, t_small, out):
    """Stage 4: ``draw_s`` (per sample, its fixed part spread over the run's block) and
    ``vector_bytes`` from a draw of S samples (``sizes`` = (S, n2)); returns that batch."""
    S, n2 = sizes
    t0 = time.perf_counter()
    init = _draw(sim, ctx["problem"], S)
    t_S = time.perf_counter() - t0
    batch = plan.largest_block
    # t(S) = a + b·S: per sample b + a / batch in the run's blocks
    if t_small is not None and S > n2:
        b = max(t_S - t_small, 0.0) / (S - n2)
        out["draw_s"] = b + max(t_small - b * n2, 0.0) / batch
    else:
        out["draw_s"] = t_S / S
    out["vector_bytes"] = int(init.psi.nbytes // S)
    if sim.method == "operator":
        dims = np.asarray(part.dims)
        out["vector_bytes"] = max(out["vector_bytes"], int(16 * (dims ** 2).sum()))
    return init


def _time_steps(sim, ctx, init, shape, budget, out):
    """Stage 5: ``step_s`` and ``call_s`` (a kernel call costs c + b·samples·steps) from a
    warm-up call on n2 samples and, within the rest of the budget, one on the S samples of
    ``init``; ``shape`` = (S, steps, every, n2), ``budget`` = (start time of the calibration,
    seconds it may take).  Returns the columns of the last call."""
    S, steps, every, n2 = shape
    t_begin, allowed = budget
    small = _draw(sim, ctx["problem"], n2)
    t0 = time.perf_counter()
    cols = _integrate(sim, ctx, small, every, every)    # warm-up (first call, caches)
    t_warm = time.perf_counter() - t0
    out.update(samples=n2, steps=every, step_s=t_warm / (n2 * every), call_s=0.0)
    room = allowed - (time.perf_counter() - t_begin)
    # a kernel call costs c + b·samples·steps; its linear upper bound from the warm-up
    steps = min(steps, int(room / max(t_warm, 1e-9) * n2 * every / S) // every * every)
    if steps >= every and S * steps > n2 * every:
        t0 = time.perf_counter()
        cols = _integrate(sim, ctx, init, steps, every)
        t_b = time.perf_counter() - t0
        b = (t_b - t_warm) / (S * steps - n2 * every)
        if b > 0:
            out.update(step_s=b, call_s=max(t_warm - b * n2 * every, 0.0))
        else:
            out.update(step_s=t_b / (S * steps), call_s=0.0)
        out.update(samples=S, steps=steps)
    return cols


def _time_add(sim, ctx, cols, out):
    """Stage 6: ``add_s``, the accumulation of one sample at one output time."""
    mom = stats.Moments.zeros(1, cols.shape[0], cols.shape[1], ctx["obs"].cross)
    compiled_add = sim.backend != "numpy"
    mom.add(0, cols, antithetic=sim.antithetic, compiled=compiled_add)  # warm-up (import)
    t0 = time.perf_counter()
    mom.add(0, cols, antithetic=sim.antithetic, compiled=compiled_add)
    out["add_s"] = (time.perf_counter() - t0) / (cols.shape[-1] * cols.shape[0])


def _forget_tables(contexts):
    """Drop the calibration's entries from the kernel-table cache (they would stay alive
    through the run: the runner compiles its own problems)."""
    for c in contexts:
        tables.forget(c["problem"], c["plan"])
