"""Checks of ``ctwa-hpc merge`` (:mod:`ctwa_hpc.driver.merge`): the output path and the
numbers of every input file.

A merge takes its output's lock like a run and refuses an ``-o`` that is a directory or one
of the inputs (compared as files: through symlinks and hard links, even with ``--force``).
Inputs must have been run with the same model data (root attribute ``model_content_hash``;
the model files read now must still be that data).  An input whose numbers were damaged or
altered is refused before anything is written: ``/moments`` complete, of the config's shape
and finite; ``/moments/count`` equal to ``method.samples`` per row (antithetic: pairs; with
a stopping rule at most that) and to ``/realizations/n_samples`` and the root attribute
``n_samples``; and the sums must reproduce the file's own per-realization means and errors
(``/realizations/<name>``, else the averages in ``/observables``).  The output files carry
no checksums; the last check takes their place for ``/moments``.
"""
from __future__ import annotations

import os

import numpy as np

from ..method import stats


class MergeError(ValueError):
    """Files that cannot be merged (the message says why)."""


def _short(h):
    return "(none)" if h is None else str(h)[:16]


def check_output(output, inputs):
    """``-o`` of a merge: a file name that is none of the inputs (refused even with --force)."""
    out = os.fspath(output)
    if not out:
        raise MergeError("merge: -o must not be empty")
    if os.path.isdir(out):
        raise MergeError(f"merge: -o {out} is a directory; give a file name such as "
                         f"{os.path.join(out, 'merged.h5')}")
    for p in map(os.fspath, inputs):
        try:
            same = os.path.samefile(out, p)
        except OSError:   # one of them does not exist (yet)
            same = os.path.realpath(out) == os.path.realpath(p)
        if same:
            raise MergeError(f"merge: -o {out} is the input file {p}; refusing to overwrite an "
                             "input (even with --force): give another output file")


def check_model_hashes(jobs):
    ref = jobs[0]
    for j in jobs[1:]:
        if j.model_hash != ref.model_hash:
            raise MergeError(f"merge: {j.path} and {ref.path} were run with different model "
                             f"data (root attribute model_content_hash {_short(j.model_hash)} vs "
                             f"{_short(ref.model_hash)}): the couplings or positions file "
                             "changed between the jobs; rerun the jobs with the same file")



def check_model_data(jobs, sim):
    """The model data read now (couplings/positions file) must be what the jobs ran with: the
    merged file takes its disorder record and its model_content_hash from it."""
    now = sim.models.content_hash or None
    if now != jobs[0].model_hash:
        raise MergeError(f"merge: {jobs[0].path}: the model data changed since the jobs ran "
                         f"(root attribute model_content_hash {_short(jobs[0].model_hash)}, the "
                         f"model files now {_short(now)}); restore the couplings/positions file "
                         "the jobs used, or rerun them")


def check_counts(job, sim):
    """Samples per realization (/realizations/n_samples) and in total (root attribute
    n_samples) against the job's method.samples and its cluster offsets."""
    full = (1 if sim.deterministic else job.n_samples) * sim.n_offsets
    rs = job.data.get("realization_samples")
    if rs is not None:
        rs = np.asarray(rs)
        bad = (rs > full) | (rs < 1) if job.stopped else rs != full
        if rs.shape != (job.n_real,) or bad.any():
            i = int(np.argmax(bad)) if rs.shape == (job.n_real,) and bad.any() else 0
            raise MergeError(f"merge: {job.path}: /realizations/n_samples[{i}] = "
                             f"{rs.reshape(-1)[i] if rs.size else None} does not match "
                             f"method.samples = {job.n_samples} x {sim.n_offsets} offset(s) "
                             f"= {full} (of {job.n_real} realizations): the file is damaged or "
                             "altered; rerun the job")
    total = job.data["attrs"].get("n_samples")
    want = int(np.sum(rs)) if rs is not None else (None if job.stopped else full * job.n_real)
    if want is not None and total != want:
        raise MergeError(f"merge: {job.path}: root attribute n_samples = {total}, but the file "
                         f"holds {want} samples (method.samples = {job.n_samples}, "
                         f"{job.n_real} realizations): the file is damaged or altered")
    check_finite(job)


def check_finite(job):
    """Per-realization means of the direct outputs (the values merged without /moments)."""
    for name, g in job.data["realizations"].items():
        kind = job.data["group_attrs"].get(f"realizations/{name}", {}).get("kind", "direct")
        if kind == "direct" and not np.all(np.isfinite(g.get("mean", 0.0))):
            raise MergeError(f"merge: {job.path}: /realizations/{name}/mean holds non-finite "
                             "values (NaN or inf): the file is damaged; rerun the job")


