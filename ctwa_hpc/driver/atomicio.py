"""The files of the checkpoint (:mod:`ctwa_hpc.driver.checkpoint`): crash-safe writes, and
the checks of what is read back.

A write goes to a temporary ``<path>.tmp.<pid>`` that is flushed, fsync'ed and moved over
``path`` with ``os.replace``, so a reader sees the old or the new file, never a partial one;
a failed write removes its temporary, and :func:`remove_stale_temporaries` clears those of
killed runs.  Reading: the rank files' checksum, the manifest, the finiteness of every
loaded array (:func:`check_finite`), and whether rank files hold finished work
(:func:`orphan_work`: a checkpoint that does is never deleted without ``--force``).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os

import numpy as np

FORMAT = 3
# the manifest's keys and types
_MANIFEST_KEYS = {"config_hash": str, "n_items": int, "generation": int, "size": int}


def _fsync_replace(tmp, path, fh):
    """Flush and fsync the open temporary ``fh``, close it and move it over ``path``."""
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()
    os.replace(tmp, path)


def atomic_savez(path, **arrays):
    """``np.savez`` of ``arrays`` to ``path``, atomically."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            _fsync_replace(tmp, path, fh)
    except BaseException:
        remove_quietly(tmp)
        raise


def write_json(path, obj):
    """``obj`` as JSON to ``path``, atomically."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1)
            _fsync_replace(tmp, path, fh)
    except BaseException:
        remove_quietly(tmp)
        raise


def remove_quietly(path):
    """Delete ``path`` if it exists (errors ignored)."""
    try:
        os.remove(path)
    except OSError:
        pass


def remove_stale_temporaries(directory):
    """Delete ``*.tmp*`` files left in a checkpoint directory by killed runs; returns them."""
    found = sorted(glob.glob(os.path.join(glob.escape(directory), "*.tmp*")))
    for p in found:
        remove_quietly(p)
    return found


def read_json(path):
    """The JSON object in ``path`` ({} if it is not an object), None if unreadable."""
    try:
        with open(path) as fh:
            obj = json.load(fh)
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return None


# -- reading and checking (rank 0 and every rank on --resume) ---------------------------------
def checksum(config_hash_, generation, rank, arrays):
    h = hashlib.sha256()
    h.update(f"{FORMAT}:{config_hash_}:{int(generation)}:{int(rank)}:".encode())
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}{a.shape}{a.dtype.str}".encode())
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


LOOSE_KINDS = ("squeezing", "renyi2_pairs")   # outputs whose estimate may be undefined


def _estimate_keys(state):
    return sorted(k for k in state if k.startswith(("est_mean_", "est_se_")))


def nonfinite_counts(state):
    """Non-finite entries of every row estimate of a rank file (``est_nonfinite``, saved with
    the file under its checksum): the NaN a row's estimate may hold legitimately (a stderr of
    one sample, an undefined squeezing) are known, any other is damage."""
    return np.array([np.size(state[k]) - np.count_nonzero(np.isfinite(state[k]))
                     for k in _estimate_keys(state)], dtype=np.int64)


def check_finite(state, store, name):
    """Every number of a rank file must be finite, except the non-finite row estimates its run
    wrote (``est_nonfinite``; files without it: a stderr of a row of fewer than 2 samples, the
    outputs of :data:`LOOSE_KINDS`).  ValueError naming the array."""
    stored = state.get("est_nonfinite")
    if stored is not None:
        counts, stored = nonfinite_counts(state), np.asarray(stored).reshape(-1)
        if counts.shape != stored.shape:
            raise ValueError(f"checkpoint file {name}: est_nonfinite does not match its "
                             "estimates (the file was modified or damaged)")
        for key, now, then in zip(_estimate_keys(state), counts, stored):
            if now != then:
                raise ValueError(f"checkpoint file {name}: {key} contains {now} non-finite "
                                 f"value(s) (NaN or inf) where its run wrote {then} (the file "
                                 "was modified or damaged)")
    count = np.asarray(state.get("done_count", np.zeros(0)), dtype=float)
    kinds = {n: getattr(o, "kind", None) for n, o in store.outputs.items()}
    for key, arr in state.items():
        a = np.asarray(arr)
        if a.dtype.kind not in "fc" or np.all(np.isfinite(a)):
            continue
        if key.startswith("est_"):
            out = key.partition("_")[2].partition("_")[2]     # est_<mean|se>_<output>
            if stored is not None or kinds.get(out) in LOOSE_KINDS:
                continue
            if key.startswith("est_se_") and a.shape[:1] == count.shape and not np.any(
                    ~np.isfinite(a.reshape(len(count), -1)) & (count[:, None] >= 2)):
                continue
        raise ValueError(f"checkpoint file {name}: {key} contains non-finite values (NaN or "
                         f"inf; the file was modified or damaged)")


def orphan_work(directory, generation=None):
    """'' when the rank files in ``directory`` (of ``generation``; default: all) hold no
    finished work block, else which do ("3 rank file(s) of generation 2"); rank 0, O(P)
    files.  An empty file, or the empty generation-0 files of a fresh start, hold none; a
    file that cannot be read counts as holding work (it may)."""
    paths = sorted(glob.glob(os.path.join(glob.escape(directory), "g*.rank*.npz")))
    held = []
    for path in paths:
        gen = os.path.basename(path)[1:].split(".", 1)[0]
        if generation is not None and gen != str(generation):
            continue
        try:
            if os.path.getsize(path) == 0:
                continue
            with np.load(path, allow_pickle=False) as z:
                work = any(np.size(z[k]) for k in ("frag_items", "done_rows") if k in z.files)
        except Exception:  # damaged: it may hold work (np.load raises many kinds)
            work = True
        if work:
            held.append(gen)
    if not held:
        return ""
    gens = sorted(set(held), key=lambda g: int(g) if g.isdigit() else -1)
    return f"{len(held)} rank file(s) of generation {', '.join(gens)}"
