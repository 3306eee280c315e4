"""Fault injection II (issue 17), the run driver: the final write, checkpoints, guards, the
CLI/API session paths and ``check-dt``.  Every case ends with one clear message naming the
field or file and the fix, the documented exit code (2 refused, 1 output not written with the
checkpoint kept, 3 interrupted), nothing lost and nothing left behind.

Disk-full cases mount a small tmpfs (root only; skipped otherwise); MPI cases run ``mpirun``
subprocesses on 2 ranks (skipped without MPI).
"""
from __future__ import annotations

import json
import os
import queue
import re
import resource
import shutil
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

import ctwa_hpc
from ctwa_hpc import cli
from ctwa_hpc.driver import checkpoint, runner
from ctwa_hpc.output import hdf5
from ctwa_hpc.tools.exceptions import ConfigError
from mpi_helper import PY, ROOT, TINY, check, env, max_diff, popen_cli, run_cli

from fault_helper import FAST, HAVE_MPI, clean, leftovers, needs_mpi, tmpfs

STOP = "CTWA_TEST_STOP_AFTER_BLOCKS"


def snapshot(d):
    return {p: open(os.path.join(d, p), "rb").read() for p in sorted(os.listdir(d))}


def cli_main(capsys, args):
    """``ctwa-hpc ARGS`` in this process (refusals: no interpreter start-up); (code, stderr)."""
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """The checkpoint of tiny.toml stopped after 7 of its 12 blocks (row 0 done, row 1 in
    flight), written by one rank."""
    d = tmp_path_factory.mktemp("stopped")
    check(run_cli(["run", TINY, "-o", d / "o.h5", "-q"], extra_env={STOP: "7"}), 3)
    return d / "o.h5.ckpt"


@pytest.fixture
def no_work(monkeypatch):
    """Any call of the runner's work fails the test: refusals must come before it."""
    def forbidden(*a, **k):
        raise AssertionError("the work started")
    monkeypatch.setattr(runner.Simulation, "run", forbidden)


# -- C2: the disk fills up during the final write (serial and gather writers) -------------------
FILL_DURING_WRITE = '''
import os, sys
from ctwa_hpc import cli
from ctwa_hpc.output import hdf5
write = hdf5.write_output
def write_output(path, result, comm=None, *a, **k):
    # another process fills the disk after the free-space check, during the final write
    if comm is None or comm.rank == 0:
        d = os.path.dirname(os.path.abspath(path))
        st = os.statvfs(d)
        with open(os.path.join(d, "filler"), "wb") as fh:
            fh.write(bytes(max(st.f_bavail * st.f_frsize - int(os.environ["LEAVE"]), 0)))
    if comm is not None:
        comm.Barrier()
    return write(path, result, comm, *a, **k)
hdf5.write_output = write_output
sys.exit(cli.main(sys.argv[1:]))
'''
# ~0.6 MB of output: the disk fills up in the middle of it (this segfaulted in h5py's close)
WIDE = ["--set", "model.n_sites=8", "--set", "time.output_dt=0.02", "--set",
        "disorder.realizations=8", "--set", "method.samples=40"]


@pytest.fixture(scope="module")
def wide_reference(tmp_path_factory):
    ref = tmp_path_factory.mktemp("ref") / "ref.h5"
    check(run_cli(["run", TINY, "-o", ref, "-q", *WIDE]))
    return hdf5.load(ref)


@pytest.mark.parametrize("n", [None, 2])
def test_c2_disk_full_during_the_final_write(tmp_path, wide_reference, n):
    if n and not HAVE_MPI:
        pytest.skip("mpirun or mpi4py not available")
    gather = {"CTWA_H5_GATHER": "1"} if n else {}
    wrap = tmp_path / "fill_during_write.py"
    wrap.write_text(FILL_DURING_WRITE)
    launch = [PY] if n is None else ["mpirun", "-n", str(n), PY, "-m", "mpi4py"]
    d = tmp_path / "mnt"
    with tmpfs(d, "8m"):
        out = d / "o.h5"
        r = subprocess.run([*launch, str(wrap), "run", TINY, "-o", str(out), "-q", *WIDE],
                           capture_output=True, text=True, timeout=120, cwd=ROOT,
                           env=env({"LEAVE": "100000", **gather}))
        assert r.returncode == 1, (r.returncode, r.stderr[-3000:])      # not -11 (SIGSEGV)
        assert "Traceback" not in r.stderr and "HDF5" not in r.stderr, r.stderr[-3000:]
        ours = [ln for ln in r.stderr.splitlines() if ln.startswith("ctwa-hpc")]
        errors = [ln for ln in ours if ln.startswith("ctwa-hpc: error")]
        assert len(errors) == 1 and "no space left in" in errors[0] and str(d) in errors[0]
        assert "--resume" in r.stderr and "o.h5.ckpt" in r.stderr
        if n is None:
            assert ours == r.stderr.splitlines(), r.stderr           # nothing else printed
        # no temporary, no lock: only the checkpoint is left on the full disk
        assert leftovers(d, {"filler"}) == ["o.h5.ckpt"]
        assert (d / "o.h5.ckpt" / "failed.json").exists()
        os.remove(d / "filler")
        r = check(run_cli(["run", TINY, "-o", out, "--resume", *WIDE], n=n, extra_env=gather))
        m = re.search(r"(\d+) of (\d+) work blocks already done", r.stderr)
        assert m and m.group(1) == m.group(2), r.stderr              # nothing was lost
        assert max_diff(wide_reference, hdf5.load(out)) < 1e-12
        assert leftovers(d) == ["o.h5"]


