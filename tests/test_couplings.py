"""Couplings as data: Hamiltonian.from_couplings, its vectorised compilation, couplings files.

The vectorised store must be the same model as the term-by-term one: the compiled right-hand
sides (eq. (19)) agree on random states to 1e-12, RK4 trajectories of both backends agree to
1e-12, and exact dynamics agree to the ED integrator's accuracy.
"""
import hashlib

import numpy as np
import pytest

from ctwa_hpc.method import clusters, dynamics, kernels, observables, sampling
from ctwa_hpc.exact import statevector as exact
from ctwa_hpc.model import pauli, states
from ctwa_hpc.model.couplingfile import load_couplings, save_couplings
from ctwa_hpc.model.hamiltonian import Hamiltonian, TimeFunction

P = clusters.Partition
TOL = 1e-12


def _sym(rng, n, scale=1.0):
    m = rng.normal(scale=scale, size=(n, n))
    m = m + m.T
    np.fill_diagonal(m, 0.0)
    return m


def _upper(rng, n):
    return np.triu(rng.normal(size=(n, n)), 1)


def _model(n=6, seed=3, mixed=True, fields=True):
    rng = np.random.default_rng(seed)
    J = {"xx": _sym(rng, n), "J_yy": _sym(rng, n), "zz": _sym(rng, n)}
    if mixed:
        J["xy"] = _upper(rng, n)
        J["J_yx"] = _upper(rng, n)
        J["xz"] = _sym(rng, n)           # symmetric: only the upper triangle is used
        J["zy"] = _upper(rng, n)
    h = {"z": rng.normal(size=n), "h_x": rng.normal(size=n), "y": rng.normal(size=n)} \
        if fields else None
    return J, h


def _term_by_term(J, h, tfuncs=None, order_seed=None):
    """The same model written with H.add, in a shuffled order (the reference)."""
    tfuncs = tfuncs or {}
    n = next(iter(J.values())).shape[0]
    items = []
    for key, M in J.items():
        ab = key[-2:].upper()
        for i in range(n):
            for j in range(i + 1, n):
                if M[i, j] != 0:
                    items.append((M[i, j], [(i, ab[0]), (j, ab[1])], tfuncs.get(key)))
    for key, v in (h or {}).items():
        for i in range(n):
            items.append((v[i], [(i, key[-1].upper())], tfuncs.get(key)))
    if order_seed is not None:
        perm = np.random.default_rng(order_seed).permutation(len(items))
        items = [items[k] for k in perm]
    H = Hamiltonian(n)
    for coef, ops, f in items:
        H.add(coef, ops, tfunc=f)
    return H


def _rhs(H, part, psi, t):
    prob = clusters.compile_problem(H, part)
    plan = observables.ObservableSet(H.n_sites, ["sz"]).compile(part)
    prop = dynamics.NumpyPropagator(prob, plan, np.ones(psi.shape[1]))
    fvals = np.array([float(f(t)) for f in prob.tfuncs])
    return prop.rhs(psi, fvals)


def _random_psi(part, R=1, S=5, seed=0):
    rng = np.random.default_rng(seed)
    A = int(part.offsets[-1])
    return rng.normal(size=(A, R, S)) + 1j * rng.normal(size=(A, R, S))


PARTITIONS = {
    "c1": lambda n: P.contiguous(n, 1),
    "c2": lambda n: P.contiguous(n, 2),
    "c3_offset": lambda n: P.contiguous(n, 3, offset=1),
    "noncontig": lambda n: P.from_lists(n, [[0, 3], [5, 1], [2, 4]]),
    "one": lambda n: P.contiguous(n, n),
}


