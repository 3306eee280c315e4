"""The model front end (issue 8): lattice/couplings models, disorder for every model, clusters
per realization, geometry-following states, disjoint jobs, the Python API, and the four studies
of the issue checked against exact dynamics.

Statistical checks use z = |CTWA − exact| / √(se² + ε²) per realization, output and time, with se
the within-realization Monte Carlo error and ε = 1e-6 the RK4 error floor (conserved outputs
have se ≈ 0); the bound 4.5 is a > 4σ event over the few hundred values tested.
"""
import os

import numpy as np
import pytest

import ctwa_hpc
from ctwa_hpc import config
from ctwa_hpc.exact import statevector as exact
from ctwa_hpc.model import builder as modelspec, geometry
from ctwa_hpc.tools.exceptions import ConfigError
from ctwa_hpc.model.hamiltonian import Hamiltonian
from ctwa_hpc.driver.runner import Simulation

RK4_FLOOR = 1e-6


def base(**sections):
    raw = {"model": {"kind": "tfim", "n_sites": 4},
           "method": {"kind": "reduced", "cluster_size": 2, "samples": 200, "antithetic": True,
                      "batch": 100},
           "time": {"dt": 0.01, "t_max": 0.5, "output_dt": 0.1},
           "observables": {"names": ["sz"]}}
    for sec, upd in sections.items():
        if sec == "model":
            raw[sec] = dict(upd)
        else:
            raw.setdefault(sec, {}).update(upd)
    return raw


def max_z(res, names=None):
    """Largest z of CTWA vs the exact reference over realizations, components and times."""
    worst = 0.0
    for name in names or res.outputs:
        o, e = res.outputs[name], res.exact[name]
        se = np.nan_to_num(o["real_stderr"], nan=0.0)
        z = np.abs(o["real_mean"] - e["real_mean"]) / np.sqrt(se ** 2 + RK4_FLOOR ** 2)
        worst = max(worst, float(z.max()))
    return worst


# -- disorder for every model -------------------------------------------------------------------
@pytest.mark.parametrize("model", [
    {"kind": "tfim", "n_sites": 4},
    {"kind": "custom", "n_sites": 2, "terms": [{"coef": 1.0, "ops": "Z0 Z1"}]},
    {"kind": "heisenberg", "n_sites": 4, "hz": 0.0},
    {"kind": "lattice", "lattice": "square", "size": [2, 2], "anisotropy": {"zz": 1.0}},
    {"kind": "tfim", "n_sites": 4, "fields": [{"component": "z", "kind": "box", "W": 0.0}]},
])
def test_replicas_without_randomness_are_refused(model):
    with pytest.raises(ConfigError) as exc:
        config.resolve(base(model=model, disorder={"realizations": 3}))
    assert str(exc.value).startswith("disorder.realizations"), str(exc.value)


@pytest.mark.parametrize("model", [
    {"kind": "tfim", "n_sites": 4, "fields": [{"component": "x", "kind": "gaussian",
                                                "sigma": 0.3}]},
    {"kind": "lattice", "lattice": "chain", "size": [8], "positions": "filled",
     "filling": 0.5, "interaction": "power_law", "alpha": 3.0, "anisotropy": {"zz": 1.0}},
    {"kind": "heisenberg", "n_sites": 4, "hz": 1.0},
])
def test_random_models_accept_replicas(model):
    cfg = config.resolve(base(model=model, disorder={"realizations": 3}))
    assert cfg["disorder"]["realizations"] == 3


def test_fields_keyed_by_seed_and_global_realization():
    raw = base(model={"kind": "xy", "n_sites": 6,
                      "fields": [{"component": "z", "kind": "box", "W": 1.0},
                                 {"component": "z", "kind": "uniform", "value": 0.5}]},
               disorder={"realizations": 3, "seed": 9})
    b = modelspec.ModelBuilder(config.resolve(raw))
    f = [b.instance(r).fields["z"] for r in range(3)]
    assert not np.allclose(f[0], f[1]) and np.all(np.abs(f[0] - 0.5) <= 1.0)
    again = modelspec.ModelBuilder(config.resolve(raw)).instance(2).fields["z"]
    np.testing.assert_array_equal(again, f[2])
    raw["disorder"].update(first=2, realizations=1)
    shifted = modelspec.ModelBuilder(config.resolve(raw)).instance(0).fields["z"]
    np.testing.assert_array_equal(shifted, f[2])       # job over realizations 2..: same draw


