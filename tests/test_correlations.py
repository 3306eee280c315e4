"""Entanglement, two-time correlators, discrete sampling and the free-fermion reference.

All checks compare with exact dynamics built from the same Hamiltonian/state/observable
objects; Monte Carlo tolerances are a few standard errors (z-scores), exact limits use
integrator-level tolerances.
"""
import numpy as np
import pytest

from ctwa_hpc.method import clusters, dynamics, observables, sampling, stats
from ctwa_hpc.exact import freefermion, statevector as exact
from ctwa_hpc.model import models, states

DT = 0.01


def run(H, st, obs, size, method, S, steps, every, seed=7, antithetic=True, scheme="gaussian"):
    part = clusters.Partition.contiguous(H.n_sites, size)
    prob = clusters.compile_problem(H, part)
    plan = obs.compile(part)
    ib = sampling.draw_batch(prob, st, method, seed, 0, np.arange(S), antithetic=antithetic,
                             scheme=scheme)
    prop = dynamics.NumpyPropagator(prob, plan, ib.weights)
    cols, _ = dynamics.rk4(prop, ib.psi, 0.0, DT, steps, every,
                           prob.tf_table(np.arange(2 * steps + 1) * DT / 2))
    mom = stats.Moments.zeros(1, cols.shape[0], obs.n_columns, obs.cross)
    mom.add(0, cols, antithetic=antithetic)
    return stats.realization_estimates(obs.outputs, mom), prob, plan, ib


@pytest.fixture(scope="module")
def heis6():
    H = models.heisenberg(6, hz=1.0, seed=3, boundary="open")
    st = states.make_state("neel", 6)
    obs = observables.ObservableSet(6, ["entropy", "renyi2", "rdm_min_eig"],
                                    subsystems=[[0, 1], [2, 3], [1, 2]], hamiltonian=H)
    times = np.arange(11) * 0.2
    ex, _ = exact.evolve(H, st, times, obs.columns)
    return H, st, obs, stats.exact_connected(obs.outputs, ex[None])


def test_entropy_one_cluster_reduced_is_exact(heis6):
    """Antithetic pairs cancel the (linear) noise exactly: one cluster gives the exact ρ_A up
    to the RK4 global error (~1e-6 at dt = 0.01, t = 2; dt⁴ convergence is tested elsewhere)."""
    H, st, obs, ex = heis6
    est, *_ = run(H, st, obs, 6, "reduced", 64, 200, 20)
    for name in ("entropy", "renyi2", "rdm_min_eig"):
        np.testing.assert_allclose(est[name][0][0], ex[name][0], atol=1e-5)
        assert np.all(est[name][1] < 1e-8)


def test_entropy_one_cluster_sb_within_errors(heis6):
    H, st, obs, ex = heis6
    est, *_ = run(H, st, obs, 6, "sb", 4000, 200, 20)
    m, se = est["entropy"]
    z = np.abs(m[0, 1:] - ex["entropy"][0, 1:]) / se[0, 1:]
    assert z.max() < 4.5, z.max()
    assert np.all(ex["entropy"][0, 0] < 1e-9)


def test_inter_cluster_correlations_need_noise(heis6):
    """Eqs. (44), (48): mean field factorizes across clusters (zero connected correlator, zero
    mutual information), CTWA does not; both with clusters (0,1), (2,3), (4,5)."""
    H, st, _, _ = heis6
    obs = observables.ObservableSet(6, ["czz_connected", "entropy"], pairs=[(1, 2)],
                                    subsystems=[[1, 2], [1, 0]], hamiltonian=H)
    obs1 = observables.ObservableSet(6, ["entropy"], subsystems=[[1], [2]], hamiltonian=H)
    times = np.arange(11) * 0.2
    ex, _ = exact.evolve(H, st, times, obs.columns)
    exv = stats.exact_connected(obs.outputs, ex[None])
    mf, *_ = run(H, st, obs, 2, "meanfield", 1, 200, 20, antithetic=False)
    mf1, *_ = run(H, st, obs1, 2, "meanfield", 1, 200, 20, antithetic=False)
    np.testing.assert_allclose(mf["czz_connected"][0][0, :, 0], 0.0, atol=1e-12)
    s12 = mf["entropy"][0][0, :, 0]
    np.testing.assert_allclose(s12, mf1["entropy"][0][0].sum(axis=-1), atol=1e-9)
    est, *_ = run(H, st, obs, 2, "reduced", 2000, 200, 20)
    c, se = est["czz_connected"][0][0, :, 0], est["czz_connected"][1][0, :, 0]
    c_ex = exv["czz_connected"][0, :, 0]
    assert np.abs(c_ex).max() > 0.2
    assert np.abs(c).max() > 0.2 and np.max(np.abs(c) / np.maximum(se, 1e-12)) > 10


