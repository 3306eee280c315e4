"""Merge the output files of separate jobs into the file of one big run (``ctwa-hpc merge``).

Two kinds of jobs combine exactly:

* **disjoint realizations** -- the jobs hold realizations [first, first + R) (config key
  ``disorder.first``) that tile one range without gaps, with the same sample range.  The
  moment rows are stacked in realization order when every file has ``/moments``; otherwise
  (and for exact runs) the per-realization values and errors are stacked and averaged.
* **disjoint sample ranges of the same realizations** -- the jobs hold samples
  [first_sample, first_sample + samples) (``method.first_sample``) that tile one range.  The
  sums in ``/moments`` are added, re-shifted to a common shift (this needs the moments:
  CTWA runs with ``output.moments`` kept).

The means, standard errors and disorder averages of the merged file are then formed from the
merged moments by the same code as in a single run (:meth:`Simulation.finish
<ctwa_hpc.driver.runner.Simulation.finish>`), so merged results equal one big run with the merged
config (``disorder.first``/``realizations`` or ``method.first_sample``/``samples`` spanning
all jobs) up to the summation order of floating-point sums.  An exact reference stored with
the runs (``output.compare_exact``) is stacked (realizations) or taken over (samples).

Compatibility: every config key must agree except those listed in :data:`FREE` (sample
counts and ranges, output path, checkpoint/progress settings, kernel backend and batch size,
the stopping rule); the first differing key is reported.  Random streams are keyed by
(method.seed, global realization, global sample index), so two jobs whose realization and
sample ranges both overlap would count the same trajectories twice: refused.  Inputs must
also share their model data (``model_content_hash``), and every input's numbers are checked (counts, finiteness,
the moment sums against its own results) before anything is written
(:mod:`ctwa_hpc.driver.mergecheck`); the output is held under a run's output lock.
"""
from __future__ import annotations

import copy
import logging
import os
import sys

import numpy as np

from .. import config as config_mod
from ..output import hdf5
from ..method import stats
from ..output import schema
from ..output.layout import RunResult
from . import guards, mergecheck
from .mergecheck import MergeError
from .runner import Simulation

log = logging.getLogger("ctwa_hpc")

ALL = "*"
# config keys that may differ between the jobs of one merge
FREE = {"output": {"path", "checkpoint_every_s", "progress_every_s", "moments",
                   "max_memory_gb"},
        "method": {"samples", "first_sample", "backend", "batch"},
        "disorder": {"realizations", "first"},
        "stop": ALL}


def first_difference(a, b):
    """The first physics-relevant ``section.key`` whose values differ: (key, va, vb) or None."""
    for sec in list(a) + [s for s in b if s not in a]:
        free = FREE.get(sec, set())
        if free == ALL:
            continue
        ka, kb = a.get(sec, {}), b.get(sec, {})
        for key in list(ka) + [k for k in kb if k not in ka]:
            if key in free:
                continue
            va, vb = ka.get(key), kb.get(key)
            if va != vb:
                return f"{sec}.{key}", va, vb
    return None


class Job:
    """One input file: its data, stored config and realization/sample ranges."""

    def __init__(self, path):
        path = os.fspath(path)
        hdf5.check_readable(path, "merge")
        try:
            self.data = hdf5.load(path)
        except ValueError as exc:   # truncated, damaged, not an output file, bad config_toml
            raise MergeError(f"merge: {exc}") from None
        self.path = path
        self.cfg = self.data["config"]
        try:
            resolved = config_mod.resolve(copy.deepcopy(self.cfg))
        except ValueError as exc:
            raise MergeError(f"merge: {path}: root attribute config_toml does not validate "
                             f"({exc}); the file is damaged or from another version: rerun "
                             "the job") from None
        d, m = resolved["disorder"], resolved["method"]
        self.first = int(d["first"])
        self.n_real = int(d["realizations"])
        self.first_sample = int(m["first_sample"])
        self.n_samples = int(m["samples"])
        self.stopped = bool((resolved.get("stop") or {}).get("stderr_target"))
        self.method = self.data["attrs"].get("method")
        self.model_hash = self.data["attrs"].get("model_content_hash") or None
        idx = np.asarray(self.data["realization_index"])
        if len(idx) != self.n_real or not np.array_equal(idx, self.first + np.arange(self.n_real)):
            raise MergeError(f"merge: {path}: stored realization indices {idx.tolist()} do not "
                             f"match disorder.first = {self.first}, realizations = {self.n_real}")

    @property
    def realizations(self):
        return (self.first, self.first + self.n_real)

    @property
    def samples(self):
        return (self.first_sample, self.first_sample + self.n_samples)


