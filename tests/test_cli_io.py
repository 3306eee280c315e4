"""Command line and HDF5 output: error exits, overwrite protection, exact output, round trip."""
from __future__ import annotations

import datetime
import os

import h5py
import numpy as np
import pytest

import ctwa_hpc
from ctwa_hpc.driver import checkpoint
from ctwa_hpc import config
from ctwa_hpc.output import hdf5 as io
from ctwa_hpc.driver.runner import Simulation
from mpi_helper import check, run_cli, TINY


def test_bad_key_exit_2(tmp_path):
    bad = open(TINY).read().replace("samples = 240", "sampels = 240")
    p = tmp_path / "bad.toml"
    p.write_text(bad)
    r = check(run_cli(["run", p, "-o", tmp_path / "o.h5"]), 2)
    assert "method.sampels" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("override, field", [("model.foo=1", "model.foo"),
                                             ('method.samples="many"', "method.samples"),
                                             ("time.dt=-1", "time.dt"),
                                             ("stop.stderr_target=-1", "stop.stderr_target"),
                                             ("nosection.x=1", "nosection")])
def test_bad_override_exit_2(tmp_path, override, field):
    r = check(run_cli(["run", TINY, "-o", tmp_path / "o.h5", "--set", override]), 2)
    assert field in r.stderr and "Traceback" not in r.stderr


def test_refuses_overwrite_without_force(tmp_path):
    out = tmp_path / "o.h5"
    out.write_text("precious")
    r = check(run_cli(["run", TINY, "-o", out]), 2)
    assert "exists" in r.stderr and "--force" in r.stderr
    assert out.read_text() == "precious"
    check(run_cli(["run", TINY, "-o", out, "--force", "-q"]))
    assert io.load(out)["attrs"]["finished_run"]
    assert sorted(os.listdir(tmp_path)) == ["o.h5"]  # no temporary file or checkpoint left


def test_missing_output_directory(tmp_path):
    r = check(run_cli(["run", TINY, "-o", tmp_path / "no" / "o.h5"]), 2)
    assert "does not exist" in r.stderr


@pytest.mark.parametrize("realizations", [1, 2])
def test_exact_output_has_no_stderr(tmp_path, realizations):
    out = tmp_path / "e.h5"
    check(run_cli(["exact", TINY, "-o", out, "-q",
                   "--set", f"disorder.realizations={realizations}"]))
    data = io.load(out)
    assert data["attrs"]["method"] == "exact"
    for name, o in data["observables"].items():
        assert "stderr" not in o and "stderr_within" not in o, name
        assert ("stderr_disorder" in o) == (realizations > 1)
        assert data["realizations"][name]["mean"].shape[0] == realizations
    assert "moments" not in data
    with h5py.File(out, "r") as f:
        names = []
        f.visit(names.append)
    assert not [n for n in names if n.endswith("/stderr")]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    cfg = config.load(TINY, ['output.path="unused.h5"'])
    sim = Simulation(cfg, quiet=True)
    res = sim.run()
    path = tmp_path_factory.mktemp("io") / "rt.h5"
    io.write_result(str(path), res)
    return cfg, res, path


def test_load_round_trip(written):
    cfg, res, path = written
    data = io.load(path)
    np.testing.assert_array_equal(data["time"], res.times)
    assert set(data["observables"]) == set(res.outputs)
    for name, o in res.outputs.items():
        for key in ("mean", "stderr", "stderr_within"):  # single-valued outputs: (n_t,) in files
            stored = data["observables"][name][key]
            np.testing.assert_array_equal(stored, o[key].reshape(stored.shape))
        for key, src in (("mean", "real_mean"), ("stderr", "real_stderr")):
            stored = data["realizations"][name][key]
            np.testing.assert_array_equal(stored, o[src].reshape(stored.shape))
        ga = data["group_attrs"][f"observables/{name}"]
        assert ga["description"] == o["description"] and ga["kind"] == o["kind"]
        if o["labels"]:
            assert ga["labels"] == list(o["labels"])
    for k, v in res.moments.arrays().items():
        np.testing.assert_array_equal(data["moments"][k], v)
    np.testing.assert_array_equal(data["moments"]["cross"], res.moments.cross)
    expected = {s: {k: v for k, v in keys.items() if v is not None} for s, keys in cfg.items()}
    assert data["config"] == expected
    assert config.resolve(data["config"]) == cfg  # the stored config reproduces the run


def test_provenance_attributes(written):
    cfg, res, path = written
    a = io.load(path)["attrs"]
    assert a["ctwa_hpc_version"] == ctwa_hpc.__version__
    assert isinstance(a["git_revision"], str) and a["git_revision"]
    assert a["mpi_size"] == 1 and a["writer"] == "gather"
    assert a["seed"] == cfg["method"]["seed"] and a["disorder_seed"] == cfg["disorder"]["seed"]
    assert a["n_samples"] == 480 and a["n_realizations"] == 2
    assert a["wall_time_s"] > 0 and a["finished_run"]
    assert a["config_hash"] == checkpoint.config_hash(cfg)
    datetime.datetime.fromisoformat(a["created"])
    for key in ("mpi_library", "hostname", "backend", "conventions", "method", "config_toml"):
        assert key in a, key


def test_time_is_dimension_scale(written):
    _, _, path = written
    with h5py.File(path, "r") as f:
        assert f["time"].is_scale
        assert f["observables/sz/mean"].dims[0][0].name == "/time"


def test_info_and_no_mpi(tmp_path):
    out = tmp_path / "o.h5"
    check(run_cli(["run", TINY, "-o", out, "-q"], extra_env={"CTWA_NO_MPI": "1"}))
    r = check(run_cli(["info", out]))
    assert "method=sb" in r.stdout and "mz_staggered" in r.stdout


def test_config_hash_ignores_output_settings():
    a = config.load(TINY)
    b = config.load(TINY, ['output.path="x.h5"', "output.checkpoint_every_s=1.0",
                           'method.backend="numpy"', "stop.stderr_target=0.1"])
    c = config.load(TINY, ["method.seed=8"])
    assert checkpoint.config_hash(a) == checkpoint.config_hash(b) != checkpoint.config_hash(c)


def test_moments_are_optional_and_partial_sums_gone(tmp_path):
    """output.moments = 'never' drops /moments (the per-realization rows and n_samples stay);
    the removed output.write_partial is an error that names the replacement."""
    out = tmp_path / "o.h5"
    check(run_cli(["run", TINY, "-o", out, "-q", "--set", "output.moments='never'"]))
    data = io.load(out)
    assert "moments" not in data and "partial" not in data
    cfg = config.load(TINY)
    R, S = cfg["disorder"]["realizations"], cfg["method"]["samples"]
    np.testing.assert_array_equal(data["realization_samples"], np.full(R, S))
    out2 = tmp_path / "p.h5"
    r = check(run_cli(["run", TINY, "-o", out2, "-q", "--set", "output.write_partial=false"]), 2)
    assert "output.write_partial: removed" in r.stderr and "output.moments" in r.stderr
    r = check(run_cli(["run", TINY, "-o", out2, "-q", "--set", "output.moments='some'"]), 2)
    assert "output.moments" in r.stderr


