"""The work plan: (realization, offset, sample block) work items by arithmetic, in O(1) memory.

A run of R realizations, O cluster offsets and S samples per (realization, offset) in blocks of
``batch`` samples has n_items = R·O·B items, B = ⌈S / batch⌉, in one fixed global order
(realization-major, then offset, then sample block)::

    k = (r·O + o)·B + b,     item k = samples [b·batch, min((b + 1)·batch, S)) of (r, o)

(``row = r·O + o`` is the Moments row of the item).  :class:`WorkPlan` computes ``plan[k]``
from k, so planning 10⁹ samples costs nothing; the item indices are the integers stored in
checkpoints (``own``, ``n_items``), unchanged from the list the runner used to build.

Stages and the split over ranks
-------------------------------
With a stopping rule the items run in stages: stage j holds the blocks whose first sample lies
in [j·w, (j+1)·w), w = m·batch, i.e. blocks b with j·m ≤ b < (j+1)·m of every row
(:meth:`WorkPlan.stages`).  Inside a stage the items are taken in increasing global index.
Every rank takes a balanced contiguous block of the stage's items still to do, exactly what
``numpy.array_split(todo, P)[rank]`` gives for the list ``todo`` (the first n mod P ranks get
one item more), but computed from the stage's shape and the sorted finished positions alone
(:meth:`Stage.share`): nothing proportional to the number of items is ever materialized, only
the finished set of a resumed run (bounded by the work done) and a few spans per rank.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WorkItem:
    """Samples [start, stop) of (realization, offset_index); ids relative to first_sample."""

    realization: int
    offset_index: int
    start: int
    stop: int


def _count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return value


def split_range(n, size, rank):
    """[lo, hi) of rank ``rank`` when n positions are split like ``numpy.array_split``."""
    q, rem = divmod(int(n), int(size))
    lo = rank * q + min(rank, rem)
    return lo, lo + q + (1 if rank < rem else 0)


class WorkPlan:
    """All work items of a run, computed on demand (``len``, ``plan[k]``, iteration)."""

    def __init__(self, realizations, n_offsets, samples, batch):
        self.realizations = _count("disorder.realizations", realizations, 0)
        self.n_offsets = _count("method.offsets", n_offsets, 1)
        self.samples = _count("method.samples", samples, 1)
        self.batch = _count("method.batch", batch, 1)
        self.blocks_per_row = -(-self.samples // self.batch)
        self.n_rows = self.realizations * self.n_offsets
        self.n_items = self.n_rows * self.blocks_per_row   # a Python int: never overflows

    def __repr__(self):
        return (f"WorkPlan(realizations={self.realizations}, n_offsets={self.n_offsets}, "
                f"samples={self.samples}, batch={self.batch}; {self.n_items} items)")

    def __len__(self):
        return self.n_items

    @property
    def largest_block(self):
        """Samples in the largest block (min(batch, samples))."""
        return min(self.batch, self.samples)

    @property
    def total_samples(self):
        return self.n_rows * self.samples

    def _check(self, k):
        k = int(k)
        if k < 0:
            k += self.n_items
        if not 0 <= k < self.n_items:
            raise IndexError(f"work item {k} outside 0..{self.n_items - 1}")
        return k

    def __getitem__(self, k):
        k = self._check(k)
        row, b = divmod(k, self.blocks_per_row)
        r, oi = divmod(row, self.n_offsets)
        start = b * self.batch
        return WorkItem(r, oi, start, min(start + self.batch, self.samples))

    def __iter__(self):
        for k in range(self.n_items):
            yield self[k]

    def index(self, realization, offset_index, block):
        """Global index of block ``block`` of (realization, offset_index)."""
        return (realization * self.n_offsets + offset_index) * self.blocks_per_row + block

    def row(self, k):
        """Moments row r·O + o of item k."""
        return self._check(k) // self.blocks_per_row

    def samples_in(self, k):
        """Samples of item k (the last block of a row may be short)."""
        b = self._check(k) % self.blocks_per_row
        return min(self.batch, self.samples - b * self.batch)

    def samples_of(self, indices):
        """Total samples of the given item indices (e.g. the finished set of a resume)."""
        return sum(self.samples_in(k) for k in indices)

    def rows(self):
        """(n_items,) int64 Moments row of every item (O(n_items): for checkpoint checks)."""
        return np.repeat(np.arange(self.n_rows, dtype=np.int64), self.blocks_per_row)

    def counts(self, per=1):
        """(n_items,) float units of every item: samples // per (per = 2: antithetic pairs)."""
        one = np.full(self.blocks_per_row, self.batch, dtype=np.int64)
        one[-1] = self.samples - (self.blocks_per_row - 1) * self.batch
        return np.tile(one // per, self.n_rows).astype(float)

    # -- stages -----------------------------------------------------------------------------
    def stages(self, blocks_per_stage=None):
        """The stages of a run with a stopping rule checked every ``blocks_per_stage`` blocks
        of each row (None: one stage holding every item)."""
        return Stages(self, blocks_per_stage)


class Stages:
    """Lazy sequence of the :class:`Stage` objects of a plan."""

    def __init__(self, plan, blocks_per_stage=None):
        B = plan.blocks_per_row
        m = B if blocks_per_stage is None else _count("stop.check_samples", blocks_per_stage, 1)
        self.plan, self.width = plan, min(m, B)
        self.n = -(-B // self.width) if plan.n_items else 0

    def __len__(self):
        return self.n

    def __getitem__(self, j):
        j = int(j)
        if not 0 <= j < self.n:
            raise IndexError(f"stage {j} outside 0..{self.n - 1}")
        b0 = j * self.width
        return Stage(self.plan, b0, min(b0 + self.width, self.plan.blocks_per_row))

    def __iter__(self):
        for j in range(self.n):
            yield self[j]


class Stage:
    """Blocks b0 ≤ b < b1 of every row, ordered by global index (row-major).

    Position p of the stage is item (p // m)·B + b0 + p % m, m = b1 − b0, B = blocks per row.
    """

    def __init__(self, plan, b0, b1):
        self.plan, self.b0, self.b1 = plan, int(b0), int(b1)
        self.m = self.b1 - self.b0
        self.n = plan.n_rows * self.m        # a Python int (len() is limited to 2**63)

    def __len__(self):
        return self.n

    def item(self, p):
        row, j = divmod(int(p), self.m)
        return row * self.plan.blocks_per_row + self.b0 + j

    def __iter__(self):
        for p in range(self.n):
            yield self.item(p)

    def positions(self, indices):
        """Sorted stage positions of those ``indices`` that belong to this stage."""
        if len(indices) == 0:
            return np.zeros(0, dtype=np.int64)
        idx = np.fromiter(indices, dtype=np.int64, count=len(indices))
        row, b = np.divmod(idx, self.plan.blocks_per_row)
        inside = (b >= self.b0) & (b < self.b1)
        return np.sort(row[inside] * self.m + (b[inside] - self.b0))

    def share(self, done, size, rank):
        """This rank's contiguous share of the stage's items not in ``done`` (a set).

        Equal to ``numpy.array_split([i for i in stage if i not in done], size)[rank]``.
        """
        D = self.positions(done)
        lo, hi = split_range(self.n - len(D), size, rank)
        need = hi - lo
        spans = []
        if need > 0:
            # the todo position p sits at stage position p + #{done positions before it}
            di = int(np.searchsorted(D - np.arange(len(D)), lo, side="right"))
            s = lo + di
            while need > 0:
                nxt = int(D[di]) if di < len(D) else self.n
                run = min(need, nxt - s)
                if run > 0:
                    spans.append((s, s + run))
                    need -= run
                    s += run
                if need > 0:  # s == nxt: a finished position, skip it
                    s, di = nxt + 1, di + 1
        return Share(self, spans)


class Share:
    """A rank's items: a few spans of stage positions (iterable, ``len``; the spans are
    mapped to global item indices one by one, so even a share spread over many rows of a
    stage costs O(number of spans) memory)."""

    def __init__(self, stage, spans):
        self.stage = stage
        self.spans = [(int(a), int(b)) for a, b in spans if b > a]
        self.n = sum(b - a for a, b in self.spans)

    def __len__(self):
        return self.n

    def __iter__(self):
        item = self.stage.item
        for a, b in self.spans:
            for p in range(a, b):
                yield item(p)

    def __repr__(self):
        return f"Share({self.n} items in stage positions {self.spans})"
