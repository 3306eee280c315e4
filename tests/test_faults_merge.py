"""Fault injection for ``ctwa-hpc merge`` and the readers of output files (issue 17: W1, W4,
L5, L6, the merge part of C4, M4).  Every refusal exits 2 with a message that names the file
(and the dataset or attribute), leaves no output, lock or temporary behind and changes no
input; the merge of intact files still equals one big run (tests/test_interop.py)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time

import h5py
import numpy as np
import pytest

from ctwa_hpc import cli, config
from ctwa_hpc.driver.runner import Simulation
from ctwa_hpc.model.couplingfile import save_couplings
from ctwa_hpc.output import hdf5 as io
from mpi_helper import PY, ROOT, TINY, check, env, run_cli

from fault_helper import FAST, clean, leftovers

NAMES = ["sz", "czz_connected", "energy", "entropy"]


def tiny(*overrides, names=NAMES):
    ov = ['output.path="unused.h5"', f"observables.names={names!r}".replace("'", '"'),
          "output.compare_exact=false", *overrides]
    return config.load(TINY, ov)


def write(path, cfg):
    io.write_result(str(path), Simulation(cfg, quiet=True).run(), force=True)
    return path


def digest(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def merge_cli(capsys, *args):
    """``ctwa-hpc merge ARGS`` in this process: (exit code, stderr)."""
    code = cli.main(["merge", *map(str, args)])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Two sample-range jobs of tiny.toml (240 samples each, 2 realizations) and two
    realization-range jobs without /moments."""
    d = tmp_path_factory.mktemp("jobs")
    a = write(d / "a.h5", tiny())
    b = write(d / "b.h5", tiny("method.first_sample=240"))
    never = "output.moments='never'"
    r0 = write(d / "r0.h5", tiny(never, "method.samples=40"))
    r1 = write(d / "r1.h5", tiny(never, "method.samples=40", "disorder.first=2"))
    return dict(a=a, b=b, r0=r0, r1=r1)


def altered(src, dst, edit):
    """A copy of ``src`` with ``edit(h5py.File)`` applied."""
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        edit(f)
    return dst


def _set(path, fn):
    def edit(f):
        f[path][...] = fn(f[path][...])
    return edit


# -- W1: the model data of every input must agree ------------------------------------------------
def _couplings_job(tmp_path, J, name, *overrides):
    Jzz = np.zeros((4, 4))
    for i in range(3):
        Jzz[i, i + 1] = Jzz[i + 1, i] = J
    save_couplings(str(tmp_path / "J.npz"), {"zz": Jzz}, {"x": np.ones(4)})
    cfg = config.resolve({
        "model": {"kind": "couplings", "file": str(tmp_path / "J.npz")},
        "state": {"kind": "neel"},
        "method": {"kind": "sb", "cluster_size": 2, "samples": 40, "seed": 3, "batch": 20},
        "time": {"dt": 0.05, "t_max": 0.6, "output_dt": 0.2},
        "observables": {"names": ["sz"]}, "output": {"path": "unused.h5"}})
    for ov in overrides:
        sec, key, val = config.parse_override(ov)
        cfg[sec][key] = val
    return write(tmp_path / name, config.resolve(cfg))


def test_merge_refuses_inputs_run_with_different_model_data(tmp_path, capsys):
    c1 = _couplings_job(tmp_path, 0.5, "c1.h5")
    c2 = _couplings_job(tmp_path, 1.0, "c2.h5", "method.first_sample=40")  # file changed
    out = tmp_path / "m.h5"
    code, err = merge_cli(capsys, c1, c2, "-o", out)
    assert code == 2 and "c1.h5" in err and "c2.h5" in err and "model_content_hash" in err, err
    assert not out.exists() and leftovers(tmp_path) == ["J.npz", "c1.h5", "c2.h5"]
    # the same data in both: merged, and stamped with that data's hash (not a newer file's)
    c3 = _couplings_job(tmp_path, 1.0, "c3.h5")
    code, err = merge_cli(capsys, c3, c2, "-o", out)
    assert code == 0, err
    h = io.load(c2)["attrs"]["model_content_hash"]
    assert io.load(out)["attrs"]["model_content_hash"] == h
    # one input with a hash, one without
    nohash = altered(c3, tmp_path / "nohash.h5", lambda f: f.attrs.__delitem__(
        "model_content_hash"))
    code, err = merge_cli(capsys, nohash, c2, "-o", tmp_path / "m2.h5")
    assert code == 2 and "nohash.h5" in err and "c2.h5" in err and "(none)" in err, err
    # the couplings file changed after both jobs: the merge would stamp data it did not use
    _couplings_job(tmp_path, 0.25, "c4.h5")
    code, err = merge_cli(capsys, c3, c2, "-o", tmp_path / "m3.h5")
    assert code == 2 and "model data changed" in err and "restore" in err, err
    assert not (tmp_path / "m2.h5").exists() and not (tmp_path / "m3.h5").exists()


