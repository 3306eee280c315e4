"""Checkpoint and restart: a ledger of finished work items plus their partial moments.

Layout of ``<output>.ckpt/`` (one directory per output file):

=======================  =====================================================================
``manifest.json``        written by rank 0: config hash, planned item count, ``generation`` g
                         and the number of ranks ``size`` that write generation g
``g<g>.rank<k>.npz``     rank k's state: finished item indices and the Moments sums of exactly
                         those items (written atomically: temporary file + ``os.replace``)
=======================  =====================================================================

Every rank file is self-consistent, and different ranks own disjoint items, so the union of
one generation's files is a valid partial run whenever the files were written.  On
``--resume`` rank 0 validates the manifest (same physics config, same item plan), every rank
reads all files of the current generation (the number of ranks may differ from the previous
run): the union of finished items is skipped, and file k's moments and items are adopted by
rank ``k % size``.  Each rank then writes generation g+1 at once, rank 0 switches the manifest
and removes generation g.  No sample is lost or counted twice.

Saving happens every ``output.checkpoint_every_s`` seconds (per rank, at block boundaries; the
interval grows if saving is slow) and when a stop is requested: SIGTERM (SLURM, before the time
limit with ``--signal``), SIGUSR1 (forwarded by ``mpirun``), SIGINT, or the test hook
``CTWA_TEST_STOP_AFTER_BLOCKS=N`` (stop after this rank finished N blocks).  The runner then
saves, and the command exits with :data:`EXIT_INTERRUPTED`.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import signal
import time

import numpy as np

from . import stats

log = logging.getLogger("ctwa_hpc")

EXIT_INTERRUPTED = 3
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
# sections/keys that do not change the sampled numbers (may differ between run and resume)
_NEUTRAL = {"output": None, "stop": None, "method": ("backend",)}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (wrong config, missing with --resume, ...)."""


class Interrupted(Exception):
    """Raised on every rank after a stop request was honoured and the checkpoint saved."""

    def __init__(self, directory, done, total):
        super().__init__(f"interrupted after {done}/{total} work blocks; checkpoint in {directory}")
        self.directory, self.done, self.total = directory, done, total


def config_hash(cfg):
    """SHA-256 of the parts of a resolved config that determine the sampled numbers."""
    keep = {}
    for sec, keys in cfg.items():
        if sec in _NEUTRAL and _NEUTRAL[sec] is None:
            continue
        drop = _NEUTRAL.get(sec) or ()
        keep[sec] = {k: v for k, v in keys.items() if k not in drop}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()


def directory_for(output_path):
    return os.path.abspath(output_path) + ".ckpt"


class StopFlag:
    """Set by the stop signals (and the test hook); read by the runner at block boundaries."""

    def __init__(self):
        self.reason = None
        self.acted = False
        self._old = {}
        n = os.environ.get("CTWA_TEST_STOP_AFTER_BLOCKS")
        self.after_blocks = int(n) if n else None

    def install(self):
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                try:
                    self._old[sig] = signal.signal(sig, self._handler)
                except ValueError:  # not the main thread
                    pass
        return self

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def _handler(self, signum, frame):
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.reason = signal.Signals(signum).name

    def check(self, blocks_done):
        n = self.after_blocks
        if self.reason is None and n is not None and blocks_done >= n:
            self.reason = f"CTWA_TEST_STOP_AFTER_BLOCKS={self.after_blocks}"
        if self.reason is not None:
            self.acted = True
        return self.reason is not None


def _atomic_savez(path, **arrays):
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _write_json(path, obj):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