@pytest.mark.parametrize("pname", sorted(PARTITIONS))
@pytest.mark.parametrize("mixed", [False, True])
def test_compiled_rhs_matches_term_by_term(pname, mixed):
    J, h = _model(mixed=mixed)
    tf = {"xx": TimeFunction("cos(1.3*t)"), "z": TimeFunction("exp(-0.4*t)")}
    if mixed:
        tf["J_yx"] = tf["xx"]                        # one function shared by two families
    Hv = Hamiltonian.from_couplings(J, h, tfuncs=tf)
    Ht = _term_by_term(J, h, tfuncs=tf, order_seed=7)
    part = PARTITIONS[pname](6)
    psi = _random_psi(part, R=2)
    for t in (0.0, 0.7, 2.1):
        a, b = _rhs(Hv, part, psi, t), _rhs(Ht, part, psi, t)
        assert np.abs(a - b).max() <= TOL * np.abs(b).max()
    assert Hv.time_dependent and len(Hv.time_functions()) == 2


def test_compiled_arrays_equal_materialised_terms():
    """Compiling the block and compiling its materialised terms in storage order give the same
    couplings (identical arrays) and the same local operators (to rounding of the sums)."""
    J, h = _model()
    Hv = Hamiltonian.from_couplings(J, h, tfuncs={"zz": "sin(t)"})
    Ht = Hamiltonian(6, terms=list(Hv.terms))
    assert len(Ht.terms) == Hv.n_terms
    part = P.from_lists(6, [[0, 3], [5, 1], [2, 4]])
    pv, pt = clusters.compile_problem(Hv, part), clusters.compile_problem(Ht, part)
    ops_v = [(int(c), int(m), tuple(pv.ops.diag[pv.ops.doff[e]:pv.ops.doff[e + 1]]))
             for e, (c, m) in enumerate(zip(pv.ops.cluster, pv.ops.mask))]
    ops_t = [(int(c), int(m), tuple(pt.ops.diag[pt.ops.doff[e]:pt.ops.doff[e + 1]]))
             for e, (c, m) in enumerate(zip(pt.ops.cluster, pt.ops.mask))]
    cp_v = sorted(zip([ops_v[k] for k in pv.cp_a], [ops_v[k] for k in pv.cp_b],
                      pv.cp_J.tolist(), pv.cp_tf.tolist()))
    cp_t = sorted(zip([ops_t[k] for k in pt.cp_a], [ops_t[k] for k in pt.cp_b],
                      pt.cp_J.tolist(), pt.cp_tf.tolist()))
    assert cp_v == cp_t
    assert np.array_equal(pv.cp_J, pt.cp_J) and np.array_equal(pv.cp_tf, pt.cp_tf)
    assert len(pv.ops) == len(pt.ops) == len(set(ops_t))      # de-duplicated per (site, label)

    def local(p):
        return {(int(c), int(m), int(g)): p.local.diag[p.local.doff[e]:p.local.doff[e + 1]]
                for e, (c, m, g) in enumerate(zip(p.local.cluster, p.local.mask, p.local_tf))}
    lv, lt = local(pv), local(pt)
    assert lv.keys() == lt.keys()
    for k in lv:
        assert np.abs(lv[k] - lt[k]).max() <= TOL * max(1.0, np.abs(lt[k]).max())


def test_block_mixed_with_explicit_terms_and_integrate():
    """A block plus explicit terms (a three-site term inside a cluster, a time-dependent
    coupling): RK4 trajectories of the compiled kernel (or NumPy) against the term-by-term
    model, for a discrete-sampling batch."""
    J, h = _model(n=6, seed=11)
    tf = TimeFunction("cos(0.9*t)")

    def extra(H):
        H.add(0.35, "X0 Y1 Z2")
        H.add(-0.5, "Z1 X4", tfunc=tf)
        return H
    Hv = extra(Hamiltonian.from_couplings(J, h, tfuncs={"xy": tf}))
    Ht = extra(_term_by_term(J, h, tfuncs={"xy": tf}, order_seed=2))
    part = P.from_lists(6, [[0, 1, 2], [3, 5], [4]])
    out = []
    for H in (Hv, Ht):
        prob = clusters.compile_problem(H, part)
        obs = observables.ObservableSet(6, ["sz", "sx", "czz"],
                                        pairs=[(0, 4), (2, 5)], hamiltonian=H)
        plan = obs.compile(part)
        batch = sampling.draw_batch(prob, states.make_state("x", 6), "sb", 4, 0, np.arange(9))
        n_steps, dt = 20, 0.02
        tab = prob.tf_table(0.5 * dt * np.arange(2 * n_steps + 1))
        cols, _ = kernels.integrate(prob, plan, batch.psi, batch.weights, 0.0, dt, n_steps, 5,
                                    tab)
        out.append(cols)
    assert np.abs(out[0] - out[1]).max() <= TOL * np.abs(out[1]).max()


