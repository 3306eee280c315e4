"""Sums of Pauli strings, generated totals/staggered σ^a, S^zz(q), the Wineland squeezing
parameter and the pair-averaged Rényi-2 entropy (issue 8, section 5).

References are independent dense state-vector computations (tests/dense_reference.py Pauli
matrices, scipy expm, explicit partial traces), the Kitagawa–Ueda closed form for one-axis
twisting, and z-scores of Monte Carlo estimates against exact values.  Exact-limit checks use
integrator tolerances (expm_multiply ~1e-12; RK4 at dt = 0.01 to t = 1: ~1e-7).
"""
import numpy as np
import pytest
import scipy.linalg as sla

from dense_reference import kron_string
from ctwa_hpc.method import clusters, observables, sampling, stats
from ctwa_hpc import config
from ctwa_hpc.exact import statevector as exact
from ctwa_hpc.model import states
from ctwa_hpc.model.hamiltonian import Hamiltonian
from ctwa_hpc.driver.problem import propagate
from ctwa_hpc.driver.runner import Simulation

N = 5
TERMS = [(0.8, "X0 X1"), (0.8, "Y0 Y1"), (0.5, "Z0 Z1"), (0.7, "X1 X2"), (0.6, "Y1 Y2"),
         (0.9, "Z1 Z2"), (0.8, "X2 X3"), (0.8, "Y2 Y3"), (0.4, "Z2 Z3"), (0.6, "X3 X4"),
         (0.7, "Y3 Y4"), (0.3, "Z3 Z4"), (0.35, "Z0 Z3"), (0.25, "X1 X4"), (0.6, "X0"),
         (0.4, "X2"), (0.5, "Z3"), (-0.3, "Y4")]
ANGLES = [[0.4, 0.1], [1.9, 2.0], [1.1, -0.7], [2.6, 0.5], [0.8, 3.5]]
TIMES = np.array([0.0, 0.3, 0.8, 1.5])
POS2D = np.array([[0.0, 0.0], [1.0, 0.2], [0.3, 1.4], [2.1, 0.9], [1.2, 2.2]])
QS2D = [[0.0, 0.0], [1.3, -0.4], [np.pi, np.pi]]
SIGNS = [1, 1, -1, 1, -1]
CUSTOM = [{"name": "x0x1", "ops": "X0 X1"},
          {"name": "current", "terms": [{"coef": 1.0, "ops": "X1 Y2"},
                                        {"coef": -1.0, "ops": "Y1 X2"}]},
          {"name": "n3_plus_x", "terms": [{"coef": 0.5, "ops": "I0"}, {"coef": -0.5, "ops": "Z3"},
                                          {"ops": "X0"}, {"coef": 2, "ops": "X0"}]}]
ALL = ["sx", "sy", "sz", "sx_total", "sy_total", "sz_total", "sx_staggered", "sy_staggered",
       "sz_staggered", "mz_staggered", "szz_q", "squeezing", "renyi2_pairs"]


# -- independent dense reference -----------------------------------------------------------------
def dense_op(ops, n):
    labels = ["I"] * n
    for tok in ops.split():
        if tok[0] != "I":
            labels[int(tok[1:])] = tok[0]
    return kron_string(labels)


def dense_hamiltonian(terms, n):
    return sum(c * dense_op(o, n) for c, o in terms)


def product_state(angles):
    """⊗ (cos θ/2 |↑> + e^{iφ} sin θ/2 |↓>), site 0 = least significant bit."""
    psi = np.ones(1)
    for th, ph in angles:
        psi = np.kron(np.array([np.cos(th / 2), np.exp(1j * ph) * np.sin(th / 2)]), psi)
    return psi


def dense_states(terms, angles, times):
    n = len(angles)
    H = dense_hamiltonian(terms, n)
    psi0 = product_state(angles)
    return [sla.expm(-1j * t * H) @ psi0 for t in times]


def ev(psi, A):
    return float(np.real(psi.conj() @ A @ psi))