# -- L4: a checkpoint holding work is never deleted without --force -------------------------------
def test_l4_failed_checkpoint_with_work_kept_unless_force(tmp_path, stopped, capsys):
    out, ck = tmp_path / "o.h5", tmp_path / "o.h5.ckpt"
    shutil.copytree(stopped, ck)
    # what a full disk leaves: the checkpoint marked failed
    (ck / "failed.json").write_text(json.dumps({"message": "output.path: no space left",
                                                "rank": 0}))
    shutil.copytree(ck, tmp_path / "p.h5.ckpt")
    before = snapshot(ck)
    for extra in ([], ["--resume"]):   # any changed physics key
        code, err = cli_main(capsys, ["run", TINY, "-o", out, "--set", "model.hx=0.9", *extra])
        assert code == 2 and str(ck) in err and "--resume" in err and "--force" in err
        assert "no space left" in err and "holds the finished work" in err
        assert snapshot(ck) == before and not out.exists()
    r = check(run_cli(["run", TINY, "-o", out, "--resume"]))             # the work is there
    assert "7 of 12 work blocks already done" in r.stderr
    p = tmp_path / "p.h5"                              # --force discards it, as documented
    check(run_cli(["run", TINY, "-o", p, "--set", "model.hx=0.9", "--force", "-q"]))
    assert hdf5.load(p)["config"]["model"]["hx"] == 0.9
    assert leftovers(tmp_path) == ["o.h5", "p.h5"]


def test_l4_failed_checkpoint_without_work_still_replaced(tmp_path):
    """The corrected rerun after an early failure needs no --force (nothing to lose)."""
    out = tmp_path / "o.h5"
    check(run_cli(["run", TINY, "-o", out, "-q"], extra_env={STOP: "0"}), 3)
    ck = tmp_path / "o.h5.ckpt"
    (ck / "failed.json").write_text(json.dumps({"message": "non-finite", "rank": 1}))
    check(run_cli(["run", TINY, "-o", out, "--set", "model.hx=0.9", "-q"]))
    assert leftovers(tmp_path) == ["o.h5"]


# -- W5: non-finite numbers in a checkpoint, with the checksum recomputed -------------------------
def _forge(path, key, index, value=np.nan, legacy=False):
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    if legacy:   # a file of the previous version: no counts of its non-finite estimates
        data.pop("est_nonfinite")
    a = data[key].astype(float)
    a.flat[index] = value
    data[key] = a
    state = {k: v for k, v in data.items()
             if k not in ("config_hash", "generation", "rank", "checksum")}
    data["checksum"] = np.array(checkpoint._checksum(
        str(data["config_hash"]), int(data["generation"]), int(data["rank"]), state))
    with open(path, "wb") as fh:
        np.savez(fh, **data)


@pytest.mark.parametrize("key, value, legacy", [
    ("est_mean_sz", np.nan, False), ("est_se_czz", np.nan, False),
    ("est_mean_energy", np.inf, False), ("est_mean_sz", np.nan, True),
    ("est_se_sz", -np.inf, True)])
def test_w5_non_finite_checkpoint_estimates_refused(tmp_path, stopped, capsys, key, value,
                                                    legacy):
    out, ck = tmp_path / "o.h5", tmp_path / "o.h5.ckpt"
    shutil.copytree(stopped, ck)
    f = ck / "g0.rank0.npz"
    with np.load(f) as z:
        assert len(z["done_rows"]) == 1 and z["done_count"][0] == 120
    _forge(f, key, 5, value, legacy)
    before = f.read_bytes()
    code, err = cli_main(capsys, ["run", TINY, "-o", out, "--resume"])
    assert code == 2 and f"checkpoint file g0.rank0.npz: {key} contains " in err
    assert "non-finite value" in err and "modified or damaged" in err
    assert f"delete {f}" in err and "--force" in err
    assert f.read_bytes() == before and not out.exists()