def test_exact_dynamics_agree():
    J, h = _model(n=5, seed=5)
    tf = {"zz": "cos(2*t)"}
    Hv = Hamiltonian.from_couplings(J, h, tfuncs=tf)
    Ht = _term_by_term(J, h, tfuncs={"zz": Hv.time_functions()[0]}, order_seed=1)
    state = states.make_state("neel", 5)
    cols = [[(1.0, ((i, lab),))] for i in range(5) for lab in "XZ"]
    cols.append([(1.0, ((0, "Z"), (3, "Y")))])
    times = np.linspace(0.0, 1.0, 6)
    a, _ = exact.evolve(Hv, state, times, cols)
    b, _ = exact.evolve(Ht, state, times, cols)
    assert np.abs(a - b).max() < 1e-8      # DOP853 at rtol 1e-10 on both
    # static, Sz conserving: sector basis, expm_multiply
    J2 = {"xx": J["xx"], "yy": J["xx"], "zz": J["zz"]}
    h2 = {"z": h["z"]}
    Hv2, Ht2 = Hamiltonian.from_couplings(J2, h2), _term_by_term(J2, h2, order_seed=3)
    assert Hv2.conserves_sz() and Ht2.conserves_sz()
    assert len(exact.choose_basis(Hv2, state.theta, state.phi)) == 10
    a, _ = exact.evolve(Hv2, state, times, cols)
    b, _ = exact.evolve(Ht2, state, times, cols)
    assert np.abs(a - b).max() < 1e-10


def _commutes_with_sz(H):
    n = H.n_sites
    sz = sum(pauli.dense_string([(k, "Z")], n) for k in range(n))
    groups = {}
    for t in H.terms:
        groups.setdefault(id(t.tfunc), []).append(t)
    for terms in groups.values():
        m = sum(t.coef * pauli.dense_string(t.ops, n) for t in terms)
        if np.abs(m @ sz - sz @ m).max() > 1e-10:
            return False
    return True


def test_conserves_sz():
    rng = np.random.default_rng(2)
    n = 5
    X = _sym(rng, n)
    D = _upper(rng, n)
    cases = [
        ({"xx": X, "yy": X, "zz": _sym(rng, n)}, {"z": rng.normal(size=n)}, None, True),
        ({"xx": X, "yy": X, "xy": D, "yx": -D}, None, None, True),            # DM term
        ({"xx": X, "yy": X, "xy": D, "yx": D}, None, None, False),
        ({"xx": X, "yy": 1.01 * X}, None, None, False),
        ({"xx": X, "yy": X, "xz": D}, None, None, False),
        ({"xx": X, "yy": X, "zy": D}, None, None, False),
        ({"zz": X}, {"x": np.eye(n)[2]}, None, False),
        ({"xx": X, "yy": X}, None, {"xx": "cos(t)"}, False),
        ({"xx": X, "yy": X}, None, {"xx": "cos(t)", "yy": "cos(t)"}, True),   # same f(t)
        ({"xx": X, "yy": X}, None, {"xx": "cos(t)", "yy": "sin(t)"}, False),
    ]
    for J, h, tf, expected in cases:
        H = Hamiltonian.from_couplings(J, h, tfuncs=tf)
        assert H.conserves_sz() is expected, (sorted(J), tf)
        if tf is None or len(set(tf.values())) == len(tf):
            assert _commutes_with_sz(H) is expected
    # a block and explicit terms on the same pairs are summed before the check
    H = Hamiltonian.from_couplings({"xx": X})
    assert H.conserves_sz() is False
    for i in range(n):
        for j in range(i + 1, n):
            H.add(X[i, j], [(i, "Y"), (j, "Y")])
    assert H.conserves_sz() is True and _commutes_with_sz(H)


