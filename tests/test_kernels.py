"""Compiled RK4 kernel (``ctwa_hpc.method._kernels.gp_rk4``) against the NumPy reference path.

Every case integrates the same Wigner samples with both backends of
:func:`ctwa_hpc.method.kernels.integrate` and requires the observable columns at every output step
and the final state to agree to 1e-12 (relative to their largest magnitude).
"""
import numpy as np
import pytest

from ctwa_hpc.method import clusters, dynamics, kernels, observables, sampling
from ctwa_hpc.model import models, states

gp = pytest.importorskip("ctwa_hpc.method._kernels.gp_rk4",
                         reason="compiled kernels not built (python setup.py build_ext --inplace)")

RTOL = 1e-12


def _custom_long_range():
    return models.custom(6, [
        {"coef": 0.3, "ops": "X0 Z4"},
        {"coef": -0.7, "ops": "Y1 Y5"},
        {"coef": 0.45, "ops": "Z2 X3"},
        {"coef": 0.25, "ops": "X0 Y1 Z2"},           # three sites inside one cluster of 3
        {"coef": 0.6, "ops": "X1"},
        {"coef": -0.4, "ops": "Z5"},
    ])


def _custom_time_dependent():
    return models.custom(6, [
        {"coef": 0.5, "ops": "Z0 Z1"},
        {"coef": 0.8, "ops": "X2", "f": "cos(1.3*t)"},      # local, time dependent
        {"coef": 0.3, "ops": "X0 Z4", "f": "cos(1.3*t)"},   # coupling, same function
        {"coef": 0.7, "ops": "Y2 Y3", "f": "exp(-0.5*t)"},  # coupling, another function
        {"coef": 1.0, "ops": "Z3"},
        {"coef": 0.6, "ops": "X4 X5"},
        {"coef": 0.9, "ops": "Y5", "f": "sin(2*t)"},
    ])


P = clusters.Partition
CASES = {
    "tfim4_c1": (lambda: models.tfim(4), lambda: P.contiguous(4, 1), "neel"),
    "tfim4_c2": (lambda: models.tfim(4), lambda: P.contiguous(4, 2), "neel"),
    "tfim4_c4": (lambda: models.tfim(4), lambda: P.contiguous(4, 4), "neel"),
    "heis8_c2": (lambda: models.heisenberg(8, hz=2, seed=1), lambda: P.contiguous(8, 2), "neel"),
    "heis8_c4": (lambda: models.heisenberg(8, hz=2, seed=1), lambda: P.contiguous(8, 4), "neel"),
    "heis8_c3": (lambda: models.heisenberg(8, hz=2, seed=1), lambda: P.contiguous(8, 3), "x"),
    "ising6_c2": (lambda: models.ising_chaotic(6), lambda: P.contiguous(6, 2), "up"),
    "ising6_c3": (lambda: models.ising_chaotic(6), lambda: P.contiguous(6, 3), "x"),
    "ising6_noncontig": (lambda: models.ising_chaotic(6),
                         lambda: P.from_lists(6, [[0, 3], [1, 4], [2, 5]]), "neel"),
    "heis6_noncontig": (lambda: models.heisenberg(6, hz=1, seed=3),
                        lambda: P.from_lists(6, [[5, 0, 2], [4, 1, 3]]), "neel"),
    "long_range": (_custom_long_range, lambda: P.contiguous(6, 3), "x"),
    "time_dependent": (_custom_time_dependent, lambda: P.from_lists(6, [[0, 1], [2], [3, 4, 5]]),
                       "x"),
    "xy6_c6": (lambda: models.xy(6), lambda: P.contiguous(6, 6), "neel"),
}
METHODS = ("sb", "reduced")


def _setup(case, method, n_samples=37, seed=5):
    ham_fn, part_fn, state = CASES[case]
    ham, part = ham_fn(), part_fn()
    problem = clusters.compile_problem(ham, part)
    names = ["sz", "mz_staggered", "czz"] + ([] if ham.time_dependent else ["energy"])
    pairs = [(i, j) for i in range(ham.n_sites) for j in range(i + 1, ham.n_sites)]
    obs = observables.ObservableSet(ham.n_sites, names, pairs=pairs, hamiltonian=ham,
                                    custom=[{"name": "x0y2", "ops": "X0 Y2"}])
    plan = obs.compile(part)
    sids = np.arange(100, 100 + n_samples)
    batch = sampling.draw_batch(problem, states.make_state(state, ham.n_sites), method, seed, 0,
                                sids)
    return problem, plan, batch


