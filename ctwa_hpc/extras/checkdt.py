r"""Time-step check: is ``time.dt`` small enough? (``ctwa-hpc check-dt CONFIG``).

The same subset of samples (``--samples`` per realization and offset, the first
``--realizations`` realizations) is integrated twice, at dt and at dt/2, with the *same random
numbers*: the streams are keyed by (method.seed, realization, sample index), which do not
depend on dt, so the initial conditions are identical and the difference Δ of every output is
integrator error alone (no Monte Carlo noise).  RK4's global error is O(dt⁴), so
err(dt) = Δ · 16/15 to leading order.

Δ is compared with the Monte Carlo standard error σ (``stderr_within``, the sampling part of
the error) pointwise in time and component.  The relevant σ is that of the production run
(``method.samples`` S and ``disorder.realizations`` R of the config), projected from the
check's σ_check (S_c samples × R_c realizations) by σ = σ_check √(S_c R_c / (S R)).  Advice:

* max Δ/σ < 0.1: "dt is adequate: integrator error < 0.1 σ";
* otherwise: "halve dt", with the dt that RK4's dt⁴ scaling predicts for 0.1 σ,
  dt · (0.1 / (16/15 · max Δ/σ))^{1/4}.

Pure-state mean-field runs have no sampling error: there the criterion is
max Δ < 10⁻⁶ · max(1, max |value|).
"""
from __future__ import annotations

import copy
import logging
import sys

import numpy as np

from .. import config as config_mod
from ..tools import parallel
from ..driver import guards, preflight
from ..driver.runner import Simulation
from ..tools.log import setup_logging

log = logging.getLogger("ctwa_hpc")
ADEQUATE = 0.1          # integrator error below this fraction of σ is negligible
DETERMINISTIC_TOL = 1e-6


def check_configs(cfg, samples=None, realizations=None):
    """The two configs of the check (dt and dt/2) from a resolved config."""
    meth = cfg["method"]
    if meth["kind"] == "exact":
        raise config_mod.ConfigError("method.kind: check-dt compares CTWA integrations; the "
                                     "exact method has no time step")
    S = int(samples) if samples is not None else min(meth["samples"], 100)
    if S < 1:
        raise config_mod.ConfigError(f"check-dt --samples: must be >= 1, got {S} (omit it for "
                                     "the default min(method.samples, 100))")
    if meth["antithetic"] and S % 2:
        S += 1
    R_full = cfg["disorder"]["realizations"]
    R = int(realizations) if realizations is not None else min(R_full, 2)
    if not 1 <= R <= R_full:
        raise config_mod.ConfigError(f"check-dt --realizations: must lie in 1..{R_full} "
                                     f"(disorder.realizations), got {R}")
    a = copy.deepcopy(cfg)
    a["method"]["samples"] = S
    a["disorder"]["realizations"] = R
    a["output"]["compare_exact"] = False
    a["stop"]["stderr_target"] = 0.0
    b = copy.deepcopy(a)
    b["time"]["dt"] = cfg["time"]["dt"] / 2
    return config_mod.resolve(a), config_mod.resolve(b)


def compare(res_a, res_b, S_full, R_full, deterministic=False):
    """Per-output report rows and the overall verdict (see the module docstring)."""
    S_c = res_a.cfg["method"]["samples"]
    R_c = res_a.cfg["disorder"]["realizations"]
    project = np.sqrt(S_full * R_full / (S_c * R_c))
    rows = []
    worst = (0.0, None, None)
    times = res_a.times
    for name, o in res_a.outputs.items():
        ma, mb = np.asarray(o["mean"]), np.asarray(res_b.outputs[name]["mean"])
        d = np.abs(ma - mb)
        d = np.where(np.isnan(ma) & np.isnan(mb), 0.0, d)
        se = o.get("stderr_within")
        se = np.asarray(o["stderr"] if se is None else se)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(se > 0, d / se, np.where(d > 0, np.inf, 0.0))
        ratio = np.where(np.isnan(ratio), 0.0, ratio)
        worst_of = d if deterministic else ratio
        k = np.unravel_index(np.argmax(worst_of), d.shape) if d.size else None
        r_check = float(ratio[k]) if k is not None else 0.0
        row = dict(name=name, max_delta=float(np.nanmax(d)) if d.size else 0.0,
                   sigma=float(se[k]) if k is not None else 0.0, ratio_check=r_check,
                   ratio=r_check * project, t=float(times[k[0]]) if k is not None else 0.0,
                   scale=float(np.nanmax(np.abs(ma))) if ma.size else 0.0)
        rows.append(row)
        key = row["max_delta"] / max(1.0, row["scale"]) if deterministic else row["ratio"]
        if worst[1] is None or key > worst[0]:
            worst = (key, name, row)
    return rows, worst


def verdict(worst, dt, deterministic=False):
    value, name, row = worst
    if deterministic:
        if value < DETERMINISTIC_TOL:
            return True, (f"dt = {dt:g} is adequate: integrator error < {DETERMINISTIC_TOL:g} "
                          f"(relative; no Monte Carlo error in a pure-state mean-field run)")
        return False, (f"halve dt (time.dt = {dt / 2:g}): the integrator error reaches "
                       f"{value:.2g} ({name} at t = {row['t']:g})")
    if value < ADEQUATE:
        return True, (f"dt = {dt:g} is adequate: integrator error < {ADEQUATE:g} σ "
                      f"(at most {value:.2g} σ of the production run, {name})")
    err_dt = value * 16.0 / 15.0
    suggest = dt * (ADEQUATE / err_dt) ** 0.25
    return False, (f"halve dt (time.dt = {dt / 2:g}): the integrator error reaches {value:.2g} σ "
                   f"of the production run ({name} at t = {row['t']:g}); RK4's dt⁴ scaling "
                   f"suggests dt <= {suggest:.3g} for < {ADEQUATE:g} σ")


