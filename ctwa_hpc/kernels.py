"""The single import point for the compiled kernels (``ctwa_hpc._kernels``), with the NumPy twin.

:func:`integrate` runs a batch of CTWA trajectories (R-vector Gross–Pitaevskii equations,
eqs. (19)/(61)) with fixed-step RK4 and returns the observable columns at every output step
plus the final state; :func:`integrate_tangent` integrates the tangent (Jacobian–vector
product) δψ alongside, for linear response and non-equal-time commutators (eqs. (12),
(22)–(23)).  ``backend``:

* ``"cython"``: the compiled kernel ``ctwa_hpc._kernels.gp_rk4`` (error if not built);
* ``"numpy"``: the reference :class:`ctwa_hpc.dynamics.NumpyPropagator` + :func:`~ctwa_hpc.dynamics.rk4`;
* ``"auto"``: compiled if importable, else NumPy.  ``CTWA_NO_CYTHON=1`` forces NumPy.

Both backends take the same arguments and agree to ~1e-12 (``tests/test_kernels.py``).  The
compiled path consumes the tables built (and cached) by :func:`compile_tables`:

* ``rows``: the right-hand side as *row programs*: for every amplitude b of cluster c, one term
  per distinct flip mask m of c with a non-zero coefficient, ``c(s) = h(t) + Σ coef · field``
  (local Hamiltonian entries and coupling operators of the same mask merged), so a cluster
  costs O(D_c × distinct masks) per stage;
* ``dex`` / ``oex``: the Weyl symbols of the coupling operators / of the observable entries,
  grouped by (cluster, mask) and visited by Hermitian pairs (b, b ^ m).

* ``dense``: the *dense-coupling path* (:mod:`ctwa_hpc.densefields`).  The coupling graph of
  the coupling operators splits into connected components ("blocks"; e.g. XXZ: the σx, σy
  and σz operators of all sites form three blocks).  A block whose coupling matrix is dense (density ≥ ``DENSE_THRESHOLD``,
  at least ``DENSE_MIN_OPS`` operators) gets its mean fields as a matrix product
  F = Σ_g f_g(t) M_g E (one matrix M_g per time-function group g present in the block),
  computed for a super-chunk of samples at every RK4 stage; the other operators keep the
  per-coupling (sparse) programs.  ``fields="auto"`` (default) decides per block by density,
  ``"dense"`` makes every block with couplings dense, ``"sparse"`` none.  Both paths give the
  same trajectories up to rounding (``tests/test_kernels_dense.py``).

``precision="single"`` runs the float32 kernel (``gp_rk4*_f32``): twice the SIMD lanes,
float32 state, coefficients, Weyl symbols and fields; the observable columns are accumulated
in double and returned as float64 (their sample averages are taken in double by the caller).
The NumPy backend is double only.

See the docstring of ``cython_kernels/gp_rk4.pyx`` for the kernel itself.
"""
from __future__ import annotations

import os
import weakref
from collections import OrderedDict

import numpy as np

from . import dynamics
from .densefields import (DENSE_COLS, DENSE_GROUP, DENSE_MIN_OPS, DENSE_ROWS,  # noqa: F401
                          DENSE_THRESHOLD, FIELDS, DenseFieldPropagator, coupling_blocks,
                          dense_layout, numpy_propagator)

BACKENDS = ("auto", "cython", "numpy")
PRECISIONS = ("double", "single")

try:  # pragma: no cover - depends on the build
    from ._kernels import gp_rk4 as _gp
    _IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover
    _gp = None
    _IMPORT_ERROR = exc


def have_compiled():
    """True if the compiled kernel is importable (regardless of ``CTWA_NO_CYTHON``)."""
    return _gp is not None


def compiled_info():
    """Facts of the compiled kernel: instruction-set variant, vector and chunk width, OpenMP."""
    if _gp is None:
        return {"compiled": False, "error": str(_IMPORT_ERROR)}
    name, vw, sw = _gp.kernel_info()
    info = {"compiled": True, "isa": name, "vector_width": vw, "chunk_width": sw,
            "openmp": _gp.openmp(), "cpu_level": _gp.ISA_NAMES[_gp.cpu_level()]}
    try:
        _, vw32, sw32 = _gp.kernel_info(precision="single")
        info.update(single_vector_width=vw32, single_chunk_width=sw32)
    except ImportError as exc:  # pragma: no cover - partial build
        info.update(single_error=str(exc))
    return info