def _both(problem, plan, psi, weights, t0=0.3, dt=0.05, n_steps=40, out_every=4, sids=None):
    tf = problem.tf_table(t0 + 0.5 * dt * np.arange(2 * n_steps + 1))
    out = {}
    for be in ("numpy", "cython"):
        out[be] = kernels.integrate(problem, plan, psi, weights, t0, dt, n_steps, out_every, tf,
                                    sample_ids=sids, backend=be)
    return out["numpy"], out["cython"]


def _assert_close(ref, got):
    (c_ref, p_ref), (c_got, p_got) = ref, got
    assert c_got.shape == c_ref.shape and p_got.shape == p_ref.shape
    assert c_got.dtype == np.float64 and p_got.dtype == np.complex128
    np.testing.assert_allclose(c_got, c_ref, rtol=0, atol=RTOL * max(1.0, np.abs(c_ref).max()))
    np.testing.assert_allclose(p_got, p_ref, rtol=0, atol=RTOL * np.abs(p_ref).max())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_cython_matches_numpy(case, method):
    problem, plan, batch = _setup(case, method)
    ref, got = _both(problem, plan, batch.psi, batch.weights, sids=batch.sample_ids)
    _assert_close(ref, got)
    # the columns really move (the comparison is not between two constant arrays)
    assert np.abs(ref[0][-1] - ref[0][0]).max() > 1e-3


def test_meanfield_zero_noise():
    problem, plan, batch = _setup("heis8_c4", "meanfield", n_samples=3)
    ref, got = _both(problem, plan, batch.psi, batch.weights)
    _assert_close(ref, got)


@pytest.mark.parametrize("n_samples", [1, 5, 16, 33, 64, 70])
def test_batch_sizes_and_padding(n_samples):
    """Batches that are not a multiple of the chunk width; each sample is independent."""
    problem, plan, batch = _setup("heis8_c4", "sb", n_samples=n_samples)
    ref, got = _both(problem, plan, batch.psi, batch.weights, n_steps=12, out_every=3)
    _assert_close(ref, got)
    if n_samples > 1:   # a sample's trajectory does not depend on its batch neighbours
        one = kernels.integrate(problem, plan, batch.psi[:, :, -1:], batch.weights, 0.3, 0.05,
                                12, 3, np.zeros((0, 25)), backend="cython")
        np.testing.assert_array_equal(one[0][..., 0], got[0][..., -1])


def test_zero_steps_and_single_output():
    problem, plan, batch = _setup("tfim4_c2", "sb", n_samples=7)
    ref, got = _both(problem, plan, batch.psi, batch.weights, n_steps=0, out_every=1)
    _assert_close(ref, got)
    assert got[0].shape == (1, plan.n_columns, 7)
    np.testing.assert_array_equal(got[1], batch.psi)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_instruction_set_variants(isa, monkeypatch):
    best = max(gp.build_info()[0], gp._best_variant())
    if gp.ISA_NAMES.index(isa) > best:
        pytest.skip(f"{isa} not supported here (best: {gp.ISA_NAMES[best]})")
    monkeypatch.setenv("CTWA_KERNEL_ISA", isa)
    assert gp.isa() == isa
    for case, method in (("heis8_c4", "sb"), ("time_dependent", "reduced")):
        problem, plan, batch = _setup(case, method, n_samples=21)
        ref, got = _both(problem, plan, batch.psi, batch.weights, n_steps=16)
        _assert_close(ref, got)


def test_bad_isa_name(monkeypatch):
    """An unknown CTWA_KERNEL_ISA is an error, not a silent fallback."""
    monkeypatch.setenv("CTWA_KERNEL_ISA", "sse9")
    with pytest.raises(ValueError, match="CTWA_KERNEL_ISA"):
        gp.isa()


