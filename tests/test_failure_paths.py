"""Fault injection (issue 10): one test per failure class.  Every case must end with a clear
message, the documented exit code, nothing lost, and no state that needs --force.

Exit codes (ctwa_hpc/cli.py): 0 done, 1 unexpected/write error, 2 bad input/refused,
3 interrupted with a checkpoint.  Disk-full and read-only cases mount a small tmpfs (root
only; skipped otherwise).  MPI cases run ``mpirun`` subprocesses (skipped without MPI).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from ctwa_hpc.driver import checkpoint
from ctwa_hpc import cli, config
from ctwa_hpc.model import pauli
from ctwa_hpc.driver.runner import Simulation
from ctwa_hpc.model.timefunc import TimeFunction
from mpi_helper import check, env, max_diff, popen_cli, PY, ROOT, run_cli, TINY

from fault_helper import FAST, HAVE_MPI, clean, fill, leftovers, needs_mpi, tmpfs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted serial run of tiny.toml."""
    from ctwa_hpc.output import hdf5 as io
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    check(run_cli(["run", TINY, "-o", path, "-q"]))
    return io.load(path)


def same_as(reference, path):
    from ctwa_hpc.output import hdf5 as io
    data = io.load(path)
    assert data["attrs"]["n_samples"] == reference["attrs"]["n_samples"]
    np.testing.assert_array_equal(data["moments"]["count"], reference["moments"]["count"])
    assert max_diff(reference, data) < 1e-12


def wait_for(path, proc, timeout=60):
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.02)


# -- 1. a rank-local error aborts the whole job within seconds, with its message -------------------
@needs_mpi
def test_rank_local_errors_stop_every_rank_fast(tmp_path):
    out = tmp_path / "o.h5"
    missing = tmp_path / "missing.toml"
    ctwa = [PY, "-m", "mpi4py", "-m", "ctwa_hpc", "run"]
    # config not visible on one rank (setup stage: errors are gathered before any collective)
    cmd = ["mpirun", "-n", "1", *ctwa, TINY, "-o", str(out), ":",
           "-n", "1", *ctwa, str(missing), "-o", str(out)]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env())
    assert time.time() - t0 < 20
    assert r.returncode == 2, r.stderr
    assert "(rank 1)" in r.stderr and "not found" in r.stderr and "missing.toml" in r.stderr
    assert leftovers(tmp_path) == []
    # an error on one rank in the middle of the work (a non-finite trajectory on rank 1 only)
    bad = ["--set", "model.hx=200.0", "--set", "time.dt=0.1", "--set", "time.output_dt=0.2"]
    cmd = ["mpirun", "-n", "1", *ctwa, TINY, "-o", str(out), ":",
           "-n", "1", *ctwa, TINY, "-o", str(out), *bad]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env())
    assert time.time() - t0 < 20
    assert r.returncode == 2, r.stderr
    assert "(rank 1)" in r.stderr and "non-finite" in r.stderr and "time.dt" in r.stderr
    assert not out.exists()


# -- 2. disk full -----------------------------------------------------------------------------------
def test_disk_full_refused_before_work(tmp_path):
    d = tmp_path / "mnt"
    with tmpfs(d, "1m"):
        fill(d, 20_000)
        r = clean(check(run_cli(["run", TINY, "-o", d / "o.h5"]), 2))
        assert "free" in r.stderr and "output.path" in r.stderr
        assert leftovers(d, {"filler"}) == []


