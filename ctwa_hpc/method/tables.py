"""Tables of the compiled kernel: the right-hand side and the Weyl symbols as plain arrays.

:func:`compile_tables` turns a :class:`~ctwa_hpc.method.clusters.ClusterProblem` and an
:class:`~ctwa_hpc.method.observables.ObservablePlan` into the dict of contiguous arrays that
``ctwa_hpc.method._kernels.gp_rk4`` consumes (built once per object pair and ``fields`` mode,
cached while both objects live); :mod:`ctwa_hpc.method.kernels` calls it and is the only
module that talks to the compiled code.  The tables (see the docstring of
:mod:`ctwa_hpc.method.kernels`):

* ``rows``: the right-hand side as *row programs*: for every amplitude b of cluster c, one term
  per distinct flip mask m of c with a non-zero coefficient, ``c(s) = h(t) + Σ coef · field``
  (local Hamiltonian entries and coupling operators of the same mask merged);
* ``dex`` / ``oex``: the Weyl symbols of the coupling operators / of the observable entries,
  grouped by (cluster, mask) and visited by Hermitian pairs (b, b ^ m);
* the mean-field programs (``c_fo``, ``fo_ptr``, ``fo_src``, ``fo_k``, ``cp_J``, ``cp_tf``) of
  the sparse couplings, and ``dense``, the layout of the dense-coupling path
  (:mod:`ctwa_hpc.method.densefields`).
"""
from __future__ import annotations

import weakref
from collections import OrderedDict

import numpy as np

from .densefields import FIELDS, dense_layout

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


def forget(problem, plan):
    """Drop the cached tables of ``(problem, plan)`` in every ``fields`` mode."""
    for key in [k for k in _CACHE if k[:2] == (id(problem), id(plan))]:
        _CACHE.pop(key, None)


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
    acc = {key: [] for key in ("t_a", "t_src", "t_kind", "t_h", "t_ht", "t_nre", "t_nit",
                               "it_op", "it_coef", "it_start")}
    n_items = 0
    for c in range(C):
        D, o = int(dims[c]), int(offs[c])
        masks = sorted({int(loc.mask[e]) for e in loc_by_c[c]} |
                       {int(ops.mask[e]) for e in ops_by_c[c]})
        for m in masks:
            h, ht = _mask_local(problem, loc_by_c[c], D, m, G)
            re_items, im_items = _mask_items(ops, ops_by_c[c], m)
            n_items = _append_rows(acc, n_items, o, D, m, h, ht, re_items, im_items, local)
    return _ordered_rows(acc, int(offs[-1]), G)


def _mask_local(problem, entries, D, m, G):
    """(h, ht): the constant and the time-function-weighted local Hamiltonian diagonals of
    flip mask ``m`` of one cluster (``entries``: its local entries)."""
    loc = problem.local
    h = np.zeros(D, complex)
    ht = np.zeros((G, D), complex)
    for e in entries:
        if int(loc.mask[e]) == m:
            d = loc.diag[loc.doff[e]:loc.doff[e + 1]]
            _check_hermitian(d, m, "model.terms")
            g = int(problem.local_tf[e])
            if g < 0:
                h += d
            else:
                ht[g] += d
    return h, ht


def _mask_items(ops, entries, m):
    """(real items, imaginary items) [(entry, diagonal part)] of the coupling operators of flip
    mask ``m`` of one cluster (``entries``: its operator entries)."""
    re_items, im_items = [], []
    for e in entries:
        if int(ops.mask[e]) == m:
            d = ops.diag[ops.doff[e]:ops.doff[e + 1]]
            _check_hermitian(d, m, "coupling operator")
            if np.any(d.real != 0):
                re_items.append((e, d.real))
            if np.any(d.imag != 0):
                im_items.append((e, d.imag))
    return re_items, im_items


def _append_rows(acc, n_items, o, D, m, h, ht, re_items, im_items, local):
    """Append the rows of one (cluster, mask) with a non-zero coefficient to ``acc``; returns
    the new item count."""
    b = np.arange(D, dtype=np.int64)
    items = re_items + im_items
    nz = (h != 0) | np.any(ht != 0, axis=0)
    for _, v in items:
        nz |= v != 0
    rows = b[nz]
    if len(rows) == 0:
        return n_items
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
    acc["t_a"].append(o + rows)
    acc["t_src"].append(rows ^ m)
    acc["t_kind"].append(kind)
    acc["t_h"].append(h[rows])
    acc["t_ht"].append(ht[:, rows])
    acc["t_nre"].append(np.full(n, len(re_items), np.int64))
    acc["t_nit"].append(np.full(n, len(items), np.int64))
    if items:
        acc["it_op"].append(np.tile([local[e] for e, _ in items], n))
        acc["it_coef"].append(np.stack([v[rows] for _, v in items], axis=1).ravel())
    acc["it_start"].append(n_items + len(items) * np.arange(n, dtype=np.int64))
    return n_items + len(items) * n


def _ordered_rows(acc, A, G):
    """The row tables of :func:`_row_table` from the accumulated pieces, in amplitude order."""
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    t_a, t_src, t_kind = (cat(acc[key], np.int64) for key in ("t_a", "t_src", "t_kind"))
    t_h = cat(acc["t_h"], complex)
    t_ht = np.concatenate(acc["t_ht"], axis=1) if acc["t_ht"] else np.zeros((G, 0), complex)
    t_nre, t_nit, it_start = (cat(acc[key], np.int64) for key in ("t_nre", "t_nit", "it_start"))
    it_op, it_coef = cat(acc["it_op"], np.int64), cat(acc["it_coef"], float)
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