def _blow_up(problem, plan, batch, scale, dt, n_steps, out_every, backend):
    psi = batch.psi.copy()
    psi[:, :, 13] *= scale        # one sample with a huge amplitude: cubic RHS explodes
    tf = np.zeros((0, 2 * n_steps + 1))
    with pytest.raises(dynamics.NonFiniteError) as err:
        kernels.integrate(problem, plan, psi, batch.weights, 0.5, dt, n_steps, out_every, tf,
                          sample_ids=batch.sample_ids, backend=backend)
    return err.value


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_detection_matches_numpy():
    problem, plan, batch = _setup("heis8_c4", "sb", n_samples=40)
    errs = [_blow_up(problem, plan, batch, 30.0, 0.05, 200, 5, be) for be in ("numpy", "cython")]
    assert errs[1].sample == errs[0].sample == batch.sample_ids[13]
    assert errs[1].time == pytest.approx(errs[0].time)
    assert errs[1].time > 0.5          # not at t0: it blew up during the integration
    assert "reduce time.dt" in str(errs[1])


def test_non_finite_huge_dt():
    problem, plan, batch = _setup("ising6_c3", "sb", n_samples=20)
    tf = np.zeros((0, 2 * 50 + 1))
    with pytest.raises(dynamics.NonFiniteError) as err:
        kernels.integrate(problem, plan, batch.psi, batch.weights, 0.0, 1e3, 50, 5, tf,
                          sample_ids=batch.sample_ids, backend="cython")
    assert err.value.sample in set(batch.sample_ids.tolist())
    assert 0.0 < err.value.time <= 50 * 1e3


def test_non_finite_initial_state():
    problem, plan, batch = _setup("heis8_c2", "sb", n_samples=20)
    psi = batch.psi.copy()
    psi[3, 0, 17] = np.nan
    with pytest.raises(dynamics.NonFiniteError) as err:
        kernels.integrate(problem, plan, psi, batch.weights, 1.5, 0.05, 10, 5,
                          np.zeros((0, 21)), sample_ids=batch.sample_ids, backend="cython")
    assert err.value.sample == batch.sample_ids[17] and err.value.time == 1.5


def test_conservation_and_order():
    """H_W and the vector norms are conserved up to the RK4 error, which falls like dt^4."""
    problem, plan, batch = _setup("heis8_c4", "sb", n_samples=16)
    prop = dynamics.NumpyPropagator(problem, plan, batch.weights)
    offs = problem.offsets
    e_err, n_err = [], []
    for dt in (0.02, 0.01):
        n = int(round(4.0 / dt))
        _, psi = kernels.integrate(problem, plan, batch.psi, batch.weights, 0.0, dt, n, n,
                                   np.zeros((0, 2 * n + 1)), backend="cython")
        e_err.append(np.abs(prop.energy(psi) - prop.energy(batch.psi)).max())
        n_err.append(max(np.abs(np.sum(np.abs(psi[offs[c]:offs[c + 1]]) ** 2, axis=0)
                                - np.sum(np.abs(batch.psi[offs[c]:offs[c + 1]]) ** 2, axis=0)).max()
                         for c in range(problem.partition.n_clusters)))
    assert e_err[1] < 1e-4 and n_err[1] < 1e-4
    assert e_err[0] / e_err[1] > 12 and n_err[0] / n_err[1] > 12


def test_backend_selection(monkeypatch):
    monkeypatch.delenv("CTWA_NO_CYTHON", raising=False)
    assert kernels.have_compiled()
    assert kernels.resolve_backend("auto") == "cython"
    assert kernels.resolve_backend("numpy") == "numpy"
    monkeypatch.setenv("CTWA_NO_CYTHON", "1")
    assert kernels.resolve_backend("auto") == "numpy"
    assert kernels.resolve_backend("cython") == "cython"
    monkeypatch.setattr(kernels, "_gp", None)
    monkeypatch.delenv("CTWA_NO_CYTHON")
    assert kernels.resolve_backend("auto") == "numpy"
    with pytest.raises(RuntimeError, match="not built"):
        kernels.resolve_backend("cython")
    with pytest.raises(ValueError, match="unknown backend"):
        kernels.resolve_backend("fortran")