def test_w5_deterministic_checkpoint_still_resumes(tmp_path):
    """A pure-state mean-field row holds one sample: its stderr is NaN and that is legal."""
    out = tmp_path / "o.h5"
    mf = ["--set", 'method.kind="meanfield"', "--set", "method.cluster_size=1"]
    check(run_cli(["run", TINY, "-o", out, "-q", *mf], extra_env={STOP: "1"}), 3)
    with np.load(tmp_path / "o.h5.ckpt" / "g0.rank0.npz") as z:
        assert len(z["done_rows"]) == 1 and np.isnan(z["est_se_sz"]).all()
    r = check(run_cli(["run", TINY, "-o", out, "--resume", *mf]))
    assert "1 of 2 work blocks already done" in r.stderr


# -- M6: a deleted manifest; a lock that is a directory -------------------------------------------
def test_m6_deleted_manifest_refused_not_redone(tmp_path, stopped, capsys):
    out, ck = tmp_path / "o.h5", tmp_path / "o.h5.ckpt"
    shutil.copytree(stopped, ck)
    os.remove(ck / "manifest.json")
    before = snapshot(ck)
    for extra in ([], ["--resume"]):
        code, err = cli_main(capsys, ["run", TINY, "-o", out, *extra])
        assert code == 2 and str(ck) in err and "manifest.json is missing" in err
        assert "1 rank file(s) of generation 0" in err and "--force" in err
        assert snapshot(ck) == before and not out.exists()
    check(run_cli(["run", TINY, "-o", out, "--force", "-q"]))
    assert leftovers(tmp_path) == ["o.h5"]


def test_m6_lock_that_is_a_directory(tmp_path, capsys):
    lock = tmp_path / "o.h5.lock"
    lock.mkdir()
    t0 = time.time()
    code, err = cli_main(capsys, ["run", TINY, "-o", tmp_path / "o.h5"])
    assert code == 2 and time.time() - t0 < FAST
    assert f"the lock {lock} is a directory" in err and f"rmdir {lock}" in err
    assert lock.is_dir() and leftovers(tmp_path) == ["o.h5.lock"]


# -- L1, L2, L3: the output is never an input of the run; checked before the work ----------------
COUPLINGS = """
[model]
kind = "couplings"
n_sites = 4
file = "J.npz"
[method]
kind = "sb"
cluster_size = 2
samples = 40
batch = 20
[time]
dt = 0.02
t_max = 1.0
[observables]
names = ["sz"]
"""
POSITIONS = """
[model]
kind = "lattice"
n_sites = 4
positions = "file"
positions_file = "pos.npy"
interaction = "power_law"
alpha = 3.0
anisotropy = {xx = 1, yy = 1, zz = 2}
[state]
kind = "x"
[method]
kind = "sb"
cluster_size = 2
samples = 40
batch = 20
[time]
dt = 0.02
t_max = 1.0
[observables]
names = ["sz"]
"""


@pytest.fixture
def inputs(tmp_path):
    N = 4
    J = np.zeros((N, N))
    for i in range(N - 1):
        J[i, i + 1] = J[i + 1, i] = 0.25
    np.savez(tmp_path / "J.npz", J_xx=0 * J, J_yy=0 * J, J_zz=J, h_x=np.ones(N))
    np.save(tmp_path / "pos.npy", np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))
    (tmp_path / "cpl.toml").write_text(COUPLINGS)
    (tmp_path / "pos.toml").write_text(POSITIONS)
    os.symlink(tmp_path / "J.npz", tmp_path / "link.h5")
    return tmp_path


@pytest.mark.parametrize("cfg, out, field", [
    ("cpl.toml", "J.npz", "model.file"), ("cpl.toml", "./J.npz", "model.file"),
    ("cpl.toml", "link.h5", "model.file"), ("pos.toml", "pos.npy", "model.positions_file")])
def test_l1_output_equal_to_an_input_refused(inputs, capsys, cfg, out, field):
    before = snapshot(inputs)
    code, err = cli_main(capsys, ["run", inputs / cfg, "-o", f"{inputs}/{out}", "--force"])
    assert code == 2 and err.startswith("ctwa-hpc: error: output.path:")
    assert f"is an input of this run ({field} = " in err and "even with --force" in err
    assert snapshot(inputs) == before


