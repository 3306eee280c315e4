"""Interoperable output and everyday commands: netCDF/xarray layout, to_xarray, info, merge,
overlay plots, the time-step check."""
from __future__ import annotations

import copy

import h5py
import numpy as np
import pytest

from ctwa_hpc.extras import checkdt
from ctwa_hpc import cli, config
from ctwa_hpc.output import hdf5 as io
from ctwa_hpc.driver import merge
from ctwa_hpc.driver.runner import Simulation
from mpi_helper import check, have_mpi, run_cli, TINY

xr = pytest.importorskip("xarray")
pytest.importorskip("h5netcdf")

NAMES = ["sz", "mz_staggered", "czz", "czz_connected", "czz_map", "energy", "entropy"]


def tiny(*overrides, names=NAMES, exact=True):
    ov = ['output.path="unused.h5"', f"observables.names={names!r}".replace("'", '"'),
          f"output.compare_exact={'true' if exact else 'false'}", *overrides]
    return config.load(TINY, ov)


def write(path, cfg):
    res = Simulation(cfg, quiet=True).run()
    io.write_result(str(path), res, force=True)
    return res


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("interop")
    path = d / "small.h5"
    res = write(path, tiny())
    return path, res


def _groups(path):
    with h5py.File(path, "r") as f:
        return [f"{g}/{n}" for g in ("observables", "realizations", "exact") if g in f
                for n in f[g] if isinstance(f[g][n], h5py.Group)]


def test_every_dataset_has_named_dimensions(small):
    path, _ = small
    unlabeled = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not obj.is_scale:
                if any(len(dim) == 0 for dim in obj.dims):
                    unlabeled.append(name)
        f.visititems(visit)
        assert f["time"].is_scale and "hbar" in f["time"].attrs["description"]
        assert f["observables/mz_staggered/mean"].shape == (11,)       # scalars: (n_t,)
        assert "sqrt(R)" in f["observables/sz/stderr"].attrs["description"]
        assert f["observables/sz/mean"].dims[0][0].name == "/time"
    assert not unlabeled


def test_xarray_opens_every_group(small):
    path, _ = small
    data = io.load(path)
    groups = _groups(path)
    assert len(groups) == 3 * len(NAMES)
    for g in groups:
        ds = xr.open_dataset(path, engine="h5netcdf", group=g)
        kind, name = g.split("/")
        np.testing.assert_array_equal(ds["time"].values, data["time"])
        assert set(ds.data_vars) == set(data[kind][name])
        for key, arr in data[kind][name].items():
            np.testing.assert_array_equal(ds[key].values, arr)
        labels = data["group_attrs"][g].get("labels")
        if labels:
            assert list(ds["label"].values) == labels and "label" in ds.coords
        ds.close()
    sz = xr.open_dataset(path, engine="h5netcdf", group="observables/sz")
    assert sz["mean"].dims == ("time", "site") and list(sz["site"].values) == [0, 1, 2, 3]
    czz = xr.open_dataset(path, engine="h5netcdf", group="observables/czz")
    assert czz["sites"].values.tolist() == [[0, 1], [1, 2], [2, 3]] and "sites" in czz.coords
    cmap = xr.open_dataset(path, engine="h5netcdf", group="observables/czz_map")
    assert cmap["mean"].dims == ("time", "distance") and list(cmap["distance"].values) == [1, 2]
    for g in ("moments", "disorder"):
        ds = xr.open_dataset(path, engine="h5netcdf", group=g)
        for key, arr in data[g].items():
            np.testing.assert_array_equal(ds[key].values, arr)
    mom = xr.open_dataset(path, engine="h5netcdf", group="moments")
    assert mom["s1"].dims == ("replica", "time", "column")
    assert "column_label" in mom.coords and all(mom["column_label"].values)
    dis = xr.open_dataset(path, engine="h5netcdf", group="disorder")
    assert dis["field_z"].dims == ("realization", "site")
    assert 0 < np.abs(dis["field_z"].values).max() <= 0.1   # box field: uniform in [-W, W]


def test_datatree(small):
    path, _ = small
    tree = xr.open_datatree(path, engine="h5netcdf")
    node = tree["observables/sz"]
    np.testing.assert_array_equal(node["time"].values, io.load(path)["time"])
    assert node["mean"].dims == ("time", "site")
    assert set(tree["exact"].children) == set(NAMES)