def dense_squeezing(psi, n):
    """N · min over n ⊥ <S> of Var(n·S) / |<S>|², S = Σσ/2, plane basis from null_space."""
    S = [sum(dense_op(f"{a}{i}", n) for i in range(n)) / 2 for a in "XYZ"]
    M = np.array([ev(psi, s) for s in S])
    C = np.array([[np.real(psi.conj() @ S[a] @ S[b] @ psi) for b in range(3)] for a in range(3)])
    C = C - np.outer(M, M)
    E = sla.null_space(M[None, :])
    return n * np.linalg.eigvalsh(E.T @ C @ E)[0] / (M @ M)


def dense_pair_renyi2(psi, n):
    """Mean over i < j of −log2 Tr ρ_ij², ρ_ij by an explicit partial trace."""
    T = psi.reshape([2] * n)          # axis k is site n − 1 − k
    out = []
    for i in range(n):
        for j in range(i + 1, n):
            ai, aj = n - 1 - i, n - 1 - j
            rest = [k for k in range(n) if k not in (ai, aj)]
            A = np.transpose(T, [ai, aj] + rest).reshape(4, -1)
            rho = A @ A.conj().T
            out.append(-np.log2(np.real(np.trace(rho @ rho))))
    return np.mean(out)


def model(terms=TERMS, n=N):
    H = Hamiltonian(n)
    for c, o in terms:
        H.add(c, o)
    return H


@pytest.fixture(scope="module")
def ref():
    H = model()
    st = states.make_state("angles", N, angles=ANGLES)
    obs = observables.ObservableSet(N, ALL, custom=CUSTOM, hamiltonian=H, signs=SIGNS,
                                    positions=POS2D, qs=QS2D)
    cols, _ = exact.evolve(H, st, TIMES, obs.columns)
    vals = stats.exact_connected(obs.outputs, cols[None])
    return obs, {k: v[0] for k, v in vals.items()}, dense_states(TERMS, ANGLES, TIMES)


# -- exact reference vs dense ----------------------------------------------------------------------
def test_totals_and_staggered_match_dense(ref):
    obs, ex, psis = ref
    for a in "xyz":
        np.testing.assert_allclose(ex[f"s{a}_total"][:, 0], ex[f"s{a}"].sum(axis=1), atol=1e-12)
        dense_tot = [sum(ev(p, dense_op(f"{a.upper()}{i}", N)) for i in range(N)) for p in psis]
        np.testing.assert_allclose(ex[f"s{a}_total"][:, 0], dense_tot, atol=1e-9)
        np.testing.assert_allclose(ex[f"s{a}_staggered"][:, 0],
                                   ex[f"s{a}"] @ np.array(SIGNS, float) / N, atol=1e-12)
    np.testing.assert_allclose(ex["mz_staggered"], ex["sz_staggered"], atol=0)
    assert np.ptp(ex["sx_total"]) > 0.2 and np.ptp(ex["sz_staggered"]) > 0.05


def test_structure_factor_matches_dense(ref):
    obs, ex, psis = ref
    zz = [[dense_op(f"Z{i} Z{j}", N) if i != j else np.eye(2 ** N) for j in range(N)]
          for i in range(N)]
    for k, q in enumerate(QS2D):
        want = [sum(np.cos(np.dot(q, POS2D[i] - POS2D[j])) * ev(p, zz[i][j])
                    for i in range(N) for j in range(N)) / N for p in psis]
        np.testing.assert_allclose(ex["szz_q"][:, k], want, atol=1e-9)
    mz = sum(dense_op(f"Z{i}", N) for i in range(N))
    np.testing.assert_allclose(ex["szz_q"][:, 0], [ev(p, mz @ mz) / N for p in psis], atol=1e-9)
    assert obs.outputs["szz_q"].labels[1] == "q=(1.3, -0.4)"


def test_squeezing_and_pair_renyi2_match_dense(ref):
    obs, ex, psis = ref
    np.testing.assert_allclose(ex["squeezing"][:, 0], [dense_squeezing(p, N) for p in psis],
                               rtol=1e-9)
    np.testing.assert_allclose(ex["renyi2_pairs"][:, 0], [dense_pair_renyi2(p, N) for p in psis],
                               atol=1e-9)
    assert ex["renyi2_pairs"][0, 0] == pytest.approx(0.0, abs=1e-12)    # product state
    assert ex["renyi2_pairs"][-1, 0] > 0.1