def test_l1_api_output_equal_to_an_input_refused(inputs, no_work):
    before = snapshot(inputs)
    for cfg, out, field in (("cpl.toml", "J.npz", "model.file"),
                            ("pos.toml", "pos.npy", "model.positions_file")):
        with pytest.raises(ConfigError, match=f"output.path: .* input of this run \\({field}"):
            ctwa_hpc.run(str(inputs / cfg), output=inputs / out, force=True, quiet=True)
    assert snapshot(inputs) == before


def test_l2_api_output_equal_to_the_config_refused(tmp_path, no_work):
    cfg = tmp_path / "my.toml"
    shutil.copy(TINY, cfg)
    text = cfg.read_text()
    with pytest.raises(ConfigError, match="output.path: .*config file itself"):
        ctwa_hpc.run(str(cfg), output=str(cfg), force=True, quiet=True)
    assert cfg.read_text() == text and leftovers(tmp_path) == ["my.toml"]


def test_l3_api_checks_the_output_before_the_work(tmp_path, no_work):
    out = tmp_path / "o.h5"
    out.write_bytes(b"keep me")
    t0 = time.time()
    with pytest.raises(FileExistsError, match="output.path: .* exists; use --force"):
        ctwa_hpc.run(TINY, output=out, quiet=True)
    with pytest.raises(ValueError, match="output.path: directory .* does not exist"):
        ctwa_hpc.run(TINY, output=tmp_path / "nowhere" / "o.h5", quiet=True)
    assert time.time() - t0 < FAST and out.read_bytes() == b"keep me"


# -- C5, H3, M7: check-dt refuses like run, and before its work -----------------------------------
def test_c5_check_dt_non_finite_like_run(tmp_path):
    bad = ["--set", "time.dt=0.5", "--set", "time.output_dt=0.5", "--set", "model.hx=20"]
    r_run = clean(check(run_cli(["run", TINY, "-o", tmp_path / "o.h5", "-q", *bad]), 2))
    r_dt = clean(check(run_cli(["check-dt", TINY, "-q", *bad]), 2))
    msg = re.compile(r"ctwa-hpc: error: trajectory of sample \d+ became non-finite at "
                     r"t = [0-9.]+; reduce time.dt")
    assert msg.search(r_run.stderr) and msg.search(r_dt.stderr), (r_run.stderr, r_dt.stderr)


@pytest.mark.parametrize("args, msg", [
    (["--samples", "0"], "check-dt --samples: must be >= 1, got 0"),
    (["--realizations", "0"], "check-dt --realizations: must lie in 1..2"),
    (["--samples", "-3"], "check-dt --samples: must be >= 1, got -3")])
def test_m7_check_dt_zero_refused(capsys, no_work, args, msg):
    code, err = cli_main(capsys, ["check-dt", TINY, "-q", *args])
    assert code == 2 and err.startswith(f"ctwa-hpc: error: {msg}")


def test_h3_check_dt_runs_the_preflight_estimate_first(capsys, no_work):
    t0 = time.time()
    code, err = cli_main(capsys, ["check-dt", TINY, "-q", "--samples", "1000000000000"])
    assert code == 2 and time.time() - t0 < FAST
    assert err.startswith("ctwa-hpc: error: check-dt --samples/--realizations:")
    assert "more than 1 year" in err and "method.samples" in err


def test_h3_api_huge_sample_count_refused_before_work(no_work):
    t0 = time.time()
    with pytest.raises(ConfigError, match=r"^method.samples: this run would take .* more than "
                                          r"1 year"):
        ctwa_hpc.run(TINY, {"method.samples": 10 ** 18}, quiet=True)
    assert time.time() - t0 < FAST


# -- C4: the memory limits of the guards; estimate --json ------------------------------------------
def test_c4_time_grid_sized_to_the_memory_limit(tmp_path, capsys, no_work):
    t0 = time.time()
    code, err = cli_main(capsys, ["run", TINY, "-o", tmp_path / "o.h5", "--set", "time.dt=1e-8",
                                  "--set", "time.output_dt=0.2", "--set",
                                  "output.max_memory_gb=2"])
    assert code == 2 and time.time() - t0 < FAST
    assert err.startswith("ctwa-hpc: error: time.dt: 1e-08 gives 2e+08 RK4 steps")
    assert "5.96 GiB" in err and "(output.max_memory_gb = 2)" in err
    assert leftovers(tmp_path) == []


def _limit_address_space(nbytes):
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))


