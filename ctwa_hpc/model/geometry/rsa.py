"""Random sequential adsorption (the ``blockade`` positions) in O(N) time and memory.

The process (:func:`~ctwa_hpc.model.geometry.positions.blockade`): site k draws uniform
candidates in batches of 8, 16, ..., 1024 (``rng.random((m, d)) * box``) and takes the first
candidate of a batch at distance >= r_b from the sites placed before (minimum image on
periodic axes); a whole batch is drawn even when its first candidate is taken.

:func:`place` gives exactly the sites of that sequential process, with the same draws from
``rng`` (its state afterwards is the same too), but works on chunks of the candidate stream:

1. every candidate of the chunk is checked at once against the sites placed before the chunk
   (:class:`_Grid`, a cell grid with cells at least r_b wide, several sites per cell);
2. the pairs of candidates of the chunk closer than r_b are found with a cell list
   (:func:`~ctwa_hpc.model.geometry.pairs.close_pairs`);
3. a short Python walk replays the batches: the first candidate of a batch that is free of
   the earlier sites and of no conflict with a candidate taken earlier in the chunk is taken.

Chunks hold about twice the candidates the remaining sites are expected to use (fewer in
small boxes, where most candidates conflict with each other), so the walk costs a few
microseconds per site (10⁶ sites in a 2000 × 2000 box in seconds).
"""
from __future__ import annotations

import math

import numpy as np

from .pairs import close_pairs

MIN_CHUNK, MAX_CHUNK = 64, 1 << 16
DRAW_ROWS = 1 << 20