def test_properties_and_terms():
    J, h = _model(n=4, mixed=False)
    H = Hamiltonian.from_couplings(J, h, name="mine", info={"a": 1})
    assert H.name == "mine" and H.info == {"a": 1}
    assert not H.time_dependent and H.time_functions() == []
    n_pairs = 3 * 6
    assert H.n_terms == len(H.terms) == n_pairs + 3 * 4
    assert H.summary() == f"mine: 4 sites, {n_pairs + 12} terms ({n_pairs + 12} as coupling arrays)"
    t = H.terms[0]
    assert t.ops == ((0, "X"), (1, "X")) and t.coef == J["xx"][0, 1] and t.tfunc is None
    H.add(0.5, "X0 Y1 Z3", tfunc="sin(t)")
    assert H.n_terms == len(H.terms) == n_pairs + 13 and H.time_dependent
    assert H.terms[0].ops == ((0, "X"), (1, "Y"), (3, "Z"))     # explicit terms first
    # zero entries are not stored; a block of zeros adds nothing
    H0 = Hamiltonian.from_couplings({"zz": np.zeros((3, 3))})
    assert H0.n_terms == 0 and H0.blocks == [] and H0.terms == []
    # add_couplings on an existing model
    H2 = Hamiltonian(4).add(1.0, "Z0").add_couplings(h={"x": np.ones(4)})
    assert H2.n_terms == 5 and len(H2.blocks) == 1
    # fields only
    assert Hamiltonian.from_couplings({}, {"h_z": np.arange(3.0)}).n_terms == 2


def test_pair_strength():
    J, h = _model(n=5)
    Hv = Hamiltonian.from_couplings(J, h).add(0.5, "X0 Z3").add(0.2, "X0 Y1 Z2")
    s2 = np.zeros((5, 5))
    for t in Hv.terms:
        if len(t.ops) == 2:
            (i, _), (j, _) = t.ops
            s2[i, j] += t.coef ** 2
            s2[j, i] += t.coef ** 2
    assert np.allclose(Hv.pair_strength(), np.sqrt(s2), rtol=1e-14, atol=0)


