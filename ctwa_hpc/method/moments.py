r"""Shifted moment sums over samples (:class:`Moments`), the only per-sample statistics kept.

Per (realization, offset) row and output time: the sums of every column x_k, of x_k², and of
the cross products x_a x_b listed in ``cross``, all shifted by a per-row constant.  Sums merge
exactly (between ranks, checkpoints, separate jobs).

Sample groups.  For the columns listed in ``grouped`` (those of ``renyi2_pairs``, whose
delta-method error would need the cross moments of every pair of its columns) the sums
Σ(x − c) are also kept per *sample group*: unit u (a sample, or an antithetic pair; u is its
global index, ``method.first_sample`` included) belongs to group u mod G, G =
:data:`N_GROUPS`.  A group's sums are a batch mean of its ~n/G independent units, from which
:mod:`ctwa_hpc.method.stats` estimates the variance of the linearized estimator.  The groups
do not depend on the ranks, the blocks or the order of the work, so they merge exactly like
the other sums.  A row merged from sums without groups (files of an older version) has
``gcount = NaN`` (groups unknown).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels

N_GROUPS = 16


@dataclass
class Moments:
    """Shifted sums over samples for ``n_real`` rows: count[r], s1/s2[r, t, k], sx[r, t, p].

    Every row carries a shift c[r, t, k] (the column values of the first sample added to it) and
    holds s1 = Σ(x − c), s2 = Σ(x − c)², sx = Σ(x_a − c_a)(x_b − c_b): the variance
    (s2 − s1²/n)/(n − 1) then has no cancellation between two large sums (columns that do not
    fluctuate give exactly 0).  Rows with different shifts merge exactly (:meth:`merge`
    re-shifts), so the sums still combine across ranks, checkpoints and jobs.

    ``grouped`` (U,) column indices with per-group sums (module docstring): gcount[r, g] units
    and gs1[r, t, g, u] = Σ_{units of group g}(x − c) of column grouped[u]; None without.
    """

    count: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    sx: np.ndarray
    cross: np.ndarray  # (P, 2) column index pairs
    shift: np.ndarray = None
    grouped: np.ndarray = None
    gcount: np.ndarray = None
    gs1: np.ndarray = None

    def __post_init__(self):
        if self.shift is None:
            self.shift = np.zeros_like(self.s1)
        if self.grouped is not None and not len(self.grouped):
            self.grouped = None
        if self.grouped is None:
            self.gcount = self.gs1 = None
        else:
            self.grouped = np.asarray(self.grouped, dtype=np.int64)
            R, T = self.s1.shape[:2]
            if self.gcount is None:
                self.gcount = np.zeros((R, N_GROUPS))
                self.gs1 = np.zeros((R, T, N_GROUPS, len(self.grouped)))

    KEYS = ("count", "s1", "s2", "sx", "shift")
    GROUP_KEYS = ("gcount", "gs1")

    @classmethod
    def zeros(cls, n_real, n_t, n_cols, cross, grouped=None):
        cross = np.asarray(cross, dtype=np.int64).reshape(-1, 2)
        return cls(np.zeros(n_real), np.zeros((n_real, n_t, n_cols)),
                   np.zeros((n_real, n_t, n_cols)), np.zeros((n_real, n_t, len(cross))), cross,
                   np.zeros((n_real, n_t, n_cols)), grouped)

    @property
    def keys(self):
        """The names of the arrays of :meth:`arrays` (the group sums when kept)."""
        return self.KEYS + (self.GROUP_KEYS if self.grouped is not None else ())

    @property
    def nbytes(self):
        return sum(a.nbytes for a in self.arrays().values())

    def mean(self):
        """Column means c + s1/n (NaN where n = 0)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.shift + self.s1 / self.count[:, None, None]

    def add(self, r, cols, antithetic=False, compiled=True, first_unit=0):
        """Accumulate per-sample columns (n_t, K, S) into row ``r``.

        ``compiled``: use the one-pass Cython twin (``cython_kernels/moments.pyx``) when it is
        built; otherwise (or ``False``) the NumPy path below.  ``first_unit``: the global unit
        index of the first sample (pair) of ``cols``, which places the units in their groups.
        """
        if antithetic:
            S = cols.shape[-1]
            if S % 2:
                raise ValueError("antithetic batches must hold whole pairs")
            cols = 0.5 * (cols[..., 0::2] + cols[..., 1::2])
        if self.count[r] == 0:
            self.shift[r] = cols[..., 0]     # the row's first sample: exact for constants
        if self.grouped is not None:
            self._add_groups(r, cols, int(first_unit))
        kernel = kernels.moments_accumulate if compiled else None
        if kernel is not None and cols.dtype == np.float64:
            kernel(np.ascontiguousarray(cols), self.shift[r], self.s1[r], self.s2[r],
                   np.ascontiguousarray(self.cross, dtype=np.int64), self.sx[r])
            self.count[r] += cols.shape[-1]
            return
        n_t, K, S = cols.shape
        step = max(1, (8 << 20) // max(8 * K * S, 1))     # ~8 MiB of shifted values at a time
        a, b = self.cross[:, 0], self.cross[:, 1]
        for t0 in range(0, n_t, step):
            t = slice(t0, min(t0 + step, n_t))
            x = cols[t] - self.shift[r, t, :, None]
            self.s1[r, t] += x.sum(axis=-1)
            self.s2[r, t] += np.einsum("tks,tks->tk", x, x)
            if len(self.cross):
                self.sx[r, t] += np.einsum("tps,tps->tp", x[:, a], x[:, b])
        self.count[r] += S

    def _add_groups(self, r, cols, first_unit):
        """Per-group sums of the grouped columns: unit j of ``cols`` is in group
        (first_unit + j) mod G."""
        G = self.gcount.shape[1]
        n_t, _, S = cols.shape
        g_of = (first_unit + np.arange(S)) % G
        self.gcount[r] += np.bincount(g_of, minlength=G)
        step = max(1, (8 << 20) // max(8 * len(self.grouped) * S, 1))   # ~8 MiB at a time
        for t0 in range(0, n_t, step):
            t = slice(t0, min(t0 + step, n_t))
            x = cols[t][:, self.grouped, :] - self.shift[r, t][:, self.grouped, None]
            for g in range(G):
                j0 = (g - first_unit) % G
                if j0 < S:
                    self.gs1[r, t, g] += x[..., j0::G].sum(axis=-1)

    def merge_row(self, r, other, k):
        """Add row ``k`` of ``other`` into row ``r``, re-shifted to this row's shift:
        Σ(x − c) = s1' + n'd, Σ(x − c)² = s2' + 2d s1' + n'd², d = c' − c (and likewise for
        the cross products and the group sums)."""
        n = other.count[k]
        if n == 0:
            return
        same = self.grouped is not None and other.grouped is not None and \
            np.array_equal(self.grouped, other.grouped)
        if self.count[r] == 0:
            for key in ("s1", "s2", "sx", "shift"):
                getattr(self, key)[r] = getattr(other, key)[k]
            self.count[r] = n
            if self.grouped is not None:
                self.gs1[r] = other.gs1[k] if same else 0.0
                self.gcount[r] = other.gcount[k] if same else np.nan
            return
        d = other.shift[k] - self.shift[r]
        s1o = other.s1[k]
        self.s1[r] += s1o + n * d
        self.s2[r] += other.s2[k] + 2.0 * d * s1o + n * d * d
        if len(self.cross):
            a, b = self.cross[:, 0], self.cross[:, 1]
            self.sx[r] += (other.sx[k] + d[:, a] * s1o[:, b] + d[:, b] * s1o[:, a]
                           + n * d[:, a] * d[:, b])
        if self.grouped is not None:
            if same:
                self.gs1[r] += other.gs1[k] + other.gcount[k][None, :, None] * \
                    d[:, None, self.grouped]
                self.gcount[r] += other.gcount[k]
            else:
                self.gcount[r] = np.nan
        self.count[r] += n

    def merge(self, other):
        """Add ``other`` row by row (same number of rows)."""
        for r in range(len(self.count)):
            self.merge_row(r, other, r)
        return self

    def arrays(self):
        return {k: getattr(self, k) for k in self.keys}

    @classmethod
    def from_arrays(cls, arrays, cross, grouped=None):
        """Moments from stored arrays (files written before the shift have none: zero; files
        without group sums: none).  ``grouped``: the group columns (else ``arrays["grouped"]``)."""
        a = {k: np.array(arrays[k], dtype=np.float64) for k in ("count", "s1", "s2", "sx")}
        shift = arrays.get("shift")
        if grouped is None:
            grouped = arrays.get("grouped")
        groups = {}
        if grouped is not None and len(grouped) and "gs1" in arrays and "gcount" in arrays:
            groups = dict(grouped=np.asarray(grouped, dtype=np.int64),
                          gcount=np.array(arrays["gcount"], dtype=np.float64),
                          gs1=np.array(arrays["gs1"], dtype=np.float64))
        return cls(a["count"], a["s1"], a["s2"], a["sx"],
                   np.asarray(cross, dtype=np.int64).reshape(-1, 2),
                   None if shift is None else np.array(shift, dtype=np.float64), **groups)

    def take(self, rows):
        """A copy holding only ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        groups = {}
        if self.grouped is not None:
            groups = dict(grouped=self.grouped, gcount=np.array(self.gcount[rows]),
                          gs1=np.array(self.gs1[rows]))
        return Moments(*(np.array(getattr(self, k)[rows]) for k in ("count", "s1", "s2", "sx")),
                       self.cross, np.array(self.shift[rows]), **groups)

    @classmethod
    def concat(cls, parts, cross):
        """The rows of ``parts`` stacked in order (group sums kept when every part has the
        same group columns)."""
        parts = list(parts)
        cat = {k: np.concatenate([getattr(p, k) for p in parts], axis=0)
               for k in ("count", "s1", "s2", "sx", "shift")}
        g0 = parts[0].grouped if parts else None
        groups = {}
        if g0 is not None and all(p.grouped is not None and np.array_equal(p.grouped, g0)
                                  for p in parts):
            groups = dict(grouped=g0, gcount=np.concatenate([p.gcount for p in parts]),
                          gs1=np.concatenate([p.gs1 for p in parts]))
        return cls(cat["count"], cat["s1"], cat["s2"], cat["sx"], np.asarray(cross),
                   cat["shift"], **groups)


def group_bytes(n_t, n_grouped):
    """Bytes of one row's sample-group sums (gcount, gs1) for ``n_grouped`` columns."""
    return 8 * N_GROUPS * (1 + n_t * n_grouped) if n_grouped else 0


def grouped_columns(outputs):
    """The columns whose sums are kept per sample group: those of ``renyi2_pairs`` (sorted),
    or None."""
    cols = [np.ravel(o.cols) for o in outputs.values() if o.kind == "renyi2_pairs"]
    return np.unique(np.concatenate(cols)).astype(np.int64) if cols else None
