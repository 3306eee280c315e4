"""Partitions, the compiled cluster problem (eq. 5), initial states and Wigner sampling.

Sampling checks compare Monte Carlo averages with their exact values within a few standard
errors (SE = sample std / sqrt(S)); quantities that are deterministic per sample are checked
to rounding accuracy.
"""
import itertools

import numpy as np
import pytest

from ctwa_hpc.method import clusters, sampling
from ctwa_hpc.exact import statevector as exact
from ctwa_hpc.model import models, states
from ctwa_hpc.method.clusters import Partition
from ctwa_hpc.model.hamiltonian import Hamiltonian

from dense_reference import SIG, kron_string as kron_labels  # noqa: E402,F401


def pauli_basis(n):
    """All 4**n Pauli strings on n local bits (identity first), as dense matrices."""
    return [kron_labels(list(labs)) for labs in itertools.product("IXYZ", repeat=n)]


def embed(op, sites, n):
    """Place a cluster-local operator (local bit k = ``sites[k]``) into the 2**n full space."""
    b = np.arange(1 << n)
    loc = np.zeros_like(b)
    for k, s in enumerate(sites):
        loc |= ((b >> s) & 1) << k
    rest = b & ~sum(1 << s for s in sites)
    return op[loc[:, None], loc[None, :]] * (rest[:, None] == rest[None, :])


# --------------------------------------------------------------------------------------------
# Partition
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cl,msg", [
    (((0, 1), (1, 2, 3)), "site 1 appears in clusters 0 and 1"),
    (((0, 1), (2,)), r"site\(s\) \[3\] belong to no cluster"),
    (((0, 1), (2, 3, 4)), "site 4 in cluster 1 outside 0..3"),
    (((0, 1), (-1, 2, 3)), "site -1 in cluster 1 outside"),
    (((0, 1), (), (2, 3)), "cluster 1 is empty"),
    (((0, 1.0), (2, 3)), "not an integer"),
    (((0, True), (2, 3)), "not an integer"),
])
def test_partition_validation_names_the_field(cl, msg):
    with pytest.raises(ValueError, match=r"^method\.clusters: .*" + msg):
        Partition(4, cl)


def test_partition_from_lists_and_locate():
    p = Partition.from_lists(6, [[0, 3], [5, 1, 4], [np.int64(2)]])
    assert p.clusters == ((0, 3), (5, 1, 4), (2,))
    assert p.locate(4) == (1, 2) and p.locate(3) == (0, 1)
    np.testing.assert_array_equal(p.dims, [4, 8, 2])
    np.testing.assert_array_equal(p.offsets, [0, 4, 12, 14])
    assert p.split_string(((1, "X"), (3, "Z"), (5, "Y"))) == {0: ((1, "Z"),),
                                                              1: ((1, "X"), (0, "Y"))}
    with pytest.raises(ValueError, match="method.clusters"):
        Partition.from_lists(4, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="method.clusters"):
        Partition.from_lists(4, [[0, 1], [2, 3.5]])


def test_contiguous_blocks_offsets_and_wrap():
    assert Partition.contiguous(6, 2).clusters == ((0, 1), (2, 3), (4, 5))
    assert Partition.contiguous(6, 2, offset=1).clusters == ((1, 2), (3, 4), (5, 0))
    assert Partition.contiguous(6, 3, offset=-1).clusters == ((5, 0, 1), (2, 3, 4))
    assert Partition.contiguous(5, 2).clusters == ((0, 1), (2, 3), (4,))
    assert Partition.contiguous(4, 4, offset=2).clusters == ((2, 3, 0, 1),)
    assert Partition.contiguous(3, 1).clusters == ((0,), (1,), (2,))
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="method.cluster_size"):
            Partition.contiguous(4, bad)
    with pytest.raises(ValueError, match="method.cluster_size: 5 exceeds"):
        Partition.contiguous(4, 5)
    with pytest.raises(ValueError, match="method.offset"):
        Partition.contiguous(4, 2, offset=0.5)


# --------------------------------------------------------------------------------------------
# compile_problem: eq. (5) reconstructs the Hamiltonian
# --------------------------------------------------------------------------------------------

