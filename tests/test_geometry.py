"""Tests of ctwa_hpc.model.geometry: lattices, positions, couplings, fields, clusterings, dict specs."""
import itertools

import numpy as np
import pytest

from ctwa_hpc.model import geometry as g
from ctwa_hpc.method.clusters import Partition
from ctwa_hpc.model.geometry import fields as gfields, spec as gspec

XXZ = {"xx": 1.0, "yy": 1.0, "zz": 2.0}


def rng(seed=0):
    return np.random.default_rng(np.random.SeedSequence([seed, 0]))


def nn_bonds(geom):
    J = g.nearest_neighbour(geom, {"zz": 1.0})["zz"]
    i, j = np.nonzero(np.triu(J))
    return i, j, J


def brute_min_image(geom):
    """Minimum-image displacements by trying every image shift in {-1, 0, 1}^d."""
    d = geom.dim
    base = geom.positions[None, :, :] - geom.positions[:, None, :]
    best = base.copy()
    bestr = np.linalg.norm(base, axis=-1)
    for shift in itertools.product((-1, 0, 1), repeat=d):
        s = np.array(shift, float)
        if np.any(s[~geom.periodic] != 0):
            continue
        cand = base + s * np.where(geom.periodic, geom.box, 0.0)
        r = np.linalg.norm(cand, axis=-1)
        better = r < bestr - 1e-12
        best[better] = cand[better]
        bestr = np.minimum(bestr, r)
    return best, bestr


def assert_partition(clusters, n):
    flat = [s for c in clusters for s in c]
    assert sorted(flat) == list(range(n))
    assert all(len(c) > 0 for c in clusters)


# ------------------------------------------------------------------------------ lattices
@pytest.mark.parametrize("kind,size,z", [("chain", 8, 2), ("square", (4, 6), 4),
                                         ("triangular", (4, 6), 6), ("honeycomb", (3, 4), 3),
                                         ("cubic", (4, 4, 4), 6)])
def test_coordination_periodic(kind, size, z):
    geom = g.lattice(kind, size, boundary="periodic", spacing=1.5)
    _, _, J = nn_bonds(geom)
    assert np.all((J != 0).sum(axis=1) == z)
    D = geom.distances()
    assert np.allclose(D[J != 0], 1.5)                 # spacing = nearest-neighbour distance
    np.fill_diagonal(D, np.inf)
    assert np.isclose(D.min(), 1.5)


def test_site_counts_order_and_cells():
    sq = g.square(3, 2)
    assert sq.n_sites == 6 and sq.dim == 2
    assert np.array_equal(sq.cells, [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]])
    hc = g.honeycomb(2, 3)
    assert hc.n_sites == 12
    assert np.array_equal(hc.sublattice[:4], [0, 1, 0, 1])       # basis index innermost
    assert np.array_equal(hc.cells[:4], [[0, 0], [0, 0], [1, 0], [1, 0]])
    cu = g.cubic(2, 3, 4)
    i = 1 + 2 * (2 + 3 * 3)
    assert np.array_equal(cu.cells[i], [1, 2, 3]) and np.allclose(cu.positions[i], [1, 2, 3])
    ch = g.lattice("chain", 5, spacing=2.0)
    assert ch.positions.shape == (5, 1) and np.allclose(ch.positions[:, 0], [0, 2, 4, 6, 8])
    # open lattices: bulk coordination, fewer at the edges
    _, _, J = nn_bonds(g.triangular(5, 5))
    assert (J != 0).sum(axis=1).max() == 6 and (J != 0).sum(axis=1).min() == 2


