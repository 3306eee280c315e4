"""Checkpoint and restart: per-rank files of the rows a rank holds, plus a manifest.

Layout of ``<output>.ckpt/`` (one directory per output file):

=======================  =====================================================================
``manifest.json``        written by rank 0: format, config hash, planned item count,
                         ``generation`` g and the number of ranks ``size`` that write
                         generation g
``g<g>.rank<k>.npz``     rank k's :class:`~ctwa_hpc.driver.rowstore.RowStore` state: the fragments
                         of its rows in flight (finished items and their moment sums) and the
                         estimates of its done rows, plus integrity data (below); written
                         atomically (temporary file, fsync, ``os.replace``)
``failed.json``          present when a run ended with an error (message, rank, config hash)
=======================  =====================================================================

A save writes what the rank holds (O(1) fragments and its own done rows), so the bytes of one
checkpoint round over all ranks do not grow with the number of ranks.  Every rank file is
self-consistent and different ranks own disjoint items, so the union of one generation's
files is a valid partial run.  On ``--resume`` rank 0 reads the manifest (same physics
config, same item plan); old file k is loaded and checked by new rank ``k % size`` (the
number of ranks may differ from the previous run), and one gather of compact finished-item
ranges lets rank 0 refuse overlapping files: O(P) file operations, never O(P²).  Each rank
then writes generation g+1, rank 0 switches the manifest and removes generation g.  The same
switch follows every move of rows between ranks (the stopping rule's checks).  No sample is
lost or counted twice.

Integrity.  A rank file carries the config hash, its generation and rank, and a SHA-256
checksum of its state.  It is refused (the run stops with exit code 2 and says what to do;
nothing is merged) when it cannot be read (truncated), its checksum, hash, generation or rank
do not match, its items are out of range, outside their rows or repeated, its counts differ
from what its items imply, any sum is not finite, or its items overlap another file's (a
copied file).  Deleting one damaged rank file is always safe: its work blocks are redone.

Special cases.  A directory without a manifest whose rank files hold no finished work (a run
killed before its first checkpoint completed) is replaced by a fresh start, with or without
``--resume``; when its rank files do hold work (the manifest was deleted) it is refused (exit
2) and kept: restore the manifest, or start over with ``--force``.  A checkpoint marked
failed whose config differs from the current one (the corrected rerun) is replaced by a fresh
start when it holds no finished work; when it does, it is kept and the run refused: resume
it with its own config, or discard it with ``--force``.  With the same config it resumes.
Every array of a rank file must be finite, except the non-finite row estimates its run wrote
(their counts ``est_nonfinite`` are saved under the checksum: a stderr of one sample, an
undefined squeezing), so a NaN written into a file with its checksum recomputed is refused.

Saving happens every ``output.checkpoint_every_s`` seconds (per rank, at block boundaries; the
interval grows if saving is slow) and when a stop is requested: SIGTERM (SLURM, before the time
limit with ``--signal``), SIGUSR1 (forwarded by ``mpirun``), SIGINT, or the test hook
``CTWA_TEST_STOP_AFTER_BLOCKS=N`` (stop after this rank finished N blocks).  The runner then
saves, and the command exits with :data:`EXIT_INTERRUPTED`.

The directory is assumed to be used by one run at a time (the command line holds a lock on the
output path); stale temporaries (``*.tmp*``) found at the start are removed.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
import time

import numpy as np

from ..config import config_hash
from .atomicio import (FORMAT, atomic_savez, check_finite as _check_finite,
                       checksum as _checksum, nonfinite_counts, orphan_work, read_json,
                       read_manifest, remove_quietly, remove_stale_temporaries, write_json)
from .rowstate import RowState, expand_ranges, overlaps

log = logging.getLogger("ctwa_hpc")

EXIT_INTERRUPTED = 3
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (wrong config, damaged file, ...)."""


class SetupInterrupted(BaseException):
    """A stop signal during the set-up (:meth:`StopFlag.during_setup`): nothing was done, so
    nothing is saved.  A BaseException, so that no ``except Exception`` of the set-up code
    takes it for an input error."""


class Interrupted(Exception):
    """Raised on every rank after a stop request was honoured and the checkpoint saved."""

    def __init__(self, directory, done, total):
        super().__init__(f"interrupted after {done}/{total} work blocks; checkpoint in {directory}")
        self.directory, self.done, self.total = directory, done, total


