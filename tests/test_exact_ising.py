"""Closed-form Ising dynamics (ctwa_hpc.exact.ising) against exact diagonalization, the
dispatch of ctwa_hpc.exact.statevector, and CTWA at N = 100 against the closed form.

Run with ``-s`` to see the measured numbers (deviations from ED, z-scores of CTWA)."""
import itertools

import numpy as np
import pytest

from ctwa_hpc import config
from ctwa_hpc.exact import ising as exact_ising, statevector as exact
from ctwa_hpc.model import states
from ctwa_hpc.model.hamiltonian import Hamiltonian
from ctwa_hpc.model.pauli import parse_pauli_string


def random_ising(n, seed, explicit=True):
    """J_ij ~ N(0, 1) on all pairs (both signs), h_i ~ N(0, 1); explicit terms or arrays."""
    rng = np.random.default_rng(seed)
    J = np.triu(rng.normal(size=(n, n)), 1)
    h = rng.normal(size=n)
    if explicit:
        H = Hamiltonian(n)
        for i, j in itertools.combinations(range(n), 2):
            H.add(J[i, j], [(i, "Z"), (j, "Z")])
        for i in range(n):
            H.add(h[i], f"Z{i}")
        return H, J + J.T, h
    return Hamiltonian.from_couplings({"zz": J + J.T}, {"z": h}), J + J.T, h


def random_state(n, seed):
    rng = np.random.default_rng(seed + 1000)
    return states.from_angles(np.c_[rng.uniform(0, np.pi, n), rng.uniform(0, 2 * np.pi, n)])


def string_columns(n, seed):
    """Every requested string type on random distinct sites, plus 3- and 4-flip strings."""
    rng = np.random.default_rng(seed + 2000)
    shapes = ["X", "Y", "XX", "XY", "YY", "ZX", "XZ", "ZZ", "XZZ", "Z", "XYX", "XYZY", "YXZZ"]
    labels = []
    for shape in shapes:
        for _ in range(2):
            sites = rng.choice(n, len(shape), replace=False)
            labels.append(" ".join(f"{lab}{s}" for lab, s in zip(shape, sites)))
    cols = [((1.0, parse_pauli_string(lab)),) for lab in labels]
    # a column that is a sum of strings with coefficients
    cols.append(((0.5, parse_pauli_string(labels[0])), (-2.0, parse_pauli_string(labels[6]))))
    return labels, cols


@pytest.mark.parametrize("n, seed, explicit", [(6, 0, True), (8, 1, False), (10, 2, True)])
def test_closed_form_matches_ed(n, seed, explicit):
    H, _, _ = random_ising(n, seed, explicit)
    st = random_state(n, seed)
    labels, cols = string_columns(n, seed)
    uniform = np.linspace(0.0, 3.0, 151)                         # phase-advance path
    irregular = np.sort(np.random.default_rng(seed).uniform(0, 3.0, 17))  # direct path
    for times in (uniform, irregular):
        ed = exact.evolve_pure(H, st.theta, st.phi, times, cols)
        got, err = exact.evolve(H, st, times, cols)              # dispatches to the closed form
        assert err is None
        dev = np.abs(got - ed).max(axis=0)
        print(f"N={n}: max |closed form - ED| = {dev.max():.2e} over {len(cols)} columns")
        assert dev.max() < 1e-10, dict(zip(labels, dev))
    # the test is not vacuous: the flip strings really evolve
    assert np.ptp(ed[:, :10], axis=0).min() > 1e-3
    ed_forced, _ = exact.evolve(H, st, irregular, cols, method="ed")
    np.testing.assert_allclose(ed_forced, ed, atol=1e-12)


def test_foss_feig_formula_signs():
    """The formula of the issue, ⟨σ⁺_i(t)⟩ = ⟨σ⁺_i⟩₀ e^{2ih_i t} Π_{k≠i}[cos 2J_ik t +
    i cos θ_k sin 2J_ik t] with σ⁺ = |↑⟩⟨↓| = (X + iY)/2, evaluated literally, against ED."""
    n = 7
    H, J, h = random_ising(n, 5)
    st = random_state(n, 5)
    times = np.linspace(0, 2.0, 41)
    cols = [((1.0, ((i, "X"),)),) for i in range(n)] + [((1.0, ((i, "Y"),)),) for i in range(n)]
    ed = exact.evolve_pure(H, st.theta, st.phi, times, cols)
    splus_ed = 0.5 * (ed[:, :n] + 1j * ed[:, n:])
    th, ph = st.theta, st.phi
    for i in range(n):
        s0 = 0.5 * np.sin(th[i]) * np.exp(1j * ph[i])
        prod = np.ones(len(times), dtype=complex)
        for k in range(n):
            if k != i:
                a = 2 * J[i, k] * times
                prod *= np.cos(a) + 1j * np.cos(th[k]) * np.sin(a)
        np.testing.assert_allclose(s0 * np.exp(2j * h[i] * times) * prod, splus_ed[:, i],
                                   atol=1e-12)