def test_minimum_image_matches_brute_force():
    for geom in (g.chain(7, "periodic"), g.square(4, 5, ["periodic", "open"]),
                 g.triangular(4, 4, "periodic"), g.random_box(30, [3.0, 2.0, 4.0], rng(1),
                                                             periodic=[True, False, True])):
        best, bestr = brute_min_image(geom)
        assert np.allclose(geom.distances(), bestr)
        disp = geom.displacements()
        assert disp.shape == (geom.n_sites, geom.n_sites, geom.dim)
        assert np.allclose(np.linalg.norm(disp, axis=-1), bestr)
        half = np.where(geom.periodic, geom.box / 2, np.inf)
        assert np.all(np.abs(disp) <= half + 1e-12)
    ring = g.chain(10, "periodic")
    assert np.isclose(ring.distances()[0, 9], 1.0)
    assert np.isclose(ring.displacements()[0, 9, 0], -1.0)       # r_9 - r_0 wraps to -1
    assert np.isclose(g.chain(10).distances()[0, 9], 9.0)        # open: no wrap


@pytest.mark.parametrize("geom", [g.chain(7), g.chain(8, "periodic"), g.square(5, 3),
                                  g.square(4, 6, "periodic"), g.cubic(3, 4, 2),
                                  g.cubic(4, 2, 4, "periodic"), g.honeycomb(3, 4, "periodic"),
                                  g.honeycomb(3, 3)])
def test_checkerboard_is_proper_two_colouring(geom):
    i, j, _ = nn_bonds(geom)
    assert len(i) > 0 and np.all(geom.sublattice[i] != geom.sublattice[j])
    s = geom.staggered_signs()
    assert set(np.unique(s)) <= {-1, 1} and np.all(s[i] * s[j] == -1)


def test_non_bipartite_lattices():
    assert g.triangular(4, 4).sublattice is None
    assert g.chain(7, "periodic").sublattice is None
    assert g.square(3, 4, "periodic").sublattice is None
    assert g.square(3, 4, ["open", "periodic"]).sublattice is not None
    assert g.honeycomb(3, 2, "periodic").sublattice is not None   # bonds always join A and B
    with pytest.raises(ValueError, match=r"^state\.kind: .*not bipartite"):
        g.triangular(4, 4).staggered_signs()


def test_lattice_errors_name_fields():
    with pytest.raises(ValueError, match=r"^model\.lattice: unknown"):
        g.lattice("kagome", 4)
    with pytest.raises(ValueError, match=r"^model\.size"):
        g.lattice("square", (4, 4, 4))
    with pytest.raises(ValueError, match=r"^model\.size"):
        g.square(0, 3)
    with pytest.raises(ValueError, match=r"^model\.size: .*even Ly"):
        g.triangular(4, 3, "periodic")
    with pytest.raises(ValueError, match=r"^model\.boundary"):
        g.square(4, 4, "twisted")
    with pytest.raises(ValueError, match=r"^model\.spacing"):
        g.chain(4, spacing=-1.0)


# ------------------------------------------------------------------------------ positions
def test_random_box_and_reproducibility():
    a = g.random_box(200, [2.0, 3.0], rng(5))
    b = g.random_box(200, [2.0, 3.0], rng(5))
    assert np.array_equal(a.positions, b.positions)
    assert np.all(a.positions >= 0) and np.all(a.positions < [2.0, 3.0])
    assert a.sublattice is None and a.cells is None and a.kind == "box"
    assert not np.array_equal(a.positions, g.random_box(200, [2.0, 3.0], rng(6)).positions)


def test_partial_fill_count_reproducible_and_carried_over():
    parent = g.chain(32)
    f1 = g.partial_fill(parent, 0.5, rng(3))
    f2 = g.partial_fill(parent, 0.5, rng(3))
    assert f1.n_sites == 16 and np.array_equal(f1.positions, f2.positions)
    x = f1.positions[:, 0]
    assert np.all(np.diff(x) > 0)                                   # sorted, no repeats
    assert np.array_equal(f1.sublattice, x.astype(int) % 2)         # lattice parity kept
    assert np.array_equal(f1.cells[:, 0], x.astype(int))
    alt = f1.with_alternating_sublattice()                          # PRB 110, 054204 Néel
    assert np.array_equal(alt.staggered_signs(), (-1) ** np.arange(16))
    assert np.array_equal(alt.positions, f1.positions)
    assert g.partial_fill(g.square(5, 5), 0.3, rng(0)).n_sites == 8   # round(7.5) = 8
    assert g.partial_fill(parent, None, rng(0), n_keep=5).n_sites == 5
    full = g.partial_fill(parent, 1.0, rng(0))
    assert np.array_equal(full.positions, parent.positions)
    with pytest.raises(ValueError, match=r"^model\.filling"):
        g.partial_fill(parent, 1.5, rng(0))
    with pytest.raises(ValueError, match=r"^model\.filling: .*keeps no site"):
        g.partial_fill(parent, 0.01, rng(0))


