"""Fault injection II (issue 17), the model front end: geometry, couplings, couplings files,
states and the model builder (items C3, C4, D1-D4, H2, M1-M3, M5, W2, W3).

Every refusal names the config field (or the file) and what to do instead; bad input is
refused before anything expensive is built; valid models keep their numbers (the sparse
couplings are the dense ones term by term, the fast blockade placement is the sequential one
draw by draw).
"""
from __future__ import annotations

import os
import subprocess
import re
import textwrap
import time

import numpy as np
import pytest

import ctwa_hpc
from ctwa_hpc import config, geometry as g
from ctwa_hpc.model import builder, models
from ctwa_hpc.model.couplingfile import load_couplings
from ctwa_hpc.model.hamiltonian import Hamiltonian
from ctwa_hpc.tools.exceptions import ConfigError
from mpi_helper import PY, ROOT, check, env, run_cli

from fault_helper import FAST, clean

BASE = {"method": {"kind": "sb", "cluster_size": 1, "samples": 8, "batch": 8},
        "time": {"dt": 0.05, "t_max": 0.1}, "observables": {"names": ["sz"]}}
XXZ = {"xx": 1.0, "yy": 1.0, "zz": 2.0}


def cfg(model, **sections):
    out = {k: dict(v) for k, v in BASE.items()}
    out["model"] = dict(model)
    for k, v in sections.items():
        out[k] = dict(out.get(k, {}), **v)
    return out