def directory_for(output_path):
    return os.path.abspath(output_path) + ".ckpt"


class StopFlag:
    """Set by the stop signals (and the test hook); read by the runner at block boundaries."""

    def __init__(self):
        self.reason = None
        self.acted = False
        self._old = {}
        self._urgent = False
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
        if self._urgent:
            self._urgent = False
            raise SetupInterrupted(self.reason)

    @contextlib.contextmanager
    def during_setup(self):
        """Inside the block a stop signal raises :class:`SetupInterrupted` at once (the
        set-up, where nothing is saved yet: no collective and no file may be in progress)."""
        if self.reason is not None:
            raise SetupInterrupted(self.reason)
        self._urgent = True
        try:
            yield self
        finally:
            self._urgent = False

    def check(self, blocks_done):
        n = self.after_blocks
        if self.reason is None and n is not None and blocks_done >= n:
            self.reason = f"CTWA_TEST_STOP_AFTER_BLOCKS={self.after_blocks}"
        if self.reason is not None:
            self.acted = True
        return self.reason is not None


# -- files ----------------------------------------------------------------------------------------
class Checkpoint:
    """Per-rank checkpoint files of one run (collective :meth:`start`, per-rank :meth:`save`).

    A rank file holds the rank's :class:`~ctwa_hpc.driver.rowstore.RowStore` state: the fragments
    of the rows in flight (sums and item lists) and the estimates of its done rows
    (:meth:`RowStore.state_arrays <ctwa_hpc.driver.rowstore.RowStore.state_arrays>`), so a save
    writes what the rank holds, never the whole result.  ``content_hash``: folded into the
    config hash (data files whose content matters, e.g. couplings).
    """

    def __init__(self, directory, comm, cfg, n_items, every_s=300.0, content_hash=None):
        self.dir = directory
        self.comm = comm
        self.hash = config_hash(cfg, content_hash)
        self.n_items = int(n_items)
        self.every = float(every_s)
        self.generation = 0
        self.last = time.monotonic()
        self.saves = 0
        self.last_bytes = 0
        self.items_saved = 0     # finished work items in this rank's last save

    # -- start / resume (collective) -----------------------------------------------------------
    def _manifest_path(self):
        return os.path.join(self.dir, "manifest.json")

    def _failed_path(self):
        return os.path.join(self.dir, "failed.json")

    def _fresh(self, why):
        log.warning("%s: starting from the beginning", why)
        shutil.rmtree(self.dir)

    def _rank0_prepare(self, resume, force):
        """(error, old generation, old size) decided by rank 0 (before any rank file is read)."""
        if os.path.isdir(self.dir):
            for p in remove_stale_temporaries(self.dir):
                log.info("removed stale temporary %s", p)
            failed = (read_json(self._failed_path()) or {}) \
                if os.path.exists(self._failed_path()) else None
            if not os.path.exists(self._manifest_path()):
                held = orphan_work(self.dir)
                if force:
                    shutil.rmtree(self.dir)
                elif held:
                    return (f"checkpoint {self.dir}: manifest.json is missing, but {held} hold "
                            "finished work (the manifest was deleted or lost; nothing was "
                            f"changed): to continue that run restore {self._manifest_path()} "
                            "(e.g. from a backup) and rerun with --resume; to discard the work "
                            f"and start over, rerun with --force (this deletes {self.dir})",
                            None, 0)
                else:
                    self._fresh(f"checkpoint {self.dir} has no manifest (the run was stopped "
                                "before its first checkpoint was complete; no finished work "
                                "in it)")
            elif force and not resume:
                shutil.rmtree(self.dir)
            else:
                try:
                    man = read_manifest(self.dir)
                except ValueError as exc:
                    return (f"checkpoint {self.dir}: manifest.json is damaged ({exc}); it cannot "
                            f"be resumed safely: start over with --force (this deletes "
                            f"{self.dir})", None, 0)
                held = orphan_work(self.dir, man["generation"]) \
                    if failed is not None and man["config_hash"] != self.hash else None
                if held is not None and (force or not held):
                    self._fresh(f"checkpoint {self.dir} is from a run that failed ("
                                f"{str(failed.get('message', '?'))[:200]}) with another "
                                "configuration" + (" (--force)" if held else ""))
                elif held:
                    return (f"checkpoint {self.dir} holds the finished work of a run that "
                            f"failed ({str(failed.get('message', '?'))[:200]}) with another "
                            f"configuration ({held}): to finish that run, rerun its command "
                            "with --resume; to discard the work and start over with this "
                            f"configuration, rerun with --force (this deletes {self.dir})",
                            None, 0)
                elif not resume:
                    note = (f" (that run failed: {str(failed.get('message', '?'))[:200]})"
                            if failed is not None else "")
                    return (f"a checkpoint exists in {self.dir}{note}: continue it with "
                            "--resume, or start over with --force", None, 0)
                elif man["config_hash"] != self.hash:
                    return (f"checkpoint {self.dir} was written for a different configuration "
                            "(model/disorder/state/method/time/observables differ); resume with "
                            "the same config, or start over with --force", None, 0)
                elif man["n_items"] != self.n_items:
                    return (f"checkpoint {self.dir}: {man['n_items']} planned work blocks, "
                            f"this config plans {self.n_items}; start over with --force", None, 0)
                else:
                    if failed is not None:
                        log.warning("checkpoint %s: the previous attempt failed (%s); "
                                    "continuing it", self.dir, failed.get("message", "?"))
                    return None, man["generation"], man["size"]
        elif resume:
            log.info("no checkpoint in %s: starting from the beginning", self.dir)
        os.makedirs(self.dir, exist_ok=True)
        return None, None, 0

    def _file(self, gen, k):
        return os.path.join(self.dir, f"g{gen}.rank{k}.npz")

    def _load_file(self, path, gen, k, store):
        """{key: array} of one rank file, fully checked; ValueError naming the fault."""
        name = os.path.basename(path)
        redo = (f"delete {path} to redo its work blocks (the other files are kept), or start "
                "over with --force")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {key: z[key] for key in z.files}
        except Exception as exc:  # zipfile/np.load raise many kinds for damaged files
            raise ValueError(f"checkpoint file {name} is unreadable (truncated or damaged: "
                             f"{type(exc).__name__}: {exc}); {redo}") from None
        header = ("config_hash", "generation", "rank", "checksum")
        missing = [key for key in header if key not in data]
        if missing:
            raise ValueError(f"checkpoint file {name} lacks {missing} (written by an older "
                             f"version or damaged); {redo}")
        try:
            fhash, fgen, frank = str(data["config_hash"]), int(data["generation"]), \
                int(data["rank"])
            stored = str(data["checksum"])
        except (TypeError, ValueError):
            raise ValueError(f"checkpoint file {name}: bad header fields; {redo}") from None
        if fhash != self.hash:
            raise ValueError(f"checkpoint file {name} was written for another configuration; "
                             f"{redo}")
        if (fgen, frank) != (gen, k):
            raise ValueError(f"checkpoint file {name} holds generation {fgen} of rank {frank} "
                             f"(copied or renamed?); {redo}")
        state = {key: v for key, v in data.items() if key not in header}
        if _checksum(fhash, fgen, frank, state) != stored:
            raise ValueError(f"checkpoint file {name}: checksum mismatch (the file was modified "
                             f"or damaged); {redo}")
        try:
            store.check_state(state, name)
            _check_finite(state, store, name)
        except ValueError as exc:
            raise ValueError(f"{exc}; {redo}") from None
        return state

    def start(self, resume, force, store):
        """Prepare the directory and adopt a previous run's state; returns the sorted
        (int64) indices of all finished work items (collective).

        Rank 0 reads only the manifest; every rank loads and checks the old rank files
        k ≡ rank (mod size) into ``store``; one gather of their compact finished-item ranges
        lets rank 0 refuse overlapping files (a copied file).  O(P) file operations in all.
        Raises :class:`CheckpointError` on every rank on a bad checkpoint (nothing is used).
        """
        comm = self.comm
        decision = None
        if comm.rank == 0:
            try:
                decision = self._rank0_prepare(resume, force)
            except OSError as exc:
                decision = (f"checkpoint {self.dir}: {exc.strerror or exc} "
                            f"({exc.filename or ''})", None, 0)
        err, old_gen, old_size = comm.bcast(decision, root=0)
        if err:
            raise CheckpointError(err)
        done = np.zeros(0, np.int64)
        if old_gen is not None:
            local_err, summary = None, []
            try:
                for k in range(comm.rank, old_size, comm.size):
                    path = self._file(old_gen, k)
                    if not os.path.exists(path):
                        summary.append((k, None))
                        continue
                    state = self._load_file(path, old_gen, k, store)
                    summary.append((k, RowState.ranges_of_state(state, store.B)))
                    store.adopt(state)
            except (ValueError, RuntimeError, OSError) as exc:
                local_err = f"checkpoint {self.dir} (rank {comm.rank}): {exc}"
            gathered = comm.gather((local_err, summary), root=0)
            verdict = None
            if comm.rank == 0:
                errs = [e for e, _ in gathered if e]
                files = sorted((k, r) for _, summ in gathered for k, r in summ)
                for k, r in files:
                    if r is None:
                        log.warning("checkpoint %s: g%d.rank%d.npz is missing; its work "
                                    "blocks are redone", self.dir, old_gen, k)
                present = [(k, r) for k, r in files if r is not None]
                allr = np.concatenate([r for _, r in present]) if present else \
                    np.zeros((0, 2), np.int64)
                if not errs and overlaps(allr):
                    errs = [f"checkpoint {self.dir}: two rank files of generation {old_gen} "
                            "contain the same work blocks (a copied file?); delete the copy to "
                            "redo its blocks, or start over with --force"]
                verdict = (errs[0] if errs else None, allr)
            err, allr = comm.bcast(verdict, root=0)
            if err:
                raise CheckpointError(err)
            done = np.sort(expand_ranges(allr))
            self.generation = old_gen + 1
        self._publish(store)
        if old_gen is not None and comm.rank == 0:
            log.info("resumed from %s: %d of %d work blocks already done", self.dir,
                     len(done), self.n_items)
        return done

    def _publish(self, store):
        """Every rank writes generation ``self.generation``; then rank 0 switches the manifest
        to it and removes the older files (collective).  Until the switch the previous
        generation stays the valid one, so a kill at any point leaves a consistent state."""
        self.save(store)
        self.comm.Barrier()
        if self.comm.rank == 0:
            write_json(self._manifest_path(),
                       {"format": FORMAT, "config_hash": self.hash, "n_items": self.n_items,
                        "generation": self.generation, "size": self.comm.size,
                        "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})
            for path in glob.glob(os.path.join(glob.escape(self.dir), "g*.rank*.npz")):
                if not os.path.basename(path).startswith(f"g{self.generation}."):
                    os.remove(path)
            remove_quietly(self._failed_path())  # this attempt took over
        self.comm.Barrier()

    def commit(self, store):
        """A new generation after rows moved between ranks (collective)."""
        self.generation += 1
        self._publish(store)

    # -- saving (per rank) ---------------------------------------------------------------------
    def save(self, store):
        t0 = time.monotonic()
        state = store.state_arrays()
        state["est_nonfinite"] = nonfinite_counts(state)
        rank = self.comm.rank
        path = self._file(self.generation, rank)
        atomic_savez(path, config_hash=np.array(self.hash),
                     generation=np.array(self.generation), rank=np.array(rank),
                     checksum=np.array(_checksum(self.hash, self.generation, rank, state)),
                     **state)
        self.last = time.monotonic()
        self.saves += 1
        self.items_saved = store.n_items
        try:
            self.last_bytes = os.path.getsize(path)
        except OSError:
            pass
        cost = self.last - t0
        if cost > 0.05 * self.every:  # keep checkpointing below ~5% of the run time
            self.every = 20.0 * cost

    def maybe_save(self, store):
        if time.monotonic() - self.last >= self.every:
            self.save(store)
            return True
        return False

    def mark_failed(self, message):
        """Record (from any rank, best effort) that the run ended with an error."""
        if not os.path.isdir(self.dir):
            return
        try:
            write_json(self._failed_path(),
                       {"message": str(message), "rank": self.comm.rank,
                        "config_hash": self.hash, "host": socket.gethostname(),
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        except OSError:
            pass

    def remove(self):
        """Delete the checkpoint (rank 0, after the final output file is in place)."""
        if self.comm.rank == 0:
            shutil.rmtree(self.dir, ignore_errors=True)


def resume_hint(argv=None):
    """The command line to continue an interrupted run (the current one plus --resume)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in args:
        args.append("--resume")
    return "ctwa-hpc " + " ".join(shlex.quote(a) for a in args)
