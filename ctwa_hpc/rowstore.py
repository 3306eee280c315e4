r"""Streaming moments: a rank holds sums only for the (realization, offset) rows in flight.

A *row* is one (realization r, cluster offset o) replica, row = r·O + o, with B work blocks
(:mod:`ctwa_hpc.workplan`).  A rank adds the per-sample columns of each block it integrates
to the row's :class:`~ctwa_hpc.stats.Moments` (a *fragment*: the sums and the item indices
they hold).  When a rank holds all B blocks of a row the row is *done*: its estimates (mean
and stderr of every output, eq. numbers as in :mod:`ctwa_hpc.stats`) are formed at once and
its sums released (kept only if the output stores ``/moments``).  With realization-major work
and contiguous shares, only the first and the last row of a rank's share can be split between
ranks, so a rank holds O(1) fragments whatever R and P.

Ownership.  Realizations are split over ranks in contiguous balanced blocks (rank p owns
[lo_p, hi_p) = ``split_range(R, P, p)``).  :meth:`RowStore.consolidate` sends every fragment
and done row of a realization owned elsewhere point-to-point to its owner
(:func:`ctwa_hpc.parallel.exchange`), where fragments of one row merge exactly (re-shifted
sums).  At the end of a run the owner of realization r holds its O done rows and forms the
realization's values (offset average, as in fig. 7 of the paper):

.. math::  \bar Q_r = \frac1O \sum_o Q_{r,o}, \qquad
           \mathrm{se}_r = \frac1O \sqrt{\textstyle\sum_o \mathrm{se}_{r,o}^2}.

Disorder average (collective, :func:`disorder_average`): the mean of the R realization
values by one allreduce of Σ_r Q̄_r, then the spread by a second of Σ_r (Q̄_r − Q̄)² (two
passes, no cancellation), stderr = √(Σ_r(Q̄_r − Q̄)²/(R − 1))/√R for R ≥ 2, and
stderr_within = √(Σ_r se_r²)/R, equal to :func:`ctwa_hpc.stats.disorder_average` on the
gathered arrays.

Checkpoint state (:meth:`RowStore.state_arrays`, checked by :meth:`RowStore.check_state`):
the fragments (rows, items, sums) and the done rows (rows, counts, estimates [, sums]); the
items of a done row are all its B blocks, so they are not stored.  Every rank file is
self-consistent: counts agree with the items, sums are finite, and no item is in two rows.
"""
from __future__ import annotations

import numpy as np

from . import parallel, stats
from .workplan import split_range


def owner_of(r, R, P):
    """The rank owning realization r when R realizations are split over P ranks like
    :func:`~ctwa_hpc.workplan.split_range` (the first R mod P ranks hold one more)."""
    q, rem = divmod(int(R), int(P))
    big = rem * (q + 1)
    return int(r) // (q + 1) if r < big else rem + (int(r) - big) // q