def test_blockade_minimum_distance_and_failure():
    for per in (False, True):
        geom = g.blockade(200, [20.0, 20.0], 1.0, rng(2), periodic=per)
        D = geom.distances()
        np.fill_diagonal(D, np.inf)
        assert geom.n_sites == 200 and D.min() >= 1.0
        assert np.all(geom.positions >= 0) and np.all(geom.positions < 20.0)
    again = g.blockade(200, [20.0, 20.0], 1.0, rng(2))
    assert np.array_equal(again.positions, g.blockade(200, [20.0, 20.0], 1.0, rng(2)).positions)
    g3 = g.blockade(150, [8.0, 8.0, 8.0], 1.2, rng(4), periodic=True)
    D = g3.distances()
    np.fill_diagonal(D, np.inf)
    assert D.min() >= 1.2
    with pytest.raises(ValueError, match=r"^model\.blockade_radius: could not place N = 100"):
        g.blockade(100, [5.0, 5.0], 1.0, rng(0))                     # beyond close packing
    with pytest.raises(ValueError, match=r"^model\.blockade_radius: could not place"):
        g.blockade(20, [3.0, 3.0], 1.0, rng(0), max_attempts=500)   # beyond jamming
    with pytest.raises(ValueError, match=r"^model\.blockade_radius"):
        g.blockade(10, [5.0], 0.0, rng(0))


def test_from_file_formats(tmp_path):
    pos = np.array([[0.0, 0.0], [1.0, 0.5], [2.0, -1.0]])
    np.save(tmp_path / "p.npy", pos)
    np.savez(tmp_path / "p.npz", positions=pos, box=[4.0, 4.0])
    np.savetxt(tmp_path / "p.txt", pos)
    np.savetxt(tmp_path / "p.csv", pos, delimiter=",")
    for name in ("p.npy", "p.npz", "p.txt", "p.csv"):
        geom = g.from_file(tmp_path / name)
        assert np.allclose(geom.positions, pos) and geom.kind == "file"
    assert np.allclose(g.from_file(tmp_path / "p.npz").box, [4.0, 4.0])
    np.save(tmp_path / "c.npy", np.arange(4.0))
    assert g.from_file(tmp_path / "c.npy").positions.shape == (4, 1)
    np.savez(tmp_path / "bad.npz", x=pos)
    with pytest.raises(ValueError, match=r"^model\.positions_file: .*no array 'positions'"):
        g.from_file(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match=r"^model\.positions_file: no such file"):
        g.from_file(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match=r"^model\.boundary: periodic axes need a box"):
        g.from_file(tmp_path / "p.npy", periodic=True)


# ---------------------------------------------------------------------------- interactions
def test_nearest_neighbour_chain_and_anisotropy():
    J = g.nearest_neighbour(g.chain(5), XXZ, J=0.5)
    assert set(J) == {"xx", "yy", "zz"}
    expect = 0.5 * (np.eye(5, k=1) + np.eye(5, k=-1))
    assert np.array_equal(J["xx"], expect) and np.array_equal(J["zz"], 2 * expect)
    Jp = g.nearest_neighbour(g.chain(5, "periodic"), {"zz": 1.0})["zz"]
    assert Jp[0, 4] == 1.0 and np.all(Jp.sum(axis=1) == 2)


