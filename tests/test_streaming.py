"""Streaming rows (issue 9): shifted moments, rows in flight, owners, checkpoints that hold only
a rank's own state, and outputs that do not depend on the number of ranks."""
from __future__ import annotations

import os

import numpy as np
import pytest

from ctwa_hpc import config
from ctwa_hpc.output import hdf5 as io
from ctwa_hpc.driver import rowstore
from ctwa_hpc.method import kernels, stats
from ctwa_hpc.tools.parallel import SerialComm
from ctwa_hpc.driver.runner import Simulation
from mpi_helper import check, have_mpi, max_diff, run_cli, TINY

HEIS = os.path.join(os.path.dirname(TINY), "heis16.toml")


# -- shifted moments ---------------------------------------------------------------------------
def test_shifted_moments_merge_exactly_and_constant_columns_have_zero_error():
    """Sums with different shifts merge to the sums of all samples (re-shift formulas), and
    a column that does not fluctuate has exactly zero variance even on a large offset
    (issue 10 item 14: unshifted sums gave ~1e-9)."""
    rng = np.random.default_rng(1)
    cross = np.array([[0, 1], [1, 2]])
    x = 1e6 + rng.normal(size=(3, 3, 40))            # (n_t, K, S), large common offset
    x[:, 2] = 1e6 + 0.1                              # a constant column
    whole = stats.Moments.zeros(1, 3, 3, cross)
    whole.add(0, x.copy())
    a, b = stats.Moments.zeros(1, 3, 3, cross), stats.Moments.zeros(1, 3, 3, cross)
    a.add(0, x[..., :7].copy())
    b.add(0, x[..., 7:23].copy())
    b.add(0, x[..., 23:].copy())
    assert np.abs(a.shift - b.shift)[..., :2].min() > 1e-6       # different shifts
    a.merge_row(0, b, 0)
    assert a.count[0] == whole.count[0] == 40
    for k in ("s1", "s2", "sx"):
        np.testing.assert_allclose(_reshift(a, k, whole.shift), getattr(whole, k), rtol=1e-9,
                                   atol=1e-8, err_msg=k)
    np.testing.assert_allclose(a.mean()[0], x.mean(axis=-1), rtol=1e-14)
    est = stats.realization_estimates(_direct(3), whole)["x"]
    np.testing.assert_allclose(est[1][0, :, :2], x[:, :2].std(axis=-1, ddof=1) / np.sqrt(40),
                               rtol=1e-9)
    assert np.all(est[1][0, :, 2] == 0.0)            # exactly zero, not 1e-9


def test_compiled_accumulation_equals_numpy_twin():
    """cython_kernels/moments.pyx and the NumPy path of Moments.add give the same sums."""
    if kernels.moments_accumulate is None:
        pytest.skip("Cython kernels not built")
    rng = np.random.default_rng(7)
    cross = np.array([[0, 3], [2, 2], [4, 1]])
    a, b = stats.Moments.zeros(2, 6, 5, cross), stats.Moments.zeros(2, 6, 5, cross)
    for S in (37, 64, 1):
        x = rng.normal(size=(6, 5, S)) * 3.0 + 2.0
        a.add(1, x, compiled=True)
        b.add(1, x, compiled=False)
    for k in stats.Moments.KEYS:
        np.testing.assert_allclose(getattr(a, k), getattr(b, k), rtol=1e-13, atol=1e-12,
                                   err_msg=k)
    assert a.count[1] == 102 and a.count[0] == 0


def _reshift(m, key, c):
    """Sums of m re-expressed about the shift c (to compare with a direct accumulation)."""
    d = m.shift[0] - c[0]
    n = m.count[0]
    if key == "s1":
        return (m.s1[0] + n * d)[None]
    if key == "s2":
        return (m.s2[0] + 2 * d * m.s1[0] + n * d * d)[None]
    a, b = m.cross[:, 0], m.cross[:, 1]
    return (m.sx[0] + d[:, a] * m.s1[0][:, b] + d[:, b] * m.s1[0][:, a]
            + n * d[:, a] * d[:, b])[None]


