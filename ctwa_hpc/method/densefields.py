r"""Dense coupling blocks: which mean fields are matrix products, and how the kernel gets them.

The coupling operators of a :class:`~ctwa_hpc.method.clusters.ClusterProblem` (the A_k, B_k of
eq. (5)) split into *blocks*, the connected components of the coupling graph (XXZ among all
pairs: the σx, σy and σz operators of all sites, three blocks of N).  The mean fields of a
block of n operators are field = Σ_g f_g(t) M_g E with the n × n coupling matrix M_g of each
time-function group g present in it (M_g[i, j] = Σ J_k over the couplings k of the group
between operators i and j, both orders; symmetric).

* :func:`coupling_blocks` finds the blocks and their density (non-zero entries / n²) and
  decides which take the dense path: all with ``fields="dense"``, none with ``"sparse"``,
  under ``"auto"`` those with density ≥ ``DENSE_THRESHOLD`` and at least ``DENSE_MIN_OPS``
  operators;
* :func:`dense_layout` lays out the kernel's symbol buffer (dense blocks first, then the F
  rows) and packs the matrices in the order the kernel's product uses them (panels of
  ``DENSE_ROWS`` rows, slices of ``DENSE_COLS`` columns, groups of ``DENSE_GROUP`` panels;
  ``dense_fields`` in ``cython_kernels/gp_core.pxd``);
* :class:`DenseFieldPropagator` is the NumPy twin (dense ``M @ E`` with NumPy's BLAS),
  :func:`numpy_propagator` picks it or :class:`~ctwa_hpc.method.dynamics.NumpyPropagator`.

Everything is vectorised: no Python loop per coupling (N = 1024 all-to-all, 1.57 M
couplings, in about a second).  Used through :mod:`ctwa_hpc.method.kernels`.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from . import dynamics

FIELDS = ("auto", "sparse", "dense")
DENSE_THRESHOLD = 0.3
"""Density (non-zero entries / n²) from which a coupling block takes the dense path
(``fields="auto"``).  Measured with :func:`ctwa_hpc.bench.scaling.dense_crossover`
(power-law XXZ chain with a random fraction of its couplings, pair clusters, AVX-512,
double, one core): dense / sparse rate 0.69 at density 0.2, 0.96 at 0.3, 1.42 at 0.5, 2.7
at 1 (N = 256) and 0.62, 1.05, 1.68 at 0.2, 0.3, 0.5 (N = 1024): the paths cost the same at
≈ 0.3."""
DENSE_MIN_OPS = 12
"""Smallest block (coupling operators) that takes the dense path under ``fields="auto"``."""
DENSE_ROWS, DENSE_COLS, DENSE_GROUP = 6, 128, 32
"""Packing of a dense matrix (``CTWA_MR``, ``CTWA_KC``, ``CTWA_MC`` of the kernel): panels of
6 rows, slices of 128 columns, groups of 32 panels."""


def coupling_blocks(problem, fields="auto"):
    """The blocks of the dense path: connected components of the coupling graph.

    Returns a list of dicts, one per component with couplings, in the order of their
    smallest operator: ``ops`` (sorted entry indices into ``problem.ops``), ``density``
    (non-zero entries of the n × n coupling matrix / n²) and ``dense`` (whether it takes the
    dense path under ``fields``).  Vectorised (no Python loop per coupling).
    """
    n_ops = len(problem.ops.mask)
    a, b = problem.cp_a, problem.cp_b
    if len(a) == 0 or fields == "sparse":
        return []
    g = coo_matrix((np.ones(len(a)), (a, b)), shape=(n_ops, n_ops)).tocsr()
    _, label = connected_components(g, directed=False)
    pair = np.unique(np.minimum(a, b) * n_ops + np.maximum(a, b))
    n_pairs = np.bincount(label[pair // n_ops], minlength=label.max() + 1)
    size = np.bincount(label, minlength=label.max() + 1)
    order = np.argsort(label, kind="stable")
    starts = np.concatenate([[0], np.cumsum(size)])
    out = []
    for lab in np.unique(label[a]):          # components that carry couplings
        ops = order[starts[lab]:starts[lab + 1]]
        n = len(ops)
        density = 2.0 * n_pairs[lab] / float(n * n)
        dense = fields == "dense" or (density >= DENSE_THRESHOLD and n >= DENSE_MIN_OPS)
        out.append(dict(ops=ops, density=density, dense=bool(dense), first=int(ops[0])))
    out.sort(key=lambda d: d["first"])
    return out


def dense_layout(problem, fields):
    """Rows of the kernel's symbol buffer and the packed dense matrices.

    Rows ``0 .. n_ops``: the Weyl symbols of the coupling operators, the operators of the
    dense blocks first (each block contiguous), then the others in entry order (``pos[e]``
    is the row of entry e; without dense blocks the identity).  Then the F rows of the dense
    blocks, ``npan · DENSE_ROWS`` each (zero-padded panels).  Every (block, time-function
    group) pair gives one matrix M_g[i, j] = Σ J_k over the couplings k of the group between
    the block's operators i and j (both orders), packed ``[panel][column][DENSE_ROWS]``.
    """
    n_ops = len(problem.ops.mask)
    blocks = [blk for blk in coupling_blocks(problem, fields) if blk["dense"]]
    pos = np.arange(n_ops, dtype=np.int64)
    frow = np.full(n_ops, -1, np.int64)          # F row of a dense operator
    i64 = lambda x: np.ascontiguousarray(x, dtype=np.int64)  # noqa: E731
    packing = (DENSE_ROWS, DENSE_COLS, DENSE_GROUP)
    empty = dict(r0=i64([]), n=i64([]), f0=i64([]), npan=i64([]), tf=i64([]), first=i64([]),
                 off=i64([]), M=np.zeros(0), n_rows=n_ops, packing=packing, blocks=[])
    if not blocks:
        return pos, frow, empty
    in_dense = np.zeros(n_ops, bool)
    dense_ops = np.concatenate([blk["ops"] for blk in blocks])
    in_dense[dense_ops] = True
    row_order = np.concatenate([dense_ops, np.flatnonzero(~in_dense)])
    pos[row_order] = np.arange(n_ops)
    a, b, J, tf = problem.cp_a, problem.cp_b, problem.cp_J, problem.cp_tf
    lab = np.full(n_ops, -1, np.int64)
    loc = np.zeros(n_ops, np.int64)
    for q, blk in enumerate(blocks):
        lab[blk["ops"]] = q
        loc[blk["ops"]] = np.arange(len(blk["ops"]))
    cl = lab[a]                                   # block of each coupling (-1: sparse)
    r0 = f0 = 0
    f0 = n_ops
    out = {k: [] for k in ("r0", "n", "f0", "npan", "tf", "first", "off")}
    mats, off = [], 0
    for q, blk in enumerate(blocks):
        n = len(blk["ops"])
        npan = -(-n // DENSE_ROWS)
        frow[blk["ops"]] = f0 + np.arange(n)
        sel = np.flatnonzero(cl == q)
        groups = np.unique(tf[sel])
        for gi, g in enumerate(groups):
            s_g = sel[tf[sel] == g]
            ia, ib = loc[a[s_g]], loc[b[s_g]]
            flat = np.concatenate([ia * n + ib, ib * n + ia])
            w = np.concatenate([J[s_g], J[s_g]])
            M = np.zeros((npan * DENSE_ROWS, n))
            M[:n] = np.bincount(flat, weights=w, minlength=n * n).reshape(n, n)
            packed = _pack(M.reshape(npan, DENSE_ROWS, n))
            mats.append(packed)
            for k, v in (("r0", r0), ("n", n), ("f0", f0), ("npan", npan), ("tf", int(g)),
                         ("first", int(gi == 0)), ("off", off)):
                out[k].append(v)
            off += packed.size
        blk.update(r0=r0, f0=f0, groups=[int(g) for g in groups])
        r0 += n
        f0 += npan * DENSE_ROWS
    dense = {k: i64(v) for k, v in out.items()}
    dense.update(M=np.ascontiguousarray(np.concatenate(mats)), n_rows=int(f0), packing=packing,
                 blocks=blocks)
    return pos, frow, dense


def _pack(P):
    """Panels P (npan, DENSE_ROWS, n) in the kernel's order of use: groups of DENSE_GROUP
    panels, slices of DENSE_COLS columns, panel, column, row (see ``dense_fields``)."""
    npan, _, n = P.shape
    out = []
    for g0 in range(0, npan, DENSE_GROUP):
        grp = P[g0:g0 + DENSE_GROUP]
        for jc in range(0, n, DENSE_COLS):
            out.append(grp[:, :, jc:jc + DENSE_COLS].transpose(0, 2, 1).ravel())
    return np.concatenate(out) if out else np.zeros(0)


def numpy_propagator(problem, plan, weights, fields="auto"):
    """The NumPy twin for ``fields``: :class:`ctwa_hpc.method.dynamics.NumpyPropagator`, or with dense
    blocks (as :func:`compile_tables` chooses them) :class:`DenseFieldPropagator`."""
    if fields not in FIELDS:
        raise ValueError(f"method.fields: unknown mean-field path {fields!r} "
                         f"(known: {list(FIELDS)})")
    if fields != "sparse" and any(b["dense"] for b in coupling_blocks(problem, fields)):
        return DenseFieldPropagator(problem, plan, weights, fields)
    return dynamics.NumpyPropagator(problem, plan, weights)


class DenseFieldPropagator(dynamics.NumpyPropagator):
    """NumPy twin of the dense-coupling path: the fields of the operators of a dense block
    are ``Σ_g f_g(t) M_g @ E[block]`` with dense (n × n) matrices (NumPy's BLAS), the other
    couplings keep the sparse matrices of :class:`~ctwa_hpc.method.dynamics.NumpyPropagator`."""

    def __init__(self, problem, plan, weights, fields="auto"):
        super().__init__(problem, plan, weights)
        blocks = [b for b in coupling_blocks(problem, fields) if b["dense"]]
        n_ops = len(problem.ops.mask)
        lab = np.full(n_ops, -1, np.int64)
        loc = np.zeros(n_ops, np.int64)
        for q, blk in enumerate(blocks):
            lab[blk["ops"]] = q
            loc[blk["ops"]] = np.arange(len(blk["ops"]))
        a, b, J, tf = problem.cp_a, problem.cp_b, problem.cp_J, problem.cp_tf
        cl = lab[a]
        self.blocks = []
        for q, blk in enumerate(blocks):
            n, mats = len(blk["ops"]), []
            for g in np.unique(tf[cl == q]):
                sel = (cl == q) & (tf == g)
                M = np.zeros((n, n))
                np.add.at(M, (loc[a[sel]], loc[b[sel]]), J[sel])
                np.add.at(M, (loc[b[sel]], loc[a[sel]]), J[sel])
                mats.append((int(g), M))
            self.blocks.append((blk["ops"], mats))
        self.F = []                               # sparse part: couplings outside the blocks
        for g in range(-1, self.n_tf):
            sel = (tf == g) & (cl < 0)
            self.F.append(sp.csr_matrix((np.concatenate([J[sel], J[sel]]),
                                         (np.concatenate([a[sel], b[sel]]),
                                          np.concatenate([b[sel], a[sel]]))),
                                        shape=(n_ops, n_ops)))

    def field(self, E, fvals):
        out = super().field(E, fvals)
        f = np.concatenate([[1.0], np.asarray(fvals, float)])
        for ops, mats in self.blocks:
            Eb = E[ops]
            out[ops] += sum(f[g + 1] * (M @ Eb) for g, M in mats)
        return out
