"""Site pairs within a distance (a cell list) and sparse pair couplings.

* :func:`close_pairs`: every pair i < j whose minimum-image distance is at most ``radius``
  (periodic axes wrap), found with a cell list in O(N + pairs) time and memory: no (N, N)
  array is ever formed.  The displacements and squared distances are computed exactly as
  :meth:`~ctwa_hpc.model.geometry.base.Geometry.axis_displacement` does, so a coupling built
  from them is bit for bit the dense one.
* :func:`nearest_pairs`: the pairs at the smallest pair distance (relative tolerance), the
  sparse form of the nearest-neighbour rule.
* :class:`PairCouplings`: coupling lists (i, j, one value per family), the sparse form of the
  coupling dict of :mod:`.interactions` for short-range interactions (nearest neighbour, or a
  cutoff).  :meth:`PairCouplings.dense` gives the (N, N) dict back (small N only).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

MAX_AXIS_CELLS = 1 << 20          # cells per axis (linear cell ids stay below 2^60)
CELL_MARGIN = 1e-6                # cells are this much (relative) wider than the radius


@dataclass(frozen=True, eq=False)
class PairCouplings:
    """Couplings as lists: ``values[key][k]`` is the coefficient J^{key}_{i_k j_k} of
    σ^a_{i_k} σ^b_{j_k} (key = "ab"), with i_k < j_k, pairs sorted by (i, j) and unique.

    Behaves as a read-only dict of families (``keys``, ``items``, ``len``, ``[key]`` give the
    value lists); :meth:`dense` is the (N, N) symmetric dict of the dense builders."""

    n_sites: int
    i: np.ndarray
    j: np.ndarray
    values: dict

    @property
    def n_pairs(self):
        return int(self.i.size)

    def keys(self):
        return self.values.keys()

    def items(self):
        return self.values.items()

    def __len__(self):
        return len(self.values)

    def __getitem__(self, key):
        return self.values[key]

    def __contains__(self, key):
        return key in self.values

    @property
    def nbytes(self):
        return int(self.i.nbytes + self.j.nbytes + sum(v.nbytes for v in self.values.values()))

    def dense(self):
        """{key: (N, N) symmetric array} (what the dense builders return)."""
        n = self.n_sites
        out = {}
        for key, v in self.values.items():
            M = np.zeros((n, n))
            M[self.i, self.j] = v
            M[self.j, self.i] = v
            out[key] = M
        return out


def _cells(pos, box, periodic, edge):
    """Integer cell coordinates (N, d) and cells per axis; every cell is >= ``edge`` wide."""
    n, d = pos.shape
    cell = np.empty((n, d), np.int64)
    ncell = np.empty(d, np.int64)
    for a in range(d):
        x = pos[:, a]
        if periodic[a]:
            length = float(box[a])
            m = int(min(max(1.0, np.floor(length / edge)), MAX_AXIS_CELLS))
            c = np.floor(np.mod(x, length) * (m / length))
        else:
            lo = float(x.min())
            width = max(edge, (float(x.max()) - lo) / (MAX_AXIS_CELLS - 1))
            c = np.floor((x - lo) / width)
            m = int(c.max()) + 1
        cell[:, a] = np.clip(c.astype(np.int64), 0, m - 1)
        ncell[a] = m
    return cell, ncell


def _shifts(ncell, periodic):
    """Neighbour cell shifts per axis, without repeating a cell on short periodic axes."""
    out = []
    for m, per in zip(ncell.tolist(), periodic.tolist()):
        if not per:
            out.append([-1, 0, 1])
            continue
        seen, axis = set(), []
        for s in (0, -1, 1):
            if s % m not in seen:
                seen.add(s % m)
                axis.append(s)
        out.append(axis)
    return out


class _CellList:
    """Points sorted by cell; :meth:`neighbours` yields candidate pairs cell shift by shift."""

    def __init__(self, pos, box, periodic, radius):
        self.pos, self.box, self.periodic = pos, box, np.asarray(periodic, bool)
        self.cell, self.ncell = _cells(pos, box, self.periodic, radius * (1.0 + CELL_MARGIN))
        self.stride = np.concatenate([[1], np.cumprod(self.ncell)[:-1]]).astype(np.int64)
        lin = self.cell @ self.stride
        self.order = np.argsort(lin, kind="stable")
        self.cell = self.cell[self.order]           # points in cell order: queries near-sorted
        self.ucell, self.start, self.count = np.unique(lin[self.order], return_index=True,
                                                       return_counts=True)

    def _lookup(self, shift):
        """(points in cell order, start, count) of the non-empty neighbour cell at ``shift``."""
        nb = self.cell + np.asarray(shift, np.int64)
        valid = np.ones(len(nb), bool)
        for a, m in enumerate(self.ncell.tolist()):
            if self.periodic[a]:
                nb[:, a] %= m
            else:
                valid &= (nb[:, a] >= 0) & (nb[:, a] < m)
        lin = nb @ self.stride
        kc = np.minimum(np.searchsorted(self.ucell, lin), len(self.ucell) - 1)
        found = valid & (self.ucell[kc] == lin)
        pts = np.flatnonzero(found)
        return pts, self.start[kc[pts]], self.count[kc[pts]]

    def n_candidates(self):
        """Number of (ordered) candidate pairs the cell list would examine."""
        return int(sum(int(self._lookup(s)[2].sum())
                       for s in product(*_shifts(self.ncell, self.periodic))))

    def neighbours(self):
        for s in product(*_shifts(self.ncell, self.periodic)):
            pts, st, cnt = self._lookup(s)
            total = int(cnt.sum())
            if total == 0:
                continue
            first = np.repeat(np.cumsum(cnt) - cnt, cnt)
            rep_i = self.order[np.repeat(pts, cnt)]
            rep_j = self.order[np.repeat(st, cnt) + (np.arange(total) - first)]
            keep = rep_i < rep_j
            yield rep_i[keep], rep_j[keep]


def pair_displacements(pos, box, periodic, i, j):
    """Per-axis minimum-image components of r_j - r_i and the squared distances of the pairs,
    with the arithmetic of :meth:`Geometry.axis_displacement` / ``squared_distances``."""
    dxs = []
    r2 = np.zeros(len(i))
    for a in range(pos.shape[1]):
        dx = pos[j, a] - pos[i, a]
        if periodic[a]:
            length = box[a]
            dx -= length * np.round(dx / length)
        dxs.append(dx)
        r2 += dx * dx
    return dxs, r2


def close_pairs(pos, box, periodic, radius, max_pairs=None, where="model.cutoff"):
    """Pairs i < j (sorted by (i, j)) at minimum-image distance <= ``radius``.

    Returns (i, j, dxs, r2): int64 index arrays, the per-axis displacements r_j - r_i and
    the squared distances.  ``max_pairs`` bounds the candidate pairs examined (ValueError
    naming ``where`` beyond it)."""
    pos = np.asarray(pos, dtype=float)
    n = pos.shape[0]
    periodic = np.asarray(periodic, bool)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64),
             [np.zeros(0) for _ in range(pos.shape[1])], np.zeros(0))
    if n < 2:
        return empty
    cl = _CellList(pos, box, periodic, float(radius))
    if max_pairs is not None:
        cand = cl.n_candidates() // 2
        if cand > max_pairs:
            raise ValueError(f"{where}: a radius of {radius:.6g} leaves about {cand:.3g} "
                             f"candidate pairs to examine (limit {max_pairs:.3g}); lower it")
    ii, jj = [], []
    for a, b in cl.neighbours():
        _, r2 = pair_displacements(pos, box, periodic, a, b)
        ok = r2 <= radius * radius
        ii.append(a[ok])
        jj.append(b[ok])
    if not ii:
        return empty
    i, j = np.concatenate(ii), np.concatenate(jj)
    order = np.argsort(i * np.int64(n) + j, kind="stable")
    i, j = i[order], j[order]
    dxs, r2 = pair_displacements(pos, box, periodic, i, j)
    return i, j, dxs, r2


def _extent(pos, box, periodic):
    ext = np.ptp(pos, axis=0).astype(float)
    per = np.asarray(periodic, bool)
    if per.any():
        ext[per] = np.asarray(box, dtype=float)[per]
    return ext


def nearest_pairs(pos, box, periodic, rel_tol, max_pairs=None):
    """(i, j, dxs, r2, rmin2) of the pairs at the smallest pair distance within ``rel_tol``:
    |r_ij − r_min| <= rel_tol · r_min (the dense rule), found without an (N, N) array.
    ``rmin2`` is the smallest squared pair distance (0 when sites coincide)."""
    pos = np.asarray(pos, dtype=float)
    n, d = pos.shape
    ext = _extent(pos, box, periodic)
    use = ext > 0
    if not use.any():                             # every site at one point
        i, j = np.zeros(1, np.int64), np.ones(1, np.int64)
        dxs, r2 = pair_displacements(pos, box, periodic, i, j)
        return i, j, dxs, r2, 0.0
    radius = 1.5 * float(np.prod(ext[use]) / n) ** (1.0 / int(use.sum()))   # ~ the spacing
    limit = max(64 * n, 1 << 20) if max_pairs is None else max_pairs
    lo, hi = 0.0, np.inf
    for _ in range(400):
        cl = _CellList(pos, box, periodic, radius)
        too_many = cl.n_candidates() // 2 > limit and radius > lo * (1 + 1e-3)
        found = None if too_many else close_pairs(pos, box, periodic, radius)
        if found is not None and len(found[0]):
            break
        if too_many:
            hi = radius
            radius = 0.5 * (lo + radius) if lo > 0 else 0.25 * radius
        else:
            lo = radius
            radius = 2.0 * radius if not np.isfinite(hi) else 0.5 * (radius + hi)
    else:                                            # pragma: no cover - pathological input
        raise ValueError("model.interaction: could not find the nearest-neighbour distance")
    rmin2 = float(found[3].min())
    rmin = np.sqrt(rmin2)
    reach = rmin * (1.0 + 10 * rel_tol)
    if radius < reach:
        found = close_pairs(pos, box, periodic, reach)
    i, j, dxs, r2 = found
    keep = np.abs(np.sqrt(r2) - rmin) <= rel_tol * rmin
    return i[keep], j[keep], [dx[keep] for dx in dxs], r2[keep], rmin2


__all__ = ["PairCouplings", "close_pairs", "nearest_pairs", "pair_displacements"]
