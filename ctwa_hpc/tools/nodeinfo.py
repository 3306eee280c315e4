"""Facts of this node for the pre-flight estimate: memory available to the job, ranks on the
node, the resident size of this process (:mod:`ctwa_hpc.driver.preflight`), and the memory
limit of one rank that every guard before the work uses (:func:`rank_budget`)."""
from __future__ import annotations

import math
import os
import resource

from . import parallel
from .exceptions import ConfigError


def _read_int(path):
    try:
        with open(path) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def memory_available():
    """Bytes this job may still allocate on this node: MemAvailable, lowered by the cgroup
    limit (cgroup v2 ``memory.max`` − ``memory.current``, or v1), None when unknown."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    for lim, cur in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                     ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                      "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit = _read_int(lim)
        if limit is not None and limit < 2**60:
            room = max(limit - (_read_int(cur) or 0), 0)
            avail = room if avail is None else min(avail, room)
            break
    room = _address_space_room()
    if room is not None:
        avail = room if avail is None else min(avail, room)
    return avail


def _address_space_room():
    """Bytes of address space this process may still map under ``ulimit -v`` (RLIMIT_AS),
    None without such a limit."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ValueError, OSError, AttributeError):
        return None
    if soft in (resource.RLIM_INFINITY, -1) or soft <= 0:
        return None
    size = 0
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    size = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    return max(soft - size, 0)


def memory_limit(out_cfg):
    """(limit per rank in bytes or None, its source) from ``output.max_memory_gb``."""
    user = float(out_cfg.get("max_memory_gb") or 0.0)
    if user < 0 or not math.isfinite(user):
        raise ConfigError(f"output.max_memory_gb: must be >= 0 (0: node memory), got {user}")
    limit = int(user * 2**30) if user > 0 else None
    source = (f"output.max_memory_gb = {user:g}" if limit else
              "none (output.max_memory_gb = 0: the node's MemAvailable)")
    return limit, source


def rank_budget(cfg, comm=None, node_ranks=None):
    """(bytes one rank may use, what limits it) before any work: ``output.max_memory_gb``
    and this node's MemAvailable shared by its ranks, the smaller; (None, "") when unknown.
    The same limits the pre-flight estimate refuses against (:func:`preflight.check`)."""
    limit, source = memory_limit(cfg["output"])
    avail, room = memory_available(), _address_space_room()
    L = int(node_ranks or (ranks_on_node(comm) if comm is not None else 1))
    if avail is not None and (limit is None or avail / L < limit):
        limit = int(avail / L)
        source = (f"the address-space limit (ulimit -v) leaves {room / 2**30:.3g} GiB"
                  if room is not None and room <= avail else
                  f"this node's MemAvailable {avail / 2**30:.3g} GiB"
                  + (f" shared by {L} ranks" if L > 1 else ""))
    return limit, (source if limit is not None else "")


def ranks_on_node(comm):
    """Ranks of this job on this node: :func:`parallel.ranks_on_node` when it exists, else
    the launcher's variables, else all ranks when size <= cpu count (else one per core)."""
    fn = getattr(parallel, "ranks_on_node", None)
    if fn is not None:
        return int(fn(comm))
    size = comm.size
    for var in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE",
                "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        v = os.environ.get(var, "").split("(")[0].split(",")[0]
        if v.isdigit() and int(v) > 0:
            return min(int(v), size)
    cpus = os.cpu_count() or 1
    return size if size <= cpus else cpus


def process_rss():
    """(current, peak) resident bytes of this process (/proc/self/status; peak from
    getrusage when /proc is absent)."""
    cur = peak = None
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return cur or peak, peak