def test_lattice_sizes_and_state_errors():
    cfg = config.resolve(base(model={"kind": "lattice", "lattice": "honeycomb", "size": [2, 2],
                                     "anisotropy": {"zz": 1.0}}))
    assert cfg["model"]["n_sites"] == 8
    with pytest.raises(ConfigError, match=r"^model.n_sites"):
        config.resolve(base(model={"kind": "lattice", "lattice": "square", "size": [2, 2],
                                   "n_sites": 5, "anisotropy": {"zz": 1.0}}))
    with pytest.raises(ConfigError, match=r"^model.hx"):
        config.resolve(base(model={"kind": "lattice", "lattice": "square", "size": [2, 2],
                                   "hx": 1.0, "anisotropy": {"zz": 1.0}}))
    with pytest.raises(ConfigError, match=r"^model.alpha"):
        config.resolve(base(model={"kind": "lattice", "lattice": "square", "size": [2, 2],
                                   "alpha": 3.0, "anisotropy": {"zz": 1.0}}))
    tri = config.resolve(base(model={"kind": "lattice", "lattice": "triangular",
                                     "size": [3, 2], "anisotropy": {"zz": 1.0}},
                              method={"kind": "reduced", "cluster_size": 1}))
    with pytest.raises(ConfigError, match=r"^state.kind"):
        Simulation(tri, quiet=True)


def test_checkerboard_neel_on_square_lattice():
    cfg = config.resolve(base(model={"kind": "lattice", "lattice": "square", "size": [4, 4],
                                     "anisotropy": {"zz": 1.0}},
                              method={"kind": "meanfield", "cluster_size": 1},
                              observables={"names": ["sz", "mz_staggered"]}))
    sim = Simulation(cfg, quiet=True)
    x, y = np.arange(16) % 4, np.arange(16) // 4
    np.testing.assert_array_equal(sim.state.theta, np.where((x + y) % 2 == 0, 0.0, np.pi))
    res = sim.run()
    assert abs(res.outputs["mz_staggered"]["mean"][0, 0] - 1.0) < 1e-12
    # an Ising model: the checkerboard Néel state is stationary, m_z stays 1
    assert np.abs(res.outputs["mz_staggered"]["mean"] - 1.0).max() < 1e-9


# -- clusters per realization -------------------------------------------------------------------
def test_strongest_pairs_follow_each_realization():
    raw = base(model={"kind": "lattice", "lattice": "chain", "size": [24], "positions": "filled",
                      "filling": 0.5, "interaction": "power_law", "alpha": 6.0,
                      "anisotropy": {"xx": 0.25, "yy": 0.25, "zz": 1.0},
                      "sublattice": "alternating"},
               disorder={"realizations": 3, "seed": 5},
               method={"kind": "reduced", "clustering": "strongest_pairs", "samples": 20,
                       "batch": 10, "antithetic": False},
               observables={"names": ["mz_staggered"]})
    sim = Simulation(config.resolve(raw), quiet=True)
    parts = [sim.partitions(r)[0].clusters for r in range(3)]
    assert len({p for p in parts}) > 1                       # clusters differ per realization
    for r, p in enumerate(parts):
        inst = sim.instance(r)
        J = np.abs(inst.couplings["zz"])
        assert all(len(c) == 2 for c in p)
        best = np.unravel_index(np.argmax(J), J.shape)
        assert tuple(sorted(best)) in {tuple(sorted(c)) for c in p}
        assert np.all(sim.state_for(r).theta == np.where(np.arange(12) % 2, np.pi, 0.0))
    rec = sim.disorder_record()
    assert rec["positions"].shape == (3, 12, 1) and rec["cluster_of_site"].shape == (3, 1, 12)
    assert rec["couplings"]["zz"].shape == (3, 12, 12)