def test_custom_sums_match_dense(ref):
    obs, ex, psis = ref
    want = {"x0x1": [ev(p, dense_op("X0 X1", N)) for p in psis],
            "current": [ev(p, dense_op("X1 Y2", N) - dense_op("Y1 X2", N)) for p in psis],
            "n3_plus_x": [ev(p, 0.5 * np.eye(2 ** N) - 0.5 * dense_op("Z3", N)
                             + 3.0 * dense_op("X0", N)) for p in psis]}
    for name, w in want.items():
        np.testing.assert_allclose(ex[name][:, 0], w, atol=1e-9)
    assert obs.columns[obs.outputs["n3_plus_x"].cols[0]] == ((0.5, ()), (-0.5, ((3, "Z"),)),
                                                             (3.0, ((0, "X"),)))


def kitagawa_ueda_wineland(n, mu):
    """ξ_R² = ξ_S² / cos^{2(N−1)}(μ/2): KU's ξ_S² = 4 min Var / N, <S_x> = (N/2)cos^{N−1}(μ/2)."""
    A = 1 - np.cos(mu) ** (n - 2)
    B = 4 * np.sin(mu / 2) * np.cos(mu / 2) ** (n - 2)
    xi_s = 1 + 0.25 * (n - 1) * (A - np.sqrt(A ** 2 + B ** 2))
    return xi_s / np.cos(mu / 2) ** (2 * (n - 1))


@pytest.mark.parametrize("method", ["auto", "ed"])
def test_one_axis_twisting_closed_form(method):
    """H = χ S_z² = (χ/2) Σ_{i<j} Z_i Z_j + const from the x-polarized coherent state."""
    n, chi = 6, 0.3
    terms = [(chi / 2, f"Z{i} Z{j}") for i in range(n) for j in range(i + 1, n)]
    H = model(terms, n)
    st = states.make_state("x", n)
    times = np.linspace(0.0, 1.2, 7)
    obs = observables.ObservableSet(n, ["squeezing", "sx_total", "szz_q"], qs=[0.0])
    cols, _ = exact.evolve(H, st, times, obs.columns, method=method)
    ex = stats.exact_connected(obs.outputs, cols[None])
    xi = ex["squeezing"][0, :, 0]
    assert xi[0] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(xi, kitagawa_ueda_wineland(n, 2 * chi * times), rtol=1e-9)
    np.testing.assert_allclose(ex["sx_total"][0, :, 0], n * np.cos(chi * times) ** (n - 1),
                               rtol=1e-9)
    assert xi.min() < 0.6
    psis = dense_states(terms, [[np.pi / 2, 0.0]] * n, times[[2, 5]])
    np.testing.assert_allclose(xi[[2, 5]], [dense_squeezing(p, n) for p in psis], rtol=1e-9)


# -- CTWA through the runner ---------------------------------------------------------------------
def run_cfg(**upd):
    raw = {"model": {"kind": "custom", "n_sites": 4,
                     "terms": [{"coef": c, "ops": o} for c, o in TERMS
                               if all(int(t[1:]) < 4 for t in o.split())]},
           "state": {"kind": "angles", "angles": ANGLES[:4]},
           "method": {"kind": "reduced", "clusters": [[0, 1, 2, 3]], "samples": 8,
                      "antithetic": True, "batch": 8, "seed": 5},
           "time": {"dt": 0.01, "t_max": 1.0, "output_dt": 0.25},
           "observables": {"names": ALL, "custom": CUSTOM, "q": [[0.0], [2.0]]},
           "output": {"path": "unused.h5", "compare_exact": True}}
    for sec, d in upd.items():
        raw.setdefault(sec, {}).update(d)
    return config.resolve(raw)