@pytest.mark.parametrize("n", [None, 2])
def test_disk_full_during_run_keeps_checkpoint(tmp_path, reference, n):
    if n and not HAVE_MPI:
        pytest.skip("mpirun or mpi4py not available")
    d = tmp_path / "mnt"
    with tmpfs(d, "4m"):
        out = d / "o.h5"
        proc = popen_cli(["run", TINY, "-o", out, "-q"], n=n,
                         extra_env={"CTWA_TEST_BLOCK_DELAY_S": "0.15"})
        try:
            wait_for(d / "o.h5.ckpt" / "manifest.json", proc)
            fill(d, 80_000)  # room for the checkpoint, not for the output
            _, err = proc.communicate(timeout=FAST)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == 1, err
        assert "free" in err and "--resume" in err and "Traceback" not in err
        assert leftovers(d, {"filler"}) == ["o.h5.ckpt"]  # no output, lock or temporary
        os.remove(d / "filler")
        r = check(run_cli(["run", TINY, "-o", out, "--resume"], n=n))
        assert "12 of 12 work blocks already done" in r.stderr  # nothing was lost
        same_as(reference, out)
        assert leftovers(d) == ["o.h5"]


@pytest.mark.parametrize("n", [None, 2])
def test_stuck_write_ends_with_exit_1_and_keeps_checkpoint(tmp_path, reference, n):
    """A final write that does not finish (parallel HDF5 spinning in close() after ENOSPC,
    a hung file system; simulated by a sleep inside the open file) is ended by the
    GIL-free watchdog: exit 1 within seconds, the checkpoint kept, and --resume finishes."""
    if n and not HAVE_MPI:
        pytest.skip("mpirun or mpi4py not available")
    out = tmp_path / "o.h5"
    t0 = time.time()
    r = run_cli(["run", TINY, "-o", out, "-q"], n=n, timeout=120,
                extra_env={"CTWA_TEST_WRITE_HANG_S": "600", "CTWA_WRITE_TIMEOUT_S": "3"})
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert time.time() - t0 < FAST and "Timeout" in r.stderr
    assert not out.exists() and (tmp_path / "o.h5.ckpt" / "manifest.json").exists()
    r = check(run_cli(["run", TINY, "-o", out, "--resume"], n=n))
    assert "12 of 12 work blocks already done" in r.stderr      # nothing was lost
    same_as(reference, out)
    assert leftovers(tmp_path) == ["o.h5"]                     # temporaries, lock: gone


# -- 3. time functions: bounded cost, config errors instead of tracebacks ------------------------
@pytest.mark.parametrize("expr, msg", [
    ("9**9**9**9", "not finite"),
    ("10**10**8", "not finite"),
    ("('a'*10**10) and 1", "unsupported syntax"),
    ("'a'*10**10", "a string is not allowed"),
    ("t and 1", "'and'/'or'"),
    ("(t, 1)", "a tuple"),
    ("1 if t > 0 else 2", "conditional"),
    ("t > 1", "comparison"),
    ("cos(t", "invalid expression"),
    ("t.real", "attribute access"),
    ("__import__('os')", "only sin, cos"),
    ("sin(t, 2)", "exactly one"),
    ("t // 2", "'//'"),
    ("-" * 200 + "t", "nested too deeply"),
    ("t+" * 300 + "t", "too large"),
    ("t" * 1001, "too long"),
    ("1e999", "not finite"),
    ("cos(omega*t)", "unknown name 'omega'"),
])
def test_time_function_rejects_quickly(expr, msg):
    t0 = time.time()
    with pytest.raises(ValueError, match=r"^model\.terms\[0\]\.f: .*" + msg):
        TimeFunction(expr, where="model.terms[0].f")
    assert time.time() - t0 < 0.5


def test_time_function_params_and_vectorised():
    f = TimeFunction("cos(omega*t) * step(t - t0) + 2**-1", "model.terms[0].f",
                     {"omega": 2.0, "t0": 1.0})
    t = np.linspace(0.0, 3.0, 31)
    np.testing.assert_allclose(f(t), np.cos(2 * t) * (t >= 1.0) + 0.5, rtol=0, atol=1e-15)
    assert f(t).shape == t.shape and TimeFunction("3", "x")(t).shape == t.shape
    assert f.expr.startswith("cos(omega") and "params" in repr(f)
    for params, msg in [({"t": 1.0}, "clashes"), ({"omega": float("nan")}, "not finite"),
                        ({"1x": 2.0}, "not an identifier"), ({"w": True}, "real number"),
                        ({"w": "2"}, "real number"), ([1.0], "table")]:
        with pytest.raises(ValueError, match=r"^model\.terms\[0\]\.f: .*" + msg):
            TimeFunction("t", "model.terms[0].f", params)
    with pytest.raises(ValueError, match=r"at t = 1 is not finite on the time grid"):
        TimeFunction("1/(t-1)", "model.terms[0].f").check_grid(np.linspace(0, 2, 21))