def _span(jobs, attr, what, key):
    """Check that the ranges ``attr`` of the jobs tile one interval; returns (start, stop)."""
    jobs = sorted(jobs, key=lambda j: getattr(j, attr))
    for a, b in zip(jobs, jobs[1:]):
        ra, rb = getattr(a, attr), getattr(b, attr)
        if rb[0] < ra[1]:
            raise MergeError(f"merge: {a.path} ({what} [{ra[0]}, {ra[1]})) and {b.path} "
                             f"({what} [{rb[0]}, {rb[1]})) overlap: the same sample streams "
                             f"would be counted twice; give every job its own {key}")
        if rb[0] > ra[1]:
            raise MergeError(f"merge: {what} [{ra[0]}, {ra[1]}) of {a.path} and [{rb[0]}, "
                             f"{rb[1]}) of {b.path} leave a gap; the merged file must hold one "
                             f"contiguous range (run the missing {what} or leave a file out)")
    return getattr(jobs[0], attr)[0], getattr(jobs[-1], attr)[1]


def plan_merge(jobs):
    """Check the jobs; returns (mode, jobs in merge order, merged raw config)."""
    if len(jobs) < 2:
        raise MergeError("merge: give at least two files")
    ref = jobs[0]
    for j in jobs[1:]:
        diff = first_difference(ref.cfg, j.cfg)
        if diff is not None:
            key, va, vb = diff
            raise MergeError(f"merge: {j.path} differs from {ref.path} in {key} ({vb!r} vs "
                             f"{va!r}); only sample counts/ranges, realization ranges and output "
                             f"settings may differ")
        if j.method != ref.method:
            raise MergeError(f"merge: {j.path} holds method {j.method!r}, {ref.path} "
                             f"{ref.method!r}")
    mergecheck.check_model_hashes(jobs)
    same_real = len({j.realizations for j in jobs}) == 1
    same_samples = len({j.samples for j in jobs}) == 1
    exact = ref.method == "exact"
    if same_real and (same_samples or exact):
        a, b = jobs[0], jobs[1]
        raise MergeError(f"merge: {a.path} and {b.path} hold the same realizations "
                         f"[{a.first}, {a.first + a.n_real})" +
                         ("" if exact else f" and samples [{a.first_sample}, "
                          f"{a.first_sample + a.n_samples})") +
                         ": their sample streams overlap (set disorder.first or "
                         "method.first_sample per job)")
    merged = copy.deepcopy(ref.cfg)
    if same_samples or exact:
        mode = "realizations"
        lo, hi = _span(jobs, "realizations", "realizations", "disorder.first")
        merged["disorder"]["first"], merged["disorder"]["realizations"] = lo, hi - lo
        jobs = sorted(jobs, key=lambda j: j.first)
    elif same_real:
        mode = "samples"
        for j in jobs:
            if "moments" not in j.data:
                raise MergeError(f"merge: {j.path} has no /moments: sample ranges merge only "
                                 "through the moment sums")
        lo, hi = _span(jobs, "samples", "samples", "method.first_sample")
        merged["method"]["first_sample"], merged["method"]["samples"] = lo, hi - lo
        jobs = sorted(jobs, key=lambda j: j.first_sample)
    else:
        raise MergeError("merge: the files differ both in their realizations and in their "
                         "sample ranges; merge the sample ranges of each realization range "
                         "first, then the realization ranges")
    return mode, jobs, merged


def _stack_exact(jobs, mode):
    """The exact reference of the merged run (None if a job has none)."""
    if any(not j.data["exact"] for j in jobs):
        if any(j.data["exact"] for j in jobs):
            log.warning("merge: not every file holds the exact reference: dropped")
        return None
    ref = jobs[0].data
    out = {}
    for name, o in ref["exact"].items():
        ga = ref["group_attrs"][f"exact/{name}"]
        meta = dict(labels=ga.get("labels") or [], kind=ga.get("kind", "direct"),
                    description=ga.get("description", ""))
        if mode == "samples":
            out[name] = dict(o, real_mean=o.get("per_realization"), real_stderr=None, **meta)
            continue
        if any("per_realization" not in j.data["exact"].get(name, {}) for j in jobs):
            log.warning("merge: the exact reference has no per-realization values: dropped")
            return None
        v = np.concatenate([j.data["exact"][name]["per_realization"] for j in jobs], axis=0)
        mean, se, _ = stats.disorder_average(v)
        out[name] = dict(mean=mean, stderr=None, stderr_within=None,
                         stderr_disorder=se if len(v) > 1 else None, real_mean=v,
                         real_stderr=None, **meta)
    return out