def resolve_backend(backend="auto"):
    """Backend actually used for ``backend`` (``auto`` → ``cython`` or ``numpy``)."""
    if backend not in BACKENDS:
        raise ValueError(f"method.backend: unknown backend {backend!r} (known: {list(BACKENDS)})")
    if backend == "numpy":
        return "numpy"
    if backend == "cython":
        if _gp is None:
            raise RuntimeError("method.backend = 'cython' but the compiled kernels are not built "
                               f"({_IMPORT_ERROR}); run `make build` or `python setup.py "
                               "build_ext --inplace`, or use backend = 'numpy'")
        return "cython"
    if os.environ.get("CTWA_NO_CYTHON", "0") not in ("", "0") or _gp is None:
        return "numpy"
    return "cython"


def _check_mode(which, precision, fields):
    """Validate ``precision`` and ``fields`` for the resolved backend ``which``."""
    if precision not in PRECISIONS:
        raise ValueError(f"method.precision: unknown precision {precision!r} "
                         f"(known: {list(PRECISIONS)})")
    if fields not in FIELDS:
        raise ValueError(f"method.fields: unknown mean-field path {fields!r} "
                         f"(known: {list(FIELDS)})")
    if precision == "single" and which == "numpy":
        raise ValueError("method.precision: 'single' needs the compiled kernel (the NumPy "
                         "backend integrates in double); build it or use precision = 'double'")


def _check_args(problem, psi0, weights, n_steps, out_every, tf_tab, sample_ids):
    """Normalized arguments shared by :func:`integrate` and :func:`integrate_tangent`."""
    psi0 = np.ascontiguousarray(psi0, dtype=np.complex128)
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    n_steps, out_every = int(n_steps), int(out_every)
    if out_every < 1 or n_steps % out_every:
        raise ValueError("time.output_dt must be a multiple of time.dt")
    tf_tab = np.ascontiguousarray(tf_tab, dtype=np.float64)
    if tf_tab.ndim != 2 or tf_tab.shape[0] != len(problem.tfuncs) \
            or (tf_tab.shape[0] and tf_tab.shape[1] < 2 * n_steps + 1):
        raise ValueError(f"tf_tab: expected shape ({len(problem.tfuncs)}, {2 * n_steps + 1}), "
                         f"got {tf_tab.shape}")
    if psi0.ndim != 3 or psi0.shape[0] != problem.n_amp or psi0.shape[1] != len(weights):
        raise ValueError(f"psi0: expected shape ({problem.n_amp}, {len(weights)}, S), "
                         f"got {psi0.shape}")
    S = psi0.shape[2]
    sample_ids = np.arange(S) if sample_ids is None else np.asarray(sample_ids)
    if sample_ids.shape != (S,):
        raise ValueError(f"sample_ids: expected {S} indices, got shape {sample_ids.shape}")
    return psi0, weights, n_steps, out_every, tf_tab, sample_ids


def _f64(psi):
    """float64 view (A, R, S, 2) of a contiguous complex128 array (A, R, S)."""
    return psi.view(np.float64).reshape(psi.shape + (2,))