def test_to_xarray_equals_load_and_result(small):
    path, res = small
    data = io.load(path)
    ds = io.to_xarray(path)
    for name in NAMES:
        o = data["observables"][name]
        np.testing.assert_array_equal(ds[f"{name}_mean"].values, o["mean"])
        np.testing.assert_array_equal(ds[f"{name}_stderr"].values, o["stderr"])
        np.testing.assert_array_equal(ds[f"{name}_realization_mean"].values,
                                      data["realizations"][name]["mean"])
        np.testing.assert_array_equal(ds[f"{name}_exact"].values, data["exact"][name]["mean"])
        assert ds[f"{name}_mean"].dims[0] == "time"
    assert ds["mz_staggered_mean"].dims == ("time",)
    assert float(ds["sz_mean"].sel(site=2, time=1.0)) == data["observables"]["sz"]["mean"][5, 2]
    np.testing.assert_array_equal(ds["time"].values, res.times)
    mem = io.result_to_xarray(res)
    assert set(mem.data_vars) == set(ds.data_vars)
    for v in ds.data_vars:
        np.testing.assert_array_equal(mem[v].values, ds[v].values, err_msg=v)
    assert mem["czz_label"].values.tolist() == ["0,1", "1,2", "2,3"]


def test_exact_file_and_no_cross_products(tmp_path):
    cfg = tiny('method.kind="exact"', names=["sz", "mz_staggered"], exact=False)
    res = Simulation(cfg, quiet=True).run()
    io.write_result(str(tmp_path / "e.h5"), res)
    ds = io.to_xarray(tmp_path / "e.h5")   # R = 2: stderr = the disorder spread
    stored = io.load(tmp_path / "e.h5")["observables"]["sz"]
    np.testing.assert_array_equal(ds["sz_stderr"].values, stored["stderr_disorder"])
    xr.open_datatree(tmp_path / "e.h5", engine="h5netcdf")
    write(tmp_path / "s.h5", tiny(names=["sz"], exact=False))   # zero cross products
    mom = xr.open_dataset(tmp_path / "s.h5", engine="h5netcdf", group="moments")
    assert mom.sizes["product"] == 0
    xr.open_datatree(tmp_path / "s.h5", engine="h5netcdf")


@pytest.mark.mpi
@pytest.mark.skipif(not have_mpi(), reason="mpirun or mpi4py not available")
def test_parallel_file_opens(tmp_path):
    out = tmp_path / "p.h5"
    check(run_cli(["run", TINY, "-o", out, "-q"], n=2, timeout=120))
    assert io.load(out)["attrs"]["writer"] == ("mpio" if io.h5py_has_mpi() else "gather")
    for g in _groups(out) + ["moments", "disorder", "realizations"]:
        xr.open_dataset(out, engine="h5netcdf", group=g).close()
    real = xr.open_dataset(out, engine="h5netcdf", group="realizations")
    assert real["n_samples"].dims == ("realization",) and (real["n_samples"].values == 240).all()
    xr.open_datatree(out, engine="h5netcdf")