def _direct(K):
    class Out:
        kind, cols = "direct", np.arange(K)
    return {"x": Out()}


# -- rows in flight --------------------------------------------------------------------------------
def test_rank_holds_at_most_two_rows_in_flight(monkeypatch):
    """64 realizations of the N = 16 chain: at no time does the rank hold the sums of more
    than two rows, and done rows keep no sums (output.moments = 'never')."""
    cfg = config.load(HEIS, ["disorder.realizations=64", "method.samples=8", "method.batch=4",
                             "time.t_max=0.5", "output.moments='never'",
                             "output.compare_exact=false"])
    sim = Simulation(cfg, quiet=True)
    peak = {"frags": 0}
    add = rowstore.RowStore.add

    def spy(self, k, row, cols):
        add(self, k, row, cols)
        peak["frags"] = max(peak["frags"], len(self.frags))
        assert all(d["moments"] is None for d in self.done.values())
    monkeypatch.setattr(rowstore.RowStore, "add", spy)
    res = sim.run()
    assert peak["frags"] <= 2
    assert res.moments is None and res.n_samples == 64 * 8
    assert res.outputs["sz"]["real_mean"].shape[0] == 64


def test_owner_split_and_disorder_average_match_gathered_arrays():
    for R, P in ((7, 3), (2, 5), (10, 10), (1, 4)):
        owners = [rowstore.owner_of(r, R, P) for r in range(R)]
        assert owners == sorted(owners)
        for p in range(P):
            lo, hi = rowstore.split_range(R, P, p)
            assert [r for r in range(R) if owners[r] == p] == list(range(lo, hi))
    rng = np.random.default_rng(3)
    m, s = rng.normal(size=(9, 4, 2)) + 5.0, rng.uniform(size=(9, 4, 2))
    got = rowstore.disorder_average(SerialComm(), {"q": (m, s)}, 9)["q"]
    ref = stats.disorder_average(m, s)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-13)


def test_checkpoint_state_round_trip_and_checks():
    cfg = config.load(TINY, [])
    sim = Simulation(cfg, quiet=True)
    obs, store = sim.new_store()
    plan = store.plan
    cache = {}
    for k in (0, 1, 2, 3, 4, 5, 6):           # row 0 complete (6 blocks), row 1 started
        it = plan[k]
        store.add(k, sim.row(it.realization, it.offset_index), sim.run_block(it, cache))
    assert sorted(store.done) == [0] and sorted(store.frags) == [1]
    a = store.state_arrays()
    store.check_state(a, "f")
    np.testing.assert_array_equal(rowstore.RowStore.ranges_of_state(a, store.B), [[0, 7]])
    _, fresh = sim.new_store()
    fresh.adopt(a)
    assert sorted(fresh.done) == [0] and fresh.frags[1][1] == [6]
    for name in obs.outputs:
        np.testing.assert_array_equal(fresh.done[0]["est"][name][0], store.done[0]["est"][name][0])
    bad = dict(a, frag_count=a["frag_count"] + 1)
    with pytest.raises(ValueError, match="sample counts do not match"):
        store.check_state(bad, "f")
    bad = dict(a, frag_items=np.array([13]))
    with pytest.raises(ValueError, match="outside its row"):
        store.check_state(bad, "f")
    bad = dict(a, done_rows=np.array([1]))
    with pytest.raises(ValueError, match="listed twice"):
        store.check_state(bad, "f")
    assert rowstore.overlaps([[0, 6], [5, 7]]) and not rowstore.overlaps([[0, 6], [6, 7]])


# -- MPI: rows split between ranks, P-independent files -------------------------------------------
needs_mpi = pytest.mark.skipif(not have_mpi(), reason="mpirun or mpi4py not available")
SPLIT = ["--set", "disorder.realizations=5", "--set", "method.samples=60",
         "--set", "method.batch=20", "-q"]


