"""Dense-coupling path and single precision of the compiled kernel (``kernels.integrate``).

* Dense path (``fields="dense"``: mean fields of dense coupling blocks as matrix products)
  against the sparse per-coupling path and the NumPy twins (sparse and dense fields): the
  columns at every output step and the final state agree to 1e-12 (relative to their
  largest magnitude) — the same trajectories up to rounding.
* Single precision (``precision="single"``): the same Wigner samples integrated in float32
  and float64 give sample means whose difference is far below the Monte Carlo standard
  error (z-scores, tfim4, heis16 and an all-to-all long-range chain), and the conserved
  quantities (cluster norms, H_W) drift by no more than float32 rounding allows.
"""
import time

import numpy as np
import pytest

from ctwa_hpc.bench import cases as bench
from ctwa_hpc.method import clusters, dynamics, kernels, observables, sampling
from ctwa_hpc.model import models, states
from ctwa_hpc.model.hamiltonian import Hamiltonian

gp = pytest.importorskip("ctwa_hpc.method._kernels.gp_rk4",
                         reason="compiled kernels not built (python setup.py build_ext --inplace)")

RTOL = 1e-12
P = clusters.Partition


def _powerlaw(N, alpha=1.0, delta=0.5, hz=0.4, seed=0, extra=None, tfuncs=None):
    """All-to-all XXZ, J_ij = 1/|i-j|^alpha, random z fields; ``extra``: more families."""
    J = bench.powerlaw_chain(N, alpha, delta)
    J.update(extra or {})
    h = {"z": hz * np.random.default_rng(seed).normal(size=N), "x": np.full(N, 0.3)}
    return Hamiltonian.from_couplings(J, h, tfuncs=tfuncs)


def _general(N, seed=1):
    """Random couplings of every family (one block of 3N operators)."""
    rng = np.random.default_rng(seed)
    J = {}
    for key in ("xx", "yy", "zz", "xy", "xz", "yz"):
        M = np.triu(rng.normal(size=(N, N)), 1) / N
        J[key] = M + M.T if key[0] == key[1] else M
    return Hamiltonian.from_couplings(J, {"y": rng.normal(size=N)})


def _mixed(N):
    """Dense XX among all pairs plus nearest-neighbour ZZ (a sparse block under auto)."""
    J = bench.powerlaw_chain(N, 1.5)
    zz = np.zeros((N, N))
    i = np.arange(N - 1)
    zz[i, i + 1] = zz[i + 1, i] = 0.8
    return Hamiltonian.from_couplings({"xx": J["xx"], "zz": zz}, {"x": np.full(N, 0.7)})


CASES = {
    "lr14_c1": (lambda: _powerlaw(14), lambda: P.contiguous(14, 1)),
    "lr14_c2": (lambda: _powerlaw(14), lambda: P.contiguous(14, 2)),
    "lr14_c3": (lambda: _powerlaw(14), lambda: P.contiguous(14, 3)),
    "lr12_noncontig": (lambda: _powerlaw(12),
                       lambda: P.from_lists(12, [[0, 7], [3, 11, 5], [1], [2, 9, 4, 10], [6, 8]])),
    "general12_c2": (lambda: _general(12), lambda: P.contiguous(12, 2)),
    "mixed16_c2": (lambda: _mixed(16), lambda: P.contiguous(16, 2)),
    "timedep14_c2": (lambda: _powerlaw(14, tfuncs={"xx": "cos(1.3*t)", "zz": "exp(-0.4*t)",
                                                   "z": "sin(2*t)"}),
                     lambda: P.contiguous(14, 2)),
}


def _setup(case, method="sb", n_samples=45, seed=5, energy=True):
    ham_fn, part_fn = CASES[case]
    ham, part = ham_fn(), part_fn()
    problem = clusters.compile_problem(ham, part)
    names = ["sz", "sx", "czz"] + (["energy"] if energy and not ham.time_dependent else [])
    obs = observables.ObservableSet(ham.n_sites, names, hamiltonian=ham)
    plan = obs.compile(part)
    batch = sampling.draw_batch(problem, states.make_state("x", ham.n_sites), method, seed, 0,
                                np.arange(100, 100 + n_samples))
    return problem, plan, batch


