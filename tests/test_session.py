"""One run path: ``ctwa_hpc.run`` and ``ctwa-hpc run`` go through the same stages
(:class:`ctwa_hpc.driver.session.Session`) and refuse the same runs, with the same messages,
before any work."""
import os
import re
import time

import pytest

import ctwa_hpc
from ctwa_hpc import cli
from ctwa_hpc.driver import runner
from ctwa_hpc.output import hdf5
from ctwa_hpc.tools.exceptions import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "jobs", "tiny.toml")


@pytest.fixture
def no_work(monkeypatch):
    """Any call of the runner's work fails the test: refusals must come before it."""
    def forbidden(*a, **k):
        raise AssertionError("the work started")
    monkeypatch.setattr(runner.Simulation, "run", forbidden)


def _cli_error(capsys, argv):
    code = cli.main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("ctwa-hpc: error: ")]
    return code, lines[-1][len("ctwa-hpc: error: "):] if lines else err


def test_api_refuses_a_huge_run_like_the_cli(no_work, capsys, tmp_path):
    t0 = time.time()
    with pytest.raises(ConfigError) as exc:
        ctwa_hpc.run(TINY, {"method.samples": 10 ** 18}, quiet=True)
    assert time.time() - t0 < 10.0
    code, msg = _cli_error(capsys, ["run", TINY, "--set", "method.samples=1000000000000000000",
                                    "-o", str(tmp_path / "o.h5"), "-q"])
    assert code == 2
    numbers = re.compile(r"[0-9.]+e[+-][0-9]+")        # the calibrated run time differs
    assert numbers.sub("#", str(exc.value)) == numbers.sub("#", msg)
    assert "more than 1 year" in msg and msg.startswith("method.samples")


def test_api_refuses_an_existing_output_before_the_work(no_work, capsys, tmp_path):
    out = tmp_path / "o.h5"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError) as exc:
        ctwa_hpc.run(TINY, output=out, quiet=True)
    code, msg = _cli_error(capsys, ["run", TINY, "-o", str(out), "-q"])
    assert code == 2 and str(exc.value) == msg
    assert out.read_bytes() == b"keep me"


def test_api_refuses_a_missing_output_directory_before_the_work(no_work, tmp_path):
    with pytest.raises((ValueError, OSError), match="output.path: directory"):
        ctwa_hpc.run(TINY, output=tmp_path / "nowhere" / "o.h5", quiet=True)


def test_api_refuses_the_config_as_output(no_work, tmp_path):
    cfg = tmp_path / "my.toml"
    cfg.write_text(open(TINY).read())
    with pytest.raises(ValueError, match="output.path"):
        ctwa_hpc.run(str(cfg), output=str(cfg), force=True, quiet=True)
    assert cfg.read_text() == open(TINY).read()


def test_api_bad_time_grid_refused_by_the_same_guard(no_work, capsys, tmp_path):
    with pytest.raises(ValueError) as exc:
        ctwa_hpc.run(TINY, {"time.dt": 1e-9}, quiet=True)
    code, msg = _cli_error(capsys, ["run", TINY, "--set", "time.dt=1e-9",
                                    "-o", str(tmp_path / "o.h5"), "-q"])
    assert code == 2 and str(exc.value) == msg and msg.startswith("time.")


def test_api_and_cli_write_the_same_means(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    res = ctwa_hpc.run(TINY, output=a, quiet=True)
    assert res.path == os.fspath(a)
    assert cli.main(["run", TINY, "-o", str(b), "-q"]) == 0
    da, db = hdf5.load(a), hdf5.load(b)
    for name in da["observables"]:
        assert (da["observables"][name]["mean"] == db["observables"][name]["mean"]).all()