def integrate(problem, plan, psi0, weights, t0, dt, n_steps, out_every, tf_tab,
              sample_ids=None, backend="auto", threads=None, precision="double",
              fields="auto"):
    """Integrate a batch with fixed-step RK4 and evaluate observable columns.

    Parameters
    ----------
    problem : ClusterProblem
    plan : ObservablePlan (compiled on the same partition)
    psi0 : complex128 array (A, R, S), samples innermost
    weights : float array (R,)  (SB / mean field: (1,); reduced operator CTWA: (1, -1))
    t0, dt : float;  n_steps : int;  out_every : int (n_steps must be a multiple)
    tf_tab : float array (G, 2 n_steps + 1), ``tf_tab[g, j] = f_g(t0 + j dt / 2)``
    sample_ids : int array (S,), global sample indices (for error messages)
    backend : "auto" | "cython" | "numpy"
    threads : int, optional — OpenMP threads of the compiled kernel (default
        ``OMP_NUM_THREADS``; only with a ``CTWA_OPENMP=1`` build); results do not depend on it
    precision : "double" (default) | "single" — float32 trajectories (compiled kernel only),
        columns accumulated in double
    fields : "auto" (default) | "sparse" | "dense" — mean fields per coupling or, for dense
        coupling blocks, as matrix products (see the module docstring)

    Returns
    -------
    cols : float64 (n_out, K, S), columns at steps 0, out_every, 2 out_every, ..., n_steps
    psi : complex128 (A, R, S), the state after n_steps (single precision: the float32
        state, widened)

    Raises
    ------
    dynamics.NonFiniteError  with the first non-finite sample (global id) and its time.
    """
    which = resolve_backend(backend)
    _check_mode(which, precision, fields)
    psi0, weights, n_steps, out_every, tf_tab, sample_ids = _check_args(
        problem, psi0, weights, n_steps, out_every, tf_tab, sample_ids)
    if which == "numpy":
        prop = numpy_propagator(problem, plan, weights, fields)
        return dynamics.rk4(prop, psi0, t0, dt, n_steps, out_every, tf_tab, sample_ids)
    tables = compile_tables(problem, plan, fields)
    cols, psi, bad = _gp.run(tables, _f64(psi0), weights, float(dt), n_steps, out_every, tf_tab,
                             threads=threads, precision=precision)
    _raise_non_finite(bad, sample_ids, t0, out_every * dt)
    return cols, _complex(psi, psi0.shape)


def integrate_tangent(problem, plan, psi0, dpsi0, weights, t0, dt, n_steps, out_every, tf_tab,
                      sample_ids=None, backend="auto", threads=None, precision="double",
                      fields="auto"):
    """Integrate a batch together with its tangent δψ (linear response, eqs. (12), (22)–(23)).

    The tangent obeys the linearized R-vector equations
    ``i ∂t δψ = H_eff δψ + Σ_o δfield_o O_o ψ`` with ``δ(O)_W = Σ_r w_r 2 Re ψ_r† O δψ_r`` and
    ``δfield = F(t)·δE`` (see :class:`ctwa_hpc.dynamics.TangentPropagator`, the NumPy
    backend); RK4 acts on the pair (ψ, δψ), every stage evaluating both right-hand sides at the
    same stage state.  ``dpsi0`` (complex, shape of ``psi0``) is typically the kick of
    :func:`ctwa_hpc.dynamics.kick`.  Other arguments (``precision``, ``fields``, ...) as for
    :func:`integrate`.

    Returns
    -------
    cols : float64 (n_out, 2K, S): the K observable columns followed by their K tangents
        δ(column) = Σ_t c_t Σ_f δE_f Π_{g≠f} E_g
    psi, dpsi : complex128 (A, R, S), the state and the tangent after n_steps

    Raises
    ------
    dynamics.NonFiniteError  with the first non-finite sample (global id) and its time.
    """
    which = resolve_backend(backend)
    _check_mode(which, precision, fields)
    psi0, weights, n_steps, out_every, tf_tab, sample_ids = _check_args(
        problem, psi0, weights, n_steps, out_every, tf_tab, sample_ids)
    dpsi0 = np.ascontiguousarray(dpsi0, dtype=np.complex128)
    if dpsi0.shape != psi0.shape:
        raise ValueError(f"dpsi0: expected shape {psi0.shape}, got {dpsi0.shape}")
    if which == "numpy":
        prop = dynamics.TangentPropagator(numpy_propagator(problem, plan, weights, fields))
        cols, (psi, dpsi) = dynamics.rk4(prop, (psi0, dpsi0), t0, dt, n_steps, out_every,
                                         tf_tab, sample_ids)
        return cols, psi, dpsi
    tables = compile_tables(problem, plan, fields)
    cols, psi, dpsi, bad = _gp.run_tangent(tables, _f64(psi0), _f64(dpsi0), weights, float(dt),
                                           n_steps, out_every, tf_tab, threads=threads,
                                           precision=precision)
    _raise_non_finite(bad, sample_ids, t0, out_every * dt)
    return cols, _complex(psi, psi0.shape), _complex(dpsi, psi0.shape)


def _raise_non_finite(bad, sample_ids, t0, out_dt):
    """The kernel reports (output index, batch index) of the first non-finite sample."""
    if bad is not None:
        out_idx, s = bad
        raise dynamics.NonFiniteError(sample_ids[s], t0 + out_idx * out_dt)