def _run(problem, plan, batch, t0=0.2, dt=0.04, n_steps=50, out_every=5, **kw):
    tf = problem.tf_table(t0 + 0.5 * dt * np.arange(2 * n_steps + 1))
    return kernels.integrate(problem, plan, batch.psi, batch.weights, t0, dt, n_steps, out_every,
                             tf, sample_ids=batch.sample_ids, **kw)


def _assert_close(ref, got, rtol=RTOL):
    for r, g in zip(ref, got):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(g, r, rtol=0, atol=rtol * max(1.0, np.abs(r).max()))


# ------------------------------------------------------------------------------------------
# dense path = sparse path = NumPy twins
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["sb", "reduced"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_dense_matches_sparse_and_numpy(case, method):
    problem, plan, batch = _setup(case, method)
    dense_tables = kernels.compile_tables(problem, plan, "dense")
    assert len(dense_tables["dense"]["n"]) > 0
    assert len(kernels.compile_tables(problem, plan, "sparse")["dense"]["n"]) == 0
    ref = _run(problem, plan, batch, backend="numpy", fields="sparse")
    for backend, fields in (("numpy", "dense"), ("cython", "sparse"), ("cython", "dense"),
                            ("cython", "auto")):
        _assert_close(ref, _run(problem, plan, batch, backend=backend, fields=fields))
    assert np.abs(ref[0][-1] - ref[0][0]).max() > 1e-2        # the columns really move


def test_auto_choice_by_density():
    """XXZ among all pairs: three dense blocks (σx, σy, σz of all sites); the mixed model
    keeps its nearest-neighbour ZZ block sparse; a chain is entirely sparse."""
    problem, plan, _ = _setup("lr14_c2")
    blocks = kernels.coupling_blocks(problem)
    assert len(blocks) == 3 and all(b["dense"] for b in blocks)
    assert all(len(b["ops"]) == 14 and b["density"] > 0.8 for b in blocks)
    assert len(kernels.compile_tables(problem, plan)["dense"]["n"]) == 3
    mixed, mplan, _ = _setup("mixed16_c2")
    blocks = kernels.coupling_blocks(mixed)        # σx of all 16 sites; σz pairs across bonds
    assert [len(b["ops"]) for b in blocks if b["dense"]] == [16]
    assert all(len(b["ops"]) == 2 for b in blocks if not b["dense"]) and len(blocks) == 8
    chain = clusters.compile_problem(models.heisenberg(32, hz=1, seed=1), P.contiguous(32, 2))
    assert not any(b["dense"] for b in kernels.coupling_blocks(chain))
    ring = clusters.compile_problem(models.heisenberg(32, hz=1, seed=1), P.contiguous(32, 1))
    blocks = kernels.coupling_blocks(ring)         # one ring of 32 operators per component
    assert [len(b["ops"]) for b in blocks] == [32, 32, 32]
    assert all(b["density"] < kernels.DENSE_THRESHOLD and not b["dense"] for b in blocks)
    with pytest.raises(ValueError, match="method.fields"):
        kernels.compile_tables(problem, plan, "blas")


def test_packing_across_panel_groups_and_column_slices():
    """Blocks larger than one group of panels (32 × 6 rows) and one slice of 128 columns,
    in both precisions, and a block of 2N operators (xz couplings join σx and σz)."""
    N = 200
    rng = np.random.default_rng(2)
    X = np.triu(rng.normal(size=(N, N)), 1) * 0.05
    ham = _powerlaw(N, extra={"xz": X + X.T})
    part = P.contiguous(N, 1)
    problem = clusters.compile_problem(ham, part)
    plan = observables.ObservableSet(N, ["sz", "czz"]).compile(part)
    batch = sampling.draw_batch(problem, states.make_state("neel", N), "sb", 3, 0, np.arange(40))
    sizes = sorted(kernels.compile_tables(problem, plan, "dense")["dense"]["n"].tolist())
    assert sizes == [N, 2 * N]
    ref = _run(problem, plan, batch, dt=0.01, n_steps=10, backend="cython", fields="sparse")
    _assert_close(ref, _run(problem, plan, batch, dt=0.01, n_steps=10, backend="cython",
                            fields="dense"))
    s_ref = _run(problem, plan, batch, dt=0.01, n_steps=10, fields="sparse", precision="single")
    s_got = _run(problem, plan, batch, dt=0.01, n_steps=10, fields="dense", precision="single")
    _assert_close(s_ref, s_got, rtol=1e-5)       # float32 sums in another order


@pytest.mark.parametrize("n_samples", [1, 31, 33, 64, 97, 200])
def test_dense_batches_and_super_chunks(n_samples):
    """Super-chunks (two chunks per product), padding samples and partial super-chunks; a
    sample's trajectory does not depend on its batch neighbours (bit for bit)."""
    problem, plan, batch = _setup("lr14_c2", n_samples=n_samples)
    ref = _run(problem, plan, batch, n_steps=12, out_every=3, backend="numpy")
    got = _run(problem, plan, batch, n_steps=12, out_every=3, fields="dense")
    _assert_close(ref, got)
    one = kernels.integrate(problem, plan, batch.psi[:, :, -1:], batch.weights, 0.2, 0.04, 12, 3,
                            np.zeros((0, 25)), fields="dense")
    np.testing.assert_array_equal(one[0][..., 0], got[0][..., -1])


@pytest.mark.parametrize("kick", [((0, "Z"),), ((1, "X"), (6, "Y"))])
def test_dense_tangent_matches_sparse_and_numpy(kick):
    problem, plan, batch = _setup("timedep14_c2", "reduced", n_samples=37)
    dpsi = dynamics.kick(problem, kick, batch.psi, batch.weights)[0]
    n, dt, t0 = 30, 0.04, 0.1
    tf = problem.tf_table(t0 + 0.5 * dt * np.arange(2 * n + 1))
    out = {}
    for be, fields in (("numpy", "sparse"), ("numpy", "dense"), ("cython", "sparse"),
                       ("cython", "dense")):
        out[be, fields] = kernels.integrate_tangent(problem, plan, batch.psi, dpsi,
                                                    batch.weights, t0, dt, n, 5, tf,
                                                    backend=be, fields=fields)
    ref = out["numpy", "sparse"]
    for key, got in out.items():
        _assert_close(ref, got)
    assert np.abs(ref[0][-1, plan.n_columns:]).max() > 1e-3    # a non-trivial response


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_dense_non_finite_detection_matches_numpy():
    """A sample in the second chunk of a super-chunk blows up: the same sample and time."""
    problem, plan, batch = _setup("lr14_c1", n_samples=70)
    psi = batch.psi.copy()
    psi[:, :, 45] *= 40.0
    tf = np.zeros((0, 2 * 300 + 1))
    errs = []
    for be, fields in (("numpy", "sparse"), ("cython", "dense")):
        with pytest.raises(dynamics.NonFiniteError) as err:
            kernels.integrate(problem, plan, psi, batch.weights, 0.5, 0.05, 300, 5, tf,
                              sample_ids=batch.sample_ids, backend=be, fields=fields)
        errs.append(err.value)
    assert errs[1].sample == errs[0].sample == batch.sample_ids[45]
    assert errs[1].time == pytest.approx(errs[0].time) and errs[1].time > 0.5


def test_dense_set_up_is_vectorised():
    """N = 1024 all-to-all XXZ (1.57 M couplings): Hamiltonian, cluster problem and the
    dense tables in well under 10 s (the tables alone are a few seconds)."""
    N = 1024
    t0 = time.perf_counter()
    ham = Hamiltonian.from_couplings(bench.powerlaw_chain(N))
    problem = clusters.compile_problem(ham, P.contiguous(N, 2))
    plan = observables.ObservableSet(N, ["sz"]).compile(problem.partition)
    t1 = time.perf_counter()
    tables = kernels.compile_tables(problem, plan)
    t2 = time.perf_counter()
    assert len(problem.cp_J) == 3 * (N * (N - 1) // 2 - N // 2)
    assert tables["dense"]["n"].tolist() == [N, N, N] and len(tables["cp_J"]) == 0
    assert t2 - t1 < 10.0, f"dense tables took {t2 - t1:.1f} s"
    assert t2 - t0 < 20.0, f"set-up took {t2 - t0:.1f} s (tables {t2 - t1:.1f} s)"


# ------------------------------------------------------------------------------------------
# single precision
# ------------------------------------------------------------------------------------------
def test_single_precision_arguments():
    problem, plan, batch = _setup("lr14_c2", n_samples=4)
    with pytest.raises(ValueError, match="method.precision"):
        _run(problem, plan, batch, backend="numpy", precision="single")
    with pytest.raises(ValueError, match="method.precision"):
        _run(problem, plan, batch, precision="half")
    cols, psi = _run(problem, plan, batch, n_steps=5, precision="single")
    assert cols.dtype == np.float64 and psi.dtype == np.complex128
    info = kernels.compiled_info()
    assert info["single_vector_width"] == 2 * info["vector_width"]
    assert info["single_chunk_width"] == 2 * info["chunk_width"]


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_single_instruction_set_variants(isa, monkeypatch):
    best = max(gp.build_info()[0], gp._best_variant())
    if gp.ISA_NAMES.index(isa) > best:
        pytest.skip(f"{isa} not supported here (best: {gp.ISA_NAMES[best]})")
    monkeypatch.setenv("CTWA_KERNEL_ISA", isa)
    problem, plan, batch = _setup("timedep14_c2", "reduced", n_samples=37)
    ref = _run(problem, plan, batch, n_steps=20, backend="numpy")
    for fields in ("sparse", "dense"):
        got = _run(problem, plan, batch, n_steps=20, precision="single", fields=fields)
        _assert_close(ref, got, rtol=2e-5)


def _zscores(problem, plan, batch, t_max, dt, out_every=10):
    n = int(round(t_max / dt))
    tf = problem.tf_table(0.5 * dt * np.arange(2 * n + 1))
    res = {}
    for prec in ("double", "single"):
        res[prec] = kernels.integrate(problem, plan, batch.psi, batch.weights, 0.0, dt, n,
                                      out_every, tf, precision=prec)
    d, s = res["double"][0], res["single"][0]
    S = d.shape[-1]
    stderr = d.std(axis=-1, ddof=1) / np.sqrt(S)
    z = np.abs(s.mean(-1) - d.mean(-1)) / np.maximum(stderr, 1e-300)
    return z[stderr > 1e-12], res


ZCASES = {
    "tfim4": (lambda: models.tfim(4), lambda: P.contiguous(4, 2), "neel", 4.0),
    "heis16": (lambda: models.heisenberg(16, hz=2, seed=1), lambda: P.contiguous(16, 4), "neel",
               2.0),
    "lr24": (lambda: _powerlaw(24), lambda: P.contiguous(24, 2), "x", 2.0),
}


@pytest.mark.parametrize("case", sorted(ZCASES))
def test_single_agrees_with_double_within_mc_error(case):
    """Same samples in float32 and float64: |mean_single − mean_double| / stderr ≪ 1 (the
    Monte Carlo error of the estimate is ~1; rounding differences are ~1e-6 relative)."""
    ham_fn, part_fn, state, t_max = ZCASES[case]
    ham, part = ham_fn(), part_fn()
    problem = clusters.compile_problem(ham, part)
    names = ["sz", "czz", "mz_staggered", "energy"]
    plan = observables.ObservableSet(ham.n_sites, names, hamiltonian=ham).compile(part)
    batch = sampling.draw_batch(problem, states.make_state(state, ham.n_sites), "sb", 11, 0,
                                np.arange(400))
    z, _ = _zscores(problem, plan, batch, t_max, 0.01)
    assert z.size > 0
    assert z.max() < 1e-3, f"max z-score {z.max():.3g}"


def test_single_conserved_quantities_drift():
    """Cluster norms |ψ_c|² and H_W are conserved by the equations.  At dt = 0.01 (400 steps)
    both precisions show the same RK4 error; at dt = 0.0025 (1600 steps) double is at the
    RK4 error (∝ dt⁴, ~1e-8) and single at float32 rounding, a few 1e-6 (measured: norm max
    2e-5 / mean 4e-6, energy 3e-6 relative).  Printed with pytest -s."""
    problem, plan, batch = _setup("lr14_c2", n_samples=128, energy=False)
    prop = dynamics.NumpyPropagator(problem, plan, batch.weights)
    offs = problem.offsets
    e0 = prop.energy(batch.psi)
    norms0 = [np.sum(np.abs(batch.psi[offs[c]:offs[c + 1]]) ** 2, axis=0)
              for c in range(problem.partition.n_clusters)]
    drift = {}
    for dt in (0.01, 0.0025):
        n = int(round(4.0 / dt))
        for prec in ("double", "single"):
            _, psi = kernels.integrate(problem, plan, batch.psi, batch.weights, 0.0, dt, n, n,
                                       np.zeros((0, 2 * n + 1)), precision=prec)
            dn = np.array([np.abs(np.sum(np.abs(psi[offs[c]:offs[c + 1]]) ** 2, axis=0) - n0)
                           for c, n0 in enumerate(norms0)])
            de = np.abs(prop.energy(psi) - e0) / np.abs(e0).max()
            drift[dt, prec] = dict(norm_max=dn.max(), norm_mean=dn.mean(), energy_max=de.max(),
                                   energy_mean=de.mean())
    print("\ndrift at t = 4:", {k: {q: f"{v:.1e}" for q, v in d.items()} for k, d in drift.items()})
    for q in ("norm_max", "energy_max"):     # same RK4 error at dt = 0.01
        assert drift[0.01, "single"][q] < 1.5 * drift[0.01, "double"][q] + 1e-5
    assert drift[0.0025, "double"]["norm_max"] < 1e-6
    assert drift[0.0025, "double"]["energy_max"] < 1e-6
    assert drift[0.0025, "single"]["norm_max"] < 1e-4
    assert drift[0.0025, "single"]["norm_mean"] < 2e-5
    assert drift[0.0025, "single"]["energy_max"] < 2e-5


# ------------------------------------------------------------------------------------------
# benchmark: long-range cases, flop counts, BLAS reference
# ------------------------------------------------------------------------------------------
def test_bench_long_range_cases_and_counts():
    """XXZ among all pairs: three dense blocks of N operators whatever the clusters, counted
    as matrix products 24 N² per sample-step; the dipolar couplings (1 − 3cos²θ)/r³."""
    for name in ("lr64_c1", "lr64_c2", "lr64_c4"):
        case = next(c for c in bench.CASES if c.name == name)
        problem, plan, psi, w = bench.build_case(case, 8)
        tables = kernels.compile_tables(problem, plan)
        assert tables["dense"]["n"].tolist() == [64, 64, 64]
        mm = bench.matrix_product_flops(tables)
        assert mm == 24 * 64 ** 2
        assert bench.flop_count(tables, 1, 10) > mm
        assert bench.matrix_product_flops(tables, tangent=True) == 2 * mm
    J = bench.dipolar_square(4)
    assert J["xx"][0, 1] == pytest.approx(-2.0)            # along the axis (x): 1 − 3
    assert J["xx"][0, 4] == pytest.approx(1.0)             # perpendicular: 1
    assert J["xx"][0, 5] == pytest.approx((1 - 3 * 0.5) / 2 ** 1.5)
    assert np.allclose(J["zz"], 0.5 * J["xx"]) and np.allclose(J["xx"], J["xx"].T)
    names = [c.name for c in bench.CASES]
    assert len(set(names)) == len(names)


def test_blas_reference_runs_unpinned(monkeypatch):
    """The best dgemm runs without OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE even when the
    environment pins them, and the pinned figure uses the environment's core type."""
    pytest.importorskip("threadpoolctl")
    from ctwa_hpc.bench import machine as bench_scaling
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    seen = []
    real = bench_scaling._gemm_subprocess

    def spy(env, sizes, reps):
        seen.append({k: env.get(k) for k in bench_scaling.PIN_VARS})
        return real(env, (200,), 1)
    monkeypatch.setattr(bench_scaling, "_gemm_subprocess", spy)
    ref = bench_scaling.blas_reference(quick=True)
    assert seen[0] == {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}
    assert seen[1]["OPENBLAS_CORETYPE"] == "Haswell"
    assert ref["dgemm_gflops"] == max(ref["dgemm_best_gflops"], ref["dgemm_pinned_gflops"])
    assert "Haswell" in ref["dgemm_pinned_kernel"] or "unknown" in ref["dgemm_pinned_kernel"]