# -- W4: altered /moments, counts or per-realization values are refused -------------------------
def test_merge_verifies_counts_finiteness_and_sums(jobs, tmp_path, capsys):
    a, b = jobs["a"], jobs["b"]
    before = {p: digest(p) for p in (a, b)}
    cases = {
        "nan": (_set("moments/s1", lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7,
                                                       np.nan, x)), "/moments/s1", "non-finite"),
        # the case: one job's counts doubled, the merge reported 1440 samples, not 960
        "count": (_set("moments/count", lambda x: 2 * x), "/moments/count", "method.samples"),
        "n_samples": (_set("realizations/n_samples", lambda x: x + 2),
                      "/realizations/n_samples", "method.samples"),
        "attr": (lambda f: f.attrs.__setitem__("n_samples", 1440), "n_samples", "1440"),
        "shift": (_set("moments/shift", lambda x: x + 2.08), "/realizations/", "reproduce"),
        "s2": (_set("moments/s2", lambda x: 2 * x), "stderr", "reproduce"),
        "s1": (_set("moments/s1", lambda x: x + 0.5), "/realizations/", "reproduce"),
    }
    for name, (edit, where, why) in cases.items():
        bad = altered(b, tmp_path / f"{name}.h5", edit)
        out = tmp_path / f"m_{name}.h5"
        code, err = merge_cli(capsys, a, bad, "-o", out)
        assert code == 2, (name, err)
        assert f"{name}.h5" in err and where in err and why in err, (name, err)
        assert "damaged" in err or "altered" in err, (name, err)
        assert not out.exists(), name
    # the intact files still merge: 960 samples
    code, err = merge_cli(capsys, a, b, "-o", tmp_path / "ok.h5")
    assert code == 0 and io.load(tmp_path / "ok.h5")["attrs"]["n_samples"] == 960, err
    assert before == {p: digest(p) for p in (a, b)}


def test_merge_without_moments_verifies_realization_values(jobs, tmp_path, capsys):
    r0, r1 = jobs["r0"], jobs["r1"]
    for name, edit, needle in [
            ("nan", _set("realizations/sz/mean", lambda x: x * np.nan), "/realizations/sz/mean"),
            ("cnt", _set("realizations/n_samples", lambda x: 3 * x), "/realizations/n_samples"),
            ("tot", lambda f: f.attrs.__setitem__("n_samples", 7), "root attribute n_samples")]:
        bad = altered(r1, tmp_path / f"{name}.h5", edit)
        code, err = merge_cli(capsys, r0, bad, "-o", tmp_path / "m.h5")
        assert code == 2 and f"{name}.h5" in err and needle in err, (name, err)
        assert not (tmp_path / "m.h5").exists()
    code, err = merge_cli(capsys, r0, r1, "-o", tmp_path / "m.h5")
    assert code == 0, err


# -- L5: -o is never one of the inputs -------------------------------------------------------------
def test_merge_refuses_an_output_that_is_an_input(jobs, tmp_path, capsys):
    a, b = jobs["a"], jobs["b"]
    before = {p: digest(p) for p in (a, b)}
    os.symlink(a, tmp_path / "link.h5")
    os.link(b, tmp_path / "hard.h5")
    for out in (a, b, tmp_path / "link.h5", tmp_path / "hard.h5",
                os.path.join(os.path.dirname(a), "sub_dir_missing", "..", "a.h5")):
        for force in ([], ["--force"]):
            code, err = merge_cli(capsys, a, b, "-o", out, *force)
            assert code == 2, (out, err)
            assert f"-o {out} is the input file" in err and "even with --force" in err, err
    assert before == {p: digest(p) for p in (a, b)}
    assert not list(tmp_path.glob("*.lock")) and not list(tmp_path.glob("*.tmp.*"))


