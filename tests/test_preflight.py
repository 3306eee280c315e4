"""Lazy work plan, its split over ranks, and the pre-flight estimate / refusal (issue 9)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from ctwa_hpc import config
from ctwa_hpc.driver import preflight
from ctwa_hpc.tools.exceptions import ConfigError
from ctwa_hpc.driver.runner import Simulation
from ctwa_hpc.driver.workplan import split_range, WorkItem, WorkPlan
from mpi_helper import check, env, ROOT, run_cli, TINY

SHAPES = [(1, 1, 1, 1), (2, 1, 240, 40), (3, 2, 100, 32), (4, 3, 7, 8), (2, 2, 64, 64),
          (5, 1, 33, 4)]


def old_plan(R, O, S, batch):
    """The list Simulation.plan_work() built before the lazy plan."""
    return [WorkItem(r, oi, a, min(a + batch, S)) for r in range(R) for oi in range(O)
            for a in range(0, S, batch)]


def old_stages(items, check_samples):
    batch = max(it.stop - it.start for it in items)
    width = check_samples or 4 * batch
    width = -(-width // batch) * batch
    groups = {}
    for i, it in enumerate(items):
        groups.setdefault(it.start // width, []).append(i)
    return [groups[k] for k in sorted(groups)]


@pytest.mark.parametrize("shape", SHAPES)
def test_workplan_equals_the_old_list(shape):
    plan, old = WorkPlan(*shape), old_plan(*shape)
    assert len(plan) == plan.n_items == len(old)
    assert list(plan) == old
    assert [plan[k] for k in range(len(old))] == old
    assert plan[-1] == old[-1]
    assert [plan.samples_in(k) for k in range(len(old))] == [it.stop - it.start for it in old]
    assert plan.total_samples == sum(it.stop - it.start for it in old)
    O = shape[1]
    np.testing.assert_array_equal(plan.rows(), [it.realization * O + it.offset_index
                                                for it in old])
    np.testing.assert_array_equal(plan.counts(2), [(it.stop - it.start) // 2 for it in old])
    assert [plan.index(it.realization, it.offset_index, it.start // shape[3])
            for it in old] == list(range(len(old)))
    with pytest.raises(IndexError):
        plan[len(old)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("check_samples", [0, 1, 50, 100, 10**6])
def test_stages_equal_the_old_grouping(shape, check_samples):
    plan, old = WorkPlan(*shape), old_plan(*shape)
    be = plan.largest_block
    width = check_samples or 4 * be
    stages = plan.stages(-(-width // be))
    assert [list(st) for st in stages] == old_stages(old, check_samples)
    assert [list(st) for st in plan.stages(None)] == [list(range(len(old)))]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_split_covers_every_undone_item_once(size):
    rng = np.random.default_rng(size)
    for shape in SHAPES:
        plan = WorkPlan(*shape)
        for m in (None, 1, 2, 3):
            for frac in (0.0, 0.3, 0.9, 1.0):
                done = {int(i) for i in np.flatnonzero(rng.random(plan.n_items) < frac)}
                for stage in plan.stages(m):
                    todo = [i for i in stage if i not in done]
                    seen = []
                    for rank in range(size):
                        share = list(stage.share(done, size, rank))
                        # exactly the old split: np.array_split of the undone list
                        ref = [int(i) for i in np.array_split(np.asarray(todo, dtype=np.int64),
                                                              size)[rank]]
                        assert share == ref
                        assert len(stage.share(done, size, rank)) == len(ref)
                        seen += share
                    assert sorted(seen) == todo


def test_split_range_and_huge_plans_are_lazy():
    for n in range(12):
        for size in range(1, 6):
            ref = np.array_split(np.arange(n), size)
            for rank in range(size):
                lo, hi = split_range(n, size, rank)
                assert list(range(lo, hi)) == ref[rank].tolist()
    plan = WorkPlan(10**12, 2, 10**18, 256)        # ~8e27 items: nothing is materialized
    n = plan.n_items
    assert n == 10**12 * 2 * -(-10**18 // 256)
    assert plan[n - 1] == WorkItem(10**12 - 1, 1, (-(-10**18 // 256) - 1) * 256, 10**18)
    t0 = time.perf_counter()
    share = plan.stages(None)[0].share(set(), 10**4, 1234)
    assert len(share.spans) == 1 and share.n == n // 10**4
    stage = plan.stages(4)[7]
    share = stage.share({plan.index(0, 0, 28)}, 10**4, 0)
    assert share.n == (stage.n - 1) // 10**4 + 1
    assert time.perf_counter() - t0 < 1.0


# -- the estimate ------------------------------------------------------------------------------
def tiny_sim(*overrides):
    return Simulation(config.load(TINY, list(overrides)), quiet=True)


def test_estimate_parts_and_refusal_in_process():
    sim = tiny_sim()
    est = preflight.estimate(sim)
    R, O, n_t = 2, 1, 11
    obs = sim.observable_set(0)
    K, P = obs.n_stat_columns, len(obs.cross)
    row = 8 * (1 + n_t * (3 * K + P))          # count, s1, s2, shift, sx of one row
    assert est["row"] == row and est["rows_in_flight"] == 2 and est["moments"] == 2 * row
    assert est["keep_moments"] and est["done_rows"] >= R * O * row   # /moments kept (small)
    assert est["memory_per_rank"] > est["moments"] + est["done_rows"]
    assert est["memory_rank0"] >= est["memory_per_rank"]
    assert est["checkpoint_per_save"] >= est["moments"]
    assert est["output_parts"]["moments"] == R * O * row + 16 * P
    assert "partial" not in est["output_parts"]
    never = preflight.estimate(tiny_sim("output.moments='never'"))
    assert "moments" not in never["output_parts"] and never["done_rows"] < est["done_rows"]
    assert est["time_s"] is not None and not est["time_lower_bound"]
    assert preflight.check(est) == []
    with pytest.raises(ConfigError, match=r"^output\.max_memory_gb: "):
        preflight.check(est, limit_bytes=2**20)
    assert len(preflight.check(est, limit_bytes=2**20, ignore=True)) == 1
    big = tiny_sim("disorder.realizations=1000000000000")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"^disorder\.realizations: .*time\.output_dt"):
        preflight.check(preflight.estimate(big))
    assert time.perf_counter() - t0 < 5.0
    with pytest.raises(ConfigError, match=r"^output\.max_memory_gb: must be >= 0"):
        preflight.estimate(tiny_sim("output.max_memory_gb=-1"))


IMPOSSIBLE = [
    (["method.samples=1000000000000000000"], "method.samples"),
    (["disorder.realizations=1000000000000"], "disorder.realizations"),
    (["model.n_sites=100000", "method.samples=1000000000"], "method.samples"),
]


@pytest.mark.parametrize("sets,field", IMPOSSIBLE, ids=["samples1e18", "real1e12", "N1e5"])
def test_cli_refuses_impossible_runs_quickly(tmp_path, sets, field):
    args = ["run", TINY, "-o", tmp_path / "x.h5", "--force"]
    for s in sets:
        args += ["--set", s]
    t0 = time.perf_counter()
    r = check(run_cli(args, timeout=120), code=2)
    elapsed = time.perf_counter() - t0
    assert f"error: {field}: " in r.stderr, r.stderr
    assert "estimate: memory per rank" in r.stderr  # the estimate is printed with the refusal
    # seconds (the N = 1e5 chain spends ~6 s building its model and observables)
    assert elapsed < (40 if "model.n_sites=100000" in sets else 15), elapsed
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.h5.ckpt").exists()


def test_ignore_limits_overrides_a_user_limit(tmp_path):
    out = tmp_path / "t.h5"
    base = ["run", TINY, "-o", out, "--force", "-q", "--set", "output.max_memory_gb=0.001"]
    r = check(run_cli(base), code=2)
    assert "error: output.max_memory_gb: " in r.stderr and "--ignore-limits" in r.stderr
    assert not out.exists()
    r = check(run_cli(base + ["--ignore-limits"]))
    assert "--ignore-limits: output.max_memory_gb" in r.stderr and out.exists()


def test_estimate_command(tmp_path):
    js = tmp_path / "e.json"
    r = check(run_cli(["estimate", TINY, "--ranks", "4", "--json", js]))
    assert "estimate: memory per rank" in r.stdout and "within the limits" in r.stdout
    est = json.loads(js.read_text())
    assert est["ranks"] == 4
    one = json.loads((check(run_cli(["estimate", TINY, "--ranks", "1", "--json", js])) and
                      js).read_text())
    assert one["output"] == est["output"]          # the output does not grow with the ranks
    r = check(run_cli(["estimate", TINY, "--set", "disorder.realizations=1000000000000"]), 2)
    assert "refused: disorder.realizations: " in r.stderr


def test_estimate_matches_a_measured_run(tmp_path):
    """Memory and time of a moment-heavy run (27 MB of sums) against the estimate."""
    prefix = tmp_path / "m"
    cmd = [sys.executable, "-m", "ctwa_hpc.bench.rankprobe", str(prefix), "run",
           os.path.join(ROOT, "jobs", "heis16.toml"), "-o", str(tmp_path / "m.h5"), "-q",
           "--set", "disorder.realizations=32", "--set", "method.samples=32",
           "--set", "method.batch=32", "--set", "time.t_max=10", "--set",
           "time.output_dt=0.01", "--set", 'observables.names=["sz", "czz_connected"]']
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env())
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "m.rank0.json").read_text())
    est = rep["estimate"]
    measured = rep["maxrss"]
    need = max(est["memory_per_rank"], est["memory_rank0"])
    growth = measured - est["base"]
    assert est["done_rows"] > 20e6               # /moments kept: the done rows hold sums
    assert need >= est["base"] + est["done_rows"]
    assert need - est["base"] <= 10 * growth
    assert measured / 3 <= need <= 3 * measured, (need, measured)
    from ctwa_hpc.output import hdf5 as io
    data = io.load(tmp_path / "m.h5")
    size = os.path.getsize(tmp_path / "m.h5")
    assert size / 1.5 <= est["output"] <= 1.5 * size, (est["output"], size)
    wall = float(data["attrs"]["wall_time_s"])
    assert wall / 3 <= est["time_s"] <= 3 * wall, (est["time_s"], wall)
