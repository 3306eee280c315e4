"""Pauli-string action, Hamiltonian terms, model builders and their validation.

Conventions checked here (ctwa_hpc.model.pauli): Pauli matrices σ (not σ/2); basis index bit k = 1
when site k points down; |0> = |↑↑…↑>; bit 0 is the last Kronecker factor.
"""
import itertools

import numpy as np
import pytest

from ctwa_hpc.model import models, pauli
from ctwa_hpc.model.hamiltonian import Hamiltonian, TimeFunction

from dense_reference import SIG, kron_string  # noqa: E402,F401


def dense_hamiltonian(h):
    """Dense H from the term list by Kronecker products (independent of the mask path)."""
    n = h.n_sites
    out = np.zeros((1 << n, 1 << n), dtype=complex)
    for t in h.terms:
        labels = ["I"] * n
        for s, lab in t.ops:
            labels[s] = lab
        out += t.coef * kron_string(labels)
    return out


# --------------------------------------------------------------------------------------------
# Pauli strings
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_bits", [1, 2, 3, 4])
def test_mask_phase_action_equals_kronecker(n_bits):
    rng = np.random.default_rng(100 + n_bits)
    all_strings = list(itertools.product("IXYZ", repeat=n_bits))
    chosen = all_strings if n_bits <= 2 else [all_strings[i] for i in
                                              rng.choice(len(all_strings), 40, replace=False)]
    for labels in chosen:
        bl = [(k, lab) for k, lab in enumerate(labels)]
        ref = kron_string(labels)
        mask, d = pauli.string_action(bl, n_bits)
        via_action = pauli.dense_from_action(mask, d)
        np.testing.assert_allclose(via_action, ref, atol=1e-14, err_msg=str(labels))
        np.testing.assert_allclose(pauli.dense_string(bl, n_bits), ref, atol=1e-14)
        # (P ψ)[b] = d[b] ψ[b ^ mask] on a random vector
        psi = rng.normal(size=1 << n_bits) + 1j * rng.normal(size=1 << n_bits)
        b = np.arange(1 << n_bits)
        np.testing.assert_allclose(d * psi[b ^ mask], ref @ psi, atol=1e-13)
        # the phase evaluated on a subset of basis states (exact-sector path)
        sub = rng.choice(1 << n_bits, size=max(1, (1 << n_bits) // 2), replace=False)
        m2, d_sub = pauli.string_action(bl, n_bits, states=sub)
        assert m2 == mask
        np.testing.assert_allclose(d_sub, d[sub], atol=0)


def test_pauli_string_products_follow_the_algebra():
    """XY = iZ on one site, and strings on disjoint sites compose as Kronecker products."""
    def m(bl, n):
        return pauli.dense_from_action(*pauli.string_action(bl, n))
    np.testing.assert_allclose(m([(0, "X")], 1) @ m([(0, "Y")], 1), 1j * m([(0, "Z")], 1))
    np.testing.assert_allclose(m([(1, "X")], 3) @ m([(0, "Y"), (2, "Z")], 3),
                               m([(0, "Y"), (1, "X"), (2, "Z")], 3), atol=1e-14)


def test_basis_and_spin_conventions():
    up = np.array([1, 0], complex)
    down = np.array([0, 1], complex)
    X, Y, Z = (pauli.dense_string([(0, lab)], 1) for lab in "XYZ")
    np.testing.assert_allclose(Z @ up, up)
    np.testing.assert_allclose(X @ up, down)
    np.testing.assert_allclose(Y @ up, 1j * down)
    np.testing.assert_allclose(Y @ down, -1j * up)
    # |1> = |↓↑…↑>: site 0 is bit 0
    Z0 = pauli.dense_string([(0, "Z")], 3)
    Z2 = pauli.dense_string([(2, "Z")], 3)
    assert Z0[1, 1] == -1 and Z2[1, 1] == 1 and Z2[4, 4] == -1
    # single_site_unitary prepares the Bloch vector (θ, φ)
    theta, phi = 1.1, 0.7
    u = pauli.single_site_unitary(theta, phi)
    np.testing.assert_allclose(u.conj().T @ u, np.eye(2), atol=1e-14)
    v = u @ up
    bloch = [np.vdot(v, s @ v).real for s in (X, Y, Z)]
    np.testing.assert_allclose(bloch, [np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi),
                                       np.cos(theta)], atol=1e-14)


def test_apply_site_unitaries_matches_kronecker():
    rng = np.random.default_rng(3)
    us = [pauli.single_site_unitary(*rng.uniform(0, 3, 2)) for _ in range(3)]
    vec = rng.normal(size=(8, 5)) + 1j * rng.normal(size=(8, 5))
    full = np.kron(np.kron(us[2], us[1]), us[0])  # site 0 = last factor
    np.testing.assert_allclose(pauli.apply_site_unitaries(vec, us), full @ vec, atol=1e-13)
    # per-sample unitaries (trailing sample axis)
    per = [np.stack([pauli.single_site_unitary(*rng.uniform(0, 3, 2)) for _ in range(5)], -1)
           for _ in range(3)]
    got = pauli.apply_site_unitaries(vec, per)
    for s in range(5):
        full = np.kron(np.kron(per[2][..., s], per[1][..., s]), per[0][..., s])
        np.testing.assert_allclose(got[:, s], full @ vec[:, s], atol=1e-13)


def test_parse_pauli_string():
    assert pauli.parse_pauli_string("X0 z3") == ((0, "X"), (3, "Z"))
    assert pauli.parse_pauli_string("Z2 I1 X0") == ((0, "X"), (2, "Z"))
    with pytest.raises(ValueError, match="obs: site 1 appears twice"):
        pauli.parse_pauli_string("X1 Z1", "obs")
    with pytest.raises(ValueError, match="obs: cannot read site index"):
        pauli.parse_pauli_string("X-1", "obs")
    with pytest.raises(ValueError, match="obs: unknown Pauli label 'Q'"):
        pauli.parse_pauli_string("Q1", "obs")
    with pytest.raises(ValueError, match="obs"):
        pauli.parse_pauli_string("  ", "obs")


# --------------------------------------------------------------------------------------------
# Model builders
# --------------------------------------------------------------------------------------------

def _term_set(h):
    return sorted((t.ops, t.coef) for t in h.terms)


def test_tfim_builder_matches_eq24():
    h = models.tfim(4, J=0.125, hx=1.0)
    # eq. (24): 3 open bonds + 4 transverse fields; hz = 0 terms are dropped
    assert len(h.terms) == 7
    assert [t.ops for t in h.terms if len(t.ops) == 2] == [
        ((0, "Z"), (1, "Z")), ((1, "Z"), (2, "Z")), ((2, "Z"), (3, "Z"))]
    ref = sum(0.125 * kron_string(["Z" if k in (i, i + 1) else "I" for k in range(4)])
              for i in range(3)) + sum(kron_string(["X" if k == i else "I" for k in range(4)])
                                       for i in range(4))
    np.testing.assert_allclose(dense_hamiltonian(h), ref, atol=1e-14)
    assert len(models.tfim(4, hz=0.3).terms) == 11
    hp = models.tfim(4, boundary="periodic")
    assert ((0, "Z"), (3, "Z")) in [t.ops for t in hp.terms]
    assert len(hp.terms) == 8


def test_bond_lists_and_periodic_wrap():
    assert models.bonds(5, "open") == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert models.bonds(5, "periodic")[-1] == (4, 0)
    assert models.bonds(2, "periodic") == [(0, 1)]  # no double bond for N = 2
    with pytest.raises(ValueError, match="model.boundary"):
        models.bonds(4, "twisted")


def test_heisenberg_xy_chaotic_builders():
    deltas = np.array([0.5, -0.25, 1.0, -1.0, 0.0, 0.75])
    h = models.heisenberg(6, J=1.0, hz=2.0, deltas=deltas)
    two = [t for t in h.terms if len(t.ops) == 2]
    one = [t for t in h.terms if len(t.ops) == 1]
    assert len(two) == 18  # 6 periodic bonds × (XX, YY, ZZ)
    assert ((0, "X"), (5, "X")) in [t.ops for t in two]  # wrap bond (5, 0)
    assert len(one) == 5  # δ_4 = 0 is dropped
    assert {t.ops[0][0]: t.coef for t in one} == {0: 1.0, 1: -0.5, 2: 2.0, 3: -2.0, 5: 1.5}
    # seeded disorder: keyed by (seed, realization), in [-1, 1]
    d1 = models.disorder_fields(8, 3, 0)
    np.testing.assert_array_equal(d1, models.disorder_fields(8, 3, 0))
    assert not np.allclose(d1, models.disorder_fields(8, 3, 1))
    assert np.all(np.abs(d1) <= 1)
    with pytest.raises(ValueError, match="model.deltas"):
        models.heisenberg(6, deltas=[0.1, 0.2])
    hxy = models.xy(5)
    assert len(hxy.terms) == 10 and all(len(t.ops) == 2 for t in hxy.terms)
    hc = models.ising_chaotic(5)
    assert len(hc.terms) == 15
    assert ((0, "X"), (4, "X")) in [t.ops for t in hc.terms]


def test_build_dispatch_and_custom_validation():
    assert _term_set(models.build("tfim", 4, {"J": 0.5})) == _term_set(models.tfim(4, J=0.5))
    assert models.build("heisenberg", 6, {}).info["boundary"] == "periodic"
    with pytest.raises(ValueError, match="model.kind"):
        models.build("potts", 4, {})
    h = models.custom(3, [{"coef": 0.5, "ops": "Z0 Z1"}, {"coef": 1.0, "ops": "X2", "f": "cos(t)"}])
    assert h.time_dependent and len(h.time_functions()) == 1
    with pytest.raises(ValueError, match=r"model.terms\[1\]: unknown key"):
        models.custom(3, [{"coef": 0.5, "ops": "Z0"}, {"coef": 1.0, "ops": "X2", "g": 1}])
    with pytest.raises(ValueError, match=r"model.terms\[0\]: needs both"):
        models.custom(3, [{"ops": "Z0"}])
    with pytest.raises(ValueError, match=r"model.terms\[0\].*site 3 outside"):
        models.custom(3, [{"coef": 1.0, "ops": "Z3"}])
    with pytest.raises(ValueError, match=r"model.terms\[0\].f: unknown name"):
        models.custom(3, [{"coef": 1.0, "ops": "Z0", "f": "cos(omega*t)"}])
    with pytest.raises(ValueError, match="model.terms"):
        models.custom(3, [])


# --------------------------------------------------------------------------------------------
# TimeFunction and Hamiltonian.add validation
# --------------------------------------------------------------------------------------------

def test_time_function_accepts_whitelisted_expressions():
    f = TimeFunction("exp(-t)*sin(pi*t) + 0.5*cos(2*t)**2")
    t = np.linspace(0, 3, 7)
    np.testing.assert_allclose(f(t), np.exp(-t) * np.sin(np.pi * t) + 0.5 * np.cos(2 * t) ** 2)
    g = TimeFunction(lambda t: 2.0 * t + 1.0)
    assert float(g(2.0)) == 5.0


@pytest.mark.parametrize("expr,msg", [
    ("cos(omega*t)", "unknown name 'omega'"),
    ("log(t)", "only sin, cos"),
    ("__import__('os')", "only sin, cos"),
    ("t.real", "unsupported syntax"),
    ("t > 1", "unsupported syntax"),
    ("[t][0]", "unsupported syntax"),
    ("", "expected an expression"),
    ("sqrt(t - 1)", "not finite"),
])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_time_function_rejects_bad_expressions(expr, msg):
    with pytest.raises(ValueError, match=r"model\.terms\[2\]\.f: .*" + msg):
        TimeFunction(expr, where="model.terms[2].f")


def test_time_function_division_by_zero_is_a_field_error():
    with pytest.raises(ValueError, match=r"model\.terms\[0\]\.f"):
        TimeFunction("1/t", where="model.terms[0].f")


@pytest.mark.parametrize("coef,ops,msg", [
    (1.0, "Q0 Z1", "unknown Pauli label 'Q'"),
    (1.0, [(0, "W")], "unknown Pauli label 'W'"),
    (float("nan"), "Z0", "not finite"),
    (float("inf"), "Z0 Z1", "not finite"),
    (-float("inf"), [(1, "X")], "not finite"),
    (1j, "Z0", "must be a real number"),
    (True, "Z0", "must be a real number"),
    (1.0, "Z4", "site 4 outside 0..3"),
    (1.0, [(-1, "Z")], "site -1 outside 0..3"),
    (1.0, "X0 Z0", "site 0 appears twice"),
    (1.0, "I2", "at least one site"),
])
def test_hamiltonian_add_rejects_bad_terms(coef, ops, msg):
    h = Hamiltonian(4)
    with pytest.raises(ValueError, match=r"model\.terms\[7\]: .*" + msg):
        h.add(coef, ops, where="model.terms[7]")
    with pytest.raises(ValueError, match=r"^model\.terms: "):  # default field name
        h.add(coef, ops)
    assert h.terms == []


def test_hamiltonian_add_rejects_non_integer_sites():
    with pytest.raises(ValueError, match="model.terms"):
        Hamiltonian(4).add(1.0, [(0.5, "Z")])


def test_hamiltonian_rejects_bad_size_and_skips_zero_terms():
    for n in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="model.n_sites"):
            Hamiltonian(n)
    h = Hamiltonian(3).add(0.0, "Z0").add(2, [(2, "y"), (0, "I")])
    assert len(h.terms) == 1 and h.terms[0].ops == ((2, "Y"),) and h.terms[0].coef == 2.0