# -- jobs over disjoint realizations or samples ----------------------------------------------------
def _heis(**kw):
    return base(model={"kind": "heisenberg", "n_sites": 4, "hz": 2.0}, disorder=kw.pop("d"),
                method={"kind": "reduced", "cluster_size": 2, "samples": kw.pop("samples", 100),
                        "antithetic": True, "batch": 50, **kw},
                observables={"names": ["sz", "czz_connected"]})


def test_disjoint_realization_jobs_equal_one_run():
    whole = Simulation(config.resolve(_heis(d={"realizations": 4, "seed": 2})), quiet=True).run()
    parts = [Simulation(config.resolve(_heis(d={"realizations": 2, "seed": 2, "first": f})),
                        quiet=True).run() for f in (0, 2)]
    for name in ("sz", "czz_connected"):
        joined = np.concatenate([p.outputs[name]["real_mean"] for p in parts])
        np.testing.assert_allclose(joined, whole.outputs[name]["real_mean"], rtol=0, atol=1e-13)
    np.testing.assert_array_equal(
        np.concatenate([p.extra["disorder"]["realization_index"] for p in parts]), np.arange(4))


def test_disjoint_sample_jobs_add_up():
    whole = Simulation(config.resolve(_heis(d={"realizations": 2, "seed": 2}, samples=200)),
                       quiet=True).run()
    a = Simulation(config.resolve(_heis(d={"realizations": 2, "seed": 2}, samples=100)),
                   quiet=True).run()
    b = Simulation(config.resolve(_heis(d={"realizations": 2, "seed": 2}, samples=100,
                                        first_sample=100)), quiet=True).run()
    merged = a.moments.merge(b.moments)   # re-shifted to a's shift (= whole's: same block 0)
    for key in ("count", "s1", "s2", "sx", "shift"):
        np.testing.assert_allclose(getattr(merged, key), getattr(whole.moments, key),
                                   rtol=1e-12, atol=1e-11, err_msg=key)


def test_first_sample_must_keep_antithetic_pairs():
    with pytest.raises(ConfigError, match=r"^method.first_sample"):
        config.resolve(_heis(d={"realizations": 1}, first_sample=3))


# -- the Python API -----------------------------------------------------------------------------
def test_run_with_dict_overrides_and_objects():
    H = Hamiltonian.from_couplings({"zz": np.array([[0, 0.3, 0], [0.3, 0, 0.2], [0, 0.2, 0]]),
                                    "xx": np.array([[0, 1.0, 0], [1.0, 0, 1.0], [0, 1.0, 0]])},
                                   {"z": np.array([0.1, -0.2, 0.3])})
    cfg = {"model": {"kind": "couplings", "file": H},
           "state": {"kind": "x"},
           "method": {"kind": "reduced", "clusters": [[0, 1, 2]], "samples": 20,
                      "antithetic": True, "batch": 20},
           "time": {"dt": 0.01, "t_max": 1.0, "output_dt": 0.25},
           "observables": {"names": ["sx", "sz_total"]},
           "output": {"compare_exact": True}}
    res = ctwa_hpc.run(cfg, {"time.t_max": 0.5}, quiet=True)
    assert res.times[-1] == 0.5 and res.config["model"]["file"].startswith("python:")
    # one cluster covering the system with antithetic pairs: exact to RK4 accuracy
    np.testing.assert_allclose(res.mean("sx"), res.exact_mean("sx"), atol=1e-6)
    assert "model_content_hash" in res.metadata
    # one Hamiltonian per realization
    H2 = Hamiltonian.from_couplings({"zz": 2 * np.array([[0, 0.3, 0], [0.3, 0, 0.2],
                                                         [0, 0.2, 0]])})
    res2 = ctwa_hpc.run(dict(cfg, model={"kind": "couplings", "file": [H, H2]}), quiet=True)
    assert res2.outputs["sx"]["real_mean"].shape[0] == 2
    np.testing.assert_allclose(res2.outputs["sx"]["real_mean"],
                               res2.exact["sx"]["real_mean"], atol=1e-6)
    with pytest.raises(ConfigError, match=r"^method.sampels"):
        ctwa_hpc.run(cfg, {"method.sampels": 3})