def test_dipolar_angular_factor():
    J0, r = 0.7, 2.0
    along = g.Geometry(positions=[[0, 0, 0], [0, 0, r]])
    perp = g.Geometry(positions=[[0, 0, 0], [r, 0, 0]])
    assert np.isclose(g.dipolar(along, {"zz": 1}, J=J0)["zz"][0, 1], -2 * J0 / r**3)
    assert np.isclose(g.dipolar(perp, {"zz": 1}, J=J0)["zz"][0, 1], J0 / r**3)
    magic = np.arccos(1 / np.sqrt(3))
    tilted = g.Geometry(positions=[[0, 0, 0], [r * np.sin(magic), 0, r * np.cos(magic)]])
    assert abs(g.dipolar(tilted, {"zz": 1})["zz"][0, 1]) < 1e-14
    # 2D positions lie in the xy plane: axis z is perpendicular to every bond
    plane = g.square(3, 3)
    Jz = g.dipolar(plane, XXZ)
    D = plane.distances()
    off = ~np.eye(9, dtype=bool)
    assert np.allclose(Jz["xx"][off], 1 / D[off] ** 3) and np.allclose(Jz["zz"], 2 * Jz["xx"])
    Jx = g.dipolar(g.chain(3, spacing=1.0), {"xx": 1}, axis=(2, 0, 0))["xx"]   # axis along chain
    assert np.isclose(Jx[0, 2], -2 / 8) and np.isclose(Jx[1, 0], -2.0)
    with pytest.raises(ValueError, match=r"^model\.axis"):
        g.dipolar(plane, XXZ, axis=(0, 0, 0))


def test_power_law_values_cutoff_and_symmetry():
    geom = g.square(4, 4, "periodic")
    J = g.power_law(geom, 3.0, XXZ, J=2.0)
    D = geom.distances()
    off = ~np.eye(16, dtype=bool)
    assert np.allclose(J["yy"][off], 2.0 / D[off] ** 3)
    for k in J:
        assert np.array_equal(J[k], J[k].T) and np.all(np.diag(J[k]) == 0)
    Jc = g.power_law(geom, 3.0, {"zz": 1.0}, cutoff=np.sqrt(2))["zz"]
    kept = off & (D <= np.sqrt(2) + 1e-12)
    assert np.allclose(Jc[kept], 1 / D[kept] ** 3) and np.all(Jc[~kept] == 0)
    assert np.all((Jc != 0).sum(axis=1) == 8)                        # 4 at 1, 4 at sqrt 2
    with pytest.raises(ValueError, match=r"^model\.alpha"):
        g.power_law(geom, -1.0, XXZ)
    with pytest.raises(ValueError, match=r"^model\.cutoff"):
        g.power_law(geom, 1.0, XXZ, cutoff=0.0)