def test_argument_checks():
    problem, plan, batch = _setup("tfim4_c2", "sb", n_samples=4)
    with pytest.raises(ValueError, match="multiple"):
        kernels.integrate(problem, plan, batch.psi, batch.weights, 0, 0.1, 10, 3,
                          np.zeros((0, 21)), backend="cython")
    td_problem, td_plan, td_batch = _setup("time_dependent", "sb", n_samples=4)
    with pytest.raises(ValueError, match="tf_tab"):
        kernels.integrate(td_problem, td_plan, td_batch.psi, td_batch.weights, 0, 0.1, 10, 5,
                          np.zeros((3, 5)), backend="cython")


def test_compiled_info():
    info = kernels.compiled_info()
    assert info["compiled"] and info["isa"] in gp.ISA_NAMES
    assert info["chunk_width"] % info["vector_width"] == 0


def test_flop_count_and_bench_case():
    from ctwa_hpc.bench import cases as bench
    problem, plan, batch = _setup("heis8_c4", "sb", n_samples=4)
    flops = bench.flop_count(kernels.compile_tables(problem, plan), 1, 10)
    assert flops > 0
    # doubling the chain roughly doubles the work per step
    big = clusters.compile_problem(models.heisenberg(16, hz=2, seed=1), P.contiguous(16, 4))
    big_plan = observables.ObservableSet(16, ["sz"]).compile(big.partition)
    small_plan = observables.ObservableSet(8, ["sz"]).compile(problem.partition)
    f16 = bench.flop_count(kernels.compile_tables(big, big_plan), 1, 10)
    f8 = bench.flop_count(kernels.compile_tables(problem, small_plan), 1, 10)
    assert 1.8 < f16 / f8 < 2.2


# ------------------------------------------------------------------------------------------
# tangent (Jacobian–vector product) propagation: kernels.integrate_tangent
# ------------------------------------------------------------------------------------------
KICK_1 = ((0, "Z"),)                # inside one cluster
KICK_2 = ((2, "X"), (3, "Z"))       # two clusters unless 2 and 3 share one
TANGENT_CASES = ("tfim4_c1", "tfim4_c2", "tfim4_c4", "heis8_c2", "heis8_c3",
                 "ising6_noncontig", "heis6_noncontig", "time_dependent")


def _both_tangent(problem, plan, psi, dpsi, weights, t0=0.3, dt=0.05, n_steps=40, out_every=4,
                  sids=None):
    tf = problem.tf_table(t0 + 0.5 * dt * np.arange(2 * n_steps + 1))
    return [kernels.integrate_tangent(problem, plan, psi, dpsi, weights, t0, dt, n_steps,
                                      out_every, tf, sample_ids=sids, backend=be)
            for be in ("numpy", "cython")]


def _assert_tangent_close(ref, got, K, rtol=RTOL):
    """Columns, tangent columns, state and tangent agree to rtol relative to their size."""
    (c_ref, p_ref, d_ref), (c_got, p_got, d_got) = ref, got
    assert c_got.shape == c_ref.shape == (c_ref.shape[0], 2 * K, c_ref.shape[2])
    assert c_got.dtype == np.float64
    assert p_got.dtype == d_got.dtype == np.complex128
    assert p_got.shape == p_ref.shape and d_got.shape == d_ref.shape
    for a, b in ((c_ref[:, :K], c_got[:, :K]), (c_ref[:, K:], c_got[:, K:]), (p_ref, p_got),
                 (d_ref, d_got)):
        np.testing.assert_allclose(b, a, rtol=0, atol=rtol * max(1.0, np.abs(a).max()))