def test_run_with_geometry_object():
    geom = geometry.square(2, 2)
    cfg = base(model={"kind": "lattice", "positions_file": geom, "interaction": "nearest",
                      "anisotropy": {"xx": 1.0, "yy": 1.0, "zz": 0.5}},
               method={"kind": "reduced", "clusters": [[0, 1, 2, 3]], "samples": 10,
                       "batch": 10},
               output={"compare_exact": True})
    res = ctwa_hpc.run(cfg, quiet=True)
    np.testing.assert_allclose(res.mean("sz"), res.exact_mean("sz"), atol=1e-6)


# -- the studies of the issue, against exact dynamics ------------------------------------------------
def test_study_a_xxz_square_random_field_plaquettes():
    """4×4 XXZ + random field, 2×2 plaquettes, several realizations in one run, vs ED."""
    res = ctwa_hpc.run("jobs/xxz4x4_plaquettes.toml",
                       {"disorder.realizations": 3, "method.samples": 400, "time.t_max": 0.4,
                        "time.output_dt": 0.1}, quiet=True)
    assert res.outputs["mz_staggered"]["real_mean"].shape == (3, 5, 1)
    assert len({tuple(f) for f in res.disorder["fields"]["z"].round(12)}) == 3
    assert max_z(res) < 4.5
    # the model itself: the same Hamiltonian written term by term gives the same exact dynamics
    sim = Simulation(res.config, quiet=True)
    inst = sim.instance(1)
    H = Hamiltonian(16)
    for i, j in zip(*np.nonzero(np.triu(inst.couplings["zz"]))):
        assert abs(abs(inst.positions[i] - inst.positions[j]).sum() - 1.0) < 1e-12
        for a, c in (("X", 1.0), ("Y", 1.0), ("Z", 0.5)):
            H.add(c, [(int(i), a), (int(j), a)])
    for i in range(16):
        H.add(inst.fields["z"][i], [(i, "Z")])
    obs = sim.observable_set(1)
    t = np.array([0.0, 0.2, 0.4])
    a, _ = exact.evolve(H, sim.state_for(1), t, obs.columns)
    b, _ = exact.evolve(inst.hamiltonian, sim.state_for(1), t, obs.columns)
    np.testing.assert_allclose(a, b, atol=1e-10)


def test_study_b_dipolar_chain_strongest_pairs():
    """Dipolar XXZ on a partially filled chain, strongest-pair clusters: N = 12 vs ED; N = 32 runs.

    CTWA is exact to O(t²) only: it agrees with ED within the Monte Carlo error for t ≤ 0.2
    and its error stays well below mean field's (same clusters) up to t = 0.5.
    """
    ov = {"model.size": [18], "disorder.realizations": 2, "method.samples": 400,
          "time.t_max": 0.5, "output.compare_exact": True, "observables.names": ["sz"]}
    res = ctwa_hpc.run("jobs/dipolar32_pairs.toml", ov, quiet=True)
    assert res.config["model"]["n_sites"] == 12
    o, e = res.outputs["sz"], res.exact["sz"]
    z = np.abs(o["real_mean"] - e["real_mean"]) / np.sqrt(o["real_stderr"] ** 2 + RK4_FLOOR ** 2)
    assert z[:, res.times <= 0.2 + 1e-9].max() < 4.5
    mf = ctwa_hpc.run("jobs/dipolar32_pairs.toml",
                      dict(ov, **{"method.kind": "meanfield", "method.antithetic": False}),
                      quiet=True)
    err_ctwa = np.abs(o["real_mean"] - e["real_mean"]).mean(axis=(0, 2))[1:]
    err_mf = np.abs(mf.outputs["sz"]["real_mean"] - e["real_mean"]).mean(axis=(0, 2))[1:]
    assert np.all(err_ctwa < 0.5 * err_mf), (err_ctwa, err_mf)
    big = ctwa_hpc.run("jobs/dipolar32_pairs.toml", {"method.samples": 20, "time.t_max": 0.2,
                                                     "disorder.realizations": 2}, quiet=True)
    cl = big.disorder["cluster_of_site"]
    assert cl.shape == (2, 1, 32) and np.all(np.bincount(cl[0, 0]) == 2)