def _custom(tmp_path, terms, n_sites=3, cluster_size=1, extra=""):
    p = tmp_path / "c.toml"
    p.write_text(f"""
[model]
kind = "custom"
n_sites = {n_sites}
terms = {terms}
{extra}
[method]
kind = "sb"
cluster_size = {cluster_size}
samples = 40
batch = 20
[time]
dt = 0.05
t_max = 2.0
[observables]
names = ["sz"]
""")
    return p


def test_time_function_hostile_config_exit_2(tmp_path):
    cfg = _custom(tmp_path, '[{coef = 1.0, ops = "X0", f = "9**9**9**9"}]')
    t0 = time.time()
    r = clean(check(run_cli(["run", cfg, "-o", tmp_path / "o.h5"]), 2))
    assert time.time() - t0 < FAST and "model.terms[0].f" in r.stderr
    assert leftovers(tmp_path, {"c.toml"}) == []


# -- 4. checkpoint directory without manifest -----------------------------------------------------
def test_checkpoint_without_manifest_starts_fresh(tmp_path, reference):
    out = tmp_path / "o.h5"
    os.makedirs(tmp_path / "o.h5.ckpt")  # killed between makedirs and the first manifest
    r = check(run_cli(["run", TINY, "-o", out, "--resume"]))
    assert "no manifest" in r.stderr
    same_as(reference, out)
    os.makedirs(tmp_path / "p.h5.ckpt")  # also without --resume
    (tmp_path / "p.h5.ckpt" / "g0.rank0.npz").write_bytes(b"")
    check(run_cli(["run", TINY, "-o", tmp_path / "p.h5", "-q"]))
    assert leftovers(tmp_path) == ["o.h5", "p.h5"]


# -- 5. damaged checkpoints are refused, never merged ---------------------------------------------
@pytest.fixture(scope="module")
def two_rank_checkpoint(tmp_path_factory):
    """A checkpoint of tiny.toml written by 2 ranks after 2 blocks each (4 of 12 done)."""
    if not HAVE_MPI:
        pytest.skip("mpirun or mpi4py not available")
    d = tmp_path_factory.mktemp("ck")
    check(run_cli(["run", TINY, "-o", d / "o.h5"], n=2,
                  extra_env={"CTWA_TEST_STOP_AFTER_BLOCKS": "2"}), 3)
    return d / "o.h5.ckpt"


_HEADER = ("config_hash", "generation", "rank", "checksum")


def _rewrite(path, change, forge=True, rank=None):
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    change(data)
    if rank is not None:
        data["rank"] = np.array(rank)
    if forge:  # a consistent checksum: only the deeper checks can catch it
        arrays = {k: v for k, v in data.items() if k not in _HEADER}
        data["checksum"] = np.array(checkpoint._checksum(
            str(data["config_hash"]), int(data["generation"]), int(data["rank"]), arrays))
    with open(path, "wb") as fh:
        np.savez(fh, **data)


