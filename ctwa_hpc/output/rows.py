"""Per-realization rows of the output, held by the rank that owns them (no h5py here).

The per-realization datasets of an output file have a leading realization (or replica) axis:
``/realizations/<name>/{mean,stderr}`` and ``/realizations/n_samples`` (realization, ...),
``/disorder/<key>`` (realization, ...) and, when stored, ``/moments/{count,s1,s2,sx,shift}``
(replica = r·n_offsets + offset, ...) with the sample-group sums ``/moments/{gcount,gs1}`` of
``renyi2_pairs`` (:mod:`ctwa_hpc.method.moments`).  In a run every rank owns a contiguous
block of realizations [lo, hi) (:mod:`ctwa_hpc.driver.rowstore`) and holds only their rows: a
:class:`LocalRows`.  The writer (:mod:`ctwa_hpc.output.hdf5`) creates every dataset with its full
length and each rank writes its own slice (parallel HDF5), or rank 0 receives the blocks rank
by rank and writes them (gather writer): no process ever holds all rows.

Array shapes here are exactly the stored ones (scalar outputs drop their trailing axis of
length 1, as :func:`ctwa_hpc.output.schema.component_axes` decides).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..method.stats import Moments
from .schema import component_axes, disorder_key

MOMENT_KEYS = ("count", "s1", "s2", "sx", "shift")


@dataclass
class LocalRows:
    """Rows [start[p], start[p] + len(data[p])) of every per-realization dataset p."""

    data: dict = field(default_factory=dict)     # dataset path -> local block
    start: dict = field(default_factory=dict)    # dataset path -> first row of the block
    length: dict = field(default_factory=dict)   # dataset path -> full length of the axis
    cross: np.ndarray | None = None              # /moments/cross (column pairs)
    grouped: np.ndarray | None = None            # /moments/grouped (sample-group columns)

    @property
    def nbytes(self):
        return int(sum(np.asarray(v).nbytes for v in self.data.values()))

    def put(self, path, value, start, length):
        self.data[path] = np.ascontiguousarray(value)
        self.start[path] = int(start)
        self.length[path] = int(length)

    def gathered(self, blocks):
        """Full arrays from the LocalRows of every rank (a small run's in-memory result)."""
        out = {}
        for p in self.data:
            parts = [b.data[p] for b in blocks if p in b.data and len(b.data[p])]
            out[p] = np.concatenate(parts, axis=0) if parts else self.data[p]
        return out


def _squeezer(name, kind, labels, trailing):
    squeeze, _, _ = component_axes(name, kind, labels, trailing)
    return (lambda a: np.asarray(a).reshape(np.shape(a)[:-1])) if squeeze else np.asarray


def realization_rows(outputs, lo, R, O, *, disorder=None, moments=None, counts=None,
                     cross=None):
    """The LocalRows of realizations [lo, lo + n) of R.

    ``outputs``: {name: dict(real_mean (n, t, ...), real_stderr, kind, labels)};
    ``disorder``: the record of :meth:`Simulation.disorder_record` for these realizations;
    ``moments``: a Moments of their rows [lo·O, (lo + n)·O) or None; ``counts``: (n,)
    samples per realization.
    """
    rows = LocalRows(cross=None if cross is None else np.asarray(cross, np.int64).reshape(-1, 2))
    for name, o in outputs.items():
        rm = o.get("real_mean")
        if rm is None:
            continue
        fix = _squeezer(name, o["kind"], o.get("labels"), np.shape(rm)[2:])
        rows.put(f"/realizations/{name}/mean", fix(rm), lo, R)
        if o.get("real_stderr") is not None:
            rows.put(f"/realizations/{name}/stderr", fix(o["real_stderr"]), lo, R)
    if counts is not None:
        rows.put("/realizations/n_samples", np.asarray(counts, dtype=np.int64), lo, R)
    for key, v in (disorder or {}).items():
        if key == "realization_index":
            continue
        if isinstance(v, dict):
            for comp, a in v.items():
                rows.put(f"/disorder/{disorder_key(key, comp)}", np.asarray(a), lo, R)
        elif isinstance(v, np.ndarray) and v.ndim and v.dtype.kind in "biuf":
            rows.put(f"/disorder/{key}", v, lo, R)
    if moments is not None:
        for k in moments.keys:
            rows.put(f"/moments/{k}", getattr(moments, k), lo * O, R * O)
        rows.grouped = moments.grouped
    return rows


def rows_from_result(result):
    """LocalRows holding every realization of a RunResult with full arrays (serial writes,
    merged and exact runs)."""
    R = int(result.cfg["disorder"]["realizations"])
    mom = result.moments
    O = max(len(mom.count) // max(R, 1), 1) if mom is not None else 1
    return realization_rows(result.outputs, 0, R, O, disorder=result.extra.get("disorder"),
                            moments=mom, counts=result.extra.get("realization_samples"),
                            cross=None if mom is None else mom.cross)


def concat_blocks(blocks, cross):
    """Full realization values, counts, disorder record and moments from the ranks' blocks
    (rank order = realization order)."""
    blocks = [b for b in blocks if b is not None and len(b[1])]
    vals = {n: tuple(np.concatenate([b[0][n][j] for b in blocks]) for j in (0, 1))
            for n in blocks[0][0]}
    counts = np.concatenate([b[1] for b in blocks])
    recs = [b[2] for b in blocks]
    disorder = {}
    for k, v in recs[0].items():
        if isinstance(v, dict):
            disorder[k] = {c: np.concatenate([r[k][c] for r in recs]) for c in v}
        else:
            disorder[k] = np.concatenate([np.asarray(r[k]) for r in recs])
    mom = None
    if blocks[0][3] is not None:
        mom = Moments.concat([b[3] for b in blocks], cross)
    return dict(vals=vals, counts=counts, disorder=disorder, moments=mom)