def _exact_run(jobs, cfg):
    """Merged RunResult of exact runs over disjoint realizations."""
    ref = jobs[0].data
    outputs = {}
    for name in ref["observables"]:
        ga = ref["group_attrs"][f"observables/{name}"]
        v = np.concatenate([j.data["realizations"][name]["mean"] for j in jobs], axis=0)
        mean, se, _ = stats.disorder_average(v)
        outputs[name] = dict(mean=mean, stderr=None, stderr_within=None,
                             stderr_disorder=se if len(v) > 1 else None, real_mean=v,
                             real_stderr=None, labels=ga.get("labels") or [],
                             kind=ga.get("kind", "direct"), description=ga.get("description", ""))
    res = RunResult(cfg, ref["time"], "exact", outputs, None, 0, 0.0, 1, "exact")
    disorder = [hdf5.read_disorder(j.path) for j in jobs]
    if all(disorder):
        res.extra["disorder"] = _concat_disorder(disorder)
    return res


def _concat_disorder(recs):
    out = {}
    for k, v in recs[0].items():
        if isinstance(v, dict):
            out[k] = {c: np.concatenate([r[k][c] for r in recs]) for c in v
                      if all(c in r.get(k, {}) for r in recs)}
        elif all(k in r for r in recs):
            out[k] = np.concatenate([np.asarray(r[k]) for r in recs])
    return out


def _ctwa_run(jobs, cfg, mode):
    """Merged RunResult of CTWA runs: merged moments → Simulation.finish, or (disjoint
    realizations, a file without /moments) the stacked per-realization values."""
    quiet_cfg = copy.deepcopy(cfg)
    quiet_cfg["output"]["compare_exact"] = False
    sim = Simulation(quiet_cfg, quiet=True)
    if mode == "samples" and sim.deterministic:
        raise MergeError("merge: a pure-state mean-field run has one trajectory per "
                         "realization; only realization ranges can be merged")
    obs, zero = sim.new_moments()
    mergecheck.check_model_data(jobs, sim)
    for j in jobs:
        mergecheck.check_counts(j, sim)
    if mode == "realizations" and any("moments" not in j.data for j in jobs):
        return _rows_run(jobs, cfg), None
    parts = [mergecheck.check_moments(j, sim, obs, zero) for j in jobs]
    if mode == "realizations":
        total = stats.Moments.concat(parts, zero.cross)
    else:
        for p in parts:
            if p.s1.shape != zero.s1.shape:
                raise MergeError(f"merge: /moments/s1 has shape {p.s1.shape}, the merged config "
                                 f"needs {zero.s1.shape}")
        total = zero
        for p in parts:
            total.merge(p)
    for k in hdf5.PARTIAL_KEYS:
        if getattr(total, k).shape != getattr(zero, k).shape:
            raise MergeError(f"merge: /moments/{k} has shape {getattr(total, k).shape}, the "
                             f"merged config needs {getattr(zero, k).shape}")
    obs, store = sim.store_from_moments(total)
    res = sim.finish(obs, store, 0.0)
    res.cfg = cfg
    res.exact = _stack_exact(jobs, mode)
    if "columns" not in res.extra:
        res.extra["columns"] = schema.column_labels(obs)
    return res, total