def _damage(kind, ck):
    f0, f1, man = ck / "g0.rank0.npz", ck / "g0.rank1.npz", ck / "manifest.json"
    if kind == "copied":
        shutil.copy(f0, f1)
    elif kind == "copied_and_relabelled":
        shutil.copy(f0, f1)
        _rewrite(f1, lambda d: None, rank=1)
    elif kind == "items_shortened":
        _rewrite(f0, lambda d: d.update(frag_items=d["frag_items"][:-1]), forge=False)
    elif kind == "items_shortened_forged":   # one block fewer, its samples still counted
        _rewrite(f0, lambda d: d.update(frag_items=d["frag_items"][:-1],
                                        frag_nitems=d["frag_nitems"] - 1))
    elif kind == "nan_in_sums":
        def nan(d):
            d["frag_s1"] = d["frag_s1"].copy()
            d["frag_s1"].flat[3] = np.nan
        _rewrite(f0, nan)
    elif kind == "truncated":
        data = f0.read_bytes()
        f0.write_bytes(data[:len(data) // 2])
    elif kind == "manifest_missing_key":
        m = json.loads(man.read_text())
        del m["generation"]
        man.write_text(json.dumps(m))
    elif kind == "manifest_wrong_type":
        m = json.loads(man.read_text())
        m["size"] = "two"
        man.write_text(json.dumps(m))
    elif kind == "manifest_garbage":
        man.write_text("{not json")


@pytest.mark.parametrize("kind, msg", [
    ("copied", "holds generation 0 of rank 0"),
    ("copied_and_relabelled", "contain the same work blocks"),
    ("items_shortened", "checksum mismatch"),
    ("items_shortened_forged", "sample counts do not match"),
    ("nan_in_sums", "non-finite"),
    ("truncated", "unreadable"),
    ("manifest_missing_key", "manifest.json is damaged"),
    ("manifest_wrong_type", "manifest.json is damaged"),
    ("manifest_garbage", "manifest.json is damaged"),
])
def test_damaged_checkpoint_refused(two_rank_checkpoint, tmp_path, reference, kind, msg):
    ck = tmp_path / "o.h5.ckpt"
    shutil.copytree(two_rank_checkpoint, ck)
    _damage(kind, ck)
    before = {p: open(p, "rb").read() for p in glob.glob(str(ck / "*"))}
    r = clean(check(run_cli(["run", TINY, "-o", tmp_path / "o.h5", "--resume"]), 2))
    assert msg in r.stderr, r.stderr
    assert "--force" in r.stderr or "delete" in r.stderr  # says what to do
    assert not (tmp_path / "o.h5").exists()
    assert {p: open(p, "rb").read() for p in glob.glob(str(ck / "*"))} == before  # untouched
    if kind in ("copied", "items_shortened_forged", "truncated", "manifest_garbage"):
        if kind.startswith("manifest"):  # the advice works
            check(run_cli(["run", TINY, "-o", tmp_path / "o.h5", "--force", "-q"]))
        else:  # delete the damaged file: its blocks are redone
            os.remove(ck / ("g0.rank1.npz" if kind == "copied" else "g0.rank0.npz"))
            check(run_cli(["run", TINY, "-o", tmp_path / "o.h5", "--resume", "-q"]))
        same_as(reference, tmp_path / "o.h5")


# -- 6. -o is a path, never TOML -------------------------------------------------------------------
def test_output_path_taken_literally(tmp_path):
    from ctwa_hpc.output import hdf5 as io
    for name in ["a\\tb \"q'.h5"]:  # backslash-t, double and single quote, blank
        check(run_cli(["run", TINY, "-o", tmp_path / name, "-q"]))
        assert (tmp_path / name).exists()
        assert io.load(tmp_path / name)["config"]["output"]["path"] == str(tmp_path / name)
    r = clean(check(run_cli(["run", TINY, "-o", tmp_path / "a\tb.h5"]), 2))
    assert "control characters" in r.stderr


# -- 7. errors found at run time, and the checks before work ---------------------------------------
@pytest.mark.parametrize("n", [None, 2])
def test_nonfinite_trajectory_then_corrected_rerun(tmp_path, n):
    if n and not HAVE_MPI:
        pytest.skip("mpirun or mpi4py not available")
    out = tmp_path / "o.h5"
    bad = ["--set", "model.hx=200.0", "--set", "time.dt=0.1", "--set", "time.output_dt=0.2"]
    t0 = time.time()
    r = clean(check(run_cli(["run", TINY, "-o", out, *bad], n=n), 2))
    assert time.time() - t0 < FAST
    assert "non-finite" in r.stderr and "time.dt" in r.stderr
    assert not out.exists() and not (tmp_path / "o.h5.lock").exists()
    check(run_cli(["run", TINY, "-o", out, "-q"], n=n))  # no --force needed
    assert leftovers(tmp_path) == ["o.h5"]


@pytest.mark.parametrize("case, msg", [
    (["--set", "method.seed=-1"], "method.seed"),
    (["--set", "time.dt=1e-12"], "time.dt"),
    (["--set", "time.dt=1e-9", "--set", "time.output_dt=0.2"], "time.dt"),
    (["--set", "model.n_sites=1", "--set", "method.cluster_size=1", "--set",
      "observables.pairs=[]", "--set", "disorder.realizations=1"], "nothing to measure"),
])
def test_checked_before_work(tmp_path, case, msg):
    t0 = time.time()
    r = clean(check(run_cli(["run", TINY, "-o", tmp_path / "o.h5", *case]), 2))
    assert msg in r.stderr and time.time() - t0 < FAST
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("terms, msg", [
    ('[{coef = 1.0, ops = "Z0 Z1 Z2"}]', "touches 3 clusters"),
    ('[{coef = 1.0, ops = "X0", f = "1/(t-1)"}]', "not finite on the time grid"),
    ('[{coef = 1.0, ops = "X0", f = "sqrt(1 - t)"}]', "not finite on the time grid"),
])
def test_model_errors_before_work(tmp_path, terms, msg):
    cfg = _custom(tmp_path, terms)
    r = clean(check(run_cli(["run", cfg, "-o", tmp_path / "o.h5"]), 2))
    assert msg in r.stderr and "model.terms" in r.stderr
    assert leftovers(tmp_path, {"c.toml"}) == []


def test_config_directory_and_read_only_output(tmp_path):
    r = clean(check(run_cli(["run", tmp_path, "-o", tmp_path / "o.h5"]), 2))
    assert "directory" in r.stderr
    d = tmp_path / "ro"
    with tmpfs(d, "1m", ro=True):
        r = clean(check(run_cli(["run", TINY, "-o", d / "o.h5"]), 2))
        assert "not writable" in r.stderr


# -- 8. -o equal to the config ----------------------------------------------------------------------
def test_output_equal_to_config_refused(tmp_path):
    cfg = tmp_path / "c.toml"
    shutil.copy(TINY, cfg)
    os.symlink(cfg, tmp_path / "link.h5")
    text = cfg.read_text()
    for out in [cfg, tmp_path / "." / "c.toml", tmp_path / "link.h5"]:
        r = clean(check(run_cli(["run", cfg, "-o", out, "--force"]), 2))
        assert "config file itself" in r.stderr
    assert cfg.read_text() == text


# -- 9. stale temporaries ---------------------------------------------------------------------------
def test_stale_temporaries_removed(tmp_path, reference):
    out = tmp_path / "o.h5"
    check(run_cli(["run", TINY, "-o", out], extra_env={"CTWA_TEST_STOP_AFTER_BLOCKS": "2"}), 3)
    ck = tmp_path / "o.h5.ckpt"
    (tmp_path / "o.h5.tmp.999999").write_bytes(b"\0" * 100_000)
    (ck / "g0.rank0.npz.tmp.999999").write_bytes(b"x")
    (ck / "g0.rank0.npz.tmp999999.npz").write_bytes(b"x")  # the old naming
    (ck / "manifest.json.tmp.999999").write_text("{")
    check(run_cli(["run", TINY, "-o", out, "--resume", "-q"]))
    same_as(reference, out)
    assert leftovers(tmp_path) == ["o.h5"]


# -- 10. one run per output -------------------------------------------------------------------------
def test_concurrent_runs_refused(tmp_path, reference):
    out = tmp_path / "o.h5"
    first = popen_cli(["run", TINY, "-o", out, "-q"], extra_env={"CTWA_TEST_BLOCK_DELAY_S": "0.5"})
    try:
        wait_for(tmp_path / "o.h5.ckpt" / "manifest.json", first)
        others = [popen_cli(["run", TINY, "-o", out, *extra])
                  for extra in (["--force"], ["--resume"], [])]
        for p in others:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 2 and "Traceback" not in err, err
            assert "in use by another run" in err and f"pid {first.pid}" in err
        assert first.poll() is None  # refused while the first run was still working
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, err
    same_as(reference, out)
    assert leftovers(tmp_path) == ["o.h5"]


def test_stale_and_foreign_locks(tmp_path):
    out = tmp_path / "o.h5"
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = tmp_path / "o.h5.lock"
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "start": None}))
    r = check(run_cli(["run", TINY, "-o", out, "-q"]))
    assert "stale lock" in r.stderr and not lock.exists()
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "since": "then"}))
    r = clean(check(run_cli(["run", TINY, "-o", out, "--force"]), 2))
    assert "elsewhere.example" in r.stderr and str(lock) in r.stderr
    # an earlier incarnation of the same (requeued) SLURM job
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "slurm_job": "4711"}))
    check(run_cli(["run", TINY, "-o", out, "--force", "-q"], extra_env={"SLURM_JOB_ID": "4711"}))
    assert not lock.exists()