@pytest.mark.parametrize("cmd, field", [
    (["exact", TINY], "model.n_sites"),
    (["run", TINY, "--set", "output.compare_exact=true"], "output.compare_exact")])
def test_c4_exact_reference_memory_refused_before_building(tmp_path, cmd, field):
    """N = 20 under a 6 GB limit (ulimit -v and output.max_memory_gb): once a MemoryError
    traceback after the matrices were half built."""
    t0 = time.time()
    r = subprocess.run([PY, "-m", "ctwa_hpc", *map(str, cmd), "-o", str(tmp_path / "o.h5"),
                        "--set", "model.n_sites=20", "--set", "output.max_memory_gb=6"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, env=env(),
                       preexec_fn=_limit_address_space(6 * 10 ** 9))
    clean(check(r, 2))
    assert time.time() - t0 < FAST
    assert r.stderr.startswith(f"ctwa-hpc: error: {field}: the exact reference at N = 20 "
                               "needs about ")
    assert "1048576 basis states" in r.stderr and "--ignore-limits" in r.stderr
    assert leftovers(tmp_path) == []


def test_c4_estimate_json_unwritable(tmp_path, capsys):
    target = tmp_path / "missing" / "e.json"
    code, err = cli_main(capsys, ["estimate", TINY, "--no-calibrate", "--json", target])
    assert code == 2 and f"ctwa-hpc: error: --json: cannot write {target}: No such file" in err


# -- H1: a huge set-up is announced at once, and a stop signal ends it -----------------------------
def _lines(stream):
    q = queue.Queue()
    threading.Thread(target=lambda: [q.put(x) for x in stream] and None, daemon=True).start()
    return q


def test_h1_huge_setup_announced_and_stopped_by_sigterm(tmp_path):
    out = tmp_path / "o.h5"
    proc = popen_cli(["run", TINY, "-o", out, "--set", "model.n_sites=1000000"])
    try:
        q, seen, t0 = _lines(proc.stderr), [], time.time()
        while not any("set-up: N = 1000000 sites" in x for x in seen):
            assert time.time() - t0 < 20, seen
            try:
                seen.append(q.get(timeout=1))
            except queue.Empty:
                assert proc.poll() is None, seen
        assert "takes roughly" in seen[-1] and "GiB per rank" in seen[-1]
        time.sleep(1.0)                     # inside the set-up
        t1 = time.time()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
        assert time.time() - t1 < 8
        time.sleep(0.2)
        err = "".join(seen) + "".join(q.get() for _ in range(q.qsize()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 3, err
    assert "stop requested (SIGTERM) during the set-up" in err and "Traceback" not in err
    assert leftovers(tmp_path) == []                          # no checkpoint, output or lock


def test_h1_huge_setup_over_the_limit_refused_at_once(tmp_path):
    t0 = time.time()
    r = clean(check(run_cli(["run", TINY, "-o", tmp_path / "o.h5", "--set",
                             "model.n_sites=1000000", "--set", "output.max_memory_gb=4"],
                            timeout=60), 2))
    assert time.time() - t0 < 20 and leftovers(tmp_path) == []
    assert r.stderr.startswith("ctwa-hpc: error: method.batch: one work block of N = 1000000 "
                               "sites needs at least 9.54 GiB per rank")
    assert "(output.max_memory_gb = 4)" in r.stderr and "--ignore-limits" in r.stderr


# -- C6: the API under mpirun (without -m mpi4py) when one rank raises -----------------------------
API_ONE_RANK_RAISES = """
import os, ctwa_hpc
rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
ctwa_hpc.run({tiny!r}, {{"method.samples": 40}}, quiet=True)
if rank == 1:   # a per-rank input that does not exist on rank 1
    open({missing!r} + str(rank)).read()
ctwa_hpc.run({tiny!r}, {{"method.samples": 40}}, quiet=True)   # rank 0 waits for rank 1
"""


@needs_mpi
def test_c6_api_under_mpirun_one_rank_raises(tmp_path):
    script = API_ONE_RANK_RAISES.format(tiny=TINY, missing=str(tmp_path / "input.rank"))
    t0 = time.time()
    try:
        r = subprocess.run(["mpirun", "-n", "2", PY, "-c", script], capture_output=True,
                           text=True, timeout=60, cwd=ROOT, env=env())
    except subprocess.TimeoutExpired:
        pytest.fail("the job hung: rank 0 waits forever for rank 1")
    assert time.time() - t0 < FAST
    assert r.returncode != 0
    assert "FileNotFoundError" in r.stderr and "input.rank1" in r.stderr
    assert "ctwa-hpc: error (rank 1): uncaught FileNotFoundError" in r.stderr