def prepare(cfg, samples=None, realizations=None, comm=None, quiet=True, ignore_limits=False):
    """The two simulations of the check, refused before any work by the guards and the
    pre-flight estimate of ``ctwa-hpc run`` (on the dt/2 run, the larger; every rank, no
    collective): ConfigError naming the field (``--samples``/``--realizations`` set
    ``method.samples``/``disorder.realizations`` of the check)."""
    comm = comm if comm is not None else parallel.SerialComm()
    a, b = check_configs(cfg, samples, realizations)
    guards.check_time_grid(b, comm)
    sims = [Simulation(c, comm, quiet=quiet) for c in (a, b)]
    guards.check_simulation(sims[1])
    try:
        preflight.gate(sims[1], comm, ignore=ignore_limits)
    except config_mod.ConfigError as exc:
        raise config_mod.ConfigError(
            f"check-dt --samples/--realizations: the check (S = {a['method']['samples']} "
            f"samples x R = {a['disorder']['realizations']} realization(s), at dt and dt/2) is "
            f"refused by the pre-flight estimate: {exc}") from None
    return sims


def check_dt(cfg, samples=None, realizations=None, comm=None, quiet=True, sims=None):
    """Run the check (collective under MPI); the report dict on rank 0, None elsewhere.
    ``sims``: from :func:`prepare` (default: prepared here).

    Keys: dt, samples, realizations (of the check), production (S, R), rows (per output:
    max_delta, sigma, ratio_check, ratio (vs the production σ), t), adequate, advice.
    """
    comm = comm if comm is not None else parallel.SerialComm()
    sims = sims or prepare(cfg, samples, realizations, comm, quiet)
    a = sims[0].cfg
    results = []
    for k, sim in enumerate(sims):
        c = sim.cfg
        if comm.rank == 0:
            log.info("check-dt: run %d/2 at dt = %g: %d samples x %d realization(s)", k + 1,
                     c["time"]["dt"], c["method"]["samples"], c["disorder"]["realizations"])
        results.append(sim.run())
    if comm.rank != 0:
        return None
    det = sim.deterministic
    S_full = 1 if det else cfg["method"]["samples"]
    R_full = cfg["disorder"]["realizations"]
    rows, worst = compare(results[0], results[1], S_full, R_full, det)
    ok, advice = verdict(worst, cfg["time"]["dt"], det)
    return dict(dt=cfg["time"]["dt"], samples=1 if det else a["method"]["samples"],
                realizations=a["disorder"]["realizations"], production=(S_full, R_full),
                rows=rows, adequate=ok, advice=advice, deterministic=det)


def format_report(rep):
    S, R = rep["production"]
    lines = [f"check-dt: dt = {rep['dt']:g} vs dt/2 = {rep['dt'] / 2:g} with the same random "
             f"numbers: {rep['samples']} samples x {rep['realizations']} realization(s) "
             f"(production: {S} x {R})",
             f"  {'output':24s} {'max|Δ|':>10s} {'σ (check)':>10s} {'max Δ/σ':>10s} "
             f"{'vs prod. σ':>10s}  at t"]
    for r in rep["rows"]:
        ratios = f"{'-':>10s} {'-':>10s}" if rep["deterministic"] else \
            f"{r['ratio_check']:10.3g} {r['ratio']:10.3g}"
        lines.append(f"  {r['name']:24s} {r['max_delta']:10.3g} {r['sigma']:10.3g} {ratios}  "
                     f"{r['t']:g}")
    lines.append(("OK: " if rep["adequate"] else "ADVICE: ") + rep["advice"])
    return "\n".join(lines)


INPUT_ERRORS = (ValueError, ArithmeticError, RuntimeError, OSError, ImportError)


def check_dt_command(args):
    """``ctwa-hpc check-dt CONFIG [--samples S] [--realizations R] [--set ...]``: exit 2 with
    the message for bad input, a refused check or an error of the runs (e.g. a non-finite
    trajectory: the same message as ``ctwa-hpc run``)."""
    comm = parallel.get_comm()
    setup_logging(comm, args.quiet)
    err = None
    try:   # no collective yet: the errors of every rank are gathered, all ranks exit 2
        cfg = config_mod.load(args.config, list(args.set))
        sims = prepare(cfg, args.samples, args.realizations, comm, quiet=True)
    except INPUT_ERRORS as exc:
        err = str(exc)
    errors = parallel.agree(comm, err)
    if any(errors):
        if comm.rank == 0:
            k, text = next((k, e) for k, e in enumerate(errors) if e)
            where = "" if all(errors) or comm.size == 1 else f" (rank {k})"
            print(f"ctwa-hpc: error{where}: {text}", file=sys.stderr)
        return 2
    try:
        rep = check_dt(cfg, args.samples, args.realizations, comm, quiet=True, sims=sims)
    except INPUT_ERRORS as exc:   # on this rank only: the others may wait in a collective
        where = f" (rank {comm.rank})" if comm.size > 1 else ""
        print(f"ctwa-hpc: error{where}: {exc}", file=sys.stderr)
        parallel.abort(comm, 2)
        return 2
    if rep is not None:
        print(format_report(rep))
    return 0