# -- 12. the summary's comparison with exact ------------------------------------------------------
def _summary_data(mean, se, within, exact, attrs=None, compare=True):
    t = np.arange(len(mean), dtype=float)
    o = {"mean": np.asarray(mean, float)}
    if se is not None:
        o["stderr"] = np.asarray(se, float)
    if within is not None:
        o["stderr_within"] = np.asarray(within, float)
    return {"attrs": {"method": "sb", **(attrs or {})}, "time": t, "observables": {"m": o},
            "exact": {} if exact is None else {"m": {"mean": np.asarray(exact, float)}},
            "config": {"output": {"compare_exact": compare}}}


def test_summary_z_uses_within_realization_error(capsys):
    # disorder spread 0.5 hides a systematic deviation of 0.1 = 5 within-realization errors
    cli.print_summary(_summary_data([1.1, 1.1], [0.5, 0.5], [0.02, 0.02], [1.0, 1.0]))
    line = [x for x in capsys.readouterr().out.splitlines() if "vs exact" in x][0]
    assert "stderr_within" in line and "max 5.00" in line and "mean 5.00" in line
    # mean field: no sampling error, so deviations without z (never 1e305)
    cli.print_summary(_summary_data([1.0, 0.7], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0],
                                    attrs={"method": "meanfield"}))
    line = [x for x in capsys.readouterr().out.splitlines() if "vs exact" in x][0]
    assert "no sampling error" in line and "max |dev| = 0.3" in line and "z =" not in line
    # partly zero errors: z only where the error is positive
    cli.print_summary(_summary_data([1.0, 1.1], [0.0, 0.05], [0.0, 0.05], [1.0, 1.0]))
    line = [x for x in capsys.readouterr().out.splitlines() if "vs exact" in x][0]
    assert "max 2.00" in line and "1 point(s) without error" in line
    # a skipped exact reference is mentioned, with the reason
    cli.print_summary(_summary_data([1.0, 1.0], [0.1, 0.1], [0.1, 0.1], None,
                                    attrs={"exact_skipped": "no exact reference: N = 24 > 20"}))
    assert "exact reference skipped: no exact reference: N = 24 > 20" in capsys.readouterr().out