def _complex(split, shape):
    """The kernel's interleaved float64 state as complex128 of ``shape``."""
    return split.view(np.complex128).reshape(shape)


# ------------------------------------------------------------------------------------------
# kernel tables
# ------------------------------------------------------------------------------------------
_CACHE = OrderedDict()
CACHE_MAX = 64
"""Most table sets kept (least recently used dropped first); a set is also dropped as soon
as its problem or its plan is garbage collected."""


def compile_tables(problem, plan, fields="auto"):
    """Tables of ``(problem, plan)`` for the compiled kernel (cached per object pair and
    ``fields`` mode while both objects live; see the module docstring)."""
    if fields not in FIELDS:
        raise ValueError(f"method.fields: unknown mean-field path {fields!r} "
                         f"(known: {list(FIELDS)})")
    key = (id(problem), id(plan), fields)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is problem and hit[1]() is plan:
        _CACHE.move_to_end(key)
        return hit[2]
    tables = _build_tables(problem, plan, fields)
    _CACHE[key] = (weakref.ref(problem), weakref.ref(plan), tables)
    for obj in (problem, plan):
        weakref.finalize(obj, _CACHE.pop, key, None)
    while len(_CACHE) > CACHE_MAX:
        _CACHE.popitem(last=False)
    return tables


def _pairs(D, m):
    b = np.arange(D, dtype=np.int64)
    return b if m == 0 else b[b < (b ^ m)]


def _check_hermitian(d, m, what):
    b = np.arange(len(d))
    if np.max(np.abs(d[b ^ m] - np.conj(d)), initial=0.0) > 1e-12 * max(1.0, np.abs(d).max()):
        raise ValueError(f"{what}: the compiled kernel needs Hermitian operators "
                         "(d[b ^ m] = conj(d[b]))")


def _entries_by_cluster(table, C):
    out = [[] for _ in range(C)]
    for e in range(len(table.mask)):
        out[int(table.cluster[e])].append(e)
    return out


def _field_table(problem, pos, frow):
    """Mean-field programs: for the coupling operators of every cluster (in entry order), the
    (partner row, coupling) pairs of field_o = Σ_k J_k f_k(t) E[partner row].  Only the
    couplings outside the dense blocks enter, renumbered 0 .. n_cp - 1 (``cp_J``, ``cp_tf``
    of the tables); an operator of a dense block has the one partner "its F row" with the
    unit slot k = n_cp.  Also the position of every operator inside its cluster's list (the
    kernel keeps one cluster's fields in L1).  Vectorised: partners in coupling order."""
    ops = problem.ops
    n_ops, C = len(ops.mask), problem.partition.n_clusters
    sparse = np.flatnonzero(frow[problem.cp_a] < 0)          # couplings of the sparse path
    n_cp = len(sparse)
    order = np.argsort(ops.cluster, kind="stable")          # operators in (cluster, entry) order
    rank = np.empty(n_ops, np.int64)
    rank[order] = np.arange(n_ops)
    per_c = np.bincount(ops.cluster, minlength=C).astype(np.int64)
    c_fo = np.concatenate([[0], np.cumsum(per_c)]).astype(np.int64)
    local = rank - c_fo[ops.cluster] if n_ops else np.zeros(0, np.int64)
    k = np.arange(n_cp, dtype=np.int64)
    ca, cb = problem.cp_a[sparse].astype(np.int64), problem.cp_b[sparse].astype(np.int64)
    dense_ops = np.flatnonzero(frow >= 0)
    q_all = np.concatenate([rank[ca], rank[cb], rank[dense_ops]])
    k_all = np.concatenate([k, k, np.full(len(dense_ops), n_cp, np.int64)])
    src_all = np.concatenate([pos[cb], pos[ca], frow[dense_ops]])
    srt = np.lexsort((k_all, q_all))
    fo_ptr = np.concatenate([[0], np.cumsum(np.bincount(q_all, minlength=n_ops))])
    i64 = lambda x: np.ascontiguousarray(x, dtype=np.int64)  # noqa: E731
    return dict(c_fo=i64(c_fo), fo_ptr=i64(fo_ptr), fo_src=i64(src_all[srt]),
                fo_k=i64(k_all[srt]), max_fo=int(per_c.max(initial=0)),
                cp_J=np.ascontiguousarray(problem.cp_J[sparse], np.float64),
                cp_tf=i64(problem.cp_tf[sparse])), i64(local)


