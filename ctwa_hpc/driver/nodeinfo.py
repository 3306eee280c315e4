"""Facts of this node for the pre-flight estimate: memory available to the job, ranks on the
node, the resident size of this process (:mod:`ctwa_hpc.driver.preflight`)."""
from __future__ import annotations

import os
import resource

from ..tools import parallel


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
    return avail


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