def reconstruct(prob):
    """Dense [H_static, H_1, ...] from the compiled local entries and couplings."""
    part = prob.partition
    n = part.n_sites
    G = len(prob.tfuncs)
    mats = [np.zeros((1 << n, 1 << n), complex) for _ in range(G + 1)]
    for e in range(len(prob.local)):
        c = prob.local.cluster[e]
        mats[prob.local_tf[e] + 1] += embed(prob.local.dense(e), part.clusters[c], n)
    for a, b, J, g in zip(prob.cp_a, prob.cp_b, prob.cp_J, prob.cp_tf):
        ca, cb = prob.ops.cluster[a], prob.ops.cluster[b]
        assert ca != cb
        mats[g + 1] += J * embed(prob.ops.dense(a), part.clusters[ca], n) @ \
            embed(prob.ops.dense(b), part.clusters[cb], n)
    return mats


def dense_terms(h):
    tfs = h.time_functions()
    mats = [np.zeros((1 << h.n_sites,) * 2, complex) for _ in range(len(tfs) + 1)]
    for t in h.terms:
        labels = ["I"] * h.n_sites
        for s, lab in t.ops:
            labels[s] = lab
        g = 0 if t.tfunc is None else 1 + [id(f) for f in tfs].index(id(t.tfunc))
        mats[g] += t.coef * kron_labels(labels)
    return mats


def _mixed_model():
    h = models.heisenberg(6, J=1.0, hz=1.3, seed=2)
    h.add(0.4, "X0 Z3")                       # long-range, inside cluster (0, 3) below
    h.add(-0.7, "Y2 Y5")                      # long range, between clusters
    h.add(0.3, "X1", tfunc="cos(2*t)")        # time-dependent local field
    h.add(0.25, "Z0 Z1", tfunc="sin(t)")      # time-dependent coupling
    return h