def test_interaction_errors():
    twin = g.Geometry(positions=[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match=r"^model\.positions: sites 0 and 2 coincide"):
        g.power_law(twin, 1.0, XXZ)
    with pytest.raises(ValueError, match=r"^model\.anisotropy: unknown component 'xw'"):
        g.nearest_neighbour(g.chain(3), {"xw": 1.0})
    with pytest.raises(ValueError, match=r"^model\.anisotropy\.zz"):
        g.nearest_neighbour(g.chain(3), {"zz": "big"})
    with pytest.raises(ValueError, match=r"^model\.anisotropy"):
        g.nearest_neighbour(g.chain(3), {})


def test_all_to_all_1024_vectorised():
    geom = g.random_box(1024, [10.0, 10.0, 10.0], rng(9))
    J = g.power_law(geom, 1.5, {"xx": 0.25, "yy": 0.25, "zz": 1.0})
    assert J["zz"].shape == (1024, 1024)
    r = np.linalg.norm(geom.positions[17] - geom.positions[901])
    assert np.isclose(J["zz"][17, 901], r ** -1.5) and np.isclose(J["xx"][901, 17], 0.25 * r ** -1.5)
    S = g.coupling_strength(J)
    assert np.allclose(S, np.sqrt(0.25**2 * 2 + 1) * np.abs(J["zz"]))
    pairs = g.strongest_pairs(S)
    assert_partition(pairs, 1024) and all(len(c) == 2 for c in pairs)


# ---------------------------------------------------------------------------------- fields
def test_fields_uniform_box_gaussian():
    specs = [{"component": "z", "kind": "uniform", "value": 0.5},
             {"component": "z", "kind": "box", "W": 2.0},
             {"component": "x", "kind": "gaussian", "sigma": 3.0, "value": 1.0}]
    h = g.make_fields(20000, specs, rng(1))
    assert set(h) == {"x", "z"}
    assert np.all(np.abs(h["z"] - 0.5) <= 2.0)
    # moments against their sampling errors (z-scores below 5)
    n = 20000
    assert abs(h["z"].mean() - 0.5) < 5 * (2.0 / np.sqrt(3)) / np.sqrt(n)
    assert abs(h["x"].mean() - 1.0) < 5 * 3.0 / np.sqrt(n)
    assert abs(h["x"].var() - 9.0) < 5 * 9.0 * np.sqrt(2 / n)
    again = g.make_fields(20000, specs, rng(1))
    assert np.array_equal(again["z"], h["z"]) and np.array_equal(again["x"], h["x"])
    assert g.fields_are_random(specs) and gfields.is_random(specs[1:2])
    assert not g.fields_are_random(specs[:1])
    assert not g.fields_are_random([{"component": "y", "kind": "box", "W": 0.0}])
    assert g.make_fields(4, [], rng(0)) == {}
    h1 = g.make_fields(3, [{"component": "y", "value": 1.0, "f": "cos(t)"}])   # f passes through
    assert np.array_equal(h1["y"], np.ones(3))


@pytest.mark.parametrize("specs,match", [
    ([{"component": "z", "value": 1.0}, {"component": "z", "kind": "box"}],
     r"^model\.fields\[1\]\.W: required"),
    ([{"component": "w", "value": 1.0}], r"^model\.fields\[0\]\.component"),
    ([{"component": "x", "kind": "lorentz"}], r"^model\.fields\[0\]\.kind"),
    ([{"component": "x", "kind": "gaussian", "sigma": -1}], r"^model\.fields\[0\]\.sigma: must be >= 0"),
    ([{"component": "x", "kind": "box", "W": 1, "sigma": 1}], r"^model\.fields\[0\]\.sigma: unknown key"),
    ([{"component": "x", "kind": "uniform"}], r"^model\.fields\[0\]\.value: required"),
])
def test_field_errors(specs, match):
    with pytest.raises(ValueError, match=match):
        g.make_fields(4, specs, rng(0))


# ------------------------------------------------------------------------------ clustering
def test_blocks_match_partition_contiguous():
    for n, size, off in [(8, 2, 0), (8, 2, 1), (10, 3, 4), (5, 5, 2)]:
        expect = [list(c) for c in Partition.contiguous(n, size, off).clusters]
        assert g.blocks(n, size, off) == expect
    with pytest.raises(ValueError, match=r"^method\.cluster_size"):
        g.blocks(4, 5)


def test_plaquettes():
    sq = g.square(4, 4)
    p = g.plaquettes(sq, (2, 2))
    assert p == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    shifted = g.plaquettes(g.square(4, 4, "periodic"), 2, offset=(1, 1))   # wraps
    assert len(shifted) == 4 and all(len(c) == 4 for c in shifted)
    assert [0, 3, 12, 15] in shifted
    ragged = g.plaquettes(sq, (2, 2), offset=(1, 1))                       # open: x and y blocks of 1, 2, 1 cells
    assert sorted(len(c) for c in ragged) == [1, 1, 1, 1, 2, 2, 2, 2, 4]
    hc = g.honeycomb(4, 2)
    ph = g.plaquettes(hc, (2, 1))
    assert len(ph) == 4 and all(len(c) == 4 for c in ph)
    for c in ph:                                        # A and B of a cell stay together
        cells, counts = np.unique(hc.cells[c], axis=0, return_counts=True)
        assert len(cells) == 2 and np.all(counts == 2) and hc.sublattice[c].sum() == 2
    cube = g.plaquettes(g.cubic(4, 2, 2), (2, 2, 2))
    assert len(cube) == 2 and all(len(c) == 8 for c in cube)
    pairs = g.plaquettes(g.chain(6), 2, offset=1)
    assert pairs == [[0], [1, 2], [3, 4], [5]]
    filled = g.partial_fill(g.square(4, 4, "periodic"), 0.5, rng(0))
    for geom, part in [(sq, p), (sq, ragged), (hc, ph), (filled, g.plaquettes(filled, (2, 2), (1, 0)))]:
        assert_partition(part, geom.n_sites)
    with pytest.raises(ValueError, match=r"^method\.clustering: 'plaquettes' needs a lattice"):
        g.plaquettes(g.random_box(4, [1.0, 1.0], rng(0)), (2, 2))
    with pytest.raises(ValueError, match=r"^method\.plaquette"):
        g.plaquettes(sq, (2, 0))


def test_strongest_pairs_by_absolute_value():
    J = np.zeros((5, 5))
    J[0, 3] = J[3, 0] = -3.0          # strongest by |J| despite its sign
    J[0, 1] = J[1, 0] = 2.0
    J[1, 2] = J[2, 1] = 1.5
    J[2, 4] = J[4, 2] = -1.0
    J[1, 4] = J[4, 1] = 1.0
    assert g.strongest_pairs(np.abs(J)) == [[0, 3], [1, 2], [4]]
    with pytest.raises(ValueError, match=r"^method\.clustering: .*nonnegative"):
        g.strongest_pairs(J)
    # ties broken by (i, j): all couplings equal -> (0,1), (2,3), (4,5)
    assert g.strongest_pairs(np.ones((6, 6))) == [[0, 1], [2, 3], [4, 5]]
    # a dipolar chain: strongest pairs are nearest neighbours; odd N leaves one singleton
    geom = g.Geometry(positions=[[0.0], [1.0], [3.0], [3.5], [7.0]])
    S = g.coupling_strength(g.dipolar(geom, XXZ))
    assert g.strongest_pairs(S) == [[0, 1], [2, 3], [4]]


def test_greedy_clusters():
    geom = g.chain(9)
    S = g.coupling_strength(g.power_law(geom, 6.0, XXZ))
    part = g.greedy(S, 3)
    assert_partition(part, 9) and max(len(c) for c in part) <= 3
    assert part == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    # two strongly bound groups with a weak bridge: the cap stops the merge across it
    S2 = np.zeros((6, 6))
    for a, b, v in [(0, 1, 5), (1, 2, 4), (3, 4, 5), (4, 5, 4), (2, 3, 1), (0, 5, 0.5)]:
        S2[a, b] = S2[b, a] = v
    assert g.greedy(S2, 3) == [[0, 1, 2], [3, 4, 5]]
    assert g.greedy(S2, 6) == [[0, 1, 2, 3, 4, 5]]
    assert g.greedy(S2, 1) == [[k] for k in range(6)]
    assert g.greedy(np.zeros((3, 3)), 2) == [[0], [1], [2]]        # no bond, no merge
    rand = g.random_box(60, [5.0, 5.0], rng(7))
    for cap in (2, 4, 5):
        part = g.greedy(g.coupling_strength(g.dipolar(rand, XXZ)), cap)
        assert_partition(part, 60) and max(len(c) for c in part) <= cap
    with pytest.raises(ValueError, match=r"^method\.cluster_size"):
        g.greedy(S2, 0)


# ----------------------------------------------------------------------------------- specs
def test_spec_builders_and_prb_workload():
    spec = {"lattice": "chain", "size": 32, "positions": "filled", "filling": 0.5,
            "sublattice": "alternating", "interaction": "power_law", "alpha": 6.0,
            "anisotropy": {"xx": 0.25, "yy": 0.25, "zz": 0.5 * 2.0}, "kind": "lattice"}
    geom = g.build_geometry(spec, rng(11))
    assert geom.n_sites == 16 and np.array_equal(geom.staggered_signs(), (-1) ** np.arange(16))
    assert np.array_equal(geom.positions, g.build_geometry(spec, rng(11)).positions)
    J = g.build_couplings(geom, spec)
    r = abs(geom.positions[3, 0] - geom.positions[9, 0])
    assert np.isclose(J["zz"][3, 9], r ** -6) and np.isclose(J["xx"][3, 9], 0.25 * r ** -6)
    assert g.positions_are_random(spec) and gspec.is_random(spec)
    assert not g.positions_are_random({**spec, "filling": 1.0})
    assert not g.positions_are_random({"lattice": "square", "size": 4})
    sq = g.build_geometry({"lattice": "square", "size": [4, 4], "boundary": "periodic"})
    assert sq.n_sites == 16 and sq.periodic.all()
    box = g.build_geometry({"positions": "box", "n_sites": 10, "box": [2.0, 2.0]}, rng(0))
    assert box.dim == 2 and box.n_sites == 10
    bl = g.build_geometry({"positions": "blockade", "n_sites": 10, "box": [5.0, 5.0],
                           "blockade_radius": 1.0, "boundary": "periodic"}, rng(0))
    assert bl.periodic.all() and g.positions_are_random({"positions": "blockade"})
    geom, J, h = g.build_model({"lattice": "square", "size": 3, "interaction": "dipolar",
                                "anisotropy": XXZ, "axis": [1, 0, 0],
                                "fields": [{"component": "z", "kind": "box", "W": 1.0}]}, rng(0))
    assert np.isclose(J["xx"][0, 1], -2.0) and np.isclose(J["xx"][0, 3], 1.0)
    assert h["z"].shape == (9,)


def test_spec_file_positions(tmp_path):
    np.save(tmp_path / "p.npy", np.array([[0.0], [1.0], [2.5]]))
    spec = {"positions": "file", "positions_file": str(tmp_path / "p.npy"), "box": [4.0],
            "boundary": "periodic"}
    geom = g.build_geometry(spec)
    assert geom.periodic.all() and np.isclose(geom.distances()[0, 2], 1.5)
    with pytest.raises(ValueError, match=r"^model\.n_sites"):
        g.build_geometry({**spec, "n_sites": 4})


@pytest.mark.parametrize("spec,match", [
    ({"positions": "grid"}, r"^model\.positions"),
    ({"positions": "lattice"}, r"^model\.lattice: required"),
    ({"lattice": "square"}, r"^model\.size: required"),
    ({"lattice": "chain", "size": 4, "filling": 0.5}, r"^model\.filling: only used"),
    ({"positions": "box", "box": [1.0]}, r"^model\.n_sites: required"),
    ({"positions": "box", "n_sites": 3}, r"^model\.box: required"),
    ({"positions": "box", "n_sites": 3, "box": [1.0, -1.0]}, r"^model\.box"),
    ({"positions": "blockade", "n_sites": 3, "box": [9.0]}, r"^model\.blockade_radius: required"),
    ({"positions": "file"}, r"^model\.positions_file: required"),
    ({"positions": "filled", "lattice": "chain", "size": 8}, r"^model\.filling: required"),
    ({"positions": "filled", "lattice": "chain", "size": 8, "filling": 0.5, "n_sites": 3},
     r"^model\.n_sites: 3 contradicts"),
    ({"lattice": "chain", "size": 4, "sublattice": "stripes"}, r"^model\.sublattice"),
    ({"lattice": "chain", "size": 4, "boundary": "closed"}, r"^model\.boundary"),
])
def test_geometry_spec_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        g.build_geometry(spec, rng(0))


@pytest.mark.parametrize("spec,match", [
    ({"interaction": "yukawa", "anisotropy": XXZ}, r"^model\.interaction"),
    ({"interaction": "power_law", "anisotropy": XXZ}, r"^model\.alpha: required"),
    ({"interaction": "nearest", "anisotropy": XXZ, "alpha": 3}, r"^model\.alpha: not used"),
    ({"interaction": "nearest"}, r"^model\.anisotropy: required"),
    ({"interaction": "nearest", "anisotropy": XXZ, "J": "one"}, r"^model\.J"),
    ({"interaction": "dipolar", "anisotropy": XXZ, "axis": [1, 0]}, r"^model\.axis"),
])
def test_coupling_spec_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        g.build_couplings(g.chain(4), spec)
