"""Checkpoint and restart: a ledger of finished work items plus their partial moments.

Layout of ``<output>.ckpt/`` (one directory per output file):

=======================  =====================================================================
``manifest.json``        written by rank 0: format, config hash, planned item count,
                         ``generation`` g and the number of ranks ``size`` that write
                         generation g
``g<g>.rank<k>.npz``     rank k's state: finished item indices and the Moments sums of exactly
                         those items, plus integrity data (below); written atomically
                         (temporary file, fsync, ``os.replace``)
``failed.json``          present when a run ended with an error (message, rank, config hash)
=======================  =====================================================================

Every rank file is self-consistent, and different ranks own disjoint items, so the union of
one generation's files is a valid partial run whenever the files were written.  On
``--resume`` rank 0 validates the manifest (same physics config, same item plan) and every
file of the current generation, then broadcasts the finished items; file k is adopted by rank
``k % size`` (the number of ranks may differ from the previous run).  Each rank then writes
generation g+1 at once, rank 0 switches the manifest and removes generation g.  No sample is
lost or counted twice.

Integrity.  A rank file carries the config hash, its generation and rank, and a SHA-256
checksum of its items and sums.  It is refused (the run stops with exit code 2 and says what to
do; nothing is merged) when it cannot be read (truncated), its checksum, hash, generation or
rank do not match, its items are out of range or repeated, its counts differ from what its
items imply, any sum is not finite, or its items overlap another file's (a copied file).
Deleting one damaged rank file is always safe: its work blocks are simply redone.

Special cases.  A directory without a manifest (a run killed before its first checkpoint
completed) holds no finished work and is replaced by a fresh start, with or without
``--resume``.  A checkpoint marked failed whose config differs from the current one (the
corrected rerun) is replaced by a fresh start too; with the same config it resumes.

Saving happens every ``output.checkpoint_every_s`` seconds (per rank, at block boundaries; the
interval grows if saving is slow) and when a stop is requested: SIGTERM (SLURM, before the time
limit with ``--signal``), SIGUSR1 (forwarded by ``mpirun``), SIGINT, or the test hook
``CTWA_TEST_STOP_AFTER_BLOCKS=N`` (stop after this rank finished N blocks).  The runner then
saves, and the command exits with :data:`EXIT_INTERRUPTED`.

The directory is assumed to be used by one run at a time (the command line holds a lock on the
output path); stale temporaries (``*.tmp*``) found at the start are removed.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import time

import numpy as np

log = logging.getLogger("ctwa_hpc")

EXIT_INTERRUPTED = 3
FORMAT = 2
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
# sections/keys that do not change the sampled numbers (may differ between run and resume)
_NEUTRAL = {"output": None, "stop": None, "method": ("backend",)}
_MANIFEST_KEYS = {"config_hash": str, "n_items": int, "generation": int, "size": int}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (wrong config, damaged file, ...)."""


class Interrupted(Exception):
    """Raised on every rank after a stop request was honoured and the checkpoint saved."""

    def __init__(self, directory, done, total):
        super().__init__(f"interrupted after {done}/{total} work blocks; checkpoint in {directory}")
        self.directory, self.done, self.total = directory, done, total


def config_hash(cfg, extra=None):
    """SHA-256 of the parts of a resolved config that determine the sampled numbers.

    ``extra``: a string folded in as well (e.g. the content hash of a couplings file)."""
    keep = {}
    for sec, keys in cfg.items():
        if sec in _NEUTRAL and _NEUTRAL[sec] is None:
            continue
        drop = _NEUTRAL.get(sec) or ()
        keep[sec] = {k: v for k, v in keys.items() if k not in drop}
    if extra:
        keep["__content__"] = str(extra)
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


# -- files ----------------------------------------------------------------------------------------
def _fsync_replace(tmp, path, fh):
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()
    os.replace(tmp, path)


def _atomic_savez(path, **arrays):
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            _fsync_replace(tmp, path, fh)
    except BaseException:
        _remove_quietly(tmp)
        raise


def _write_json(path, obj):
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1)
            _fsync_replace(tmp, path, fh)
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def remove_stale_temporaries(directory):
    """Delete ``*.tmp*`` files left in a checkpoint directory by killed runs; returns them."""
    found = sorted(glob.glob(os.path.join(glob.escape(directory), "*.tmp*")))
    for p in found:
        _remove_quietly(p)
    return found