# -- L6: merge takes the output lock of a run, and removes stale temporaries ----------------------
def test_merge_takes_the_run_output_lock(jobs, tmp_path, capsys):
    out = tmp_path / "o.h5"
    holder = subprocess.Popen(
        [PY, "-c", "import sys, time\nfrom ctwa_hpc.driver.guards import OutputLock\n"
         f"OutputLock({str(out)!r}).acquire()\nprint('held', flush=True)\ntime.sleep(120)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env())
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.time()
        code, err = merge_cli(capsys, jobs["a"], jobs["b"], "-o", out, "--force")
        assert time.time() - t0 < FAST
        assert code == 2 and f"-o {out} is in use by another run" in err, err
        assert f"pid {holder.pid}" in err and "o.h5.lock" in err
        assert not out.exists() and (tmp_path / "o.h5.lock").exists()
        assert json.loads((tmp_path / "o.h5.lock").read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale; a killed writer's temporary is removed
    (tmp_path / "o.h5.tmp.999999").write_bytes(b"\0" * 100)
    code, err = merge_cli(capsys, jobs["a"], jobs["b"], "-o", out)
    assert code == 0, err
    assert leftovers(tmp_path) == ["o.h5"]


# -- C4: damaged inputs and a directory as -o: messages, exit 2, no traceback -------------------
def test_merge_damaged_inputs_and_directory_output_give_messages(jobs, tmp_path):
    a, b = jobs["a"], jobs["b"]
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(open(b, "rb").read()[:20000])
    nos2 = altered(b, tmp_path / "nos2.h5", lambda f: f.__delitem__("moments/s2"))
    (tmp_path / "D").mkdir()
    cases = [([trunc, a, "-o", tmp_path / "m.h5"], ["trunc.h5", "truncated"]),
             ([a, nos2, "-o", tmp_path / "m.h5"], ["nos2.h5", "/moments/s2", "missing"]),
             ([a, b, "-o", tmp_path / "D", "--force"], [f"-o {tmp_path / 'D'} is a directory",
                                                        "give a file name"])]
    for args, needles in cases:
        r = clean(check(run_cli(["merge", *args], timeout=60), 2))
        for n in needles:
            assert n in r.stderr, (n, r.stderr)
    assert leftovers(tmp_path) == ["D", "nos2.h5", "trunc.h5"]
    assert os.listdir(tmp_path / "D") == []


# -- M4: a bad config attribute names the file and the attribute ---------------------------------
def test_bad_config_attribute_names_file_and_attribute(jobs, tmp_path, capsys):
    a, b = jobs["a"], jobs["b"]

    def cfg_edit(fn):
        def edit(f):
            v = f.attrs["config_toml"]
            f.attrs["config_toml"] = fn(v.decode() if isinstance(v, bytes) else v)
        return edit

    toml = altered(a, tmp_path / "toml.h5", cfg_edit(lambda t: "[model\nkind = "))
    invalid = altered(a, tmp_path / "invalid.h5", cfg_edit(
        lambda t: t.replace("n_sites = 4", 'n_sites = "four"')))
    flat = altered(a, tmp_path / "flat.h5", cfg_edit(
        lambda t: "model = 5\n" + t[t.index("[disorder]"):]))
    assert cli.main(["info", str(toml)]) == 2
    err = capsys.readouterr().err
    assert f"{toml}: root attribute config_toml is not valid TOML" in err, err
    for bad, needle in ((toml, "not valid TOML"), (invalid, "model.n_sites"),
                        (flat, "model is not a table")):
        code, err = merge_cli(capsys, bad, b, "-o", tmp_path / "m.h5")
        assert code == 2 and f"{bad}: root attribute config_toml" in err and needle in err, err
    assert not (tmp_path / "m.h5").exists()
    pytest.importorskip("matplotlib")
    for bad in (toml, flat):
        assert cli.main(["plot", "--file", str(bad), "--obs", "sz", "-o",
                         str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert f"{bad}: root attribute config_toml" in err, err
    assert not (tmp_path / "x.png").exists()
