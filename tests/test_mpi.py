"""MPI runs as subprocesses: rank-count invariance, the parallel HDF5 file, the gather writer."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from ctwa_hpc.output import hdf5 as io
from mpi_helper import check, have_mpi, max_diff, run_cli, SKIP_ATTRS, TINY

pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(not have_mpi(), reason="mpirun or mpi4py not available")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """tiny.toml run serially and with 1, 2, 3 ranks (3 > cores: oversubscribed)."""
    d = tmp_path_factory.mktemp("mpi")
    out = {}
    for n in (None, 1, 2, 3):
        path = d / f"n{n}.h5"
        check(run_cli(["run", TINY, "-o", path, "-q"], n=n, timeout=120))
        out[n] = path
    return out


def test_rank_count_invariance(runs):
    ref = io.load(runs[None])
    for n in (1, 2, 3):
        data = io.load(runs[n])
        assert data["attrs"]["mpi_size"] == n
        assert max_diff(ref, data, ("observables", "realizations")) < 1e-12
        for k in ("count", "s1", "s2", "sx", "shift"):
            np.testing.assert_allclose(data["moments"][k], ref["moments"][k], rtol=1e-13,
                                       atol=1e-12)
        np.testing.assert_array_equal(data["moments"]["count"], ref["moments"]["count"])
        assert data["attrs"]["n_samples"] == ref["attrs"]["n_samples"] == 480


def test_parallel_file_complete(runs):
    path = runs[2]
    data = io.load(path)
    a = data["attrs"]
    assert a["writer"] == ("mpio" if io.h5py_has_mpi() else "gather")
    assert a["mpi_size"] == 2 and a["finished_run"]
    for key in ("config_toml", "config_hash", "ctwa_hpc_version", "git_revision", "seed",
                "disorder_seed", "wall_time_s", "created", "mpi_library", "backend"):
        assert key in a, key
    n_t, R = len(data["time"]), 2
    assert n_t == 11
    assert set(data["observables"]) == {"sz", "mz_staggered", "czz", "czz_connected", "energy"}
    shapes = {"sz": (4,), "mz_staggered": (), "czz": (3,), "czz_connected": (3,), "energy": ()}
    for name, shape in shapes.items():
        o = data["observables"][name]
        assert set(o) == {"mean", "stderr", "stderr_within"}
        assert o["mean"].shape == (n_t,) + shape and np.isfinite(o["mean"]).all()
        assert data["realizations"][name]["mean"].shape == (R, n_t) + shape
    # no per-rank copies of the sums; every realization's row written by its owner rank
    assert "partial" not in data
    np.testing.assert_array_equal(data["realization_samples"], [240, 240])
    assert (np.abs(data["realizations"]["sz"]["mean"]).sum(axis=(1, 2)) > 0).all()
    assert (data["moments"]["count"] == 120).all()              # antithetic pairs
    with h5py.File(path, "r") as f:  # time is a dimension scale of every observable
        assert f["observables/sz/mean"].dims[0][0].name == "/time"
        assert f["realizations/sz/mean"].dims[1][0].name == "/time"


def _attrs(path):
    """Root attributes without run-specific ones (the config without output.path)."""
    data = io.load(path)
    attrs = {k: v for k, v in data["attrs"].items() if k not in SKIP_ATTRS | {"config_toml"}}
    data["config"]["output"].pop("path")
    return attrs, data["config"]


def test_gather_writer_identical(runs, tmp_path):
    """The serial-fallback writer (rank 0 after a gather) gives the same file content."""
    gpath = tmp_path / "gather.h5"
    check(run_cli(["run", TINY, "-o", gpath, "-q"], n=2, extra_env={"CTWA_H5_GATHER": "1"}))
    a, b = io.datasets(runs[2]), io.datasets(gpath)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert io.load(gpath)["attrs"]["writer"] == "gather"
    assert _attrs(runs[2]) == _attrs(gpath)


def test_exact_under_mpi(tmp_path):
    """Exact runs split realizations over ranks and write the same layout (no stderr)."""
    p1, p2 = tmp_path / "e1.h5", tmp_path / "e2.h5"
    check(run_cli(["exact", TINY, "-o", p1, "-q"]))
    check(run_cli(["exact", TINY, "-o", p2, "-q"], n=2))
    a, b = io.load(p1), io.load(p2)
    assert max_diff(a, b) < 1e-12
    assert "partial" not in b and all("stderr" not in o for o in b["observables"].values())


def test_failing_rank_fails_fast(tmp_path):
    """A bad config under MPI exits with code 2 on all ranks, promptly (no hang)."""
    r = run_cli(["run", TINY, "-o", tmp_path / "x.h5", "--set", "method.sampels=3"], n=2,
                timeout=60)
    assert r.returncode == 2, r.stderr
    assert "method.sampels" in r.stderr