class _Grid:
    """Placed sites in cells at least r_b wide (a site's blockers lie in the 3^d cells around
    it), ``cap`` slots per cell (doubled when a cell overflows)."""

    def __init__(self, n, lengths, per, rb):
        d = lengths.size
        self.lengths, self.per, self.rb2 = lengths, per, rb * rb
        ncell = np.maximum(1.0, np.floor(lengths / (rb * (1.0 + 1e-9))))
        target = float(max(1 << 22, 2 * n))
        if np.prod(ncell) > target:
            ncell = np.maximum(1.0, np.floor(ncell * (target / np.prod(ncell)) ** (1.0 / d)))
        self.ncell = ncell.astype(np.int64)
        self.edge = lengths / self.ncell
        self.stride = np.concatenate([[1], np.cumprod(self.ncell)[:-1]]).astype(np.int64)
        shifts = []
        for m, p in zip(self.ncell.tolist(), per.tolist()):
            axis = []
            for s in (0, -1, 1):
                if not p or s % m not in {t % m for t in axis}:
                    axis.append(s)
            shifts.append(axis)
        mesh = np.meshgrid(*[np.array(s) for s in shifts], indexing="ij")
        self.offsets = np.stack([g.reshape(-1) for g in mesh], axis=1)
        self.slots = np.full((int(np.prod(self.ncell)), 1), -1, dtype=np.int64)
        self.fill = np.zeros(len(self.slots), dtype=np.int64)
        self.x = np.empty((n, d))
        self.k = 0

    def _cell(self, pts):
        return np.minimum((pts // self.edge).astype(np.int64), self.ncell - 1)

    def _wrap(self, diff):
        if self.per.any():
            L = self.lengths[self.per]
            diff[..., self.per] -= L * np.round(diff[..., self.per] / L)
        return diff

    def free(self, cand):
        """(M,) True where a candidate is at distance >= r_b from every placed site."""
        if self.k == 0:
            return np.ones(len(cand), bool)
        home = self._cell(cand)
        best = np.full(len(cand), np.inf)
        for off in self.offsets:                        # the 3^d cells around each candidate
            nb = home + off
            ok = np.ones(len(cand), bool)
            for a in range(nb.shape[1]):
                if self.per[a]:
                    nb[:, a] %= self.ncell[a]
                else:
                    ok &= (nb[:, a] >= 0) & (nb[:, a] < self.ncell[a])
            rows = np.flatnonzero(ok)
            lin = nb[rows] @ self.stride
            for c in range(self.slots.shape[1]):
                idx = self.slots[lin, c]
                has = idx >= 0
                if not has.any():
                    continue
                r = rows[has]
                diff = self._wrap(cand[r][:, None, :] - self.x[idx[has]][:, None, :])
                d2 = np.einsum("mkd,mkd->mk", diff, diff)[:, 0]
                best[r] = np.minimum(best[r], d2)
        return best >= self.rb2

    def add(self, pts):
        """Append sites (in order) to the grid."""
        m = len(pts)
        if m == 0:
            return
        ids = np.arange(self.k, self.k + m)
        self.x[self.k:self.k + m] = pts
        self.k += m
        lin = self._cell(pts) @ self.stride
        order = np.argsort(lin, kind="stable")
        lin_s = lin[order]
        first = np.searchsorted(lin_s, lin_s, side="left")
        slot = self.fill[lin_s] + (np.arange(m) - first)
        while slot.max() >= self.slots.shape[1]:
            grown = np.full((len(self.slots), 2 * self.slots.shape[1]), -1, dtype=np.int64)
            grown[:, :self.slots.shape[1]] = self.slots
            self.slots = grown
        self.slots[lin_s, slot] = ids[order]
        np.add.at(self.fill, lin_s, 1)


def _conflicts(cand, free, lengths, per, rb2):
    """{b: [a, ...]}: free candidates a < b of the chunk closer than r_b."""
    fi = np.flatnonzero(free)
    i, j, _, r2 = close_pairs(cand[fi], lengths, per, np.sqrt(rb2))
    keep = r2 < rb2
    out = {}
    for a, b in zip(fi[i[keep]].tolist(), fi[j[keep]].tolist()):
        out.setdefault(b, []).append(a)
    return out


def _next_free(free):
    """nf[x] = smallest y >= x with free[y] (len(free) if none), as a Python list."""
    M = len(free)
    idx = np.where(free, np.arange(M), M)
    return np.minimum.accumulate(idx[::-1])[::-1].tolist() + [M]


def place(n, lengths, per, rb, rng, max_attempts, fail):
    """(n, d) positions of the sequential process; ``fail(k)`` builds the ValueError raised
    when site k exhausts ``max_attempts`` candidates."""
    d = lengths.size
    grid = _Grid(n, lengths, per, rb)
    state = rng.bit_generator.state
    consumed = 0
    rest = np.empty((0, d))
    k, tries, m = 0, 0, 8
    ball = np.pi ** (d / 2) / math.gamma(d / 2 + 1) * rb ** d
    dense_cap = max(1024, int(min(8.0 * float(np.prod(lengths)) / ball, MAX_CHUNK)))
    while k < n:
        per_site = max(8.0, consumed / k) if k else 8.0
        size = min(max(int(2 * per_site * (n - k)) + 8, MIN_CHUNK), MAX_CHUNK, dense_cap)
        size = max(size, min(m, max_attempts - tries))
        cand = np.concatenate([rest, rng.random((size - len(rest), d)) * lengths]) \
            if size > len(rest) else rest
        free = grid.free(cand)
        partners = _conflicts(cand, free, lengths, per, grid.rb2)
        nf = _next_free(free)
        chosen = np.zeros(len(cand), bool)
        taken = []
        q = 0
        while k < n:
            if tries >= max_attempts:
                raise fail(k)
            m_now = min(m, max_attempts - tries)
            if q + m_now > len(cand):
                break
            end = q + m_now
            c = nf[q]
            while c < end and any(chosen[a] for a in partners.get(c, ())):
                c = nf[c + 1]
            tries += m_now
            q = end
            if c < end:
                chosen[c] = True
                taken.append(c)
                k, tries, m = k + 1, 0, 8
            else:
                m = min(2 * m, 1024)
        grid.add(cand[taken])
        consumed += q
        rest = cand[q:]
    rng.bit_generator.state = state            # leave rng as the sequential process does
    while consumed:
        rows = min(consumed, DRAW_ROWS)
        rng.random((rows, d))
        consumed -= rows
    return grid.x