def test_ctwa_one_cluster_antithetic_is_exact():
    """One cluster over all sites with antithetic pairs: every output (linear or not) equals
    the exact reference up to the RK4 error; the linear ones have zero Monte Carlo error."""
    res = Simulation(run_cfg(), quiet=True).run()
    names = ALL + [c["name"] for c in CUSTOM]
    for name in names:
        got, want = res.outputs[name]["mean"], res.exact[name]["mean"]
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)
    # one-pass variance (Σx² − n m²)/(n − 1): rounding floor √ε·|m| ≈ 1e-8
    assert np.max(res.outputs["sx_total"]["stderr"]) < 1e-7
    assert np.max(res.outputs["squeezing"]["stderr"]) < 1e-6
    assert res.exact["renyi2_pairs"]["mean"][-1, 0] > 0.05
    assert res.outputs["szz_q"]["kind"] == "direct" and res.outputs["squeezing"]["kind"] == \
        "squeezing"


def test_meanfield_runs_and_factorizes():
    """Single-site mean field keeps a product of pure states: every pair Rényi-2 is 0."""
    c = run_cfg(method={"kind": "meanfield", "clusters": [[0], [1], [2], [3]], "samples": 1,
                        "antithetic": False}, output={"compare_exact": False})
    res = Simulation(c, quiet=True).run()
    np.testing.assert_allclose(res.outputs["renyi2_pairs"]["mean"], 0.0, atol=1e-7)  # RK4
    np.testing.assert_allclose(res.outputs["sx_total"]["mean"][:, 0],
                               res.outputs["sx"]["mean"].sum(axis=1), atol=1e-12)


def test_ctwa_monte_carlo_z_scores():
    """Without antithetic pairs the one-cluster estimator is unbiased for linear columns (and
    consistent for ξ²): z-scores against exact within 4.5σ."""
    c = run_cfg(method={"samples": 3000, "antithetic": False, "batch": 500})
    res = Simulation(c, quiet=True).run()
    for name in ["sx_total", "sz_staggered", "szz_q", "current", "n3_plus_x", "squeezing"]:
        m, se = res.outputs[name]["mean"][1:], res.outputs[name]["stderr"][1:]
        z = np.abs(m - res.exact[name]["mean"][1:]) / se
        assert np.all(se > 1e-4), name
        assert z.max() < 4.5, (name, z.max())


def sample_columns(obs, S, seed=11):
    """Per-sample columns (n_t, K, S) of the N = 4 model, one reduced cluster, no antithetic."""
    c = run_cfg()
    H = Simulation(c, quiet=True).build_model(0)
    part = clusters.Partition.from_lists(4, [[0, 1, 2, 3]])
    prob = clusters.compile_problem(H, part)
    st = states.make_state("angles", 4, angles=ANGLES[:4])
    init = sampling.draw_batch(prob, st, "reduced", seed, 0, np.arange(S), antithetic=False)
    steps = 100
    return propagate(prob, obs.compile(part), init, "reduced", 0.01, steps, 50,
                     prob.tf_table(np.arange(2 * steps + 1) * 0.005), backend="auto")


@pytest.fixture(scope="module")
def batches():
    """30 independent batches of 600 samples as 30 Moments rows (t = 0, 0.5, 1)."""
    obs = observables.ObservableSet(4, ["squeezing", "renyi2_pairs"])
    B, n = 30, 600
    cols = sample_columns(obs, B * n)
    mom = stats.Moments.zeros(B, cols.shape[0], obs.n_columns, obs.cross)
    for b in range(B):
        mom.add(b, cols[..., b * n:(b + 1) * n])
    return obs, cols, mom, B, n


def test_squeezing_delta_method_matches_batch_spread(batches):
    """The delta-method stderr of ξ² agrees with the spread of 30 independent batch estimates
    (relative precision of a 30-batch std ≈ 13 %, so the ratio lies within 1 ± 0.5)."""
    obs, cols, mom, B, n = batches
    mean, se = stats.realization_estimates(obs.outputs, mom)["squeezing"]
    spread = mean[:, :, 0].std(axis=0, ddof=1)
    ratio = np.sqrt(np.mean(se[:, :, 0] ** 2, axis=0)) / spread
    assert np.all((ratio > 0.5) & (ratio < 1.5)), ratio