def test_entropy_rejects_bad_subsystems():
    with pytest.raises(ValueError, match="observables.subsystems"):
        observables.ObservableSet(4, ["entropy"], subsystems=[[0, 1], [1, 2, 3]])
    with pytest.raises(ValueError, match=r"observables.subsystems\[0\]"):
        observables.ObservableSet(4, ["entropy"], subsystems=[[0, 0]])


@pytest.fixture(scope="module")
def tfim_x():
    H = models.tfim(4, J=0.125, hx=1.0)
    st = states.make_state("x", 4)
    obs = observables.ObservableSet(4, ["sz"], hamiltonian=H)
    times = np.arange(31) * 0.1
    anti, resp = exact.two_time(H, st.theta, st.phi, times, obs.columns, ((0, "Z"),))
    return H, st, obs, anti, resp


def two_time(H, st, obs, size, method, S):
    part = clusters.Partition.contiguous(4, size)
    prob = clusters.compile_problem(H, part)
    plan = obs.compile(part)
    ib = sampling.draw_batch(prob, st, method, 3, 0, np.arange(S), antithetic=True)
    base = dynamics.NumpyPropagator(prob, plan, ib.weights)
    dpsi, ow0 = dynamics.kick(prob, ((0, "Z"),), ib.psi, ib.weights)
    cols, _ = dynamics.rk4(dynamics.TangentPropagator(base), (ib.psi, dpsi), 0.0, DT, 300, 10,
                           prob.tf_table(np.arange(601) * DT / 2))
    K = obs.n_columns
    anti = 2 * cols[:, :K] * ow0
    resp = cols[:, K:]
    pair = lambda x: 0.5 * (x[..., 0::2] + x[..., 1::2])  # noqa: E731
    a, r = pair(anti), pair(resp)
    n = a.shape[-1]
    return a.mean(-1), a.std(-1) / np.sqrt(n), r.mean(-1), r.std(-1) / np.sqrt(n)


def test_response_one_cluster_exact(tfim_x):
    """i<[σz_0(0), Q(t)]> from the tangent equations: exact for one cluster (reduced)."""
    H, st, obs, anti, resp = tfim_x
    assert np.abs(resp).max() > 1.0  # a non-trivial response
    _, _, mr, sr = two_time(H, st, obs, 4, "reduced", 16)
    assert np.all(sr < 1e-9)  # antithetic pairs cancel the noise of a linear system
    np.testing.assert_allclose(mr, resp, atol=2e-6)  # RK4 global error at dt = 0.01, t = 3


@pytest.mark.parametrize("size, method", [(2, "reduced"), (2, "sb"), (4, "sb")])
def test_two_time_within_errors(tfim_x, size, method):
    H, st, obs, anti, resp = tfim_x
    ma, sa, mr, sr = two_time(H, st, obs, size, method, 2000)
    k = 0  # σz_0
    za = np.abs(ma[1:, k] - anti[1:, k]) / sa[1:, k]
    zr = np.abs(mr[1:, k] - resp[1:, k]) / sr[1:, k]
    assert za.max() < 4.5 and zr.max() < 4.5, (za.max(), zr.max())


def test_tangent_matches_finite_difference():
    H = models.heisenberg(6, hz=2.0, seed=1)
    st = states.make_state("x", 6)
    obs = observables.ObservableSet(6, ["sz", "czz"], hamiltonian=H)
    part = clusters.Partition.contiguous(6, 2)
    prob = clusters.compile_problem(H, part)
    plan = obs.compile(part)
    ib = sampling.draw_batch(prob, st, "sb", 1, 0, np.arange(4))
    base = dynamics.NumpyPropagator(prob, plan, ib.weights)
    dpsi, _ = dynamics.kick(prob, ((2, "X"), (3, "Z")), ib.psi, ib.weights)
    tab = prob.tf_table(np.arange(201) * DT / 2)
    cols, _ = dynamics.rk4(dynamics.TangentPropagator(base), (ib.psi, dpsi), 0, DT, 100, 50, tab)
    eps = 1e-5
    cp, _ = dynamics.rk4(base, ib.psi + eps * dpsi, 0, DT, 100, 50, tab)
    cm, _ = dynamics.rk4(base, ib.psi - eps * dpsi, 0, DT, 100, 50, tab)
    K = obs.n_columns
    np.testing.assert_allclose(cols[:, K:], (cp - cm) / (2 * eps), atol=1e-6)