# -- 13. mean field stays on an unstable stationary state -----------------------------------------
def test_single_site_unitary_exact_at_special_angles():
    up = np.array([1.0, 0.0])
    assert np.array_equal(pauli.single_site_unitary(np.pi, 0.0) @ up, [0.0, 1.0])
    assert np.array_equal(pauli.single_site_unitary(0.0, 0.0), np.eye(2))
    assert np.array_equal(pauli.single_site_unitary(np.pi, np.pi) @ up, [0.0, -1.0])
    v = pauli.single_site_unitary(np.pi / 2, np.pi / 2) @ up
    assert v[0] == np.sqrt(0.5) and v[1] == 1j * np.sqrt(0.5)
    th, ph = 1.234, -0.456  # generic angles unchanged
    u = pauli.single_site_unitary(th, ph)
    np.testing.assert_allclose(u @ up, [np.cos(th / 2), np.exp(1j * ph) * np.sin(th / 2)],
                               rtol=0, atol=1e-16)


HEIS8_MF = """
[model]
kind = "heisenberg"
n_sites = 8
J = 1.0
hz = 1.0
boundary = "periodic"
[disorder]
realizations = 4
[state]
kind = "neel"
[method]
kind = "meanfield"
cluster_size = 1
[time]
t_max = 20.0
output_dt = 0.5
[observables]
names = ["mz_staggered"]
"""