CASES = {
    "tfim4-cl1": (models.tfim(4), Partition.contiguous(4, 1)),
    "tfim4-cl2": (models.tfim(4), Partition.contiguous(4, 2)),
    "tfim4-cl4": (models.tfim(4), Partition.contiguous(4, 4)),
    "heis6-cl2": (models.heisenberg(6, hz=1.0, seed=1), Partition.contiguous(6, 2)),
    "heis6-cl3": (models.heisenberg(6, hz=1.0, seed=1), Partition.contiguous(6, 3)),
    "heis6-cl3-offset": (models.heisenberg(6, hz=1.0, seed=1), Partition.contiguous(6, 3, 1)),
    "chaotic5-cl2": (models.ising_chaotic(5), Partition.contiguous(5, 2)),
    "noncontiguous": (_mixed_model(), Partition.from_lists(6, [[0, 3], [5, 1, 4], [2]])),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_compiled_problem_reconstructs_hamiltonian(name):
    h, part = CASES[name]
    prob = clusters.compile_problem(h, part)
    got = reconstruct(prob)
    H0, Hg, tfs = exact.hamiltonian_matrices(h, exact.Basis(h.n_sites))
    ref_exact = [H0.toarray()] + [m.toarray() for m in Hg]
    ref_kron = dense_terms(h)
    assert len(got) == len(ref_exact) == len(ref_kron) == len(prob.tfuncs) + 1
    for g, (a, b, c) in enumerate(zip(got, ref_exact, ref_kron)):
        np.testing.assert_allclose(a, c, atol=1e-13, err_msg=f"{name} part {g} vs Kronecker")
        np.testing.assert_allclose(b, c, atol=1e-13, err_msg=f"{name} part {g}: exact vs Kronecker")
    # every coupling joins two different clusters; local entries are merged per mask
    for c in range(part.n_clusters):
        sel = prob.local.cluster == c
        keys = list(zip(prob.local.mask[sel], prob.local_tf[sel]))
        assert len(keys) == len(set(keys))


def test_tfim4_two_clusters_couple_the_physical_bond():
    """Eq. (26): the only coupling is X6^L X3^R = (σz on L's 2nd site)(σz on R's 1st site)."""
    prob = clusters.compile_problem(models.tfim(4, J=0.125), Partition.contiguous(4, 2))
    assert len(prob.cp_J) == 1 and prob.cp_J[0] == 0.125
    a, b = prob.cp_a[0], prob.cp_b[0]
    np.testing.assert_allclose(prob.ops.dense(a), kron_labels(["I", "Z"]))  # bit 1 = site 1
    np.testing.assert_allclose(prob.ops.dense(b), kron_labels(["Z", "I"]))  # bit 0 = site 2
    assert (prob.ops.cluster[a], prob.ops.cluster[b]) == (0, 1)


def test_compile_rejects_three_cluster_terms_and_size_mismatch():
    h = Hamiltonian(6).add(1.0, "Z0 Z2 Z4")
    with pytest.raises(ValueError, match="touches 3 clusters"):
        clusters.compile_problem(h, Partition.contiguous(6, 2))
    clusters.compile_problem(h, Partition.contiguous(6, 3))  # two clusters: fine
    with pytest.raises(ValueError, match="method.clusters: partition covers 4 sites"):
        clusters.compile_problem(models.tfim(6), Partition.contiguous(4, 2))


def test_tf_table():
    h = Hamiltonian(2).add(1.0, "X0", tfunc="cos(t)").add(0.5, "Z0 Z1")
    prob = clusters.compile_problem(h, Partition.contiguous(2, 1))
    t = np.linspace(0, 2, 5)
    np.testing.assert_allclose(prob.tf_table(t), np.cos(t)[None, :])
    assert prob.tf_table(t[:0]).shape == (1, 0)
    assert clusters.compile_problem(models.tfim(2), Partition.contiguous(2, 1)).tf_table(t).shape \
        == (0, 5)


# --------------------------------------------------------------------------------------------
# States
# --------------------------------------------------------------------------------------------

def _bloch(st, site):
    return np.array([np.sin(st.theta[site]) * np.cos(st.phi[site]),
                     np.sin(st.theta[site]) * np.sin(st.phi[site]), np.cos(st.theta[site])])


def test_named_states():
    n = 4
    vec = lambda st: states.product_vector(st.theta, st.phi)  # noqa: E731
    e = np.eye(1 << n)
    np.testing.assert_allclose(vec(states.make_state("up", n)), e[0], atol=1e-15)
    np.testing.assert_allclose(vec(states.make_state("down", n)), e[15], atol=1e-15)
    np.testing.assert_allclose(vec(states.make_state("neel", n)), e[0b1010], atol=1e-15)
    np.testing.assert_allclose(np.abs(vec(states.make_state("x", n))), np.full(16, 0.25))
    for kind, axis in (("x", 0), ("y", 1), ("up", 2)):
        st = states.make_state(kind, n)
        for s in range(n):
            np.testing.assert_allclose(_bloch(st, s), np.eye(3)[axis], atol=1e-15)
    st = states.make_state("pattern", 5, pattern="ud+-r")
    np.testing.assert_array_equal(st.random, [False] * 4 + [True])
    for s, ref in enumerate([[0, 0, 1], [0, 0, -1], [1, 0, 0], [-1, 0, 0]]):
        np.testing.assert_allclose(_bloch(st, s), ref, atol=1e-15)
    assert not st.is_pure and st.sz_sector() is None
    flipped = states.make_state("x", 3, flipped=(1,))
    np.testing.assert_allclose(_bloch(flipped, 1), [-1, 0, 0], atol=1e-15)
    assert states.make_state("up", 3, flipped=(1,)).sz_sector() == 1
    assert states.make_state("neel", 6).sz_sector() == 3
    assert states.make_state("x", 4).sz_sector() is None
    ang = [[0.3, 1.0], [2.0, -0.5]]
    st = states.make_state("angles", 2, angles=ang)
    np.testing.assert_allclose(np.c_[st.theta, st.phi], ang)
    bath = states.make_state("bath", 4, polarized=(0, 2))
    np.testing.assert_array_equal(bath.random, [False, True, False, True])


@pytest.mark.parametrize("kwargs,msg", [
    (dict(kind="ferro", n_sites=4), "state.kind"),
    (dict(kind="pattern", n_sites=3, pattern="udx"), "state.pattern"),
    (dict(kind="pattern", n_sites=4, pattern="udu"), "state: the state has 3 sites"),
    (dict(kind="angles", n_sites=2, angles=[[0.1, 0.2, 0.3]] * 2), "state.angles"),
    (dict(kind="angles", n_sites=1, angles=[[np.nan, 0.0]]), "state.angles"),
    (dict(kind="up", n_sites=3, flipped=(3,)), "state.flipped"),
    (dict(kind="bath", n_sites=3, polarized=(5,)), "state.polarized"),
])
def test_state_errors_name_the_field(kwargs, msg):
    kind = kwargs.pop("kind")
    n = kwargs.pop("n_sites")
    with pytest.raises(ValueError, match=msg):
        states.make_state(kind, n, **kwargs)


def test_random_sites_are_uniform_on_the_sphere():
    st = states.make_state("bath", 3, polarized=(1,))
    rng = np.random.default_rng(0)
    S = 4000
    v = np.array([[_bloch(states.ProductState(*st.draw_angles(rng)[:2], st.random), s)
                   for s in (0, 2)] for _ in range(S)])  # (S, 2 sites, 3)
    m, se = v.mean(0), v.std(0, ddof=1) / np.sqrt(S)
    assert np.all(np.abs(m) < 4 * se)                       # E[n] = 0
    second = (v ** 2).mean(0)
    se2 = (v ** 2).std(0, ddof=1) / np.sqrt(S)
    assert np.all(np.abs(second - 1 / 3) < 4 * se2)         # E[n_a²] = 1/3
    th, ph = st.draw_angles(rng)
    assert th[1] == 0.0 and ph[1] == 0.0                    # polarized site untouched


# --------------------------------------------------------------------------------------------
# Sampling: Schwinger bosons (eq. 18, sec. V E)
# --------------------------------------------------------------------------------------------

def _problem(n, size):
    return clusters.compile_problem(models.tfim(n), Partition.contiguous(n, size))


def _within(mean, se, ref, k=4.0, floor=1e-12):
    return np.abs(mean - ref) <= k * se + floor


def test_r_D_solves_eq66():
    for D in (2, 4, 8, 16, 1024):
        r = sampling.r_D(D)
        assert abs(D * r ** 2 + 2 * r - 1) < 1e-14
    assert abs(sampling.r_D(4) - 0.30902) < 1e-5  # value quoted in sec. II C 2


@pytest.mark.parametrize("size", [1, 2, 3])
def test_sb_initial_moments(size):
    S = 4000
    prob = _problem(3 * size, size)
    D = 1 << size
    rd = sampling.r_D(D)
    ib = sampling.draw_batch(prob, states.make_state("up", 3 * size), "sb", seed=11,
                             realization=0, sample_ids=np.arange(S))
    assert ib.psi.shape == (prob.n_amp, 1, S) and list(ib.weights) == [1.0]
    for c in range(prob.partition.n_clusters):
        b = ib.psi[prob.offsets[c]:prob.offsets[c + 1], 0]  # (D, S)
        # |b_0|² = 1 + r_D exactly (δ-function in eq. 18)
        np.testing.assert_allclose(np.abs(b[0]) ** 2, 1 + rd, rtol=1e-14)
        n = np.abs(b[1:]) ** 2
        assert np.all(_within(n.mean(1), n.std(1, ddof=1) / np.sqrt(S), rd))
        # circular complex Gaussian, independent modes: E b_a² = 0, E b_a b_c* = 0 (a ≠ c),
        # and no phase relation to b_0: E b_0* b_a = 0
        a_idx, c_idx = np.triu_indices(D, 1)
        pairs = [b[1:] ** 2, b[a_idx] * b[c_idx].conj()]
        for z in pairs:
            for part in (z.real, z.imag):
                m = part.mean(1)
                se = part.std(1, ddof=1) / np.sqrt(S)
                assert np.all(_within(m, se, 0.0))
        # total boson number: E[b†b] = √(1+D)  (paper_notes: SB normalization)
        tot = (np.abs(b) ** 2).sum(0)
        assert _within(tot.mean(), tot.std(ddof=1) / np.sqrt(S), np.sqrt(1 + D))


@pytest.mark.parametrize("size", [1, 2])
def test_sb_second_moments_match_paper_notes(size):
    """Transverse σx² is reproduced (=1); σz² along the spin is 1 + (D−1) r_D² (known defect)."""
    S = 8000
    D = 1 << size
    prob = _problem(size, size)
    ib = sampling.draw_batch(prob, states.make_state("up", size), "sb", seed=5, realization=0,
                             sample_ids=np.arange(S))
    b = ib.psi[:, 0]
    for lab, ref in (("X", 1.0), ("Z", 1.0 + (D - 1) * sampling.r_D(D) ** 2)):
        P = kron_labels([lab] + ["I"] * (size - 1))
        x = np.einsum("as,ab,bs->s", b.conj(), P, b).real
        assert _within((x ** 2).mean(), (x ** 2).std(ddof=1) / np.sqrt(S), ref), lab
    # the excess is real: distinguishable from 1 at this sample size
    P = kron_labels(["Z"] + ["I"] * (size - 1))
    z2 = np.einsum("as,ab,bs->s", b.conj(), P, b).real ** 2
    assert z2.mean() - 1 > 5 * z2.std(ddof=1) / np.sqrt(S)


# --------------------------------------------------------------------------------------------
# Sampling: operator CTWA Gaussian (eqs. 52–54)
# --------------------------------------------------------------------------------------------

def _cluster_vars(rho, basis):
    """x_α = Tr(ρ X_α) per sample, (n_basis, S)."""
    return np.array([np.einsum("sab,ba->s", rho, P).real for P in basis])


def _check_gaussian_moments(x, psi_c, basis, S, k=5.0):
    """E x_α = <X_α>, E x_α x_β = <{X_α, X_β}>/2 within k SE (exact where deterministic)."""
    mean_ref = np.array([np.vdot(psi_c, P @ psi_c).real for P in basis])
    se = x.std(1, ddof=1) / np.sqrt(S)
    assert np.all(_within(x.mean(1), se, mean_ref, k)), "first moments"
    nb = len(basis)
    worst = 0.0
    for a in range(nb):
        for b in range(a, nb):
            ref = 0.5 * np.vdot(psi_c, (basis[a] @ basis[b] + basis[b] @ basis[a]) @ psi_c).real
            prod = x[a] * x[b]
            m, s = prod.mean(), prod.std(ddof=1) / np.sqrt(S)
            assert abs(m - ref) <= k * s + 1e-12, (a, b, m, ref, s)
            if s > 0:
                worst = max(worst, abs(m - ref) / s)
    return worst


def test_operator_gaussian_second_moments_eq53_zero_state():
    """|0> on a 2-site cluster: all 16×16 symmetric Pauli correlators are reproduced."""
    S = 4000
    prob = _problem(4, 2)
    ib = sampling.draw_batch(prob, states.make_state("up", 4), "operator", seed=3,
                             realization=0, sample_ids=np.arange(S))
    assert list(ib.weights) == [1.0, -1.0]
    rhos = sampling.density_matrices(prob, ib.psi, ib.weights)
    basis = pauli_basis(2)
    zero = np.eye(4)[0]
    for rho in rhos:
        assert rho.shape == (S, 4, 4)
        np.testing.assert_allclose(np.einsum("saa->s", rho), 1.0, atol=1e-13)  # Tr ρ = 1
        np.testing.assert_allclose(rho, rho.conj().transpose(0, 2, 1), atol=1e-15)
        # eq. (54): y00 = 1 and only the first row/column carries noise
        np.testing.assert_allclose(rho[:, 0, 0], 1.0, atol=1e-14)
        np.testing.assert_allclose(rho[:, 1:, 1:], 0.0, atol=1e-14)
        x = _cluster_vars(rho, basis)
        # diagonal strings are deterministic (no spurious σz noise, unlike SB)
        for a, labs in enumerate(itertools.product("IXYZ", repeat=2)):
            if set(labs) <= {"I", "Z"}:
                np.testing.assert_allclose(x[a], x[a][0], atol=1e-13)
        _check_gaussian_moments(x, zero, basis, S)


@pytest.mark.parametrize("kind", ["neel", "x", "angles"])
def test_rotated_product_states_moments(kind):
    S = 4000
    n = 4
    ang = np.array([[0.4, 1.2], [2.2, -0.3], [1.0, 3.0], [2.8, 0.5]])
    st = states.make_state(kind, n, angles=ang if kind == "angles" else None)
    prob = _problem(n, 2)
    basis = pauli_basis(2)
    full = [st.theta, st.phi]
    for method in ("reduced", "meanfield", "sb"):
        ib = sampling.draw_batch(prob, st, method, seed=21, realization=1,
                                 sample_ids=np.arange(S))
        for c, sites in enumerate(prob.partition.clusters):
            psi_c = states.product_vector(full[0][list(sites)], full[1][list(sites)])
            block = ib.psi[prob.offsets[c]:prob.offsets[c + 1]]
            if method == "sb":
                b = block[:, 0]
                x = np.array([np.einsum("as,ab,bs->s", b.conj(), P, b).real for P in basis[1:]])
                ref = np.array([np.vdot(psi_c, P @ psi_c).real for P in basis[1:]])
                se = x.std(1, ddof=1) / np.sqrt(S)
                assert np.all(_within(x.mean(1), se, ref)), (kind, c)
                continue
            rho = sampling.density_matrices(prob, ib.psi, ib.weights)[c]
            x = _cluster_vars(rho, basis)
            if method == "meanfield":  # zero noise: the exact cluster state in every sample
                ref = np.array([np.vdot(psi_c, P @ psi_c).real for P in basis])
                np.testing.assert_allclose(x, np.repeat(ref[:, None], S, 1), atol=1e-13)
            else:
                _check_gaussian_moments(x, psi_c, basis, S)


def test_mixed_bath_state_sampling():
    """Random sites: per-sample rotation, averages reproduce ρ = I/2 (first and second moments)."""
    S = 4000
    st = states.make_state("bath", 2, polarized=(0,))
    prob = _problem(2, 1)
    ib = sampling.draw_batch(prob, st, "reduced", seed=8, realization=0, sample_ids=np.arange(S))
    rhos = sampling.density_matrices(prob, ib.psi, ib.weights)
    basis = pauli_basis(1)
    x0 = _cluster_vars(rhos[0], basis)   # polarized site: |↑>
    _check_gaussian_moments(x0, np.array([1, 0], complex), basis, S)
    x1 = _cluster_vars(rhos[1], basis)   # random site: E x = 0, E x_a x_b = δ_ab
    se = x1.std(1, ddof=1) / np.sqrt(S)
    assert np.all(_within(x1.mean(1), se, [1, 0, 0, 0]))
    for a in range(1, 4):
        for b in range(1, 4):
            p = x1[a] * x1[b]
            assert _within(p.mean(), p.std(ddof=1) / np.sqrt(S), float(a == b))


# --------------------------------------------------------------------------------------------
# Random streams keyed by (seed, realization, sample); antithetic pairs
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["sb", "reduced", "operator", "meanfield"])
@pytest.mark.parametrize("kind", ["neel", "bath"])
@pytest.mark.parametrize("antithetic", [False, True])
def test_draws_are_keyed_by_sample_index(method, kind, antithetic):
    prob = _problem(4, 2)
    st = states.make_state(kind, 4)

    def draw(ids, seed=9, realization=2):
        return sampling.draw_batch(prob, st, method, seed=seed, realization=realization,
                                   sample_ids=np.array(ids), antithetic=antithetic).psi

    whole = draw(range(10))
    np.testing.assert_array_equal(np.concatenate([draw(range(5)), draw(range(5, 10))], axis=-1),
                                  whole)
    np.testing.assert_array_equal(draw([7, 2, 9]), whole[..., [7, 2, 9]])
    if method != "meanfield" or kind == "bath":
        assert not np.allclose(draw(range(10), seed=10), whole)
        assert not np.allclose(draw(range(10), realization=3), whole)
        assert not np.allclose(whole[..., 0], whole[..., 2])


