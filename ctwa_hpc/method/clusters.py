"""Cluster partitions and the compiled cluster problem of eq. (5).

A :class:`Partition` splits the sites into clusters (any partition, not only contiguous
blocks).  Inside cluster c the k-th listed site is local bit k (eq. (14) convention, see
:mod:`ctwa_hpc.model.pauli`), so the cluster Hilbert space has D_c = 2**n_c states.

:func:`compile_problem` rewrites a :class:`~ctwa_hpc.model.hamiltonian.Hamiltonian` as

.. math::  \\hat H = \\sum_{c} \\hat H_c(t) + \\sum_k J_k f_k(t)\\, \\hat A_k \\otimes \\hat B_k

(eq. (5)): every term inside one cluster goes to the local operator H_c, every term spanning
two clusters becomes a coupling between two cluster-local Pauli strings A_k (cluster a) and
B_k (cluster b).  Everything is stored as plain integer/complex arrays in the
"flip mask + phase vector" form, so the NumPy path and the Cython kernels consume exactly the
same data:

* an *entry* is (cluster, mask, d): the operator ``(O ψ)[b] = d[b] ψ[b ^ mask]`` on the
  cluster's amplitudes; entries sharing (cluster, mask, time function) are merged, so applying
  H_c costs O(D_c × number of distinct masks);
* state vectors of all clusters are stacked into one amplitude axis of length
  A = Σ_c D_c, cluster c occupying rows ``offsets[c]:offsets[c+1]``.

Coupling blocks of a Hamiltonian (one- and two-body terms stored as arrays, see
:meth:`~ctwa_hpc.model.hamiltonian.Hamiltonian.from_couplings`) are compiled with NumPy, without a
Python loop per pair: N = 1024 all-to-all (1.6 × 10⁶ terms) in about 0.6 s.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..model import geometry
from ..model.pauli import string_action
from ..tools.exceptions import ConfigError
from ..model.pauli import dense_from_action


@dataclass(frozen=True)
class Partition:
    """A partition of ``n_sites`` sites into clusters (tuples of site indices)."""

    n_sites: int
    clusters: tuple

    def __post_init__(self):
        seen = {}
        for c, cl in enumerate(self.clusters):
            if len(cl) == 0:
                raise ValueError(f"method.clusters: cluster {c} is empty")
            for s in cl:
                if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
                    raise ValueError(f"method.clusters: site {s!r} in cluster {c} is not an integer")
                if not 0 <= s < self.n_sites:
                    raise ValueError(f"method.clusters: site {s} in cluster {c} outside "
                                     f"0..{self.n_sites - 1}")
                if s in seen:
                    raise ValueError(f"method.clusters: site {s} appears in clusters {seen[s]} "
                                     f"and {c} (every site must belong to exactly one cluster)")
                seen[s] = c
        missing = sorted(set(range(self.n_sites)) - set(seen))
        if missing:
            raise ValueError(f"method.clusters: site(s) {missing} belong to no cluster "
                             "(every site must belong to exactly one cluster)")
        if max(len(cl) for cl in self.clusters) > 14:
            raise ValueError("method.clusters: clusters above 14 sites (D = 16384) are not supported")

    @classmethod
    def from_lists(cls, n_sites, clusters):
        if not isinstance(clusters, (list, tuple)) or not all(isinstance(c, (list, tuple))
                                                               for c in clusters):
            raise ValueError("method.clusters: expected a list of lists of site indices")
        return cls(n_sites, tuple(tuple(int(s) if isinstance(s, (int, np.integer))
                                        and not isinstance(s, bool) else s for s in c)
                                  for c in clusters))

    @classmethod
    def contiguous(cls, n_sites, size, offset=0):
        """Blocks of ``size`` consecutive sites starting at ``offset`` (periodic wrap).

        If ``size`` does not divide ``n_sites`` the last block is shorter.
        """
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"method.cluster_size: expected a positive integer, got {size!r}")
        if size > n_sites:
            raise ValueError(f"method.cluster_size: {size} exceeds the {n_sites} sites")
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
            raise ValueError(f"method.offset: expected an integer, got {offset!r}")
        order = [(offset + k) % n_sites for k in range(n_sites)]
        return cls(n_sites, tuple(tuple(order[i:i + size]) for i in range(0, n_sites, size)))

    @property
    def n_clusters(self):
        return len(self.clusters)

    def locate(self, site):
        """(cluster, local bit) of a site."""
        return self._where[site]

    @cached_property
    def _where(self):
        return {s: (c, k) for c, cl in enumerate(self.clusters) for k, s in enumerate(cl)}

    @cached_property
    def site_arrays(self):
        """(cluster of every site, local bit of every site): two int64 arrays of length N."""
        cl = np.empty(self.n_sites, np.int64)
        bit = np.empty(self.n_sites, np.int64)
        for c, sites in enumerate(self.clusters):
            idx = np.asarray(sites, np.int64)
            cl[idx] = c
            bit[idx] = np.arange(len(sites))
        return cl, bit

    @property
    def dims(self):
        return np.array([1 << len(c) for c in self.clusters], dtype=np.int64)

    @property
    def offsets(self):
        return np.concatenate([[0], np.cumsum(self.dims)]).astype(np.int64)

    def split_string(self, ops):
        """Split a global Pauli string ((site, label), ...) into {cluster: ((bit, label), ...)}."""
        where = self._where
        out = {}
        for site, lab in ops:
            c, k = where[site]
            out.setdefault(c, []).append((k, lab))
        return {c: tuple(v) for c, v in sorted(out.items())}


class EntryTable:
    """Cluster-local operators in (cluster, mask, phase-vector) form, as flat arrays.

    Attributes (after :meth:`freeze`): ``cluster`` int64[E], ``mask`` int64[E],
    ``doff`` int64[E+1] (offsets into ``diag``), ``diag`` complex128[Σ D].
    """

    def __init__(self, partition):
        self.partition = partition
        self._dims = partition.dims
        self._keys = {}
        self._cl, self._mask, self._d = [], [], []

    def add_string(self, cluster, bit_labels, coef=1.0, merge_key=None):
        """Add ``coef * string`` (a local Pauli string on ``cluster``); return the entry index.

        Strings with the same (cluster, mask, merge_key) are summed into one entry when
        ``merge_key`` is not None; identical strings are always de-duplicated when coef == 1.
        """
        n = int(self._dims[cluster]).bit_length() - 1
        mask, d = string_action(bit_labels, n)
        if merge_key is not None:
            key = ("merge", cluster, mask, merge_key)
            if key in self._keys:
                e = self._keys[key]
                self._d[e] = self._d[e] + coef * d
                return e
        else:
            key = ("string", cluster, tuple(sorted(bit_labels)), coef)
            if key in self._keys:
                return self._keys[key]
        self._keys[key] = len(self._cl)
        self._cl.append(cluster)
        self._mask.append(mask)
        self._d.append(coef * d)
        return self._keys[key]

    def freeze(self):
        self.cluster = np.array(self._cl, dtype=np.int64)
        self.mask = np.array(self._mask, dtype=np.int64)
        lens = [len(d) for d in self._d]
        self.doff = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        self.diag = (np.concatenate(self._d) if self._d else np.zeros(0)).astype(np.complex128)
        return self

    def __len__(self):
        return len(self._cl)

    def dense(self, e):
        """Dense D×D matrix of entry ``e`` (tests, operator-CTWA reference path)."""
        return dense_from_action(int(self.mask[e]), self.diag[self.doff[e]:self.doff[e + 1]])


@dataclass
class ClusterProblem:
    """The compiled eq. (5): local operators and inter-cluster couplings as plain arrays.

    Attributes
    ----------
    partition : Partition
    dims, offsets : int64 arrays (D_c, and amplitude offsets with offsets[-1] = A)
    local : EntryTable   local Hamiltonian entries (merged by cluster, mask, time function)
    local_tf : int64[E_loc]  time-function index of each local entry (-1: static)
    ops : EntryTable     cluster-local Pauli strings A_k, B_k used by the couplings
    cp_a, cp_b : int64[K] entry indices into ``ops``;  cp_J : float64[K];  cp_tf : int64[K]
    tfuncs : list of TimeFunction
    """

    partition: object
    hamiltonian: object
    local: EntryTable
    local_tf: np.ndarray
    ops: EntryTable
    cp_a: np.ndarray
    cp_b: np.ndarray
    cp_J: np.ndarray
    cp_tf: np.ndarray
    tfuncs: list

    @property
    def dims(self):
        return self.partition.dims

    @property
    def offsets(self):
        return self.partition.offsets

    @property
    def n_amp(self):
        return int(self.offsets[-1])

    def tf_table(self, times):
        """Values f_g(t) of every time function at ``times``: array (G, len(times))."""
        times = np.asarray(times, dtype=float)
        tab = np.ones((len(self.tfuncs), len(times)))
        for g, f in enumerate(self.tfuncs):
            tab[g] = np.broadcast_to(f(times), times.shape)
        if not np.all(np.isfinite(tab)):
            raise ValueError("model.terms.f: a time function is not finite on the time grid")
        return tab

    def n_distinct_masks(self):
        """Distinct flip masks per cluster in the local operator plus coupling operators."""
        out = []
        for c in range(self.partition.n_clusters):
            m = set(self.local.mask[self.local.cluster == c].tolist())
            m |= set(self.ops.mask[self.ops.cluster == c].tolist())
            out.append(len(m))
        return np.array(out)


def compile_problem(hamiltonian, partition):
    """Compile a Hamiltonian on a partition into a :class:`ClusterProblem` (eq. (5)).

    Explicit terms are compiled one by one; coupling blocks
    (:class:`~ctwa_hpc.model.hamiltonian.CouplingBlock`) with NumPy (:func:`_compile_block`), giving
    the same problem as their terms would (entry order aside).
    """
    if partition.n_sites != hamiltonian.n_sites:
        raise ValueError(f"method.clusters: partition covers {partition.n_sites} sites but the "
                         f"model has {hamiltonian.n_sites}")
    tfuncs = hamiltonian.time_functions()
    tf_index = {id(f): g for g, f in enumerate(tfuncs)}
    local = EntryTable(partition)
    local_tf = []
    ops = EntryTable(partition)
    cp_a, cp_b, cp_J, cp_tf = [], [], [], []
    explicit = hamiltonian.explicit_terms if hasattr(hamiltonian, "explicit_terms") \
        else hamiltonian.terms                   # never materialise the coupling blocks here
    for term in explicit:
        g = tf_index[id(term.tfunc)] if term.tfunc is not None else -1
        parts = partition.split_string(term.ops)
        if len(parts) == 1:
            (c, bl), = parts.items()
            _add_local(local, local_tf, c, bl, term.coef, g)
        elif len(parts) == 2:
            (ca, bla), (cb, blb) = parts.items()
            cp_a.append(ops.add_string(ca, bla))
            cp_b.append(ops.add_string(cb, blb))
            cp_J.append(term.coef)
            cp_tf.append(g)
        else:
            raise ValueError(f"model.terms: term {term.label()} touches {len(parts)} clusters; "
                             "CTWA couplings may span at most two clusters")
    cp = [np.array(x, dtype=dt) for x, dt in ((cp_a, np.int64), (cp_b, np.int64),
                                               (cp_J, float), (cp_tf, np.int64))]
    cp = [[x] for x in cp]
    for block in getattr(hamiltonian, "blocks", ()):
        gmap = np.array([tf_index[id(f)] for f in block.tfuncs] + [-1], dtype=np.int64)
        for acc, part in zip(cp, _compile_block(block, gmap, partition, local, local_tf, ops)):
            acc.append(part)
    cp_a, cp_b, cp_J, cp_tf = (np.concatenate(x) for x in cp)
    return ClusterProblem(partition, hamiltonian, local.freeze(),
                          np.array(local_tf, dtype=np.int64), ops.freeze(),
                          cp_a.astype(np.int64), cp_b.astype(np.int64), cp_J.astype(float),
                          cp_tf.astype(np.int64), tfuncs)


def _add_local(local, local_tf, cluster, bit_labels, coef, g):
    """Merge ``coef * string`` into the local entry (cluster, mask, g), recording g if new."""
    n_before = len(local)
    local.add_string(int(cluster), bit_labels, coef, merge_key=int(g))
    if len(local) > n_before:
        local_tf.append(int(g))


_LABELS = "XYZ"   # label codes of CouplingBlock
_NB = 16          # > the largest cluster size: radix of the bit field in packed keys


def _compile_block(block, gmap, partition, local, local_tf, ops):
    """One coupling block → local entries and (cp_a, cp_b, cp_J, cp_tf) arrays, vectorised.

    Site terms and pairs inside one cluster have their coefficients summed per (cluster,
    local string, time function) with ``np.unique``/``np.bincount`` and enter the local table
    (a loop over distinct local strings, O(N), not over pairs).  Pairs spanning two clusters
    become couplings between single-site strings: A on the lower-numbered cluster, as
    :meth:`Partition.split_string` orders them, each (site, label) one de-duplicated entry of
    ``ops`` found through an index table.  ``gmap[tf]`` is the problem-wide time-function
    index of the block's ``tf`` (``gmap[-1] = -1``).
    """
    cl, bit = partition.site_arrays
    G1 = int(gmap.max(initial=-1)) + 2
    # one-site terms
    if len(block.site_coef):
        s, a = block.site_i, block.site_a.astype(np.int64)
        g = gmap[block.site_tf]
        key = ((cl[s] * _NB + bit[s]) * 3 + a) * G1 + g + 1
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        coef = np.bincount(inv, weights=block.site_coef)
        for u, f in enumerate(first.tolist()):
            _add_local(local, local_tf, cl[s[f]], ((int(bit[s[f]]), _LABELS[a[f]]),), coef[u],
                       g[f])
    pi, pj = block.pair_i, block.pair_j
    pa, pb = block.pair_a.astype(np.int64), block.pair_b.astype(np.int64)
    pg = gmap[block.pair_tf]
    ci, cj = cl[pi], cl[pj]
    # two-site terms inside one cluster
    intra = np.flatnonzero(ci == cj)
    if len(intra):
        i, j, a, b, g = pi[intra], pj[intra], pa[intra], pb[intra], pg[intra]
        key = ((((ci[intra] * _NB + bit[i]) * 3 + a) * _NB + bit[j]) * 3 + b) * G1 + g + 1
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        coef = np.bincount(inv, weights=block.pair_coef[intra])
        for u, f in enumerate(first.tolist()):
            bl = ((int(bit[i[f]]), _LABELS[a[f]]), (int(bit[j[f]]), _LABELS[b[f]]))
            _add_local(local, local_tf, ci[intra[f]], bl, coef[u], g[f])
    # two-site terms between clusters
    inter = np.flatnonzero(ci != cj)
    n = len(inter)
    if n == 0:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
    swap = ci[inter] > cj[inter]
    i, j, a, b = pi[inter], pj[inter], pa[inter], pb[inter]
    site_a, lab_a = np.where(swap, j, i), np.where(swap, b, a)
    site_b, lab_b = np.where(swap, i, j), np.where(swap, a, b)
    opkey = np.concatenate([site_a * 3 + lab_a, site_b * 3 + lab_b])
    uk, inv = np.unique(opkey, return_inverse=True)
    entry = np.array([ops.add_string(int(cl[k // 3]), ((int(bit[k // 3]), _LABELS[k % 3]),))
                      for k in uk.tolist()], dtype=np.int64)
    return entry[inv[:n]], entry[inv[n:]], block.pair_coef[inter], pg[inter]


def partitions(cfg, inst):
    """The partitions of one realization, one per cluster offset (``method.clustering``).

    ``blocks``: contiguous blocks of ``cluster_size`` in site order, one per offset;
    ``plaquettes``: cells of shape ``method.plaquette`` of a lattice, shifted by each offset
    along every axis; ``strongest_pairs``: pairs by decreasing |J_ij| (an odd N leaves one
    singleton); ``greedy``: agglomerative merging along the strongest bonds up to
    ``cluster_size`` sites.  Explicit ``method.clusters`` override all of these.
    """
    meth = cfg["method"]
    n = inst.n_sites
    if meth["clusters"] is not None:
        return [Partition.from_lists(n, meth["clusters"])]
    how = meth["clustering"]
    if how == "blocks":
        return [Partition.contiguous(n, meth["cluster_size"], o) for o in meth["offsets"]]
    if how == "plaquettes":
        geom = inst.geometry
        if geom is None or geom.cells is None:
            raise ConfigError("method.clustering: 'plaquettes' needs a lattice model "
                              "(model.kind = 'lattice')")
        shape = meth["plaquette"]
        if len(shape) != geom.cells.shape[1] or not all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in shape):
            raise ConfigError(f"method.plaquette: expected {geom.cells.shape[1]} positive "
                              f"integers (cells per axis), got {shape!r}")
        d = len(shape)
        return [Partition.from_lists(n, geometry.plaquettes(geom, shape, offset=(o,) * d))
                for o in meth["offsets"]]
    si, sj, sv = inst.hamiltonian.pair_strength_lists()   # no (N, N) matrix for large N
    if how == "strongest_pairs":
        return [Partition.from_lists(n, geometry.strongest_pairs_lists(n, si, sj, sv))]
    return [Partition.from_lists(n, geometry.greedy_lists(n, si, sj, sv, meth["cluster_size"]))]