def _row_table(problem, local):
    """Row programs of the RHS: for every amplitude a = o_c + b, the terms (b ^ m, h, items)
    of the distinct masks m of cluster c (local entries and coupling operators merged).
    Items refer to the cluster-local operator index ``local[e]`` of :func:`_field_table`."""
    part = problem.partition
    dims, offs = part.dims, part.offsets
    C, G = part.n_clusters, len(problem.tfuncs)
    loc, ops = problem.local, problem.ops
    loc_by_c, ops_by_c = _entries_by_cluster(loc, C), _entries_by_cluster(ops, C)
    t_a, t_src, t_kind, t_h, t_ht, t_nre, t_nit = [], [], [], [], [], [], []
    it_op, it_coef, it_start = [], [], []
    n_items = 0
    for c in range(C):
        D, o = int(dims[c]), int(offs[c])
        b = np.arange(D, dtype=np.int64)
        masks = sorted({int(loc.mask[e]) for e in loc_by_c[c]} |
                       {int(ops.mask[e]) for e in ops_by_c[c]})
        for m in masks:
            h = np.zeros(D, complex)
            ht = np.zeros((G, D), complex)
            for e in loc_by_c[c]:
                if int(loc.mask[e]) == m:
                    d = loc.diag[loc.doff[e]:loc.doff[e + 1]]
                    _check_hermitian(d, m, "model.terms")
                    g = int(problem.local_tf[e])
                    if g < 0:
                        h += d
                    else:
                        ht[g] += d
            re_items, im_items = [], []
            for e in ops_by_c[c]:
                if int(ops.mask[e]) == m:
                    d = ops.diag[ops.doff[e]:ops.doff[e + 1]]
                    _check_hermitian(d, m, "coupling operator")
                    if np.any(d.real != 0):
                        re_items.append((e, d.real))
                    if np.any(d.imag != 0):
                        im_items.append((e, d.imag))
            items = re_items + im_items
            nz = (h != 0) | np.any(ht != 0, axis=0)
            for _, v in items:
                nz |= v != 0
            rows = b[nz]
            if len(rows) == 0:
                continue
            has_re = (h.real[rows] != 0) | np.any(ht.real[:, rows] != 0, axis=0)
            has_im = (h.imag[rows] != 0) | np.any(ht.imag[:, rows] != 0, axis=0)
            for _, v in re_items:
                has_re |= v[rows] != 0
            for _, v in im_items:
                has_im |= v[rows] != 0
            kind = has_re.astype(np.int64) + 2 * has_im.astype(np.int64)
            kind[kind == 0] = 1
            if m == 0 and np.any(kind != 1):
                raise ValueError("model.terms: a diagonal operator has an imaginary part")
            n = len(rows)
            t_a.append(o + rows)
            t_src.append(rows ^ m)
            t_kind.append(kind)
            t_h.append(h[rows])
            t_ht.append(ht[:, rows])
            t_nre.append(np.full(n, len(re_items), np.int64))
            t_nit.append(np.full(n, len(items), np.int64))
            if items:
                it_op.append(np.tile([local[e] for e, _ in items], n))
                it_coef.append(np.stack([v[rows] for _, v in items], axis=1).ravel())
            it_start.append(n_items + len(items) * np.arange(n, dtype=np.int64))
            n_items += len(items) * n
    A = int(offs[-1])
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    t_a, t_src, t_kind = cat(t_a, np.int64), cat(t_src, np.int64), cat(t_kind, np.int64)
    t_h = cat(t_h, complex)
    t_ht = np.concatenate(t_ht, axis=1) if t_ht else np.zeros((G, 0), complex)
    t_nre, t_nit, it_start = cat(t_nre, np.int64), cat(t_nit, np.int64), cat(it_start, np.int64)
    it_op, it_coef = cat(it_op, np.int64), cat(it_coef, float)
    order = np.argsort(t_a, kind="stable")           # rows in amplitude order
    t_nit_o = t_nit[order]
    t_it = np.concatenate([[0], np.cumsum(t_nit_o)]).astype(np.int64)
    gather = (np.repeat(it_start[order] - t_it[:-1], t_nit_o)
              + np.arange(int(t_it[-1]), dtype=np.int64))
    row = np.searchsorted(t_a[order], np.arange(A + 1)).astype(np.int64)
    cc = np.ascontiguousarray
    return dict(row=row, t_src=cc(t_src[order]), t_kind=cc(t_kind[order]), t_it=t_it,
                t_im=cc(t_it[:-1] + t_nre[order]),
                t_hre=cc(t_h.real[order]), t_him=cc(t_h.imag[order]),
                t_htre=cc(t_ht.real[:, order].ravel()), t_htim=cc(t_ht.imag[:, order].ravel()),
                i_op=cc(it_op[gather]), i_coef=cc(it_coef[gather]))


