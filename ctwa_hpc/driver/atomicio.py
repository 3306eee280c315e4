"""Crash-safe files of the checkpoint (:mod:`ctwa_hpc.driver.checkpoint`).

A write goes to a temporary ``<path>.tmp.<pid>`` that is flushed, fsync'ed and moved over
``path`` with ``os.replace``, so a reader sees the old or the new file, never a partial one;
a failed write removes its temporary, and :func:`remove_stale_temporaries` clears those of
killed runs.
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np


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