def test_mixed_product_state_is_exact():
    """Random (ρ = I/2) sites: the closed form equals the average of ED over the ±z product
    states of those sites, to rounding (no typicality noise)."""
    n = 6
    H, _, _ = random_ising(n, 7)
    pat = "+ur-rr"
    st = states.from_pattern(pat)
    st = states.ProductState(st.theta + 0.3 * ~st.random, st.phi + 0.2, st.random)
    _, cols = string_columns(n, 7)
    times = np.linspace(0, 2.0, 21)
    got, err = exact.evolve(H, st, times, cols)
    assert np.all(err == 0.0)
    rnd = np.flatnonzero(st.random)
    ref = 0.0
    for conf in itertools.product((0.0, np.pi), repeat=len(rnd)):
        th = st.theta.copy()
        th[rnd] = conf
        ref = ref + exact.evolve_pure(H, th, st.phi, times, cols)
    ref /= 2 ** len(rnd)
    np.testing.assert_allclose(got, ref, atol=1e-10)


def test_one_axis_twisting_at_large_n():
    """All-to-all J_ij = χ (one-axis twisting) from +x at N = 1000: ⟨σˣ_i⟩ = cos^{N−1}(2χt),
    ⟨σˣ_iσˣ_j⟩ = (1 + cos^{N−2}(4χt))/2, ⟨σʸ_iσᶻ_j⟩ = sin(2χt) cos^{N−2}(2χt)."""
    n, chi = 1000, 0.01
    Jm = np.full((n, n), chi)
    np.fill_diagonal(Jm, 0.0)
    H = Hamiltonian.from_couplings({"zz": Jm})
    st = states.make_state("x", n)
    times = np.linspace(0, 20.0, 81)
    cols = [((1.0, ((3, "X"),)),), ((1.0, ((3, "X"), (700, "X"))),),
            ((1.0, ((3, "Y"), (700, "Z"))),)]
    got, _ = exact.evolve(H, st, times, cols)
    mu = 2 * chi * times
    np.testing.assert_allclose(got[:, 0], np.cos(mu) ** (n - 1), atol=1e-12)
    np.testing.assert_allclose(got[:, 1], 0.5 * (1 + np.cos(2 * mu) ** (n - 2)), atol=1e-12)
    np.testing.assert_allclose(got[:, 2], np.sin(mu) * np.cos(mu) ** (n - 2), atol=1e-12)


def test_detection():
    H = Hamiltonian(4)
    H.add(0.7, "Z0 Z2").add(-0.3, "Z2 Z0").add(1.5, "Z3").add(0.2, "Z1 Z3")
    model, why = exact_ising.detect(H)
    assert why == "" and exact_ising.is_ising(H)
    assert model.J[0, 2] == pytest.approx(0.4) and model.J[2, 0] == pytest.approx(0.4)
    assert model.J[1, 3] == pytest.approx(0.2) and model.h[3] == 1.5 and model.h[0] == 0.0
    for extra, word in ((lambda h: h.add(0.1, "X1"), "not diagonal"),
                        (lambda h: h.add(0.1, "Y0 Y1"), "not diagonal"),
                        (lambda h: h.add(0.1, "Z0 Z1 Z2"), "3 sites"),
                        (lambda h: h.add(0.1, "Z1", tfunc="cos(t)"), "time dependent")):
        H2 = Hamiltonian(4, terms=list(H.terms))
        extra(H2)
        model, why = exact_ising.detect(H2)
        assert model is None and word in why, why
    # coupling arrays: an X field or a time function in a block is rejected too
    Jz = np.zeros((4, 4))
    Jz[0, 1] = Jz[1, 0] = 1.0
    assert exact_ising.is_ising(Hamiltonian.from_couplings({"zz": Jz}, {"z": np.ones(4)}))
    assert not exact_ising.is_ising(Hamiltonian.from_couplings({"zz": Jz}, {"x": np.ones(4)}))
    assert not exact_ising.is_ising(Hamiltonian.from_couplings({"zz": Jz},
                                                               tfuncs={"zz": "cos(t)"}))


def test_available_and_errors():
    n = 64
    st = states.make_state("x", n)
    H = Hamiltonian(n)
    for i in range(n - 1):
        H.add(1.0, [(i, "Z"), (i + 1, "Z")])
    ok, how = exact.available(H, st)
    assert ok and "closed-form Ising" in how
    H.add(0.5, "X3")
    ok, why = exact.available(H, st)
    assert not ok and why.startswith("no exact reference: N = 64 > 20 and the model is not an "
                                     "Ising model"), why
    with pytest.raises(ValueError, match="model.n_sites: no exact reference"):
        exact.evolve(H, st, [0.0, 1.0], [((1.0, ((0, "X"),)),)])
    small = Hamiltonian(4).add(1.0, "X0 X1")
    assert exact.available(small, states.make_state("x", 4)) == \
        (True, "exact diagonalization (N = 4 <= 20)")
    with pytest.raises(ValueError, match="exact.method"):
        exact.evolve(small, states.make_state("x", 4), [0.0], [((1.0, ((0, "X"),)),)],
                     method="ising")
    # too many X/Y factors for the closed form: available() says so, evolve() raises
    Hz = Hamiltonian(30).add(1.0, "Z0 Z1")
    big = [((1.0, tuple((k, "X") for k in range(exact_ising.MAX_FLIP_SITES + 1))),)]
    ok, why = exact.available(Hz, states.make_state("x", 30), big)
    assert not ok and "X/Y factors" in why
    with pytest.raises(ValueError, match="at most"):
        exact_ising.evolve(exact_ising.detect(Hz)[0], np.full(30, np.pi / 2), np.zeros(30),
                           [0.0], big)