def test_renyi2_pairs_stderr_is_an_upper_bound(batches):
    """The reported stderr bounds the full delta-method error (all cross moments, computed
    here from the raw samples), which itself matches the batch spread."""
    obs, cols, mom, B, n = batches
    assert set(np.ravel(obs.cross)).isdisjoint(np.ravel(obs.outputs["renyi2_pairs"].cols))
    mean, bound = stats.realization_estimates(obs.outputs, mom)["renyi2_pairs"]
    rows = obs.outputs["renyi2_pairs"].cols
    full = np.empty(bound.shape[:2])
    for b in range(B):
        for t in range(cols.shape[0]):
            X = cols[t, :, b * n:(b + 1) * n]
            m, C = X.mean(axis=1), np.cov(X)
            _, g = stats.renyi2_pairs_function(m[rows], (np.diag(C) / n)[rows])
            w = np.zeros(len(m))
            np.add.at(w, rows.ravel(), g.ravel())
            full[b, t] = np.sqrt(w @ C @ w / n)
    assert np.all(bound[..., 0] >= full * (1 - 1e-9))
    spread = mean[:, :, 0].std(axis=0, ddof=1)
    ratio = np.sqrt(np.mean(full ** 2, axis=0)) / spread
    assert np.all((ratio > 0.5) & (ratio < 1.5)), ratio
    assert np.all(np.mean(bound[..., 0], axis=0) > 2 * spread)     # conservative, not tight


def test_renyi2_pairs_purity_is_bias_corrected(batches):
    """At t = 0 (pure product state, exact value 0) the batch estimates scatter around 0; the
    plug-in purity (no m² − s²/n correction) would give −(log2 e) Σ s²/n ≈ −0.01 per batch."""
    obs, cols, mom, B, n = batches
    mean, _ = stats.realization_estimates(obs.outputs, mom)["renyi2_pairs"]
    m0 = mean[:, 0, 0]
    assert abs(m0.mean()) < 4.5 * m0.std(ddof=1) / np.sqrt(B), (m0.mean(), m0.std())
    rows = obs.outputs["renyi2_pairs"].cols
    plug = [stats.renyi2_pairs_function(mom.mean()[b, 0][rows])[0]
            for b in range(B)]
    assert np.mean(plug) < -5 * m0.std(ddof=1) / np.sqrt(B)


def test_disorder_average_uses_realization_spread():
    """R = 3 disordered realizations: the reported stderr is the spread of realization means
    / √3 (not the bound), and every realization mean equals its exact value."""
    raw = {"model": {"kind": "heisenberg", "n_sites": 4, "hz": 1.0, "boundary": "open"},
           "disorder": {"realizations": 3, "seed": 3},
           "state": {"kind": "neel"},
           "method": {"kind": "reduced", "clusters": [[0, 1, 2, 3]], "samples": 4,
                      "antithetic": True, "batch": 4},
           "time": {"dt": 0.01, "t_max": 1.0, "output_dt": 0.5},
           "observables": {"names": ["renyi2_pairs", "squeezing", "sz_total"]},
           "output": {"path": "unused.h5", "compare_exact": True}}
    res = Simulation(config.resolve(raw), quiet=True).run()
    for name in ("renyi2_pairs", "sz_total"):
        o = res.outputs[name]
        np.testing.assert_allclose(o["real_mean"], res.exact[name]["real_mean"], atol=1e-6)
        np.testing.assert_allclose(o["stderr"], o["real_mean"].std(axis=0, ddof=1) / np.sqrt(3),
                                   atol=1e-12)
    assert np.ptp(res.outputs["renyi2_pairs"]["real_mean"][:, -1]) > 1e-3


# -- gradients, validation, compatibility ---------------------------------------------------------
def test_gradients_match_finite_differences():
    rng = np.random.default_rng(4)
    T = np.array([2.1, -0.7, 0.9])
    A = rng.normal(size=(3, 3))
    G = np.outer(T, T) + A @ A.T + np.eye(3)
    m = np.concatenate([T, [G[0, 0], G[1, 1], G[2, 2], G[0, 1], G[0, 2], G[1, 2]]])
    _, g = stats.squeezing_function(m, 7)
    p = rng.normal(scale=0.3, size=(3, 15))
    _, g2 = stats.renyi2_pairs_function(p)
    h = 1e-6
    for k in range(9):
        d = np.zeros(9)
        d[k] = h
        f = stats.squeezing_function
        fd = (f(m + d, 7)[0] - f(m - d, 7)[0]) / (2 * h)
        assert fd == pytest.approx(g[k], rel=1e-6, abs=1e-8)
    for idx in [(0, 0), (1, 7), (2, 14)]:
        d = np.zeros_like(p)
        d[idx] = h
        f = stats.renyi2_pairs_function
        fd = (f(p + d)[0] - f(p - d)[0]) / (2 * h)
        assert fd == pytest.approx(g2[idx], rel=1e-6)


