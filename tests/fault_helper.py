"""Shared helpers of the fault-injection suites (tests/test_failure_paths*.py, test_faults_*.py):
a handled failure has no traceback, leaves no state behind, and disk-full cases mount a
small tmpfs (root only; skipped otherwise)."""
from __future__ import annotations

import contextlib
import os
import subprocess

import pytest

from mpi_helper import have_mpi

HAVE_MPI = have_mpi()
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="mpirun or mpi4py not available")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
FAST = 30  # seconds: every failure must be reported well within this


def clean(r):
    """No traceback in a handled failure."""
    assert "Traceback" not in r.stderr, r.stderr
    return r


def leftovers(d, keep=()):
    """Files in d other than ``keep``: checkpoints, locks, temporaries."""
    return sorted(set(os.listdir(d)) - set(keep))


@contextlib.contextmanager
def tmpfs(path, size="4m", ro=False):
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    os.makedirs(path, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                       capture_output=True, text=True, timeout=30)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill(d, leave):
    """Write a filler file so that about ``leave`` bytes stay free in d."""
    st = os.statvfs(d)
    free = st.f_bavail * st.f_frsize
    with open(os.path.join(d, "filler"), "wb") as fh:
        fh.write(b"\0" * max(free - leave, 0))