def _rows_run(jobs, cfg):
    """Disjoint realizations merged through their per-realization values (files without
    ``/moments``): the disorder averages are formed from the stacked values, exactly as in a
    run over all realizations."""
    ref = jobs[0].data
    outputs = {}
    for name in ref["observables"]:
        ga = ref["group_attrs"][f"observables/{name}"]
        try:
            mean_r = np.concatenate([j.data["realizations"][name]["mean"] for j in jobs])
            se_r = np.concatenate([j.data["realizations"][name]["stderr"] for j in jobs])
        except KeyError:
            raise MergeError(f"merge: a file has no per-realization values of {name!r}")
        mean, se, within = stats.disorder_average(mean_r, se_r)
        outputs[name] = dict(mean=mean, stderr=se, stderr_within=within, real_mean=mean_r,
                             real_stderr=se_r, labels=ga.get("labels") or [],
                             kind=ga.get("kind", "direct"), description=ga.get("description", ""))
    counts = [j.data.get("realization_samples") for j in jobs]
    res = RunResult(cfg, ref["time"], ref["attrs"].get("method", cfg["method"]["kind"]), outputs,
                    None, int(sum(int(np.sum(c)) for c in counts if c is not None)), 0.0, 1,
                    ref["attrs"].get("backend", "merged"))
    if all(c is not None for c in counts):
        res.extra["realization_samples"] = np.concatenate(counts)
    disorder = [hdf5.read_disorder(j.path) for j in jobs]
    if all(disorder):
        res.extra["disorder"] = _concat_disorder(disorder)
    res.exact = _stack_exact(jobs, "realizations")
    return res


def merge(paths, output, force=False):
    """Merge output files into ``output``; returns the merged RunResult.

    Raises :class:`MergeError` (a ValueError) when the files cannot be merged.  ``output`` is
    checked first (not a directory, not an input, not existing without ``force``) and is
    held under the same lock as a run's output (``OUTPUT.lock``) while the merge works;
    stale temporaries ``OUTPUT.tmp.*`` are removed, and so are this merge's own on failure.
    """
    out = os.fspath(output)
    mergecheck.check_output(out, paths)
    hdf5.check_writable(out, force)
    lock = guards.OutputLock(out)
    try:
        lock.acquire()
    except ValueError as exc:
        raise MergeError(_as_merge(exc)) from None
    try:
        guards.remove_output_temporaries(out)
        return _merge_locked(paths, out, force)
    except BaseException:
        guards.remove_output_temporaries(out)
        raise
    finally:
        lock.release()


def _as_merge(exc):
    """A guard's ``output.path: ...`` message as merge's ``merge: -o ...``."""
    msg = str(exc)
    return "merge: -o " + msg[len("output.path: "):] if msg.startswith("output.path: ") \
        else msg


def _merge_locked(paths, out, force):
    jobs = [Job(p) for p in paths]
    mode, jobs, raw = plan_merge(jobs)
    raw["output"]["path"] = out
    cfg = config_mod.resolve(raw)
    if jobs[0].method == "exact":
        for j in jobs:
            mergecheck.check_finite(j)
        res = _exact_run(jobs, cfg)
    else:
        res, _ = _ctwa_run(jobs, cfg, mode)
    res.extra.pop("model_content_hash", None)
    if jobs[0].model_hash:      # the data the jobs ran with (checked equal in all of them)
        res.extra["model_content_hash"] = jobs[0].model_hash
    res.wall_time = float(sum(j.data["attrs"].get("wall_time_s", 0.0) for j in jobs))
    res.extra["merged_from"] = [
        f"{os.path.abspath(j.path)} (realizations [{j.realizations[0]}, {j.realizations[1]}), "
        f"samples [{j.samples[0]}, {j.samples[1]}), {j.data['attrs'].get('mpi_size')} ranks, "
        f"git {j.data['attrs'].get('git_revision')})"
        for j in jobs]
    res.extra["merge_mode"] = mode
    try:
        guards.check_free_space(out, guards.result_bytes(res), "the merged file")
    except ValueError as exc:
        raise MergeError(_as_merge(exc)) from None
    hdf5.write_result(out, res, force=force)
    return res


def merge_command(args):
    """``ctwa-hpc merge A.h5 B.h5 ... -o C.h5 [--force]``: exit 0, or 2 with a message."""
    try:
        res = merge(args.inputs, args.output, force=args.force)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        msg = str(exc)
        print(f"ctwa-hpc: error: {msg if msg.startswith('merge') else 'merge: ' + msg}",
              file=sys.stderr)
        return 2
    except OSError as exc:      # the write failed (disk full, I/O error): nothing written
        print(f"ctwa-hpc: error: merge: -o {args.output}: cannot write the merged file "
              f"({exc.strerror or exc}); nothing was written", file=sys.stderr)
        return 1
    d, m = res.cfg["disorder"], res.cfg["method"]
    print(f"merged {len(args.inputs)} files ({res.extra['merge_mode']}) into {args.output}: "
          f"realizations [{d['first']}, {d['first'] + d['realizations']}), samples "
          f"[{m['first_sample']}, {m['first_sample'] + m['samples']}), "
          f"{res.n_samples} samples in total")
    return 0