@pytest.mark.parametrize("kwargs, field", [
    (dict(custom=[{"name": "a", "ops": "X0"}, {"name": "b", "ops": "Z1"},
                  {"name": "c", "terms": [{"coef": "x", "ops": "X0"}]}]),
     "observables.custom[2].terms[0].coef"),
    (dict(custom=[{"name": "c", "terms": [{"ops": "X0"}, {"coef": 1.0, "ops": "X0", "f": 1}]}]),
     "observables.custom[0].terms[1].f"),
    (dict(custom=[{"name": "c", "terms": [{"coef": 1.0, "ops": "X9"}]}]),
     "observables.custom[0].terms[0].ops"),
    (dict(custom=[{"name": "c", "terms": [{"coef": 1.0}]}]), "observables.custom[0].terms[0]"),
    (dict(custom=[{"name": "c", "terms": []}]), "observables.custom[0].terms"),
    (dict(custom=[{"name": "c", "terms": [{"coef": 2.0, "ops": "I1"}]}]),
     "observables.custom[0].terms"),
    (dict(custom=[{"name": "c", "ops": "X0", "terms": [{"ops": "X1"}]}]), "observables.custom[0]"),
    (dict(custom=[{"name": "c", "terms": [{"coef": float("nan"), "ops": "X1"}]}]),
     "observables.custom[0].terms[0].coef"),
    (dict(custom=[{"name": "sx_total", "terms": [{"ops": "X1"}]}], names=["sx_total"]),
     "observables.custom[0].name"),
    (dict(signs=[1, -1, 1]), "observables.signs"),
    (dict(signs=[1, -1, 1, 0.5, 1]), "observables.signs"),
    (dict(positions=np.zeros((4, 2))), "observables.positions"),
    (dict(names=["szz_q"]), "observables.q"),
    (dict(names=["szz_q"], positions=POS2D, qs=[[0.0, 1.0], [1.0]]), "observables.q[1]"),
    (dict(names=["szz_q"], qs=[[True]]), "observables.q[0]"),
    (dict(names=["nonsense_total"]), "observables.names"),
])
def test_bad_input_names_the_field(kwargs, field):
    kw = dict(names=["sz"])
    kw.update(kwargs)
    names = kw.pop("names")
    with pytest.raises(ValueError) as err:
        observables.ObservableSet(N, names, **kw)
    assert str(err.value).startswith(field + ":"), str(err.value)


def test_renyi2_pairs_needs_two_sites():
    with pytest.raises(ValueError, match=r"^observables.names: 'renyi2_pairs'"):
        observables.ObservableSet(1, ["renyi2_pairs"])


def test_defaults_unchanged():
    """Existing callers: default staggered sign (−1)^i, {name, ops} customs, chain positions."""
    obs = observables.ObservableSet(4, ["mz_staggered"], custom=[{"name": "z0z1", "ops": "Z0 Z1"}])
    assert obs.columns[obs.outputs["mz_staggered"].cols[0]] == tuple(
        ((-1.0) ** i / 4, ((i, "Z"),)) for i in range(4))
    assert obs.columns[obs.outputs["z0z1"].cols[0]] == ((1.0, ((0, "Z"), (1, "Z"))),)
    o2 = observables.ObservableSet(4, ["szz_q"], qs=[np.pi])
    o3 = observables.ObservableSet(4, ["szz_q"], positions=np.arange(4.0)[:, None], qs=[[np.pi]])
    assert o2.columns == o3.columns
    sq = observables.ObservableSet(6, ["squeezing", "renyi2_pairs"])
    assert sq.n_columns == 9 + 3 * 6 + 9 * 15 and len(sq.cross) == 36
