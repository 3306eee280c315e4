"""What building a model may allocate, estimated before anything is built.

The model of realization 0 is built while the config is resolved, before the pre-flight
estimate of the run (:mod:`ctwa_hpc.driver.preflight`); whatever that build would allocate is
estimated here first, by arithmetic on the config, and refused with the number when it does
not fit the memory budget: the dense (N, N) coupling arrays of long-range interactions, the
coupling lists of short-range ones, the sites themselves, and data files read into memory.
"""
from __future__ import annotations

import math
import os
import stat as _stat

from ..tools.nodeinfo import memory_available

SITE_BYTES = 512
"""Bytes per site while a model is built (positions, cell list, fields, states; generous)."""
BLOCK_TERM_BYTES = 30
"""Bytes per pair term of a coupling block (i, j, a, b, coefficient, time-function index)."""
FILE_READ_FACTOR = 4
"""A data file is read and validated with about this many copies of its bytes in memory."""
MAX_FILE_BYTES = 16 * 2 ** 30
"""Largest couplings or positions file read, whatever the memory."""


def memory_budget(max_memory_gb=0.0):
    """Bytes a model may allocate: ``output.max_memory_gb`` when > 0, else this node's
    MemAvailable lowered by a cgroup limit; None when unknown."""
    if max_memory_gb and max_memory_gb > 0:
        return int(max_memory_gb * 2 ** 30)
    return memory_available()


def file_limit(max_memory_gb=0.0):
    """Largest data file (bytes) read into memory."""
    budget = memory_budget(max_memory_gb)
    return MAX_FILE_BYTES if budget is None else min(MAX_FILE_BYTES, budget // FILE_READ_FACTOR)


def size_text(nbytes):
    """``12.3 GiB``-style text of a byte count."""
    x = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if x < 1024 or unit == "EiB":
            return f"{x:.3g} {unit}" if unit != "B" else f"{int(x)} B"
        x /= 1024
    return f"{x:.3g} EiB"  # pragma: no cover


def dense_coupling_bytes(n, n_families):
    """Peak bytes of building dense couplings of n sites: (N, N) arrays (distances, kernel,
    one per family, validation copies) plus the coupling block of N(N−1)/2 pairs per family."""
    n, f = int(n), max(1, int(n_families))
    return 8 * n * n * (2 * f + 4) + BLOCK_TERM_BYTES * f * (n * (n - 1) // 2)


def pair_bytes(n_pairs, n_families, dim):
    """Bytes of building coupling lists of ``n_pairs`` pairs (indices, displacements,
    kernel, one value list per family, the coupling block)."""
    f = max(1, int(n_families))
    return int(n_pairs) * (8 * (int(dim) + 6) + 8 * f + BLOCK_TERM_BYTES * f)


def pairs_within(n, volume, dim, radius):
    """Expected pairs closer than ``radius`` among n sites spread over ``volume`` (d dims)."""
    if volume <= 0 or not math.isfinite(volume):
        return n * (n - 1) / 2
    ball = math.pi ** (dim / 2) / math.gamma(dim / 2 + 1) * radius ** dim
    return min(n * (n - 1) / 2, 0.5 * n * (n / volume) * ball + 3 * n)


def check_file(path, where, max_memory_gb=0.0):
    """Refuse a data file that is not a regular file, or too large to read, before reading.

    Raises ValueError starting with ``where``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"{where}: cannot read {path!r}: no such file (a relative path in a "
                         "run file is taken next to the run file)") from None
    except OSError as exc:
        raise ValueError(f"{where}: cannot read {path!r}: {exc.strerror or exc}") from None
    if not _stat.S_ISREG(st.st_mode):
        kind = "a directory" if _stat.S_ISDIR(st.st_mode) else "a device, FIFO or socket"
        raise ValueError(f"{where}: {path!r} is not a regular file ({kind}); give the path "
                         "of a data file")
    limit = file_limit(max_memory_gb)
    if st.st_size > limit:
        raise ValueError(f"{where}: {path!r} holds {size_text(st.st_size)}, more than the "
                         f"{size_text(limit)} that can be read and checked in memory here; "
                         "split it (one file per job over disorder.first) or use a node with "
                         "more memory")
    return st.st_size