@pytest.mark.parametrize("J, h, tf, msg", [
    ({"xx": np.array([[0, 1.0], [0.5, 0]])}, None, None,
     r"^J_xx: not symmetric \(max \|J - J\^T\| = 0.5 at \(0, 1\)\)"),
    ({"zz": np.array([[0.3, 1.0], [1.0, 0]])}, None, None, r"^J_zz: diagonal must be zero"),
    ({"xy": np.array([[0.1, 1.0], [0.0, 0]])}, None, None, r"^J_xy: diagonal must be zero"),
    ({"xx": np.zeros((3, 3)), "yy": np.zeros((3, 4))}, None, None, r"^J_yy: shape \(3, 4\)"),
    ({"xx": np.zeros((3, 3))}, {"z": np.zeros(4)}, None,
     r"^h_z: shape \(4,\) does not match N = 3"),
    ({"xx": np.zeros(3)}, None, None, r"^J_xx: expected shape \(N, N\)"),
    ({"xx": np.zeros((2, 3, 3))}, None, None, r"^J_xx: expected shape \(N, N\)"),
    ({"xx": np.array([[0, np.nan], [np.nan, 0]])}, None, None,
     r"^J_xx: 2 non-finite entries \(first at \(0, 1\)\)"),
    ({"xx": np.zeros((2, 2))}, {"x": [0.0, np.inf]}, None, r"^h_x: 1 non-finite"),
    ({"xx": np.zeros((2, 2), complex)}, None, None, r"^J_xx: expected a real numeric array"),
    ({"xq": np.zeros((2, 2))}, None, None, r"^J: unknown coupling key 'xq'"),
    ({"xx": np.zeros((2, 2)), "J_xx": np.zeros((2, 2))}, None, None,
     r"^J: keys 'xx' and 'J_xx' name the same array J_xx"),
    ({"xy": np.array([[0, 1.0, 0], [0.5, 0, 0], [0, 0, 0]])}, None, None,
     r"^J_xy: the lower triangle \(i > j\) must be zero or mirror the upper one"),
    ({}, None, None, r"^J: no couplings or fields given"),
    ({"xx": np.zeros((2, 2))}, {"w": np.zeros(2)}, None, r"^h: unknown field key 'w'"),
    ({"xx": np.zeros((2, 2))}, None, {"zz": "cos(t)"}, r"^tfuncs.zz: the model has no J_zz"),
    ({"xx": np.zeros((2, 2))}, None, {"q": "cos(t)"}, r"^tfuncs.q: unknown family"),
    ({"xx": np.zeros((2, 2))}, None, {"xx": "cos(s)"}, r"^tfuncs.xx: "),
    ({"xx": np.zeros((2, 2))}, None, {"xx": {"g": "t"}}, r"^tfuncs.xx: expected a table"),
    ({"xx": np.zeros((2, 2))}, None, {"xx": "t", "J_xx": "t"}, r"^tfuncs.J_xx: family 'xx' is"),
])
def test_validation_errors(J, h, tf, msg):
    with pytest.raises(ValueError, match=msg):
        Hamiltonian.from_couplings(J, h, tfuncs=tf)


def test_add_couplings_checks_n_sites():
    with pytest.raises(ValueError, match=r"^J_zz: shape \(3, 3\) does not match N = 4"):
        Hamiltonian(4).add_couplings({"zz": np.zeros((3, 3))})


def test_compile_fast_path_handles_many_pairs():
    """All-to-all N = 64 with clusters of 4: the vectorised compile equals term by term."""
    n = 64
    r = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :]) + np.eye(n)
    Jm = 1.0 / r ** 1.5
    np.fill_diagonal(Jm, 0.0)
    J = {"xx": Jm, "yy": Jm, "zz": 2.0 * Jm}
    h = {"z": np.linspace(-1, 1, n)}
    part = P.contiguous(n, 4, offset=2)
    psi = _random_psi(part, S=3, seed=4)
    a = _rhs(Hamiltonian.from_couplings(J, h), part, psi, 0.0)
    b = _rhs(_term_by_term(J, h), part, psi, 0.0)
    assert np.abs(a - b).max() <= TOL * np.abs(b).max()


# ------------------------------------------------------------------------------------------
# couplings files
# ------------------------------------------------------------------------------------------

def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_npz_round_trip_with_realizations(tmp_path):
    rng = np.random.default_rng(8)
    n, R = 5, 3
    Jxx = np.stack([_sym(rng, n) for _ in range(R)])
    Jzz = _sym(rng, n)                                   # shared by every realization
    hz = rng.normal(size=(R, n))
    path = save_couplings(tmp_path / "c.npz", {"xx": Jxx, "J_zz": Jzz, "xy": _upper(rng, n)},
                          {"z": hz})
    f = load_couplings(path)
    assert (f.n_sites, f.n_realizations) == (n, R)
    assert f.content_hash == _sha(path)
    assert sorted(np.load(path).files) == ["J_xx", "J_xy", "J_zz", "h_z"]
    for r in range(R):
        H = f.hamiltonian(r)
        ref = Hamiltonian.from_couplings({"xx": Jxx[r], "zz": Jzz, "xy": f.J["xy"]},
                                         {"z": hz[r]})
        part = P.contiguous(n, 2)
        psi = _random_psi(part, seed=r)
        assert np.abs(_rhs(H, part, psi, 0.0) - _rhs(ref, part, psi, 0.0)).max() < 1e-13
        assert H.info["realization"] == r and H.info["content_hash"] == f.content_hash
    with pytest.raises(ValueError, match=r"^model.file .*realization 3 does not exist"):
        f.hamiltonian(3)
    H = f.hamiltonian(1, tfuncs={"h_z": {"f": "cos(omega*t)", "params": {"omega": 2.0}}})
    (g,) = H.time_functions()
    assert H.time_dependent and np.isclose(g(0.3), np.cos(0.6))
    # the same content gives the same hash; different content another one
    path2 = save_couplings(tmp_path / "d.npz", {"xx": Jxx, "J_zz": Jzz, "xy": f.J["xy"]},
                           {"z": hz})
    assert load_couplings(path2).content_hash == f.content_hash
    save_couplings(path2, {"xx": Jxx}, {"z": hz})
    assert load_couplings(path2).content_hash != f.content_hash