@pytest.mark.mpi
@needs_mpi
def test_rows_split_between_ranks_rank_invariant(tmp_path):
    """5 realizations × 3 blocks on 1, 2 and 4 ranks (rows split between ranks, ranks that
    own no realization), mpio and gather writers: the same values, counts, moments and file
    size (the output does not grow with the ranks)."""
    ref = tmp_path / "s.h5"
    check(run_cli(["run", TINY, "-o", ref] + SPLIT))
    a = io.load(ref)
    np.testing.assert_array_equal(a["realization_samples"], np.full(5, 60))
    sizes = {1: os.path.getsize(ref)}
    for n, env in ((2, None), (4, None), (4, {"CTWA_H5_GATHER": "1"})):
        out = tmp_path / f"p{n}{'g' if env else ''}.h5"
        check(run_cli(["run", TINY, "-o", out] + SPLIT, n=n, extra_env=env, timeout=180))
        b = io.load(out)
        assert max_diff(a, b, ("observables", "realizations")) < 1e-12
        np.testing.assert_array_equal(b["realization_samples"], a["realization_samples"])
        for k in ("count", "s1", "s2", "sx", "shift"):
            np.testing.assert_allclose(b["moments"][k], a["moments"][k], rtol=1e-12,
                                       atol=1e-11, err_msg=k)
        for k, v in a["disorder"].items():
            np.testing.assert_array_equal(b["disorder"][k], v, err_msg=k)
        sizes[n] = os.path.getsize(out)
    assert max(sizes.values()) - min(sizes.values()) < 0.02 * sizes[1], sizes


@pytest.mark.mpi
@needs_mpi
def test_checkpoint_bytes_per_rank_do_not_grow_with_ranks_or_realizations(tmp_path):
    """Stop after one block per rank: every rank file holds its own fragment (no copy of the
    whole result), so 4 ranks write files of the size 1 rank writes, and 8× the
    realizations leave the file size unchanged (output.moments = 'never')."""
    sizes = {}
    for n, R in ((1, 4), (4, 4), (1, 32)):
        out = tmp_path / f"c{n}_{R}.h5"
        check(run_cli(["run", TINY, "-o", out, "-q", "--set", f"disorder.realizations={R}",
                       "--set", "output.moments='never'"], n=n if n > 1 else None,
                      extra_env={"CTWA_TEST_STOP_AFTER_BLOCKS": "1"}, timeout=180), 3)
        files = sorted((tmp_path / f"c{n}_{R}.h5.ckpt").glob("g*.rank*.npz"))
        assert len(files) == n
        sizes[(n, R)] = max(f.stat().st_size for f in files)
    base = sizes[(1, 4)]
    assert sizes[(4, 4)] <= 1.1 * base and sizes[(1, 32)] <= 1.1 * base, sizes


def test_merge_disjoint_realizations_without_moments(tmp_path):
    """Files without /moments (output.moments = 'never') merge over disjoint realizations
    through their per-realization estimates: equal to one run over all of them; sample
    ranges still need the moments (a clear refusal)."""
    from ctwa_hpc.driver import merge
    never = ["--set", "output.moments='never'", "-q"]
    parts = []
    for first in (0, 2):
        p = tmp_path / f"r{first}.h5"
        check(run_cli(["run", TINY, "-o", p, "--set", "disorder.realizations=2",
                       "--set", f"disorder.first={first}"] + never))
        parts.append(p)
    whole = tmp_path / "all.h5"
    check(run_cli(["run", TINY, "-o", whole, "--set", "disorder.realizations=4"] + never))
    merged = tmp_path / "m.h5"
    merge.merge([str(p) for p in parts], str(merged))
    a, b = io.load(whole), io.load(merged)
    assert "moments" not in b
    assert max_diff(a, b, ("observables", "realizations")) < 1e-12
    np.testing.assert_array_equal(b["realization_samples"], a["realization_samples"])
    np.testing.assert_array_equal(b["realization_index"], np.arange(4))
    s1 = tmp_path / "s1.h5"
    check(run_cli(["run", TINY, "-o", s1, "--set", "disorder.realizations=2",
                   "--set", "method.first_sample=240"] + never))
    with pytest.raises(merge.MergeError, match="no /moments"):
        merge.merge([str(parts[0]), str(s1)], str(tmp_path / "x.h5"))