def test_discrete_sampling_one_cluster_exact_and_dtwa_runs():
    H = models.tfim(4, J=0.125, hx=1.0)
    st = states.make_state("neel", 4)
    obs = observables.ObservableSet(4, ["sz", "mz_staggered"], hamiltonian=H)
    times = np.arange(0, 101, 10) * DT * 5
    ex, _ = exact.evolve(H, st, times, obs.columns)
    est, _, _, ib = run(H, st, obs, 4, "reduced", 2000, 500, 50, scheme="discrete")
    assert len(ib.weights) == 16 and set(ib.weights) == {1.0, -1.0}
    m, se = est["sz"]
    z = np.abs(m[0] - ex[:, obs.outputs["sz"].cols]) / np.maximum(se[0], 1e-12)
    assert z[1:].max() < 4.5, z.max()
    # initial means exact: every sample reproduces <σz> = ±1 on average, σx, σy fluctuate ±1
    np.testing.assert_allclose(m[0, 0], [1, -1, 1, -1], atol=1e-12)


def test_discrete_sampling_second_moments():
    """Single-site DTWA moments: E[s_a s_b] = δ_ab for the up state (sec. V A analogue)."""
    H = models.tfim(1, J=0.0, hx=0.0)
    st = states.make_state("up", 1)
    part = clusters.Partition.contiguous(1, 1)
    prob = clusters.compile_problem(H, part)
    obs = observables.ObservableSet(1, ["sx", "sy", "sz"])
    plan = obs.compile(part)
    ib = sampling.draw_batch(prob, st, "reduced", 5, 0, np.arange(4000), scheme="discrete")
    prop = dynamics.NumpyPropagator(prob, plan, ib.weights)
    cols = prop.columns(ib.psi)  # (3, S): sx, sy, sz per sample
    np.testing.assert_allclose(cols[2], 1.0, atol=1e-12)
    np.testing.assert_allclose(np.abs(cols[:2]), 1.0, atol=1e-12)
    assert abs(cols[0].mean()) < 4 / np.sqrt(4000) and abs((cols[0] * cols[1]).mean()) < 4 / 63


@pytest.mark.parametrize("n, boundary", [(8, "periodic"), (10, "periodic"), (8, "open")])
def test_free_fermion_reference_matches_exact(n, boundary):
    H = models.xy(n, boundary=boundary)
    st = states.make_state("neel", n)
    pairs = [(0, d) for d in range(1, n // 2 + 1)] + [(1, 4)]
    obs = observables.ObservableSet(n, ["sz", "czz_connected"], pairs=pairs, hamiltonian=H)
    times = np.arange(0, 31) * 0.1
    ex, _ = exact.evolve(H, st, times, obs.columns)
    v = stats.exact_connected(obs.outputs, ex[None])
    sz, cz = freefermion.xy_reference(H, st, times, pairs)
    np.testing.assert_allclose(sz, v["sz"][0], atol=1e-10)
    np.testing.assert_allclose(cz, v["czz_connected"][0], atol=1e-10)


def test_czz_map_is_connected_correlator_at_all_distances():
    n = 8
    H = models.xy(n)
    st = states.make_state("neel", n)
    obs = observables.ObservableSet(n, ["czz_map"], hamiltonian=H)
    assert obs.outputs["czz_map"].labels == [f"0,{d}" for d in range(1, 5)]
    times = np.arange(0, 21) * 0.1
    ex, _ = exact.evolve(H, st, times, obs.columns)
    v = stats.exact_connected(obs.outputs, ex[None])["czz_map"][0]
    _, cz = freefermion.xy_reference(H, st, times, [(0, d) for d in range(1, 5)])
    np.testing.assert_allclose(v, cz, atol=1e-10)


def test_mixed_bath_exact_by_typicality_matches_trace():
    """Bath spins uniform on the Bloch sphere = I/2 per spin: the typical-state exact reference
    agrees with the brute-force trace over bath basis states within its standard error."""
    n = 6
    H = models.ising_chaotic(n)
    st = states.make_state("bath", n)
    obs = observables.ObservableSet(n, ["sz"], hamiltonian=H)
    times = np.arange(0, 21) * 0.5
    m, se = exact.evolve(H, st, times, obs.columns, draws=64, seed=3)
    ref = 0.0
    for conf in range(2 ** (n - 1)):
        th = np.zeros(n)
        th[1:] = np.pi * np.array([(conf >> k) & 1 for k in range(n - 1)])
        ref = ref + exact.evolve_pure(H, th, np.zeros(n), times, obs.columns)
    ref /= 2 ** (n - 1)
    assert abs(m[0, 0] - 1.0) < 1e-12            # t = 0: site 0 is up in every typical state
    z = np.abs(m[1:] - ref[1:]) / se[1:]
    assert np.sqrt(np.mean(z ** 2)) < 1.5 and z.max() < 5.0, (np.sqrt(np.mean(z ** 2)), z.max())