def _check_moment_arrays(job, sim, zero):
    """/moments of one job: every array present, of the job's shape, finite, with the
    observable columns of the config; returns its Moments."""
    m, rows = job.data["moments"], job.n_real * sim.n_offsets
    n_t, K = zero.s1.shape[1:]
    want = {"count": (rows,), "s1": (rows, n_t, K), "s2": (rows, n_t, K),
            "sx": (rows, n_t, len(zero.cross)), "shift": (rows, n_t, K),
            "cross": np.asarray(zero.cross).reshape(-1, 2).shape}
    for k in sorted(set(m) - set(want)):   # further sums (sample groups): finite
        if not np.all(np.isfinite(m[k])):
            raise MergeError(f"merge: {job.path}: /moments/{k} holds non-finite values (NaN "
                             "or inf): the file is damaged; rerun the job")
    for k, shape in want.items():
        if k not in m:
            if k == "shift":   # files written before the shift: zero
                continue
            raise MergeError(f"merge: {job.path}: /moments/{k} is missing (the file is damaged "
                             "or incomplete); rerun the job, or merge without this file")
        if np.shape(m[k]) != shape:
            raise MergeError(f"merge: {job.path}: /moments/{k} has shape {np.shape(m[k])}, its "
                             f"config needs {shape} (damaged, or written by another version)")
        n_bad = int(np.size(m[k]) - np.count_nonzero(np.isfinite(m[k])))
        if n_bad:
            raise MergeError(f"merge: {job.path}: /moments/{k} holds {n_bad} non-finite "
                             "value(s) (NaN or inf): the file is damaged; rerun the job")
    if not np.array_equal(np.asarray(m["cross"]).reshape(-1, 2),
                          np.asarray(zero.cross).reshape(-1, 2)):
        raise MergeError(f"merge: {job.path}: its moment columns do not match the observables "
                         "of the config (written by another version?)")
    return stats.Moments.from_arrays(m, zero.cross)


def check_moments(job, sim, obs, zero):
    """The sums of one job against its counts and its stored per-realization values (a file
    whose /moments were altered no longer reproduces its own results); returns its Moments."""
    mom = _check_moment_arrays(job, sim, zero)
    per_unit, O = (2 if sim.antithetic else 1), sim.n_offsets
    full = (1 if sim.deterministic else job.n_samples) / per_unit
    c = mom.count
    bad = (c != np.round(c)) | ((c < 1) | (c > full) if job.stopped else c != full)
    if bad.any():
        i = int(np.argmax(bad))
        raise MergeError(f"merge: {job.path}: /moments/count[{i}] = {c[i]:g}, but method.samples"
                         f" = {job.n_samples} gives {full:g} per row" +
                         (" (antithetic pairs)" if per_unit == 2 else "") +
                         ": the file is damaged or altered; rerun the job")
    rs = job.data.get("realization_samples")
    if rs is not None and not np.array_equal(per_unit * c.reshape(-1, O).sum(axis=1), rs):
        raise MergeError(f"merge: {job.path}: /moments/count ({per_unit * c.sum():g} samples) "
                         f"disagrees with /realizations/n_samples ({int(np.sum(rs))}): the file "
                         "is damaged or altered; rerun the job")
    est = stats.realization_estimates(obs.outputs, mom)
    for name, (mean, se) in est.items():
        kind = obs.outputs[name].kind
        if kind != "direct" and kind not in stats.RDM_KINDS:
            continue
        mean = mean.reshape((job.n_real, O) + mean.shape[1:]).mean(axis=1)
        se = np.sqrt(np.square(se.reshape(mean.shape[:1] + (O,) + mean.shape[1:])).sum(1)) / O
        got = job.data["realizations"].get(name)
        pairs = [(mean, "mean", got)] + ([(se, "stderr", got)] if kind == "direct" and
                                          not sim.deterministic else [])
        if got is None:   # no per-realization values stored (large runs): the average
            pairs = [(mean.mean(axis=0), "mean", job.data["observables"].get(name, {}))]
        for value, key, stored in pairs:
            ref = stored.get(key)
            where = "realizations" if stored is got else "observables"
            if ref is not None and not _close(value, ref):
                raise MergeError(f"merge: {job.path}: /moments do not reproduce the file's own "
                                 f"/{where}/{name}/{key} (max difference "
                                 f"{_maxdiff(value, ref):.3g}): the file is damaged or altered; "
                                 "rerun the job")
    return mom


def _close(a, b, tol=1e-8):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size != b.size:
        return False
    a = a.reshape(b.shape)
    scale = max(1.0, float(np.nanmax(np.abs(b)))) if b.size and np.isfinite(b).any() else 1.0
    return bool(np.allclose(a, b, rtol=tol, atol=tol * scale, equal_nan=True))


def _maxdiff(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size != b.size:
        return np.inf
    with np.errstate(invalid="ignore"):
        return float(np.nanmax(np.abs(a.reshape(b.shape) - b))) if b.size else 0.0