class Checkpoint:
    """Per-rank checkpoint files of one run (collective :meth:`start`, per-rank :meth:`save`)."""

    def __init__(self, directory, comm, cfg, n_items, every_s=300.0):
        self.dir = directory
        self.comm = comm
        self.hash = config_hash(cfg)
        self.n_items = int(n_items)
        self.every = float(every_s)
        self.generation = 0
        self.last = time.monotonic()
        self.saves = 0

    # -- start / resume (collective) -----------------------------------------------------------
    def _rank0_prepare(self, resume, force):
        """(error, old generation, old size) decided by rank 0."""
        manifest = os.path.join(self.dir, "manifest.json")
        if os.path.isdir(self.dir) and not resume:
            if not force:
                return (f"a checkpoint exists in {self.dir}: continue it with --resume, or "
                        "start over with --force", None, 0)
            shutil.rmtree(self.dir)
        if resume and os.path.isdir(self.dir):
            try:
                with open(manifest) as fh:
                    man = json.load(fh)
            except (OSError, ValueError) as exc:
                return f"checkpoint {self.dir}: unreadable manifest ({exc})", None, 0
            if man.get("config_hash") != self.hash:
                return (f"checkpoint {self.dir} was written for a different configuration "
                        "(model/disorder/state/method/time/observables differ); resume with the "
                        "same config, or start over with --force", None, 0)
            if man.get("n_items") != self.n_items:
                return (f"checkpoint {self.dir}: {man.get('n_items')} planned work blocks, "
                        f"this config plans {self.n_items}", None, 0)
            return None, int(man["generation"]), int(man["size"])
        if resume:
            log.info("no checkpoint in %s: starting from the beginning", self.dir)
        os.makedirs(self.dir, exist_ok=True)
        return None, None, 0

    def _file(self, gen, k):
        return os.path.join(self.dir, f"g{gen}.rank{k}.npz")

    def start(self, resume, force, moments):
        """Prepare the directory; returns (set of finished item indices, own finished list).

        ``moments`` (a zeroed :class:`~ctwa_hpc.stats.Moments`) receives the sums of the rank
        files adopted by this rank.  Raises :class:`CheckpointError` on every rank on a bad
        checkpoint.
        """
        comm = self.comm
        decision = self._rank0_prepare(resume, force) if comm.rank == 0 else None
        err, old_gen, old_size = comm.bcast(decision, root=0)
        if err:
            raise CheckpointError(err)
        done_all, own = set(), []
        if old_gen is not None:
            for k in range(old_size):
                path = self._file(old_gen, k)
                if not os.path.exists(path):
                    continue  # that rank never saved: its items are simply not done
                with np.load(path) as z:
                    items = z["items"].tolist()
                    done_all.update(items)
                    if k % comm.size == comm.rank:
                        own.extend(items)
                        moments.merge(stats.Moments(z["count"], z["s1"], z["s2"], z["sx"],
                                                    moments.cross))
            self.generation = old_gen + 1
        self.save(own, moments)  # this generation's file exists from the start
        comm.Barrier()
        if comm.rank == 0:
            _write_json(os.path.join(self.dir, "manifest.json"),
                        {"config_hash": self.hash, "n_items": self.n_items,
                         "generation": self.generation, "size": comm.size,
                         "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})
            for path in glob.glob(os.path.join(self.dir, "g*.rank*.npz")):
                if not os.path.basename(path).startswith(f"g{self.generation}."):
                    os.remove(path)
        if old_gen is not None and comm.rank == 0:
            log.info("resumed from %s: %d of %d work blocks already done", self.dir,
                     len(done_all), self.n_items)
        return done_all, own

    # -- saving (per rank) ---------------------------------------------------------------------
    def save(self, own_items, moments):
        t0 = time.monotonic()
        _atomic_savez(self._file(self.generation, self.comm.rank),
                      items=np.asarray(sorted(own_items), dtype=np.int64), **moments.arrays())
        self.last = time.monotonic()
        self.saves += 1
        cost = self.last - t0
        if cost > 0.05 * self.every:  # keep checkpointing below ~5% of the run time
            self.every = 20.0 * cost

    def maybe_save(self, own_items, moments):
        if time.monotonic() - self.last >= self.every:
            self.save(own_items, moments)
            return True
        return False

    def remove(self):
        """Delete the checkpoint (rank 0, after the final output file is in place)."""
        if self.comm.rank == 0:
            shutil.rmtree(self.dir, ignore_errors=True)


def resume_hint(argv=None):
    """The command line to continue an interrupted run (the current one plus --resume)."""
    import shlex
    import sys
    args = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in args:
        args.append("--resume")
    return "ctwa-hpc " + " ".join(shlex.quote(a) for a in args)
