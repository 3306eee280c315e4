"""The checkpoint state of a :class:`~ctwa_hpc.driver.rowstore.RowStore`: arrays, checks, adoption.

A rank file (:mod:`ctwa_hpc.driver.checkpoint`) holds the fragments of the rows in flight (rows,
their finished work items, their shifted sums) and the done rows (rows, counts, estimates
[, sums when ``/moments`` is kept]).  The items of a done row are all its B blocks, so they
are not stored.  :meth:`RowState.check_state` proves a file self-consistent before anything
of it is used: items in range and inside their rows, no row or item twice, counts equal to
what the items imply, finite sums, shapes of this run.  Finished items travel between ranks
as compact [a, b) ranges (:func:`to_ranges`, :func:`overlaps`).
"""
from __future__ import annotations

import numpy as np

from ..method import stats
from ..method.moments import N_GROUPS


class RowState:
    """Mixin of :class:`~ctwa_hpc.driver.rowstore.RowStore`: its state as checkpoint arrays."""

    @property
    def moment_keys(self):
        """The arrays of this store's Moments (with the sample-group sums of renyi2_pairs)."""
        return stats.Moments.KEYS + (stats.Moments.GROUP_KEYS if self.grouped is not None
                                     else ())

    # -- checkpoint state -------------------------------------------------------------------------
    def state_arrays(self):
        """{name: array} of this rank's state for a checkpoint file."""
        frows = sorted(self.frags)
        F = len(frows)
        a = {"frag_rows": np.asarray(frows, dtype=np.int64),
             "frag_nitems": np.asarray([len(self.frags[r][1]) for r in frows], dtype=np.int64),
             "frag_items": np.asarray([i for r in frows for i in sorted(self.frags[r][1])],
                                      dtype=np.int64)}
        stack = stats.Moments.zeros(F, self.n_t, self.n_cols, self.cross, self.grouped)
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
            dm = stats.Moments.zeros(len(drows), self.n_t, self.n_cols, self.cross,
                                     self.grouped)
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
        keys = self.moment_keys
        need += [f"frag_{k}" for k in keys]
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
        if self.grouped is not None:
            shapes.update(gcount=(F, N_GROUPS),
                          gs1=(F, self.n_t, N_GROUPS, len(self.grouped)))
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
        if not np.array_equal(expect, np.asarray(a["frag_count"])) or (
                self.grouped is not None and
                not np.array_equal(np.sum(a["frag_gcount"], axis=-1), expect)):
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
            for k in keys:
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
        keys = self.moment_keys
        stack = stats.Moments.from_arrays({k: a[f"frag_{k}"] for k in keys}, self.cross,
                                          self.grouped)
        pos = np.concatenate([[0], np.cumsum(nitems)])
        for j, row in enumerate(frows.tolist()):
            self._merge_fragment(row, stack.take([j]), items[pos[j]:pos[j + 1]].tolist())
        dm = None
        if self.keep_moments:
            dm = stats.Moments.from_arrays({k: a[f"done_{k}"] for k in keys}, self.cross,
                                           self.grouped)
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