def test_study_c_floquet_drive_parameter():
    """A drive cos(ω t): one cluster of all 4 sites is exact; ω is a --set-able parameter."""
    ov = {"model.n_sites": 4, "method.cluster_size": 4, "method.samples": 20, "time.t_max": 2.0}
    r4 = ctwa_hpc.run("jobs/floquet_tfim.toml", ov, quiet=True)
    r8 = ctwa_hpc.run("jobs/floquet_tfim.toml", dict(ov, **{"model.params.omega": 8.0}),
                      quiet=True)
    for r in (r4, r8):
        np.testing.assert_allclose(r.mean("sz_total"), r.exact_mean("sz_total"), atol=1e-5)
    assert np.abs(r4.mean("sz_total") - r8.mean("sz_total")).max() > 0.1
    assert r8.config["model"]["params"]["omega"] == 8.0
    with pytest.raises(ConfigError, match=r"omega"):
        ctwa_hpc.run("jobs/floquet_tfim.toml", dict(ov, **{"model.params": {}}), quiet=True)


def test_study_d_domain_wall_sums_and_strings():
    """Domain wall with total σˣ, a string operator and a current, all with error bars."""
    exact_one = ctwa_hpc.run("jobs/domain_wall.toml",
                             {"model.size": [6], "state.pattern": "uuuddd",
                              "method.cluster_size": 6, "method.samples": 20,
                              "time.t_max": 1.0,
                              "observables.custom": [
                                  {"name": "string_1_4", "terms": [{"coef": 1.0,
                                                                    "ops": "Z1 Z2 Z3 Z4"}]},
                                  {"name": "wall_current",
                                   "terms": [{"coef": 1.0, "ops": "X2 Y3"},
                                             {"coef": -1.0, "ops": "Y2 X3"}]}]}, quiet=True)
    for name in exact_one.outputs:
        np.testing.assert_allclose(exact_one.mean(name), exact_one.exact_mean(name), atol=1e-5)
    # N = 12 with pair clusters: local magnetizations and total σˣ agree with ED within the
    # Monte Carlo error for t ≤ 0.5.  The string Π_{4..7} σᶻ does not: exactly it stays ≈ 1 (the
    # polarized domains around it are eigenstates of the flip-flop term), while the noise of
    # the neighbouring clusters' σˣ, σʸ rotates the spins at its ends in CTWA (0.26 at t = 0.5
    # for pairs, 0.65 for clusters of 4, exact 0.93): a TWA artefact, not a code error (one
    # cluster above is exact).  It is reported with its error bar all the same.
    res = ctwa_hpc.run("jobs/domain_wall.toml", {"method.samples": 800, "time.t_max": 0.5},
                       quiet=True)
    for name in ("sx_total", "string_4_7", "wall_current"):
        assert np.all(res.stderr(name)[1:] > 0)
    assert max_z(res, ["sz", "sx_total", "sz_total"]) < 4.5