@pytest.mark.parametrize("method", ["sb", "reduced"])
def test_antithetic_pairs_carry_opposite_noise(method):
    prob = _problem(6, 3)
    for kind in ("up", "neel"):
        st = states.make_state(kind, 6)
        ids = np.arange(12)
        psi = sampling.draw_batch(prob, st, method, seed=4, realization=0, sample_ids=ids,
                                  antithetic=True).psi
        mf = sampling.draw_batch(prob, st, "meanfield", seed=4, realization=0,
                                 sample_ids=ids).psi[:, 0]          # U|0>, (A, S)
        even, odd = psi[..., 0::2], psi[..., 1::2]
        assert not np.allclose(even, odd)
        if method == "sb":
            center = np.concatenate([np.full(int(d), np.sqrt(1 + sampling.r_D(d)))
                                     for d in prob.dims])[:, None] * mf
            np.testing.assert_allclose(even[:, 0] + odd[:, 0], 2 * center[:, 0::2], atol=1e-14)
        else:  # p = U(|0> + w), q = U w
            np.testing.assert_allclose(even[:, 0] + odd[:, 0], 2 * mf[:, 0::2], atol=1e-14)
            np.testing.assert_allclose(even[:, 1] + odd[:, 1], 0.0, atol=1e-14)
        if kind == "up":  # unrotated: the noise amplitudes themselves are exact negatives
            for c in range(prob.partition.n_clusters):
                o, o1 = prob.offsets[c], prob.offsets[c + 1]
                np.testing.assert_array_equal(even[o + 1:o1], -odd[o + 1:o1])
                np.testing.assert_array_equal(even[o], odd[o])