@pytest.mark.parametrize("kick", [KICK_1, KICK_2], ids=["kick1", "kick2"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", TANGENT_CASES)
def test_tangent_cython_matches_numpy(case, method, kick):
    problem, plan, batch = _setup(case, method, n_samples=21)
    dpsi, _ = dynamics.kick(problem, kick, batch.psi, batch.weights)
    ref, got = _both_tangent(problem, plan, batch.psi, dpsi, batch.weights,
                             sids=batch.sample_ids)
    K = plan.n_columns
    _assert_tangent_close(ref, got, K)
    # the tangent columns really move and are not small
    assert np.abs(ref[0][-1, K:] - ref[0][0, K:]).max() > 1e-2
    # the trajectory part is that of integrate()
    cols, psi = kernels.integrate(problem, plan, batch.psi, batch.weights, 0.3, 0.05, 40, 4,
                                  problem.tf_table(0.3 + 0.025 * np.arange(81)),
                                  backend="cython")
    np.testing.assert_allclose(got[0][:, :K], cols, rtol=0,
                               atol=1e-14 * max(1.0, np.abs(cols).max()))
    np.testing.assert_allclose(got[1], psi, rtol=0, atol=1e-14 * np.abs(psi).max())


def test_tangent_kick_strings_span_clusters():
    """The two-site kick really spans two clusters in some of the cases above (and one in
    others), so both kinds of δψ(0) are covered."""
    spans = {case: len(CASES[case][1]().split_string(KICK_2)) for case in TANGENT_CASES}
    assert spans["tfim4_c1"] == spans["heis8_c3"] == spans["time_dependent"] == 2
    assert spans["ising6_noncontig"] == spans["heis6_noncontig"] == 2
    assert spans["tfim4_c4"] == spans["heis8_c2"] == 1


@pytest.mark.parametrize("case, method", [("heis8_c3", "sb"), ("time_dependent", "reduced"),
                                          ("heis8_c2", "sb")])
def test_tangent_matches_finite_difference(case, method):
    """Compiled tangent = central difference of two compiled trajectories (ε = 1e-5)."""
    problem, plan, batch = _setup(case, method, n_samples=9)
    dpsi, _ = dynamics.kick(problem, KICK_2, batch.psi, batch.weights)
    t0, dt, n, every = 0.0, 0.01, 100, 25
    tf = problem.tf_table(t0 + 0.5 * dt * np.arange(2 * n + 1))
    cols, _, _ = kernels.integrate_tangent(problem, plan, batch.psi, dpsi, batch.weights, t0,
                                           dt, n, every, tf, backend="cython")
    eps = 1e-5
    cp, _ = kernels.integrate(problem, plan, batch.psi + eps * dpsi, batch.weights, t0, dt, n,
                              every, tf, backend="cython")
    cm, _ = kernels.integrate(problem, plan, batch.psi - eps * dpsi, batch.weights, t0, dt, n,
                              every, tf, backend="cython")
    K = plan.n_columns
    assert np.abs(cols[-1, K:]).max() > 0.1
    np.testing.assert_allclose(cols[:, K:], (cp - cm) / (2 * eps), rtol=0, atol=1e-6)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_tangent_instruction_set_variants(isa, monkeypatch):
    best = max(gp.build_info()[0], gp._best_variant())
    if gp.ISA_NAMES.index(isa) > best:
        pytest.skip(f"{isa} not supported here (best: {gp.ISA_NAMES[best]})")
    monkeypatch.setenv("CTWA_KERNEL_ISA", isa)
    for case, method, kick in (("heis8_c4", "sb", KICK_1), ("time_dependent", "reduced", KICK_2)):
        problem, plan, batch = _setup(case, method, n_samples=21)
        dpsi, _ = dynamics.kick(problem, kick, batch.psi, batch.weights)
        ref, got = _both_tangent(problem, plan, batch.psi, dpsi, batch.weights, n_steps=16)
        _assert_tangent_close(ref, got, plan.n_columns)


@pytest.mark.parametrize("n_samples", [1, 33, 70])
def test_tangent_batch_sizes_and_zero_steps(n_samples):
    problem, plan, batch = _setup("heis8_c4", "reduced", n_samples=n_samples)
    dpsi, _ = dynamics.kick(problem, KICK_2, batch.psi, batch.weights)
    ref, got = _both_tangent(problem, plan, batch.psi, dpsi, batch.weights, n_steps=12,
                             out_every=3)
    _assert_tangent_close(ref, got, plan.n_columns)
    ref, got = _both_tangent(problem, plan, batch.psi, dpsi, batch.weights, n_steps=0,
                             out_every=1)
    _assert_tangent_close(ref, got, plan.n_columns)
    np.testing.assert_array_equal(got[2], dpsi)


def test_tangent_is_linear_and_independent_of_neighbours():
    problem, plan, batch = _setup("ising6_noncontig", "sb", n_samples=20)
    dpsi, _ = dynamics.kick(problem, KICK_2, batch.psi, batch.weights)
    tf = np.zeros((0, 25))
    run = lambda p, d: kernels.integrate_tangent(problem, plan, p, d, batch.weights,  # noqa
                                                 0.0, 0.05, 12, 4, tf, backend="cython")
    c1, _, d1 = run(batch.psi, dpsi)
    c3, _, d3 = run(batch.psi, -3.0 * dpsi)
    K = plan.n_columns
    np.testing.assert_allclose(c3[:, K:], -3.0 * c1[:, K:], rtol=0,
                               atol=1e-12 * np.abs(c1[:, K:]).max())
    np.testing.assert_allclose(d3, -3.0 * d1, rtol=0, atol=1e-12 * np.abs(d1).max())
    one = run(batch.psi[:, :, 7:8], dpsi[:, :, 7:8])
    np.testing.assert_array_equal(one[0][..., 0], c1[..., 7])
    zero = run(batch.psi, np.zeros_like(dpsi))
    assert np.all(zero[0][:, K:] == 0) and np.all(zero[2] == 0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_tangent_non_finite_detection_matches_numpy():
    problem, plan, batch = _setup("heis8_c4", "sb", n_samples=40)
    dpsi, _ = dynamics.kick(problem, KICK_1, batch.psi, batch.weights)
    psi = batch.psi.copy()
    psi[:, :, 13] *= 30.0
    n = 200
    errs = []
    for be in ("numpy", "cython"):
        with pytest.raises(dynamics.NonFiniteError) as err:
            kernels.integrate_tangent(problem, plan, psi, dpsi, batch.weights, 0.5, 0.05, n, 5,
                                      np.zeros((0, 2 * n + 1)), sample_ids=batch.sample_ids,
                                      backend=be)
        errs.append(err.value)
    assert errs[1].sample == errs[0].sample == batch.sample_ids[13]
    assert errs[1].time == pytest.approx(errs[0].time) and errs[1].time > 0.5
    # a non-finite tangent alone is detected at t0 by both backends
    bad = dpsi.copy()
    bad[3, 0, 17] = np.nan
    for be in ("numpy", "cython"):
        with pytest.raises(dynamics.NonFiniteError) as err:
            kernels.integrate_tangent(problem, plan, batch.psi, bad, batch.weights, 1.5, 0.05,
                                      10, 5, np.zeros((0, 21)), sample_ids=batch.sample_ids,
                                      backend=be)
        assert err.value.sample == batch.sample_ids[17] and err.value.time == 1.5


def test_tangent_argument_checks():
    problem, plan, batch = _setup("tfim4_c2", "sb", n_samples=4)
    with pytest.raises(ValueError, match="dpsi0"):
        kernels.integrate_tangent(problem, plan, batch.psi, batch.psi[:, :, :3], batch.weights,
                                  0, 0.1, 10, 5, np.zeros((0, 21)), backend="cython")
    with pytest.raises(ValueError, match="multiple"):
        kernels.integrate_tangent(problem, plan, batch.psi, batch.psi, batch.weights, 0, 0.1,
                                  10, 3, np.zeros((0, 21)), backend="cython")


def test_tangent_flop_count_and_bench_case():
    from ctwa_hpc.bench import cases as bench
    names = [c.name for c in bench.CASES]
    assert names[:5] == ["heis64_c2", "heis64_c4", "heis64_c6", "ising20_c4", "heis1024_c4"]
    case = next(c for c in bench.CASES if c.name == "heis64_c4_tangent")
    assert case.tangent and (case.model, case.n_sites, case.cluster_size) == ("heisenberg", 64, 4)
    problem, plan, batch = _setup("heis8_c4", "sb", n_samples=4)
    tables = kernels.compile_tables(problem, plan)
    f, ft = bench.flop_count(tables, 1, 10), bench.flop_count(tables, 1, 10, tangent=True)
    assert 2.0 < ft / f < 3.0