# --------------------------------------------------------------------------------------------
# CTWA at N = 100 against the closed form
# --------------------------------------------------------------------------------------------

L = 10
J0 = 0.5


def lattice_run(sampling, samples=600, seed=5):
    """Long-range Ising model J_ij = J0/r³ on a 10×10 open square lattice from +x, single-site
    clusters (reduced CTWA), through the runner; the site average (1/N)Σσˣ_i is a column of its
    own so that its standard error includes the correlations between sites."""
    from ctwa_hpc.driver.runner import Simulation
    n = L * L
    xy = np.array([(i % L, i // L) for i in range(n)], float)
    terms = [{"coef": J0 / np.linalg.norm(xy[i] - xy[j]) ** 3, "ops": f"Z{i} Z{j}"}
             for i, j in itertools.combinations(range(n), 2)]
    raw = {"model": {"kind": "custom", "n_sites": n, "terms": terms},
           "state": {"kind": "x"},
           "method": {"kind": "reduced", "cluster_size": 1, "samples": samples, "batch": 300,
                      "sampling": sampling, "seed": seed},
           "time": {"dt": 0.02, "t_max": 1.5, "output_dt": 0.1},
           "observables": {"names": ["sx"],
                           "custom": [{"name": "sx_avg", "terms": [
                               {"coef": 1.0 / n, "ops": f"X{i}"} for i in range(n)]}]},
           "output": {"path": "unused.h5"}}
    sim = Simulation(config.resolve(raw), quiet=True)
    return sim, sim.run()


def test_long_range_ising_lattice_discrete_exact_gaussian_not():
    """Discrete TWA on single sites is exact for ⟨σˣ_i⟩ from +x (each spin precesses in the
    field 2Σ_k J_ik s_k of ±1 z-components, whose average is the product of cosines); the
    Gaussian scheme replaces it by exp(−2t²Σ_k J_ik²) and is biased."""
    sim, disc = lattice_run("discrete")
    _, gaus = lattice_run("gaussian")
    ex = sim.run_exact().outputs          # exact.evolve dispatches to the closed form at N = 100
    n = L * L
    assert exact.available(sim.build_model(0), sim.state)[0]
    e, ea = ex["sx"]["mean"][1:], ex["sx_avg"]["mean"][1:, 0]
    assert ea.min() < 0.01 and ea.max() > 0.95   # the mean field really decays
    z = (disc.outputs["sx"]["mean"][1:] - e) / disc.outputs["sx"]["stderr"][1:]
    za = (disc.outputs["sx_avg"]["mean"][1:, 0] - ea) / disc.outputs["sx_avg"]["stderr"][1:, 0]
    zg = (gaus.outputs["sx"]["mean"][1:] - e) / gaus.outputs["sx"]["stderr"][1:]
    zga = (gaus.outputs["sx_avg"]["mean"][1:, 0] - ea) / gaus.outputs["sx_avg"]["stderr"][1:, 0]
    print(f"discrete: sites max|z| = {np.abs(z).max():.2f}, mean|z| = {np.abs(z).mean():.3f} "
          f"({z.size} site-times); site average max|z| = {np.abs(za).max():.2f}")
    print(f"gaussian: sites max|z| = {np.abs(zg).max():.2f}, mean|z| = {np.abs(zg).mean():.3f}; "
          f"site average max z = {zga.max():.2f} at t = {sim.times[1 + np.argmax(zga)]:.1f}")
    assert np.abs(z).max() < 4.5 and np.abs(za).max() < 4.5
    assert 0.65 < np.abs(z).mean() < 0.95          # ≈ √(2/π) = 0.80 for unbiased estimates
    assert zga.max() > 5.0                         # the Gaussian scheme is biased (~7σ here)
    assert e.shape[1] == n


def test_available_with_kick_needs_ed():
    H = Hamiltonian(30).add(1.0, "Z0 Z1")
    ok, why = exact.available(H, states.make_state("x", 30), kick=((0, "Z"),))
    assert not ok and "observables.kick" in why
    assert exact.available(Hamiltonian(4).add(1.0, "Z0 Z1"), states.make_state("x", 4),
                           kick=((0, "Z"),))[0]
