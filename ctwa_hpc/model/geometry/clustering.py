"""Cluster partitions chosen from the geometry or the couplings (``method.clustering``).

Each function returns a partition of range(N) as a list of lists of site indices: every cluster
sorted ascending, clusters ordered by their smallest site.  The result can be handed to
``ctwa_hpc.method.clusters.Partition.from_lists``.

* :func:`blocks`: contiguous blocks in site order with an offset and periodic wrap, identical to
  ``Partition.contiguous``.
* :func:`plaquettes`: cells grouped into blocks of ``shape`` cells (1x2, 2x2, 2x2x2, ...), block
  boundaries shifted by ``offset``; all basis sites of a cell stay together.
* :func:`strongest_pairs`: the pairs (i < j) sorted by strength S_ij descending, ties broken by
  (i, j) ascending; walking down that list, a pair whose two sites are both still free becomes a
  cluster.  Pairs of zero strength count too, so all sites are paired (one singleton if N odd).
* :func:`greedy`: agglomerative single-linkage clustering.  Starting from singletons, merge the
  two clusters joined by the strongest remaining bond (S_ij > 0, same tie-break) whose merged
  size is <= max_size, until no bond qualifies.  Since clusters only grow, processing the bonds
  once in descending order with a size check (Kruskal with a cap) is exactly this procedure.

Strengths S must be a nonnegative (N, N) matrix, e.g. |J_zz| or
:func:`~ctwa_hpc.model.geometry.interactions.coupling_strength` (J) = sqrt(sum_ab J_ab^2); the sign of a
coupling never matters (dipolar couplings take both signs).  S is symmetrised as (S + S^T)/2.
"""
from __future__ import annotations

import numpy as np

from .base import Geometry


def _int(value, where, minimum=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _canonical(groups):
    return sorted((sorted(int(s) for s in g) for g in groups if len(g)), key=lambda c: c[0])


def blocks(N, size, offset=0):
    """Blocks of ``size`` consecutive sites starting at ``offset`` (periodic wrap), in block order.

    If ``size`` does not divide N the last block is shorter (same as Partition.contiguous).
    """
    n = _int(N, "model.n_sites", 1)
    s = _int(size, "method.cluster_size", 1)
    if s > n:
        raise ValueError(f"method.cluster_size: {s} exceeds the {n} sites")
    off = _int(offset, "method.offset")
    order = [(off + k) % n for k in range(n)]
    return [order[i:i + s] for i in range(0, n, s)]


def plaquettes(geom, shape, offset=None):
    """Group the sites of a lattice geometry into blocks of ``shape`` cells.

    Along axis a, cell coordinate c falls into block floor((c - offset_a) / shape_a) on an open
    axis (ragged edges give smaller clusters) and ((c - offset_a) mod L_a) // shape_a on a
    periodic axis of L_a cells (blocks wrap; if shape_a does not divide L_a the last block is
    shorter).  ``shape``/``offset`` are one integer per axis, or one integer for all axes.
    """
    if not isinstance(geom, Geometry) or geom.cells is None:
        raise ValueError("method.clustering: 'plaquettes' needs a lattice geometry with cell "
                         "coordinates (model.lattice)")
    d = geom.dim

    def per_axis(value, where, minimum):
        vals = [value] * d if isinstance(value, (int, np.integer)) else value
        if not isinstance(vals, (list, tuple, np.ndarray)) or len(vals) != d:
            raise ValueError(f"{where}: expected an integer or {d} integers, got {value!r}")
        return np.array([_int(v, where, minimum) for v in vals], dtype=np.int64)

    shp = per_axis(shape, "method.plaquette", 1)
    off = per_axis(0 if offset is None else offset, "method.offset", None)
    cells = geom.cells
    extent = (np.array(geom.lattice_shape, dtype=np.int64) if geom.lattice_shape is not None
              else cells.max(axis=0) + 1)
    shifted = cells - off
    key = np.empty_like(cells)
    for a in range(d):
        if geom.periodic[a]:
            key[:, a] = np.mod(shifted[:, a], extent[a]) // shp[a]
        else:
            key[:, a] = np.floor_divide(shifted[:, a], shp[a])
    _, label = np.unique(key, axis=0, return_inverse=True)
    label = label.reshape(-1)
    groups = [[] for _ in range(label.max() + 1)]
    for i, c in enumerate(label.tolist()):
        groups[c].append(i)
    return _canonical(groups)


def _strength(S):
    S = np.asarray(S, dtype=float)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] < 1:
        raise ValueError(f"method.clustering: expected a square (N, N) strength matrix, got "
                         f"shape {S.shape}")
    if not np.all(np.isfinite(S)):
        raise ValueError("method.clustering: the coupling strengths must be finite")
    if np.any(S < 0):
        raise ValueError("method.clustering: coupling strengths must be nonnegative; pass |J| "
                         "or coupling_strength(J), not signed couplings")
    return 0.5 * (S + S.T)


