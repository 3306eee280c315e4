r"""Streaming moments: a rank holds sums only for the (realization, offset) rows in flight.

A *row* is one (realization r, cluster offset o) replica, row = r·O + o, with B work blocks
(:mod:`ctwa_hpc.driver.workplan`).  A rank adds the per-sample columns of each block it integrates
to the row's :class:`~ctwa_hpc.method.stats.Moments` (a *fragment*: the sums and the item indices
they hold).  When a rank holds all B blocks of a row the row is *done*: its estimates (mean
and stderr of every output, eq. numbers as in :mod:`ctwa_hpc.method.stats`) are formed at once and
its sums released (kept only if the output stores ``/moments``).  With realization-major work
and contiguous shares, only the first and the last row of a rank's share can be split between
ranks, so a rank holds O(1) fragments whatever R and P.

Ownership.  Realizations are split over ranks in contiguous balanced blocks (rank p owns
[lo_p, hi_p) = ``split_range(R, P, p)``).  :meth:`RowStore.consolidate` sends every fragment
and done row of a realization owned elsewhere point-to-point to its owner
(:func:`ctwa_hpc.tools.parallel.exchange`), where fragments of one row merge exactly (re-shifted
sums).  At the end of a run the owner of realization r holds its O done rows and forms the
realization's values (offset average, as in fig. 7 of the paper):

.. math::  \bar Q_r = \frac1O \sum_o Q_{r,o}, \qquad
           \mathrm{se}_r = \frac1O \sqrt{\textstyle\sum_o \mathrm{se}_{r,o}^2}.

Disorder average (collective, :func:`disorder_average`): the mean of the R realization
values by one allreduce of Σ_r Q̄_r, then the spread by a second of Σ_r (Q̄_r − Q̄)² (two
passes, no cancellation), stderr = √(Σ_r(Q̄_r − Q̄)²/(R − 1))/√R for R ≥ 2, and
stderr_within = √(Σ_r se_r²)/R, equal to :func:`ctwa_hpc.method.stats.disorder_average` on the
gathered arrays.

Checkpoint state: :class:`~ctwa_hpc.driver.rowstate.RowState` (the base class) turns a store into
arrays, checks them and adopts them.
"""
from __future__ import annotations

import numpy as np

from ..tools import parallel
from ..method import stats
from .rowstate import RowState, expand_ranges, overlaps, to_ranges  # noqa: F401
from .workplan import split_range


def owner_of(r, R, P):
    """The rank owning realization r when R realizations are split over P ranks like
    :func:`~ctwa_hpc.driver.workplan.split_range` (the first R mod P ranks hold one more)."""
    q, rem = divmod(int(R), int(P))
    big = rem * (q + 1)
    return int(r) // (q + 1) if r < big else rem + (int(r) - big) // q


