"""Logging of a run: every module logs to the ``ctwa_hpc`` logger; a command sets it up once.

Rank 0 logs at INFO (progress lines, summaries) unless ``quiet``; the other ranks only at
WARNING, so an MPI job's stderr stays readable.  Each line names the rank: ``ctwa-hpc 1/4``.
"""
from __future__ import annotations

import logging
import sys

log = logging.getLogger("ctwa_hpc")


def setup_logging(comm, quiet):
    """Configure the root logger for a command line run on ``comm`` (rank-tagged lines)."""
    fmt = f"%(asctime)s ctwa-hpc {comm.rank}/{comm.size} %(levelname)s :: %(message)s"
    level = logging.WARNING if (quiet or comm.rank != 0) else logging.INFO
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", stream=sys.stderr,
                        force=True)