def test_h5_round_trip(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(9)
    n, R = 4, 2
    Jzz = np.stack([_sym(rng, n) for _ in range(R)])
    hx = rng.normal(size=n)
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as fh:
        fh["J_zz"] = Jzz
        fh["h_x"] = hx
        fh["positions"] = np.arange(n, dtype=float)[:, None]
        fh.create_group("notes")
    f = load_couplings(path)
    assert (f.n_sites, f.n_realizations) == (n, R) and f.content_hash == _sha(path)
    assert np.array_equal(f.J["zz"], Jzz) and np.array_equal(f.h["x"], hx)
    assert list(f.extra) == ["positions"]
    H = f.hamiltonian(1)
    assert H.n_terms == 6 + 4 and not H.conserves_sz()
    ref = Hamiltonian.from_couplings({"zz": Jzz[1]}, {"x": hx})
    part = P.contiguous(n, 1)
    psi = _random_psi(part)
    assert np.abs(_rhs(H, part, psi, 0.0) - _rhs(ref, part, psi, 0.0)).max() < 1e-13


def test_file_errors(tmp_path):
    def npz(name, **arrays):
        p = tmp_path / name
        np.savez(p, **arrays)
        return p
    z = np.zeros((3, 3))
    bad = np.array([[0, 1.0, 0], [2.0, 0, 0], [0, 0, 0]])
    cases = [
        (npz("a.npz", h_z=np.zeros(3)), r"no coupling array"),
        (npz("b.npz", J_xx=bad), r"J_xx: not symmetric"),
        (npz("c.npz", J_xx=np.stack([z, bad])), r"J_xx: not symmetric .* at \(1, 0, 1\)"),
        (npz("d.npz", J_xx=np.zeros((2, 3, 3)), h_z=np.zeros((3, 3))),
         r"h_z: 3 realizations, but .*J_xx has 2"),
        (npz("e.npz", J_xx=z, J_qq=z), r"unknown coupling key 'J_qq'"),
        (npz("f.npz", J_xx=z, h_z=np.zeros(4)), r"h_z: shape \(4,\) does not match N = 3"),
        (npz("g.npz", J_yy=np.full((3, 3), np.inf)), r"J_yy: 9 non-finite"),
        (tmp_path / "missing.npz", r"cannot read"),
    ]
    for path, msg in cases:
        with pytest.raises(ValueError, match=r"^model\.file.*" + msg):
            load_couplings(path)
    txt = tmp_path / "j.txt"
    txt.write_text("1")
    with pytest.raises(ValueError, match=r"^model\.file: .*unsupported extension '.txt'"):
        load_couplings(txt)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"^model\.file .*cannot read as .npz"):
        load_couplings(junk)
    with pytest.raises(ValueError, match=r"^save_couplings: .*must end in .npz"):
        save_couplings(tmp_path / "x.h5", {"xx": z})
    # only J_zz missing is fine
    f = load_couplings(npz("ok.npz", J_xx=z, J_yy=z))
    assert f.n_realizations == 1 and f.hamiltonian(0).n_terms == 0
