"""Checkpoint/restart: interrupt MPI runs (test hook, SIGUSR1 to mpirun, SIGTERM to one rank),
resume with another number of ranks, and compare with an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pytest

from ctwa_hpc.output import hdf5 as io
from mpi_helper import check, have_mpi, max_diff, popen_cli, run_cli, TINY

pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(not have_mpi(), reason="mpirun or mpi4py not available")]

# TFIM N=8 with 4-site clusters: 100 work blocks of 40 samples, ~2 s on 2 ranks
MEDIUM = ["--set", "model.n_sites=8", "--set", "method.cluster_size=4",
          "--set", "method.samples=2000", "--set", "time.t_max=10.0", "--set", "time.dt=0.01",
          "--set", "output.checkpoint_every_s=0.2", "--set", "output.progress_every_s=0.5"]


def run_args(path, *extra):
    return ["run", TINY, "-o", path, *MEDIUM, *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    check(run_cli(run_args(path, "-q"), n=2))
    return io.load(path)


def assert_equal_to(reference, path):
    data = io.load(path)
    np.testing.assert_array_equal(data["moments"]["count"], reference["moments"]["count"])
    assert data["attrs"]["n_samples"] == reference["attrs"]["n_samples"]
    diff = max_diff(reference, data)
    assert diff < 1e-12, diff
    assert not os.path.exists(str(path) + ".ckpt"), "checkpoint not removed after success"
    return diff


def test_hook_stop_and_resume_with_other_rank_counts(reference, tmp_path):
    path = tmp_path / "out.h5"
    r = check(run_cli(run_args(path), n=2, extra_env={"CTWA_TEST_STOP_AFTER_BLOCKS": "3"}), 3)
    assert "--resume" in r.stderr and "checkpoint" in r.stderr
    assert not path.exists() and (tmp_path / "out.h5.ckpt" / "manifest.json").exists()
    # resume on 3 ranks, interrupted again, then finished serially (no mpirun)
    check(run_cli(run_args(path, "--resume"), n=3,
                  extra_env={"CTWA_TEST_STOP_AFTER_BLOCKS": "2"}), 3)
    r = check(run_cli(run_args(path, "--resume", "-q")))
    assert_equal_to(reference, path)


def _wait_for(path, proc, timeout=60):
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def _interrupt(tmp_path, how):
    path = tmp_path / "out.h5"
    proc = popen_cli(run_args(path), n=None if how == "serial" else 2,
                     extra_env={"CTWA_TEST_BLOCK_DELAY_S": "0.03"})
    try:
        _wait_for(tmp_path / "out.h5.ckpt" / "manifest.json", proc)
        time.sleep(0.4)
        if how == "serial":
            proc.send_signal(signal.SIGTERM)
        elif how == "mpirun":  # Open MPI's mpirun forwards SIGUSR1 to every rank
            proc.send_signal(signal.SIGUSR1)
        else:  # SIGTERM to one rank only: the others learn it through the status exchange
            ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                   text=True, timeout=10).stdout.split()
            assert ranks, "no rank processes found"
            os.kill(int(ranks[-1]), signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 3, out + err
    assert "resume with" in err
    return path


@pytest.mark.parametrize("how", ["mpirun", "rank", "serial"])
def test_signal_stop_and_resume(reference, tmp_path, how):
    path = _interrupt(tmp_path, how)
    assert not path.exists()
    check(run_cli(run_args(path, "--resume", "-q"), n=2))
    assert_equal_to(reference, path)


def test_resume_refuses_other_config(tmp_path):
    path = tmp_path / "out.h5"
    check(run_cli(["run", TINY, "-o", path], n=2,
                  extra_env={"CTWA_TEST_STOP_AFTER_BLOCKS": "1"}), 3)
    r = check(run_cli(["run", TINY, "-o", path, "--resume", "--set", "model.hx=0.9"]), 2)
    assert "different configuration" in r.stderr
    # neutral settings (output, backend) may change
    r = check(run_cli(["run", TINY, "-o", path, "--resume", "-q",
                       "--set", "method.backend=\"numpy\"", "--set", "output.progress_every_s=1.0"]))


def test_checkpoint_guards(tmp_path):
    path = tmp_path / "out.h5"
    check(run_cli(["run", TINY, "-o", path], extra_env={"CTWA_TEST_STOP_AFTER_BLOCKS": "1"}), 3)
    r = check(run_cli(["run", TINY, "-o", path]), 2)  # leftover checkpoint, no --resume
    assert "--resume" in r.stderr and "--force" in r.stderr
    check(run_cli(["run", TINY, "-o", path, "--force", "-q"]))  # starts over
    assert path.exists() and not (tmp_path / "out.h5.ckpt").exists()
    r = check(run_cli(["run", TINY, "-o", path, "--resume"]))  # requeued after completion
    assert "nothing to resume" in r.stderr
    r = check(run_cli(["run", TINY, "-o", path, "--resume", "--set", "method.seed=3"]), 2)
    assert "--force" in r.stderr


def test_stopping_rule_rank_invariant(tmp_path):
    """stop.stderr_target ends the run after whole stages; same stop point on 1 and 3 ranks."""
    args = ["--set", "stop.stderr_target=0.05", "--set", "stop.observables=[\"mz_staggered\"]",
            "--set", "stop.check_samples=80", "--set", "method.samples=2000"]
    p1, p3 = tmp_path / "s1.h5", tmp_path / "s3.h5"
    r = check(run_cli(["run", TINY, "-o", p1, *args]))
    assert "stopping rule" in r.stderr
    check(run_cli(["run", TINY, "-o", p3, "-q", *args], n=3))
    a, b = io.load(p1), io.load(p3)
    assert a["attrs"]["n_samples"] == b["attrs"]["n_samples"]
    assert 0 < a["attrs"]["n_samples"] < 2 * 2000
    assert a["attrs"]["n_samples"] % (2 * 80) == 0
    assert max_diff(a, b) < 1e-12
    assert np.nanmax(a["observables"]["mz_staggered"]["stderr"]) <= 0.05
    r = check(run_cli(["run", TINY, "-o", p1, "--force",
                       "--set", "stop.observables=[\"nope\"]"]), 2)
    assert "stop.observables[0]" in r.stderr