# -- info ---------------------------------------------------------------------------------------
def test_info(small, tmp_path, capsys):
    path, _ = small
    assert cli.main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    for part in ("/observables/sz/mean", "(time: 11, site: 4)", "config:", "[model]",
                 "provenance:", "git_revision", "summary:"):
        assert part in text, part
    assert cli.main(["info", str(tmp_path / "missing.h5")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "text.h5").write_text("not hdf5")
    r = check(run_cli(["info", tmp_path / "text.h5"]), 2)
    assert "not an HDF5 file" in r.stderr and "Traceback" not in r.stderr


# -- merge --------------------------------------------------------------------------------------
def _compare(a, b, tol=1e-12):
    da, db = io.load(a), io.load(b)
    for g in ("observables", "realizations", "exact"):
        assert set(da[g]) == set(db[g])
        for name in da[g]:
            assert set(da[g][name]) == set(db[g][name])
            for key, x in da[g][name].items():
                np.testing.assert_allclose(db[g][name][key], x, rtol=0, atol=tol,
                                           err_msg=f"{g}/{name}/{key}")
    assert da["attrs"]["config_hash"] == db["attrs"]["config_hash"]
    assert da["attrs"]["n_samples"] == db["attrs"]["n_samples"]
    return da, db


def test_merge_disjoint_realizations_equals_one_run(tmp_path):
    base = tiny("disorder.realizations=2", names=["sz", "czz_connected", "entropy"])
    write(tmp_path / "a.h5", base)
    write(tmp_path / "b.h5", config.resolve(dict(copy.deepcopy(base), disorder=dict(
        base["disorder"], first=2))))
    write(tmp_path / "big.h5", tiny("disorder.realizations=4",
                                    names=["sz", "czz_connected", "entropy"]))
    merge.merge([tmp_path / "b.h5", tmp_path / "a.h5"], tmp_path / "m.h5")
    da, db = _compare(tmp_path / "big.h5", tmp_path / "m.h5")
    np.testing.assert_array_equal(db["realization_index"], [0, 1, 2, 3])
    np.testing.assert_array_equal(db["disorder"]["field_z"], da["disorder"]["field_z"])
    assert "a.h5" in db["attrs"]["merged_from"]


def test_merge_disjoint_samples_equals_one_run(tmp_path):
    names = ["sz", "mz_staggered", "czz_connected", "entropy"]
    write(tmp_path / "s1.h5", tiny("method.samples=200", names=names))
    write(tmp_path / "s2.h5", tiny("method.samples=200", "method.first_sample=200",
                                   names=names))
    write(tmp_path / "big.h5", tiny("method.samples=400", names=names))
    assert cli.main(["merge", str(tmp_path / "s1.h5"), str(tmp_path / "s2.h5"),
                     "-o", str(tmp_path / "m.h5")]) == 0
    da, db = _compare(tmp_path / "big.h5", tmp_path / "m.h5")
    for k in ("count", "s1", "s2", "sx"):
        np.testing.assert_allclose(db["moments"][k], da["moments"][k], rtol=1e-13, atol=1e-12)
    assert db["attrs"]["n_samples"] == 800    # 400 per realization, 2 realizations


def test_merge_refusals(tmp_path, capsys):
    write(tmp_path / "a.h5", tiny("method.samples=40", names=["sz"], exact=False))
    write(tmp_path / "b.h5", tiny("method.samples=40", "method.first_sample=20", names=["sz"],
                                  exact=False))
    write(tmp_path / "c.h5", tiny("method.samples=40", "method.first_sample=80", names=["sz"],
                                  exact=False))
    write(tmp_path / "j.h5", tiny("method.samples=40", "method.first_sample=40", "model.J=0.2",
                                  names=["sz"], exact=False))
    cases = [(("a", "a"), "overlap"), (("a", "b"), "overlap"), (("a", "c"), "gap"),
             (("a", "j"), "model.J")]
    for (x, y), needle in cases:
        with pytest.raises(merge.MergeError, match=needle):
            merge.merge([tmp_path / f"{x}.h5", tmp_path / f"{y}.h5"], tmp_path / "out.h5")
    assert cli.main(["merge", str(tmp_path / "a.h5"), str(tmp_path / "j.h5"),
                     "-o", str(tmp_path / "out.h5")]) == 2
    assert "model.J" in capsys.readouterr().err
    assert not (tmp_path / "out.h5").exists()


# -- plot ---------------------------------------------------------------------------------------
def test_plot_overlay(small, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    from ctwa_hpc.extras import plotting
    path, _ = small
    other = tmp_path / "j2.h5"
    write(other, tiny("model.J=0.25", names=["sz", "mz_staggered"], exact=False))
    png = tmp_path / "overlay.png"
    assert cli.main(["plot", "--file", str(path), "--file", str(other), "--obs", "sz",
                     "--obs", "mz_staggered", "--index", "0", "--index", "3",
                     "-o", str(png)]) == 0
    assert png.stat().st_size > 10000
    ax = plotting.plot([path, other], ["sz", "mz_staggered"], index=[0, 3])
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sum("±1σ" in t for t in texts) == 6               # 2 files x (2 sites + 1 scalar)
    assert sum(t.startswith("exact") for t in texts) == 3    # only the first file has /exact
    assert any("J=0.25" in t for t in texts) and "tfim" in ax.get_title()
    assert cli.main(["plot", "--file", str(path), "--obs", "sz", "--index", "7",
                     "-o", str(png)]) == 2


# -- check-dt -----------------------------------------------------------------------------------
def test_check_dt_same_random_numbers_and_advice(capsys):
    cfg = tiny(names=["sz", "czz_connected"], exact=False)
    rep = checkdt.check_dt(cfg, samples=40)
    for row in rep["rows"]:
        # same samples at dt and dt/2: Δ is RK4 error (~1e-7 here), far below the noise σ
        assert row["max_delta"] < 1e-5 and row["sigma"] > 1e-3
    assert rep["adequate"] and "dt = 0.02 is adequate" in rep["advice"]
    coarse = tiny("time.dt=0.5", "time.output_dt=0.5", "time.t_max=4.0", "method.samples=4000",
                  names=["sz"], exact=False)
    rep = checkdt.check_dt(coarse, samples=100)
    assert not rep["adequate"] and rep["advice"].startswith("halve dt")
    assert cli.main(["check-dt", TINY, "--samples", "20", "-q"]) == 0
    out = capsys.readouterr().out
    assert "check-dt: dt = 0.02 vs dt/2 = 0.01" in out and "adequate" in out
    assert cli.main(["check-dt", TINY, "--set", 'method.kind="exact"', "-q"]) == 2