def _exp_table(partition, table):
    """Weyl-symbol programs: groups (cluster, mask) of ``table``'s entries, visited by pairs."""
    dims = partition.dims
    C = partition.n_clusters
    by_c = _entries_by_cluster(table, C)
    g_mask, g_np, g_pp, g_it, c_g = [], [], [], [0], [0]
    pr_b, it_op, it_part, it_cp, it_ec, it_first = [], [], [], [], [], []
    n_pairs = n_coef = 0
    for c in range(C):
        D = int(dims[c])
        for m in sorted({int(table.mask[e]) for e in by_c[c]}):
            bs = _pairs(D, m)
            fac = 1.0 if m == 0 else 2.0
            for e in by_c[c]:
                if int(table.mask[e]) != m:
                    continue
                d = table.diag[table.doff[e]:table.doff[e + 1]]
                _check_hermitian(d, m, "operator")
                first = 1
                for part_, v in ((0, fac * d.real[bs]), (1, -fac * d.imag[bs])):
                    if np.any(v != 0) or (part_ == 1 and first):   # every entry gets an item
                        it_first.append(first)
                        first = 0
                        it_op.append(e)
                        it_part.append(part_)
                        it_cp.append(n_coef)
                        it_ec.append(v)
                        n_coef += len(bs)
            g_mask.append(m)
            g_np.append(len(bs))
            g_pp.append(n_pairs)
            g_it.append(len(it_op))
            pr_b.append(bs)
            n_pairs += len(bs)
        c_g.append(len(g_mask))
    i64 = lambda x: np.ascontiguousarray(x, dtype=np.int64)  # noqa: E731
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    return dict(g_mask=i64(g_mask), g_np=i64(g_np), g_pp=i64(g_pp), g_it=i64(g_it),
                pr_b=i64(cat(pr_b, np.int64)), it_op=i64(it_op), it_part=i64(it_part),
                it_cp=i64(it_cp), it_ec=np.ascontiguousarray(cat(it_ec, float)),
                it_first=i64(it_first),
                maxnp=int(max(g_np, default=0))), i64(c_g)


def _build_tables(problem, plan, fields="auto"):
    part = problem.partition
    pos, frow, dense = dense_layout(problem, fields)
    dex, c_ge = _exp_table(part, problem.ops)
    dex["it_op"] = np.ascontiguousarray(pos[dex["it_op"]])   # rows of the symbol buffer
    oex, c_go = _exp_table(part, plan.ops)
    programs, local = _field_table(problem, pos, frow)
    return dict(**programs, dense=dense, fields=fields,
        A=int(problem.n_amp), C=int(part.n_clusters), G=len(problem.tfuncs),
        K=int(plan.n_columns), n_ops=int(len(problem.ops.mask)), n_obs=int(len(plan.ops.mask)),
        Dmax=int(part.dims.max()),
        c_off=np.ascontiguousarray(part.offsets[:-1], np.int64),
        c_D=np.ascontiguousarray(part.dims, np.int64), c_ge=c_ge, c_go=c_go,
        col_ptr=np.ascontiguousarray(plan.col_ptr, np.int64),
        term_coef=np.ascontiguousarray(plan.term_coef, np.float64),
        term_ptr=np.ascontiguousarray(plan.term_ptr, np.int64),
        fac=np.ascontiguousarray(plan.fac, np.int64),
        rows=_row_table(problem, local), dex=dex, oex=oex)