def test_meanfield_neel_stays_neel(tmp_path):
    """heis8 disordered (h_z = 1), clusters of one: the Néel state is stationary.  Before the
    fix a 6e-17 up component grew to m_z(19) ≈ 0.2-0.7; what remains is RK4's amplitude error
    ∝ dt^5 (halving dt divides it by ≈ 32), below 1e-12 at dt = 0.0025."""
    base = tmp_path / "heis8.toml"
    base.write_text(HEIS8_MF)
    devs = {}
    for dt in (0.01, 0.005):
        cfg = config.load(base, [f"time.dt={dt}"])
        res = Simulation(cfg, quiet=True).run()
        devs[dt] = np.abs(res.outputs["mz_staggered"]["real_mean"] - 1.0).max()
    assert devs[0.01] < 2e-9 and devs[0.005] < 1e-10, devs
    assert devs[0.01] / devs[0.005] > 16, devs  # integration error, not an instability


# -- 15. signals ------------------------------------------------------------------------------------
MEDIUM = ["--set", "model.n_sites=8", "--set", "method.cluster_size=4", "--set",
          "method.samples=2000", "--set", "time.t_max=10.0", "--set",
          "output.checkpoint_every_s=0.5"]


@needs_mpi
def test_sigterm_to_every_rank_exits_3_everywhere(tmp_path):
    out = tmp_path / "o.h5"
    rc = tmp_path / "rc"
    inner = " ".join([PY, "-m", "mpi4py", "-m", "ctwa_hpc", "run", TINY, "-o", str(out), "-q",
                      *MEDIUM])
    script = f'{inner}; rc=$?; echo $rc > {rc}.$OMPI_COMM_WORLD_RANK; exit $rc'
    proc = subprocess.Popen(["mpirun", "-n", "2", "sh", "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=env({"CTWA_TEST_BLOCK_DELAY_S": "0.05"}),
                            start_new_session=True)
    try:
        wait_for(tmp_path / "o.h5.ckpt" / "manifest.json", proc)
        time.sleep(0.3)
        shells = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True,
                                timeout=10).stdout.split()
        ranks = [p for s in shells for p in subprocess.run(
            ["pgrep", "-P", s], capture_output=True, text=True, timeout=10).stdout.split()]
        assert len(ranks) == 2, (shells, ranks)
        for p in ranks:  # what srun / scancel --signal=TERM do
            os.kill(int(p), signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 3, err
    assert [open(f"{rc}.{k}").read().strip() for k in (0, 1)] == ["3", "3"]
    assert "resume with" in err
    check(run_cli(["run", TINY, "-o", out, "--resume", "-q", *MEDIUM], n=2))