@pytest.mark.parametrize("sampling", ["discrete", "gaussian"])
def test_prb2024_job_realizations_against_ed(sampling):
    """The shipped PRB 110, 054204 job: a few realizations (N = 16) against ED at short times,
    and better than mean field on the same pairs."""
    ov = {"disorder.realizations": 2, "disorder.first": 7, "method.samples": 300,
          "method.batch": 150, "method.sampling": sampling, "time.t_max": 0.6,
          "time.output_dt": 0.2, "output.compare_exact": True,
          "method.precision": "double"}    # the job runs single: t = 0 exact to 1e-12 here
    res = ctwa_hpc.run("jobs/prb2024_a6_d2.toml", ov, quiet=True)
    assert res.config["model"]["n_sites"] == 16
    np.testing.assert_array_equal(res.disorder["realization_index"], [7, 8])
    o, e = res.outputs["mz_staggered"], res.exact["mz_staggered"]
    assert abs(o["mean"][0, 0] - 1.0) < 1e-12
    z = np.abs(o["real_mean"] - e["real_mean"]) / np.sqrt(o["real_stderr"] ** 2 + RK4_FLOOR ** 2)
    assert z[:, res.times <= 0.2 + 1e-9].max() < 4.5
    r2, r2e = res.outputs["renyi2_pairs"], res.exact["renyi2_pairs"]
    assert np.all(np.abs(r2["real_mean"][:, 0]) < 4.5 * r2["real_stderr"][:, 0] + 1e-9)
    assert np.all(r2e["real_mean"][:, 1:] > 0)
    mf = ctwa_hpc.run("jobs/prb2024_a6_d2.toml",
                      dict(ov, **{"method.kind": "meanfield", "method.sampling": "gaussian"}),
                      quiet=True)
    err = np.abs(o["real_mean"] - e["real_mean"])[:, 1:].mean()
    err_mf = np.abs(mf.outputs["mz_staggered"]["real_mean"] - e["real_mean"])[:, 1:].mean()
    assert err < err_mf, (err, err_mf)


def test_api_ctrl_c_stops_promptly(tmp_path):
    """SIGINT during ctwa_hpc.run raises KeyboardInterrupt at the end of the current block."""
    import signal
    import subprocess
    import sys
    import time
    script = tmp_path / "long.py"
    script.write_text(
        "import sys, time, ctwa_hpc\n"
        "try:\n"
        "    ctwa_hpc.run('jobs/heis16.toml', {'disorder.realizations': 2,\n"
        "                 'method.samples': 100000, 'method.batch': 50}, quiet=True)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted'); sys.exit(130)\n"
        "print('finished')\n")
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    time.sleep(4.0)
    t0 = time.time()
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130 and "interrupted" in out
    assert time.time() - t0 < 10.0


def test_long_range_ising_lattice_against_closed_form():
    """N = 100 dipolar-like Ising lattice from a short TOML: discrete TWA is exact for ⟨σˣ⟩."""
    res = ctwa_hpc.run("jobs/ising_lr_10x10.toml", {"method.samples": 400}, quiet=True)
    assert res.config["model"]["n_sites"] == 100
    e = res.exact_mean("sx_total")
    assert e[0, 0] == pytest.approx(100.0) and e[-1, 0] < 5.0      # it really decays
    z = np.abs(res.mean("sx_total") - e) / np.sqrt(res.stderr("sx_total") ** 2 + RK4_FLOOR ** 2)
    assert z.max() < 4.5
    zs = np.abs(res.mean("sx") - res.exact_mean("sx")) / np.sqrt(res.stderr("sx") ** 2
                                                                  + RK4_FLOOR ** 2)
    assert zs.max() < 5.0 and 0.6 < zs[1:].mean() < 1.0       # unbiased: mean |z| ≈ 0.80


def test_api_progress_bar_on_one_process(capsys):
    ctwa_hpc.run("jobs/tfim4.toml", {"method.samples": 400, "method.batch": 100,
                                     "output.compare_exact": False})
    err = capsys.readouterr().err
    assert "\rctwa-hpc [" in err and "100.0%" in err and "400/400 samples" in err
    ctwa_hpc.run("jobs/tfim4.toml", {"method.samples": 40, "output.compare_exact": False},
                 quiet=True)
    assert "ctwa-hpc [" not in capsys.readouterr().err