def write_toml(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def refused(r, start):
    """Exit 2, no traceback, one message starting with ``start``."""
    clean(check(r, 2))
    assert f"error: {start}" in r.stderr, r.stderr
    return r.stderr


# -- C3: large lattices -------------------------------------------------------------------------
def test_c3_chain_of_100000_nearest_neighbours_builds_sparse_in_seconds():
    t0 = time.perf_counter()
    c = config.resolve(cfg({"kind": "lattice", "lattice": "chain", "size": [100000],
                            "interaction": "nearest", "anisotropy": XXZ},
                           method={"clustering": "strongest_pairs"}))
    inst = builder.ModelBuilder(c).instance(0)
    from ctwa_hpc.method import clusters
    (part,) = clusters.partitions(c, inst)
    took = time.perf_counter() - t0
    assert took < 15, took
    assert c["model"]["n_sites"] == 100000
    assert inst.couplings.n_pairs == 99999 and not isinstance(inst.couplings, dict)
    assert inst.hamiltonian.n_terms == 3 * 99999
    assert len(part.clusters) == 50000 and list(part.clusters[1]) == [2, 3]


def test_c3_dense_interaction_refused_with_the_number_before_building():
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        config.resolve(cfg({"kind": "lattice", "lattice": "chain", "size": [100000],
                            "interaction": "power_law", "alpha": 3.0, "anisotropy": XXZ}))
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    assert msg.startswith("model.size: interaction = 'power_law' without model.cutoff couples "
                          "all 100000 sites pairwise"), msg
    assert "TiB" in msg and "give model.cutoff" in msg and "fewer sites" in msg
    # the same with a cutoff is built as coupling lists
    c = config.resolve(cfg({"kind": "lattice", "lattice": "chain", "size": [100000],
                            "interaction": "power_law", "alpha": 3.0, "cutoff": 2.5,
                            "anisotropy": XXZ}))
    inst = builder.ModelBuilder(c).instance(0)
    assert inst.couplings.n_pairs == 99999 + 99998


GEOMS = [lambda: g.chain(9, "periodic"), lambda: g.square(4, 4, boundary="periodic"),
         lambda: g.square(5, 3, boundary=["periodic", "open"]),
         lambda: g.triangular(4, 4, boundary="periodic"), lambda: g.honeycomb(3, 2),
         lambda: g.cubic(3, 2, 4, boundary="periodic"),
         lambda: g.random_box(40, [4.0, 5.0], np.random.default_rng(3), periodic=True)]
SPECS = [{"interaction": "nearest", "anisotropy": {"xx": 0.5, "yy": 0.5, "zz": 2.0, "xy": 0.3}},
         {"interaction": "power_law", "alpha": 1.5, "cutoff": 1.8, "J": 0.7,
          "anisotropy": {"xx": 1.0, "zz": 0.0, "yz": -0.4}},
         {"interaction": "dipolar", "cutoff": 2.2, "axis": [1.0, 1.0, 0.3], "anisotropy": XXZ}]


@pytest.mark.parametrize("k", range(len(GEOMS)))
def test_c3_sparse_couplings_give_the_dense_hamiltonian_term_by_term(k):
    from ctwa_hpc.model.geometry.pairs import PairCouplings
    geom = GEOMS[k]()
    for spec in SPECS:
        dense = g.build_couplings(geom, spec)
        sparse = g.build_couplings(geom, spec, sparse=True)
        assert isinstance(sparse, PairCouplings) and isinstance(dense, dict)
        tf = {"zz": "cos(2*t)"} if "zz" in spec["anisotropy"] else None
        Hd = Hamiltonian.from_couplings(dense, tfuncs=tf)
        Hs = Hamiltonian.from_couplings(sparse, tfuncs=tf)
        assert [(t.coef, t.ops, getattr(t.tfunc, "expr", None)) for t in Hd.terms] == \
            [(t.coef, t.ops, getattr(t.tfunc, "expr", None)) for t in Hs.terms]
        for name in ("pair_i", "pair_j", "pair_a", "pair_b", "pair_coef", "pair_tf"):
            assert np.array_equal(getattr(Hd.blocks[0], name), getattr(Hs.blocks[0], name))
        # clustering by coupling strength: the lists give the partitions of the matrix
        S = Hd.pair_strength()
        i, j, s = Hs.pair_strength_lists()
        iu, ju = np.triu_indices(geom.n_sites, 1)
        nz = S[iu, ju] > 0
        assert np.array_equal(i, iu[nz]) and np.array_equal(j, ju[nz])
        assert np.array_equal(s, S[iu, ju][nz])
        n = geom.n_sites
        assert g.strongest_pairs(S) == g.strongest_pairs_lists(n, i, j, s)
        for cap in (2, 3, 5):
            assert g.greedy(S, cap) == g.greedy_lists(n, i, j, s, cap)
        for key, M in sparse.dense().items():               # the (N, N) view for the output
            assert np.array_equal(np.triu(M, 1), np.triu(dense[key], 1))


def test_c3_builder_lattice_model_equals_the_dense_build():
    c = config.resolve(cfg({"kind": "lattice", "lattice": "square", "size": [4, 4],
                            "boundary": "periodic", "interaction": "dipolar", "cutoff": 2.0,
                            "axis": [1.0, 0.0, 1.0], "anisotropy": XXZ,
                            "coupling_f": {"zz": "cos(t)"}}))
    inst = builder.ModelBuilder(c).instance(0)
    geom = g.square(4, 4, boundary="periodic")
    spec = {k: c["model"][k] for k in ("interaction", "cutoff", "axis", "anisotropy")}
    ref = Hamiltonian.from_couplings(g.build_couplings(geom, spec), tfuncs={"zz": "cos(t)"})
    assert [(t.coef, t.ops) for t in inst.hamiltonian.terms] == [(t.coef, t.ops) for t in ref.terms]
    assert isinstance(inst.couplings, dict) and inst.couplings["zz"].shape == (16, 16)


# -- D1: the torus is translation invariant -----------------------------------------------------
def _images_reference(geom, axis):
    """J_ij by brute force: the minimum image, averaged over tied images ±L/2."""
    n_ax = np.asarray(axis, float) / np.linalg.norm(axis)
    N, d = geom.positions.shape
    J = np.zeros((N, N))
    for i in range(N):
        for j in range(N):
            if i == j:
                continue
            options = []
            for a in range(d):
                dx = geom.positions[j, a] - geom.positions[i, a]
                if geom.periodic[a]:
                    L = geom.box[a]
                    dx -= L * np.round(dx / L)
                    options.append([L / 2, -L / 2] if np.isclose(abs(dx), L / 2) else [dx])
                else:
                    options.append([dx])
            vals = []
            for combo in np.array(np.meshgrid(*options, indexing="ij")).reshape(d, -1).T:
                r = np.linalg.norm(combo)
                cos = float(np.dot(n_ax[:d], combo)) / r
                vals.append((1 - 3 * cos ** 2) / r ** 3)
            J[i, j] = np.mean(vals)
    return J


@pytest.mark.parametrize("make, axis", [
    (lambda: g.square(4, 4, boundary="periodic"), (1.0, 1.0, 0.0)),
    (lambda: g.cubic(4, 4, 4, boundary="periodic"), (1.0, 1.0, 1.0)),
    (lambda: g.chain(6, "periodic"), (1.0, 0.0, 1.0))])
def test_d1_half_box_pairs_average_their_images(make, axis):
    geom = make()
    J = g.dipolar(geom, {"zz": 1.0}, axis=axis)["zz"]
    np.testing.assert_allclose(J, _images_reference(geom, axis), rtol=0, atol=1e-14)
    if geom.dim == 2:                    # the issue's example: J(0,6) = -0.152, J(2,4) = +0.063
        assert J[0, 6] == pytest.approx(J[2, 4], abs=1e-15)
    # translation invariance: J(T i, T j) = J(i, j) for every translation T of the torus
    shape = geom.lattice_shape
    cells = geom.cells
    index = {tuple(c): k for k, c in enumerate(cells.tolist())}
    for shift in np.ndindex(*shape):
        T = np.array([index[tuple(((c + np.array(shift)) % shape).tolist())]
                      for c in cells])
        np.testing.assert_allclose(J[np.ix_(T, T)], J, rtol=0, atol=1e-14)
    # the sparse builder (a cutoff beyond half the box) gives the same numbers
    Js = g.build_couplings(geom, {"interaction": "dipolar", "cutoff": 10.0, "axis": list(axis),
                                  "anisotropy": {"zz": 1.0}}, sparse=True).dense()["zz"]
    np.testing.assert_allclose(Js, J, rtol=0, atol=1e-15)


# -- D2 / D3: /disorder/field_<a> is the full coefficient of sigma^a_i ----------------------------
def _one_site(H, label):
    out = np.zeros(H.n_sites)
    for t in H.terms:
        if len(t.ops) == 1 and t.ops[0][1] == label:
            out[t.ops[0][0]] += t.coef
    return out


def test_d2_field_records_rebuild_the_field_part_of_H(tmp_path):
    from ctwa_hpc.output import hdf5 as io
    out = tmp_path / "f.h5"
    check(run_cli(["run", os.path.join(ROOT, "jobs", "tiny.toml"), "-o", out, "-q",
                   "--set", "model.hz=0.3", "--set", "method.samples=40"]))
    data = io.load(out)
    c = config.resolve(data["config"])
    mb = builder.ModelBuilder(c)
    fz, fx = data["disorder"]["field_z"], data["disorder"]["field_x"]
    assert fz.shape == (2, 4) and np.ptp(fz[0]) > 0               # uniform 0.3 + random draw
    for r in range(2):
        H = mb.hamiltonian(r)
        np.testing.assert_allclose(fz[r], _one_site(H, "Z"), rtol=0, atol=1e-15)
        np.testing.assert_allclose(fx[r], _one_site(H, "X"), rtol=0, atol=1e-15)
        assert np.all(np.abs(fz[r] - 0.3) <= 0.1)
    np.testing.assert_array_equal(data["disorder"]["field_y"], 0.0)
    import h5py
    with h5py.File(out, "r") as fh:
        assert "full coefficient" in fh["disorder/field_z"].attrs["description"]
    assert "the full coefficient of σᵃᵢ" in open(os.path.join(ROOT, "README.md")).read()


def test_d3_heisenberg_disorder_deltas_are_stored():
    res = ctwa_hpc.run(cfg({"kind": "heisenberg", "n_sites": 6, "hz": 2.0},
                           disorder={"realizations": 2, "seed": 5, "first": 3},
                           method={"kind": "meanfield"}, state={"kind": "neel"}), quiet=True)
    fz = res.disorder["fields"]["z"]
    for r in range(2):
        np.testing.assert_allclose(fz[r], 2.0 * models.disorder_fields(6, 5, 3 + r),
                                   rtol=0, atol=1e-15)


# -- D4 / W2 / W3 / M5 / C4: couplings files ------------------------------------------------------
def _Jzz(n):
    J = np.zeros((n, n))
    for i in range(n - 1):
        J[i, i + 1] = J[i + 1, i] = 0.5
    return J


def test_d4_one_nn_file_is_shared_by_every_realization(tmp_path):
    np.savez(tmp_path / "J.npz", J_zz=_Jzz(4), J_xx=0.3 * _Jzz(4))
    run = write_toml(tmp_path / "run.toml", """
        [model]
        kind = "couplings"
        file = "J.npz"
        fields = [{component = "z", kind = "box", W = 0.5}]
        [disorder]
        realizations = 3
        [method]
        cluster_size = 2
        samples = 16
        batch = 16
        [time]
        dt = 0.05
        t_max = 0.1
        [observables]
        names = ["sz"]
        """)
    c = config.load(str(run))
    mb = builder.ModelBuilder(c)
    pairs = [[(t.coef, t.ops) for t in mb.hamiltonian(r).terms if len(t.ops) == 2]
             for r in range(3)]
    assert pairs[0] == pairs[1] == pairs[2] and len(pairs[0]) == 6
    fields = [mb.instance(r).fields["z"] for r in range(3)]
    assert not np.array_equal(fields[0], fields[1])
    check(run_cli(["run", run, "-o", tmp_path / "o.h5", "-q"]))
    # a realization axis of length 1 is one realization: asking for three is refused early
    np.savez(tmp_path / "J1.npz", J_zz=_Jzz(4)[None])
    with pytest.raises(ConfigError, match=r"^disorder\.realizations: realizations 0\.\.2 "
                                          r"requested, model\.file holds 1"):
        config.resolve(dict(c, model=dict(c["model"], file=str(tmp_path / "J1.npz"),
                                          n_sites=None), disorder={"realizations": 3}))


def test_w2_keys_that_collide_after_canonicalisation_are_refused(tmp_path):
    for name, arrays, keys in (("a.npz", {"J_zz": _Jzz(3), "J_ZZ": 2 * _Jzz(3)}, ("J_zz", "J_ZZ")),
                               ("b.npz", {"J_xx": _Jzz(3), "h_z": np.ones(3), "H_Z": np.zeros(3)},
                                ("h_z", "H_Z"))):
        path = tmp_path / name
        np.savez(path, **arrays)
        with pytest.raises(ValueError) as err:
            load_couplings(path)
        msg = str(err.value)
        assert msg.startswith(f"model.file ({path}): the arrays") and "keep only one" in msg
        assert all(repr(k) in msg for k in keys), msg


def test_w3_relative_file_is_next_to_the_config_never_the_working_directory(tmp_path,
                                                                            monkeypatch):
    sub = tmp_path / "study"
    sub.mkdir()
    np.savez(sub / "J.npz", J_zz=_Jzz(4))
    np.savez(tmp_path / "J.npz", J_zz=_Jzz(6))           # a decoy in the working directory
    run = write_toml(sub / "run.toml", """
        [model]
        kind = "couplings"
        file = "J.npz"
        [time]
        t_max = 0.1
        """)
    monkeypatch.chdir(tmp_path)
    c = config.load(str(run))
    assert c["model"]["n_sites"] == 4
    assert c["model"]["file"] == str(sub / "J.npz")           # the resolved config stores it
    os.remove(sub / "J.npz")                                   # only the decoy is left
    with pytest.raises(ConfigError, match=r"^model\.file: cannot read .*study/J\.npz"):
        config.load(str(run))
    monkeypatch.chdir(ROOT)
    for name in sorted(os.listdir(os.path.join(ROOT, "jobs"))):   # every shipped job resolves
        if name.endswith(".toml"):
            assert config.load(os.path.join(ROOT, "jobs", name))["model"]["n_sites"] >= 4


def test_m5_a_non_zip_npz_is_named_not_a_zip_archive(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip archive")
    with pytest.raises(ValueError) as err:
        load_couplings(junk)
    msg = str(err.value)
    assert msg.startswith(f"model.file ({junk}): ") and "not a valid .npz file" in msg
    assert "not a zip archive" in msg and "allow_pickle" not in msg


def test_c4_couplings_file_that_is_a_device_is_refused_before_reading(tmp_path):
    os.symlink("/dev/zero", tmp_path / "zero.npz")
    run = write_toml(tmp_path / "run.toml", """
        [model]
        kind = "couplings"
        file = "zero.npz"
        [time]
        t_max = 0.1
        """)
    t0 = time.perf_counter()
    msg = refused(run_cli(["run", run, "-o", tmp_path / "o.h5"], timeout=FAST),
                  f"model.file: '{tmp_path / 'zero.npz'}' is not a regular file")
    assert time.perf_counter() - t0 < FAST and "device" in msg
    # a file larger than what can be read and checked in memory is refused before reading
    np.savez(tmp_path / "J.npz", J_zz=_Jzz(40))
    with pytest.raises(ConfigError, match=r"^model\.file: .*J\.npz' holds .* KiB, more than "
                                          r"the .* that can be read"):
        config.resolve({"model": {"kind": "couplings", "file": str(tmp_path / "J.npz")},
                        "time": {"t_max": 0.1}, "output": {"max_memory_gb": 1e-6}})


def test_c4_huge_params_and_numbers_name_the_field(tmp_path):
    big = str(2 ** 1024)
    run = write_toml(tmp_path / "run.toml", f"""
        [model]
        kind = "tfim"
        n_sites = 4
        params = {{omega = {big}}}
        [time]
        t_max = 0.1
        """)
    refused(run_cli(["run", run, "-o", tmp_path / "o.h5"], timeout=FAST),
            "model.params.omega: 17976931348623159077")
    with pytest.raises(ConfigError, match=r"^model\.J: a 309-digit integer is too large"):
        config.resolve({"model": {"kind": "tfim", "n_sites": 4, "J": 2 ** 1024},
                        "time": {"t_max": 0.1}})


def test_c4_api_objects_of_the_wrong_type_name_the_field():
    for model, start in (({"kind": "couplings", "file": 42}, "model.file: expected a path"),
                         ({"kind": "lattice", "positions": "file",
                           "positions_file": [[0.0, 0.0], [1.0, 0.0]], "interaction": "nearest",
                           "anisotropy": {"zz": 1.0}}, "model.positions_file: expected a path")):
        with pytest.raises(ConfigError) as err:
            ctwa_hpc.run(cfg(model), quiet=True)
        assert str(err.value).startswith(start), err.value
        assert "Geometry" in str(err.value) or "Hamiltonian" in str(err.value)


# -- H2 / M3: blockade placement ------------------------------------------------------------------
def _sequential_blockade(n, L, rb, rng, per, max_attempts=20000):
    """The sequential random adsorption exactly as specified (brute force)."""
    L = np.asarray(L, float)
    d = L.size
    x = np.empty((n, d))
    for k in range(n):
        tries, m = 0, 8
        while True:
            assert tries < max_attempts
            m_now = min(m, max_attempts - tries)
            cand = rng.random((m_now, d)) * L
            tries += m_now
            hit = 0
            if k:
                diff = cand[:, None, :] - x[None, :k, :]
                diff[..., per] -= L[per] * np.round(diff[..., per] / L[per])
                d2 = np.einsum("mkd,mkd->mk", diff, diff).min(axis=1)
                ok = np.nonzero(d2 >= rb * rb)[0]
                hit = int(ok[0]) if ok.size else -1
            if hit >= 0:
                x[k] = cand[hit]
                break
            m = min(2 * m, 1024)
    return x


@pytest.mark.parametrize("n, L, rb, per", [
    (300, [30.0, 30.0], 1.0, [True, True]), (300, [22.0, 25.0], 1.0, [False, True]),
    (250, [7.0, 7.0, 7.0], 0.9, [True, False, True]), (150, [300.0], 1.5, [True]),
    (300, [24.0, 24.0], 1.0, [False, False])])
def test_h2_fast_placement_is_the_sequential_process_draw_by_draw(n, L, rb, per):
    per = np.array(per)
    a, b = np.random.default_rng(11), np.random.default_rng(11)
    geom = g.blockade(n, L, rb, a, periodic=per)
    np.testing.assert_array_equal(geom.positions, _sequential_blockade(n, L, rb, b, per))
    assert np.array_equal(a.random(4), b.random(4))          # the stream goes on identically


def test_h2_blockade_in_a_large_box_is_fast_and_refuses_what_cannot_fit():
    # the issue's box: 3·10⁴ sites took 68 s (O(N²)); 4.5·10⁴ now take about a second
    code = ("import numpy as np; from ctwa_hpc import geometry as g; "
            "from scipy.spatial import cKDTree; "
            "p = g.blockade(45000, [2000.0, 2000.0], 1.0, np.random.default_rng(0)).positions; "
            "d, _ = cKDTree(p).query(p, k=2); print(len(p), d[:, 1].min())")
    t0 = time.perf_counter()
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=FAST,
                       cwd=ROOT, env=env())
    assert r.returncode == 0, r.stderr
    n, dmin = r.stdout.split()
    assert int(n) == 45000 and float(dmin) >= 1.0 and time.perf_counter() - t0 < FAST
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as err:
        g.blockade(10 ** 6, [500.0, 500.0], 1.0, np.random.default_rng(0))
    msg = str(err.value)
    assert time.perf_counter() - t0 < 1
    assert msg.startswith("model.blockade_radius: could not place N = 1000000 atoms")
    assert "at most about 2.898e+05 atoms fit" in msg and "jams near 1.749e+05" in msg
    assert all(f in msg for f in ("model.n_sites", "model.blockade_radius", "model.box"))


def test_m3_a_vanishing_blockade_radius_is_refused():
    with pytest.raises(ConfigError, match=r"^model\.blockade_radius: 1e-300 is below the "
                                          r"floating-point resolution"):
        config.resolve(cfg({"kind": "lattice", "positions": "blockade", "n_sites": 4,
                            "box": [10.0], "blockade_radius": 1e-300, "interaction": "nearest",
                            "anisotropy": {"zz": 1.0}}, state={"kind": "x"}))


# -- M1 / M2: messages ----------------------------------------------------------------------------
def test_m1_bad_state_angles_name_the_entry(tmp_path):
    for angles, shown in (('[[0,0],[1,"a"],[0,0],[0,0]]', "[1, 'a']"),
                          ("[[0,0],[1],[0,0],[0,0]]", "[1]"), ("[0,1,2,3]", "got 0")):
        k = 0 if angles == "[0,1,2,3]" else 1
        msg = refused(run_cli(["run", os.path.join(ROOT, "jobs", "tiny.toml"), "-o",
                               tmp_path / "o.h5", "--set", "state.kind=angles",
                               "--set", f"state.angles={angles}"], timeout=FAST),
                      f"state.angles[{k}]: expected [theta, phi], two finite numbers")
        assert shown in msg


def _positions_model(tmp_path, pos, name="pos.npy", **extra):
    np.save(tmp_path / name, np.asarray(pos, float))
    return cfg(dict({"kind": "lattice", "positions": "file",
                     "positions_file": str(tmp_path / name), "interaction": "power_law",
                     "alpha": 3.0, "anisotropy": XXZ}, **extra), state={"kind": "x"})


def test_m2_geometry_messages_name_the_field_and_the_pair(tmp_path):
    cases = [
        (_positions_model(tmp_path, [[0, 0], [1e300, 0], [2e300, 0], [3e300, 0]]),
         r"^model\.positions_file: coordinates up to 3e\+300 are too large.*rescale"),
        (cfg({"kind": "lattice", "lattice": "chain", "size": [4], "spacing": 1e200,
              "interaction": "nearest", "anisotropy": XXZ}, state={"kind": "x"}),
         r"^model\.spacing: coordinates up to 4e\+200 are too large"),
        (cfg({"kind": "lattice", "lattice": "chain", "size": [4], "spacing": 0.01,
              "interaction": "power_law", "alpha": 200.0, "anisotropy": XXZ},
             state={"kind": "x"}),
         r"^model\.alpha: the coupling of sites 0 and 1 \(distance 0\.01\) overflows; lower "
         r"model\.alpha"),
        (_positions_model(tmp_path, [[0, 0], [1, 0], [2, 0], [2 + 1e-4, 0]], "near.npy"),
         r"^model\.positions_file: sites 2 and 3 are only 0\.0001 apart and couple with "
         r"\|J\| = 2e\+12: .*move them apart or remove one .* or lower time\.dt below 1e-12"),
    ]
    for c, pattern in cases:
        with pytest.raises(ConfigError) as err:
            config.resolve(c)
        assert "J_xx" not in str(err.value)
        assert re.match(pattern, str(err.value)), str(err.value)
    # through the command line: exit 2 before any work, not "reduce time.dt" after a NaN
    path = write_toml(tmp_path / "near.toml", """
        [model]
        kind = "lattice"
        positions = "file"
        positions_file = "near.npy"
        interaction = "power_law"
        alpha = 3.0
        anisotropy = {xx = 1.0, yy = 1.0, zz = 1.0}
        [state]
        kind = "x"
        [method]
        cluster_size = 1
        samples = 8
        batch = 8
        [time]
        dt = 0.05
        t_max = 1.0
        [observables]
        names = ["sz"]
        """)
    msg = refused(run_cli(["run", path, "-o", tmp_path / "o.h5"], timeout=FAST),
                  "model.positions_file: sites 2 and 3 are only 0.0001 apart and couple with "
                  "|J| = 1e+12")
    assert "reduce time.dt" not in msg and not os.path.exists(tmp_path / "o.h5")