def _checksum(config_hash_, generation, rank, items, arrays):
    h = hashlib.sha256()
    h.update(f"{FORMAT}:{config_hash_}:{int(generation)}:{int(rank)}:".encode())
    h.update(np.ascontiguousarray(items, dtype=np.int64).reshape(-1).view(np.uint8))
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k], dtype=np.float64)
        h.update(f"{k}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def read_manifest(directory):
    """The validated manifest dict; ``ValueError`` saying what is wrong with it."""
    path = os.path.join(directory, "manifest.json")
    try:
        with open(path) as fh:
            man = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable ({exc})") from None
    if not isinstance(man, dict):
        raise ValueError(f"expected a JSON object, got {type(man).__name__}")
    for key, typ in _MANIFEST_KEYS.items():
        if key not in man:
            raise ValueError(f"key {key!r} is missing")
        v = man[key]
        if not isinstance(v, typ) or isinstance(v, bool):
            raise ValueError(f"{key!r} must be {typ.__name__}, got {v!r}")
    if man["generation"] < 0 or man["size"] < 1 or man["n_items"] < 0:
        raise ValueError(f"generation/size/n_items out of range: {man!r}")
    return man


def _read_json(path):
    try:
        with open(path) as fh:
            obj = json.load(fh)
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return None


class Checkpoint:
    """Per-rank checkpoint files of one run (collective :meth:`start`, per-rank :meth:`save`).

    ``item_rows``/``item_counts`` (optional, one entry per planned work item): the Moments row
    an item adds to and the count it adds (samples, or antithetic pairs); with them every rank
    file's counts are checked against its items.  ``content_hash``: folded into the config
    hash (data files whose content matters, e.g. couplings).
    """

    def __init__(self, directory, comm, cfg, n_items, every_s=300.0, item_rows=None,
                 item_counts=None, content_hash=None):
        self.dir = directory
        self.comm = comm
        self.hash = config_hash(cfg, content_hash)
        self.n_items = int(n_items)
        self.every = float(every_s)
        self.generation = 0
        self.last = time.monotonic()
        self.saves = 0
        self.own = []
        self.item_rows = None if item_rows is None else np.asarray(item_rows, dtype=np.int64)
        self.item_counts = None if item_counts is None else np.asarray(item_counts, dtype=float)
        if self.item_rows is not None and len(self.item_rows) != self.n_items:
            raise ValueError("checkpoint: item_rows must have one entry per work item")

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
            failed = (_read_json(self._failed_path()) or {}) \
                if os.path.exists(self._failed_path()) else None
            if not os.path.exists(self._manifest_path()):
                self._fresh(f"checkpoint {self.dir} has no manifest (the run was stopped before "
                            "its first checkpoint was complete; no finished work in it)")
            elif force and not resume:
                shutil.rmtree(self.dir)
            else:
                try:
                    man = read_manifest(self.dir)
                except ValueError as exc:
                    return (f"checkpoint {self.dir}: manifest.json is damaged ({exc}); it cannot "
                            f"be resumed safely: start over with --force (this deletes "
                            f"{self.dir})", None, 0)
                if failed is not None and man["config_hash"] != self.hash:
                    self._fresh(f"checkpoint {self.dir} is from a run that failed ("
                                f"{str(failed.get('message', '?'))[:200]}) with another "
                                "configuration")
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

    def _load_file(self, path, gen, k, template):
        """(items, {key: array}) of one rank file, fully checked; ValueError naming the fault."""
        name = os.path.basename(path)
        redo = (f"delete {path} to redo its work blocks (the other files are kept), or start "
                "over with --force")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {key: z[key] for key in z.files}
        except Exception as exc:  # zipfile/np.load raise many kinds for damaged files
            raise ValueError(f"checkpoint file {name} is unreadable (truncated or damaged: "
                             f"{type(exc).__name__}: {exc}); {redo}") from None
        need = {"items", "config_hash", "generation", "rank", "checksum", *template}
        missing = sorted(need - set(data))
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
        items = np.asarray(data["items"])
        if items.ndim != 1 or (items.size and items.dtype.kind not in "iu"):
            raise ValueError(f"checkpoint file {name}: items is not a list of integers; {redo}")
        items = items.astype(np.int64)
        arrays = {key: np.asarray(data[key]) for key in template}
        if _checksum(fhash, fgen, frank, items, arrays) != stored:
            raise ValueError(f"checkpoint file {name}: checksum mismatch (the file was modified "
                             f"or damaged); {redo}")
        for key, ref in template.items():
            if arrays[key].shape != np.shape(ref):
                raise ValueError(f"checkpoint file {name}: {key} has shape {arrays[key].shape}, "
                                 f"this run needs {np.shape(ref)}; {redo}")
            if not np.all(np.isfinite(arrays[key])):
                raise ValueError(f"checkpoint file {name}: {key} contains non-finite sums; "
                                 f"{redo}")
        if items.size and (items.min() < 0 or items.max() >= self.n_items):
            raise ValueError(f"checkpoint file {name}: item index outside 0..{self.n_items - 1}; "
                             f"{redo}")
        if len(np.unique(items)) != len(items):
            raise ValueError(f"checkpoint file {name}: repeated items; {redo}")
        if self.item_rows is not None and "count" in arrays:
            expect = np.bincount(self.item_rows[items], weights=self.item_counts[items],
                                 minlength=arrays["count"].shape[0])
            if expect.shape != arrays["count"].shape or not np.array_equal(expect,
                                                                           arrays["count"]):
                raise ValueError(f"checkpoint file {name}: its sample counts do not match its "
                                 f"{len(items)} finished work blocks; {redo}")
        return items, arrays

    def _rank0_scan(self, gen, size, template):
        """(error, sorted finished items, {k: n_items}) after checking every file of ``gen``."""
        owner, sizes = {}, {}
        for k in range(size):
            path = self._file(gen, k)
            if not os.path.exists(path):
                log.warning("checkpoint %s: %s is missing; its work blocks are redone", self.dir,
                            os.path.basename(path))
                continue
            try:
                items, _ = self._load_file(path, gen, k, template)
            except ValueError as exc:
                return f"checkpoint {self.dir}: {exc}", None, None
            for i in items.tolist():
                if i in owner:
                    return (f"checkpoint {self.dir}: files g{gen}.rank{owner[i]}.npz and "
                            f"g{gen}.rank{k}.npz both contain work block {i} (a copied file?); "
                            "delete one of them to redo its blocks, or start over with --force",
                            None, None)
                owner[i] = k
            sizes[k] = len(items)
        return None, sorted(owner), sizes

    def start(self, resume, force, moments):
        """Prepare the directory; returns (set of finished item indices, own finished list).

        ``moments`` (a zeroed :class:`~ctwa_hpc.stats.Moments`) receives the sums of the rank
        files adopted by this rank.  Raises :class:`CheckpointError` on every rank on a bad
        checkpoint (nothing is merged then).
        """
        comm = self.comm
        template = moments.arrays()
        decision = None
        if comm.rank == 0:
            try:
                err, old_gen, old_size = self._rank0_prepare(resume, force)
                done, sizes = None, None
                if err is None and old_gen is not None:
                    err, done, sizes = self._rank0_scan(old_gen, old_size, template)
            except OSError as exc:
                err, old_gen, old_size, done, sizes = (
                    f"checkpoint {self.dir}: {exc.strerror or exc} ({exc.filename or ''})",
                    None, 0, None, None)
            decision = (err, old_gen, old_size, done, sizes)
        err, old_gen, old_size, done, sizes = comm.bcast(decision, root=0)
        if err:
            raise CheckpointError(err)
        done_all, own = set(done or ()), []
        local_err = None
        if old_gen is not None:
            # sums go straight into ``moments``: on any error every rank raises and the run
            # stops, so a partly merged state is never used
            target = moments.arrays()
            try:
                for k in sorted(sizes):
                    if k % comm.size != comm.rank:
                        continue
                    items, arrays = self._load_file(self._file(old_gen, k), old_gen, k, template)
                    if len(items) != sizes[k]:
                        raise ValueError(f"checkpoint file g{old_gen}.rank{k}.npz changed while "
                                         "being read")
                    own.extend(items.tolist())
                    for key, a in target.items():
                        a[...] += arrays[key]
            except ValueError as exc:
                local_err = f"checkpoint {self.dir} (rank {comm.rank}): {exc}"
            errs = [e for e in comm.allgather(local_err) if e]
            if errs:
                raise CheckpointError(errs[0])
            self.generation = old_gen + 1
        self.own = own
        self.save(own, moments)  # this generation's file exists from the start
        comm.Barrier()
        if comm.rank == 0:
            _write_json(self._manifest_path(),
                        {"format": FORMAT, "config_hash": self.hash, "n_items": self.n_items,
                         "generation": self.generation, "size": comm.size,
                         "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})
            for path in glob.glob(os.path.join(glob.escape(self.dir), "g*.rank*.npz")):
                if not os.path.basename(path).startswith(f"g{self.generation}."):
                    os.remove(path)
            _remove_quietly(self._failed_path())  # this attempt took over
        if old_gen is not None and comm.rank == 0:
            log.info("resumed from %s: %d of %d work blocks already done", self.dir,
                     len(done_all), self.n_items)
        return done_all, own

    # -- saving (per rank) ---------------------------------------------------------------------
    def save(self, own_items, moments):
        t0 = time.monotonic()
        items = np.asarray(sorted(own_items), dtype=np.int64)
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in moments.arrays().items()}
        rank = self.comm.rank
        _atomic_savez(self._file(self.generation, rank), items=items,
                      config_hash=np.array(self.hash), generation=np.array(self.generation),
                      rank=np.array(rank),
                      checksum=np.array(_checksum(self.hash, self.generation, rank, items,
                                                  arrays)),
                      **arrays)
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

    def save_current(self, moments):
        """Save this rank's current state (the item list the runner appends to)."""
        self.save(self.own, moments)

    def mark_failed(self, message):
        """Record (from any rank, best effort) that the run ended with an error."""
        if not os.path.isdir(self.dir):
            return
        try:
            _write_json(self._failed_path(),
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
    import shlex
    import sys
    args = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in args:
        args.append("--resume")
    return "ctwa-hpc " + " ".join(shlex.quote(a) for a in args)