# --------------------------------------------------------------------------------------------
# Sz conservation
# --------------------------------------------------------------------------------------------

def _commutes_with_total_sz(h):
    H = dense_hamiltonian(h)
    sz = sum(pauli.dense_string([(k, "Z")], h.n_sites) for k in range(h.n_sites))
    return bool(np.abs(H @ sz - sz @ H).max() < 1e-12)


def test_conserves_sz():
    cases = [
        (models.heisenberg(6, hz=1.5, seed=4), True),
        (models.xy(6), True),
        (models.tfim(4), False),
        (models.tfim(4, hx=0.0, hz=0.3), True),
        (models.ising_chaotic(5), False),
        (Hamiltonian(3).add(1.0, "X0 Y1").add(-1.0, "Y0 X1"), True),   # DM term: conserves
        (Hamiltonian(3).add(1.0, "X0 Y1").add(1.0, "Y0 X1"), False),   # σ+σ+ + h.c.
        (Hamiltonian(3).add(1.0, "X0 X2"), False),
        (Hamiltonian(3).add(1.0, "X0 X2").add(1.0, "Y0 Y2"), True),
    ]
    for h, expected in cases:
        assert h.conserves_sz() is expected, h.summary()
        assert _commutes_with_total_sz(h) is expected  # independent dense check
    # terms are grouped by (support, time function): f(t)·(XX + YY) conserves Sz ...
    tf = TimeFunction("cos(t)")
    hf = Hamiltonian(2).add(1.0, "X0 X1", tfunc=tf).add(1.0, "Y0 Y1", tfunc=tf)
    assert hf.conserves_sz() is True
    # ... while f(t)·XX + YY does not (at generic t), and neither does f(t)·XY − YX
    assert Hamiltonian(2).add(1.0, "X0 X1", tfunc=tf).add(1.0, "Y0 Y1").conserves_sz() is False
    assert Hamiltonian(2).add(1.0, "X0 Y1", tfunc=tf).add(-1.0, "Y0 X1").conserves_sz() is False