class RowStore:
    """This rank's fragments and done rows (see the module docstring).

    ``outputs``: the ObservableSet outputs {name: Output}; ``plan``: the WorkPlan;
    ``unit``: count added per sample (1/2 with antithetic pairs); ``keep_moments``: keep the
    sums of done rows (for ``/moments``).
    """

    def __init__(self, outputs, plan, n_t, n_cols, cross, antithetic=False,
                 keep_moments=False, deterministic=False):
        self.outputs = outputs
        self.plan = plan
        self.O, self.B = plan.n_offsets, plan.blocks_per_row
        self.n_t, self.n_cols = int(n_t), int(n_cols)
        self.cross = np.asarray(cross, dtype=np.int64).reshape(-1, 2)
        self.antithetic = bool(antithetic)
        self.keep_moments = bool(keep_moments)
        self.deterministic = bool(deterministic)
        self.compiled = True      # the Cython accumulation (False: the NumPy twin)
        self.frags = {}   # row -> [Moments (1 row), list of item indices]
        self.done = {}    # row -> {"count": float, "est": {name: (mean, se)}, "moments": M|None}

    # -- accumulation ------------------------------------------------------------------------
    def _new(self):
        return stats.Moments.zeros(1, self.n_t, self.n_cols, self.cross)

    def add(self, k, row, cols):
        """Add the per-sample columns (n_t, K, S) of work item k (of ``row``)."""
        frag = self.frags.get(row)
        if frag is None:
            if row in self.done:
                raise RuntimeError(f"work item {k}: row {row} is already complete")
            frag = self.frags[row] = [self._new(), []]
        frag[0].add(0, cols, antithetic=self.antithetic, compiled=self.compiled)
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
        """{name: (mean, se)} of an empty row: NaN arrays with every output's shape."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._estimate(self._new())

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
            for name, (m, _) in self.shapes().items():
                vals[name] = (np.empty((0,) + m.shape), np.empty((0,) + m.shape))
        mom = None
        if self.keep_moments:
            mom = stats.Moments.zeros(n * O, self.n_t, self.n_cols, self.cross)
            for i in range(n * O):
                d = self.done.get(lo * O + i)
                if d is not None and d["moments"] is not None:
                    mom.merge_row(i, d["moments"], 0)
        return lo, hi, vals, counts, mom

    # -- checkpoint state -------------------------------------------------------------------------
    def state_arrays(self):
        """{name: array} of this rank's state for a checkpoint file."""
        frows = sorted(self.frags)
        F = len(frows)
        a = {"frag_rows": np.asarray(frows, dtype=np.int64),
             "frag_nitems": np.asarray([len(self.frags[r][1]) for r in frows], dtype=np.int64),
             "frag_items": np.asarray([i for r in frows for i in sorted(self.frags[r][1])],
                                      dtype=np.int64)}
        stack = stats.Moments.zeros(F, self.n_t, self.n_cols, self.cross)
        for j, r in enumerate(frows):
            stack.merge_row(j, self.frags[r][0], 0)
        for k, v in stack.arrays().items():
            a[f"frag_{k}"] = v
        drows = sorted(self.done)
        a["done_rows"] = np.asarray(drows, dtype=np.int64)
        a["done_count"] = np.asarray([self.done[r]["count"] for r in drows], dtype=np.float64)
        for name in self.outputs:
            for j, what in enumerate(("mean", "se")):
                parts = [self.done[r]["est"][name][j] for r in drows]
                a[f"est_{what}_{name}"] = np.asarray(parts) if parts else np.zeros(0)
        if self.keep_moments:
            dm = stats.Moments.zeros(len(drows), self.n_t, self.n_cols, self.cross)
            for j, r in enumerate(drows):
                if self.done[r]["moments"] is not None:
                    dm.merge_row(j, self.done[r]["moments"], 0)
            for k, v in dm.arrays().items():
                a[f"done_{k}"] = v
        return a

    def check_state(self, a, name):
        """Raise ValueError naming the fault unless the state ``a`` of file ``name`` is
        self-consistent (items in range and in their rows, counts = items, finite sums)."""
        need = ["frag_rows", "frag_nitems", "frag_items", "done_rows", "done_count"]
        need += [f"frag_{k}" for k in stats.Moments.KEYS]
        need += [f"est_{w}_{n}" for n in self.outputs for w in ("mean", "se")]
        missing = [k for k in need if k not in a]
        if missing:
            raise ValueError(f"checkpoint file {name} lacks {missing[:3]} (another version or "
                             "another set of observables)")
        frows, nitems, items = (np.asarray(a[k]) for k in ("frag_rows", "frag_nitems",
                                                           "frag_items"))
        drows, dcount = np.asarray(a["done_rows"]), np.asarray(a["done_count"])
        F, D, n_rows = len(frows), len(drows), self.plan.n_rows
        for key, arr in (("frag_rows", frows), ("frag_nitems", nitems), ("frag_items", items),
                         ("done_rows", drows)):
            if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
                raise ValueError(f"checkpoint file {name}: {key} is not a list of integers")
        rows = np.concatenate([frows, drows]).astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
            raise ValueError(f"checkpoint file {name}: a row outside 0..{n_rows - 1}")
        if len(np.unique(rows)) != len(rows):
            raise ValueError(f"checkpoint file {name}: a row is listed twice")
        if len(nitems) != F or nitems.sum() != len(items) or len(dcount) != D:
            raise ValueError(f"checkpoint file {name}: the item lists do not match the rows")
        shapes = {"count": (F,), "s1": (F, self.n_t, self.n_cols),
                  "s2": (F, self.n_t, self.n_cols), "shift": (F, self.n_t, self.n_cols),
                  "sx": (F, self.n_t, len(self.cross))}
        for k, shp in shapes.items():
            v = np.asarray(a[f"frag_{k}"])
            if v.shape != shp:
                raise ValueError(f"checkpoint file {name}: frag_{k} has shape {v.shape}, this "
                                 f"run needs {shp}")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"checkpoint file {name}: frag_{k} contains non-finite sums")
        owner = np.repeat(frows.astype(np.int64), nitems.astype(np.int64))
        items = items.astype(np.int64)
        if items.size and (items.min() < 0 or items.max() >= self.plan.n_items
                           or np.any(items // self.B != owner)):
            raise ValueError(f"checkpoint file {name}: a work block outside its row")
        if len(np.unique(items)) != len(items):
            raise ValueError(f"checkpoint file {name}: repeated work blocks")
        if np.any(nitems >= self.B) or np.any(nitems < 1):
            raise ValueError(f"checkpoint file {name}: a partial row with {nitems.max()} of "
                             f"{self.B} blocks")
        per = 2 if self.antithetic else 1
        expect = np.bincount(np.searchsorted(frows, owner) if F else np.zeros(0, np.int64),
                             weights=np.array([self.plan.samples_in(int(i)) // per
                                               for i in items], dtype=float), minlength=F)
        if not np.array_equal(expect, np.asarray(a["frag_count"])):
            raise ValueError(f"checkpoint file {name}: its sample counts do not match its "
                             f"{len(items)} finished work blocks")
        full = float(sum(self.plan.samples_in(b) // per for b in range(self.B)))
        if D and not np.all(dcount == full):
            raise ValueError(f"checkpoint file {name}: a complete row does not hold all "
                             f"{full} samples")
        for nm in self.outputs:
            for w in ("mean", "se"):
                v = np.asarray(a[f"est_{w}_{nm}"])
                if v.shape[:1] != (D,) and D:
                    raise ValueError(f"checkpoint file {name}: est_{w}_{nm} has {v.shape[:1]} "
                                     f"rows, {D} expected")
        if self.keep_moments:
            for k in stats.Moments.KEYS:
                key = f"done_{k}"
                if key not in a or np.asarray(a[key]).shape[:1] != (D,):
                    raise ValueError(f"checkpoint file {name}: {key} missing or of the wrong "
                                     "size (output.moments changed?)")
                if not np.all(np.isfinite(a[key])):
                    raise ValueError(f"checkpoint file {name}: {key} contains non-finite sums")

    def adopt(self, a):
        """Take over the (checked) state of a checkpoint file."""
        frows, nitems, items = (np.asarray(a[k], dtype=np.int64) for k in
                                ("frag_rows", "frag_nitems", "frag_items"))
        stack = stats.Moments.from_arrays({k: a[f"frag_{k}"] for k in stats.Moments.KEYS},
                                          self.cross)
        pos = np.concatenate([[0], np.cumsum(nitems)])
        for j, row in enumerate(frows.tolist()):
            self._merge_fragment(row, stack.take([j]), items[pos[j]:pos[j + 1]].tolist())
        dm = None
        if self.keep_moments:
            dm = stats.Moments.from_arrays({k: a[f"done_{k}"] for k in stats.Moments.KEYS},
                                           self.cross)
        for j, row in enumerate(np.asarray(a["done_rows"], dtype=np.int64).tolist()):
            if row in self.done or row in self.frags:
                raise ValueError(f"two checkpoint files contain the same work blocks of row "
                                 f"{row} (a copied file?); delete the copy to redo its blocks, "
                                 "or start over with --force")
            est = {nm: (np.array(a[f"est_mean_{nm}"][j]), np.array(a[f"est_se_{nm}"][j]))
                   for nm in self.outputs}
            self.done[row] = {"count": float(a["done_count"][j]), "est": est,
                              "moments": dm.take([j]) if dm is not None else None}
        for row in [r for r, f in self.frags.items() if len(f[1]) == self.B]:
            self._finish(row)

    @staticmethod
    def ranges_of_state(a, B):
        """The finished-item ranges of a checkpoint state (done rows and fragment items)."""
        d = np.asarray(a["done_rows"], dtype=np.int64)
        idx = (d[:, None] * B + np.arange(B)[None, :]).ravel()
        return to_ranges(np.concatenate([idx, np.asarray(a["frag_items"], dtype=np.int64)]))


def to_ranges(idx):
    """Sorted disjoint [a, b) ranges (k, 2) covering the integers ``idx`` (duplicates kept
    as overlaps are detected by :func:`overlaps`)."""
    idx = np.sort(np.asarray(idx, dtype=np.int64))
    if idx.size == 0:
        return np.zeros((0, 2), np.int64)
    brk = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = idx[np.concatenate([[0], brk])]
    ends = idx[np.concatenate([brk - 1, [len(idx) - 1]])] + 1
    return np.stack([starts, ends], axis=1)


def overlaps(ranges):
    """True if any two [a, b) ranges of the (k, 2) array overlap."""
    r = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
    if len(r) < 2:
        return False
    r = r[np.argsort(r[:, 0], kind="stable")]
    return bool(np.any(r[1:, 0] < r[:-1, 1]))


def expand_ranges(ranges):
    """The integers of (k, 2) [a, b) ranges, sorted."""
    r = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
    if not len(r):
        return np.zeros(0, np.int64)
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in r])


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