def _sorted_pairs(S):
    """Pairs i < j ordered by strength descending, then i, then j (stable and deterministic)."""
    i, j = np.triu_indices(S.shape[0], k=1)
    v = S[i, j]
    order = np.lexsort((j, i, -v))
    return i[order], j[order], v[order]


def strongest_pairs(Jabs):
    """Pair free sites along the strongest bonds first (one singleton if N is odd)."""
    S = _strength(Jabs)
    n = S.shape[0]
    free = np.ones(n, dtype=bool)
    pairs = []
    if n >= 2:
        ii, jj, _ = _sorted_pairs(S)
        target = n // 2
        for a, b in zip(ii.tolist(), jj.tolist()):
            if free[a] and free[b]:
                free[a] = free[b] = False
                pairs.append([a, b])
                if len(pairs) == target:
                    break
    pairs.extend([s] for s in np.nonzero(free)[0].tolist())
    return _canonical(pairs)


def _pair_lists(n, i, j, s):
    """Validated strength lists, sorted by strength descending, then i, then j (the order of
    :func:`_sorted_pairs`), keeping only S > 0."""
    n = _int(n, "model.n_sites", 1)
    i, j = np.asarray(i, np.int64).reshape(-1), np.asarray(j, np.int64).reshape(-1)
    v = np.asarray(s, dtype=float).reshape(-1)
    if not (i.shape == j.shape == v.shape) or (i.size and (
            i.min() < 0 or j.max() >= n or np.any(i >= j))):
        raise ValueError("method.clustering: expected pair lists i < j < N with one strength "
                         "each")
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError("method.clustering: the coupling strengths must be finite and "
                         "nonnegative")
    keep = v > 0
    i, j, v = i[keep], j[keep], v[keep]
    order = np.lexsort((j, i, -v))
    return n, i[order], j[order], v[order]


def strongest_pairs_lists(n, i, j, s):
    """:func:`strongest_pairs` of the strengths given as lists (pairs not listed have S = 0):
    the same partition, without an (N, N) matrix."""
    n, ii, jj, _ = _pair_lists(n, i, j, s)
    free = np.ones(n, dtype=bool)
    pairs = []
    target = n // 2
    for a, b in zip(ii.tolist(), jj.tolist()):
        if len(pairs) == target:
            break
        if free[a] and free[b]:
            free[a] = free[b] = False
            pairs.append([a, b])
    # the zero-strength pairs follow in (i, j) order: consecutive free sites pair up
    rest = np.flatnonzero(free).tolist()
    k = 2 * min(target - len(pairs), len(rest) // 2)
    pairs.extend([a, b] for a, b in zip(rest[:k:2], rest[1:k:2]))
    pairs.extend([x] for x in rest[k:])
    return _canonical(pairs)


def greedy(Jabs, max_size):
    """Agglomerative single-linkage clusters of at most ``max_size`` sites (bonds with S > 0)."""
    S = _strength(Jabs)
    _int(max_size, "method.cluster_size", 1)
    n = S.shape[0]
    if n < 2:
        return _canonical([[s] for s in range(n)])
    ii, jj, vv = _sorted_pairs(S)
    m = int(np.count_nonzero(vv > 0))
    return _kruskal(n, ii[:m], jj[:m], max_size)


def greedy_lists(n, i, j, s, max_size):
    """:func:`greedy` of the strengths given as lists: the same partition, no (N, N) matrix."""
    n, ii, jj, _ = _pair_lists(n, i, j, s)
    return _kruskal(n, ii, jj, max_size)


def _kruskal(n, ii, jj, max_size):
    """Merge along the bonds (ii, jj), strongest first, up to ``max_size`` sites."""
    cap = _int(max_size, "method.cluster_size", 1)
    parent = list(range(n))
    size = [1] * n

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    if n >= 2 and cap >= 2:
        full = 0  # sites in clusters that reached the cap (these merge no further)
        for a, b in zip(ii.tolist(), jj.tolist()):
            ra, rb = find(a), find(b)
            if ra == rb or size[ra] + size[rb] > cap:
                continue
            if size[ra] < size[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
            size[ra] += size[rb]
            if size[ra] == cap:
                full += cap
                if n - full < 2:
                    break
    groups = {}
    for s in range(n):
        groups.setdefault(find(s), []).append(s)
    return _canonical(groups.values())