class RowStore(RowState):
    """This rank's fragments and done rows (see the module docstring).

    ``outputs``: the ObservableSet outputs {name: Output}; ``plan``: the WorkPlan;
    ``unit``: count added per sample (1/2 with antithetic pairs); ``keep_moments``: keep the
    sums of done rows (for ``/moments``); ``first_sample``: the global index of the plan's
    sample 0 (``method.first_sample``: it places the units in their sample groups).
    """

    def __init__(self, outputs, plan, n_t, n_cols, cross, antithetic=False,
                 keep_moments=False, deterministic=False, first_sample=0):
        self.outputs = outputs
        self.plan = plan
        self.O, self.B = plan.n_offsets, plan.blocks_per_row
        self.n_t, self.n_cols = int(n_t), int(n_cols)
        self.cross = np.asarray(cross, dtype=np.int64).reshape(-1, 2)
        self.antithetic = bool(antithetic)
        self.keep_moments = bool(keep_moments)
        self.deterministic = bool(deterministic)
        self.first_sample = int(first_sample)
        self.grouped = stats.grouped_columns(outputs)
        self.compiled = True      # the Cython accumulation (False: the NumPy twin)
        self.frags = {}   # row -> [Moments (1 row), list of item indices]
        self.done = {}    # row -> {"count": float, "est": {name: (mean, se)}, "moments": M|None}

    # -- accumulation ------------------------------------------------------------------------
    def _new(self):
        return stats.Moments.zeros(1, self.n_t, self.n_cols, self.cross, self.grouped)

    def add(self, k, row, cols):
        """Add the per-sample columns (n_t, K, S) of work item k (of ``row``)."""
        frag = self.frags.get(row)
        if frag is None:
            if row in self.done:
                raise RuntimeError(f"work item {k}: row {row} is already complete")
            frag = self.frags[row] = [self._new(), []]
        unit = (self.first_sample + self.plan[k].start) // (2 if self.antithetic else 1)
        frag[0].add(0, cols, antithetic=self.antithetic, compiled=self.compiled,
                    first_unit=unit)
        frag[1].append(int(k))
        if len(frag[1]) == self.B:
            self._finish(row)

    def _finish(self, row):
        mom, _ = self.frags.pop(row)
        self.done[row] = {"count": float(mom.count[0]), "est": self._estimate(mom),
                          "moments": mom if self.keep_moments else None}

    def _estimate(self, mom):
        est = stats.realization_estimates(self.outputs, mom)
        return {name: (np.array(m[0]), np.array(s[0])) for name, (m, s) in est.items()}

    def shapes(self):
        """{name: (n_t, ...)}: the shape of one row's values of every output, from the
        observable definitions (no estimator runs on an empty row: a rank that owns no
        realization has no data to form them from)."""
        return {name: (self.n_t,) + tuple(out.components) for name, out in self.outputs.items()}

    @property
    def n_items(self):
        return sum(len(f[1]) for f in self.frags.values()) + self.B * len(self.done)

    @property
    def nbytes(self):
        """Bytes of the sums and estimates held (fragments, done rows)."""
        n = sum(f[0].nbytes for f in self.frags.values())
        for d in self.done.values():
            n += sum(m.nbytes + s.nbytes for m, s in d["est"].values())
            if d["moments"] is not None:
                n += d["moments"].nbytes
        return n

    def item_ranges(self):
        """The finished items as sorted disjoint [a, b) ranges (compact: done rows are whole
        ranges, a rank's fragments mostly contiguous)."""
        idx = [np.arange(r * self.B, (r + 1) * self.B, dtype=np.int64) for r in self.done]
        idx += [np.asarray(f[1], dtype=np.int64) for f in self.frags.values()]
        return to_ranges(np.concatenate(idx) if idx else np.zeros(0, np.int64))

    # -- moving rows to their owners --------------------------------------------------------------
    def owner(self, row, comm):
        return owner_of(row // self.O, self.plan.realizations, comm.size)

    def consolidate(self, comm):
        """Send fragments and done rows to the owners of their realizations (collective);
        fragments of one row merge, and rows that become complete are finished."""
        out = {}
        for row in list(self.frags):
            dest = self.owner(row, comm)
            if dest != comm.rank:
                mom, items = self.frags.pop(row)
                out.setdefault(dest, {"frags": {}, "done": {}})["frags"][row] = (mom, items)
        for row in list(self.done):
            dest = self.owner(row, comm)
            if dest != comm.rank:
                out.setdefault(dest, {"frags": {}, "done": {}})["done"][row] = \
                    self.done.pop(row)
        for payload in parallel.exchange(comm, out):
            for row, d in payload["done"].items():
                if row in self.done or row in self.frags:
                    raise RuntimeError(f"row {row} arrived twice (internal error)")
                self.done[row] = d
            for row, (mom, items) in payload["frags"].items():
                self._merge_fragment(row, mom, items)
        for row in [r for r, f in self.frags.items() if len(f[1]) == self.B]:
            self._finish(row)

    def _merge_fragment(self, row, mom, items):
        if row in self.done:
            raise ValueError(f"two checkpoint files contain the same work blocks of row {row} "
                             "(a copied file?); delete the copy to redo its blocks, or start "
                             "over with --force")
        frag = self.frags.get(row)
        if frag is None:
            self.frags[row] = [mom, list(items)]
            return
        if items and (not frag[1] or min(items) < min(frag[1])):
            # keep the shift of the fragment with the row's lowest block (the values of the
            # row's first sample): the stored sums then do not depend on the ranks or the arrival order
            mom, frag[0] = frag[0], mom
        if set(items) & set(frag[1]):
            raise ValueError(f"two checkpoint files contain the same work blocks of row {row} "
                             "(a copied file?); delete the copy to redo its blocks, or start "
                             "over with --force")
        frag[0].merge_row(0, mom, 0)
        frag[1].extend(items)

    def finish_all(self):
        """Finish the remaining fragments (a run ended by the stopping rule: the rows hold the
        blocks of the stages run)."""
        for row in list(self.frags):
            self._finish(row)

    # -- per-realization values -------------------------------------------------------------------
    def realization_values(self, comm, allow_partial=False):
        """This rank's realizations [lo, hi) and their values (after :meth:`consolidate`).

        Returns (lo, hi, {name: (mean (n, t, ...), se (n, t, ...))}, counts (n,) in samples,
        moments (a Moments of rows [lo·O, hi·O)) or None).  ``allow_partial``: rows still in
        fragments are estimated from the fragment (the stopping rule's checks).
        """
        R, O = self.plan.realizations, self.O
        lo, hi = split_range(R, comm.size, comm.rank)
        n = hi - lo
        per_unit = 2.0 if self.antithetic else 1.0
        vals, counts = {}, np.zeros(n)
        for i, r in enumerate(range(lo, hi)):
            means, ses = {}, {}
            for o in range(O):
                row = r * O + o
                if row in self.done:
                    d = self.done[row]
                    est, cnt = d["est"], d["count"]
                elif allow_partial and row in self.frags:
                    mom = self.frags[row][0]
                    est, cnt = self._estimate(mom), float(mom.count[0])
                else:
                    raise RuntimeError(f"realization {r}: row {row} is not complete on its "
                                       "owner (internal error)")
                counts[i] += cnt * per_unit
                for name, (m, s) in est.items():
                    means.setdefault(name, []).append(m)
                    ses.setdefault(name, []).append(s)
            for name in means:
                m = np.mean(means[name], axis=0)
                s = np.sqrt(np.sum(np.square(ses[name]), axis=0)) / O
                if self.deterministic:
                    s = np.zeros_like(m)
                if name not in vals:
                    vals[name] = (np.empty((n,) + m.shape), np.empty((n,) + m.shape))
                vals[name][0][i], vals[name][1][i] = m, s
        if not vals:  # no realization here: empty arrays of the right trailing shapes
            for name, shape in self.shapes().items():
                vals[name] = (np.empty((0,) + shape), np.empty((0,) + shape))
        mom = None
        if self.keep_moments:
            mom = stats.Moments.zeros(n * O, self.n_t, self.n_cols, self.cross, self.grouped)
            for i in range(n * O):
                d = self.done.get(lo * O + i)
                if d is not None and d["moments"] is not None:
                    mom.merge_row(i, d["moments"], 0)
        return lo, hi, vals, counts, mom

def disorder_average(comm, vals, R):
    """Collective disorder average of the realization values ``vals`` {name: (mean, se)}
    (leading axis: this rank's realizations).  Returns {name: (mean, stderr, within)} on
    every rank (two passes: the mean, then the squared deviations from it)."""
    names = sorted(vals)
    shapes = {n: vals[n][0].shape[1:] for n in names}
    sizes = [int(np.prod(shapes[n])) for n in names]

    def flat(f):
        parts = [np.asarray(f(*vals[n]), dtype=np.float64).reshape(-1) for n in names]
        return np.concatenate(parts) if parts else np.zeros(0)

    def split(v):
        out, k = {}, 0
        for n, size in zip(names, sizes):
            out[n] = v[k:k + size].reshape(shapes[n])
            k += size
        return out

    both = parallel.allreduce_sum(comm, np.concatenate([flat(lambda m, s: m.sum(axis=0)),
                                                        flat(lambda m, s: (s * s).sum(axis=0))]))
    half = len(both) // 2
    mean = split(both[:half] / R)
    within = split(np.sqrt(both[half:]) / R)
    if R >= 2:
        dev = parallel.allreduce_sum(comm, np.concatenate(
            [np.asarray(((vals[n][0] - mean[n]) ** 2).sum(axis=0)).reshape(-1) for n in names])
            if names else np.zeros(0))
        se = split(np.sqrt(dev / (R - 1)) / np.sqrt(R))
    else:
        se = within
    return {n: (mean[n], se[n], within[n]) for n in names}
