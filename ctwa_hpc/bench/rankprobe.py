"""One rank of the scale table of ``make bench-mpi`` (:func:`ctwa_hpc.bench.mpi.scale_table`):
``python -m ctwa_hpc.bench.rankprobe PREFIX ctwa-hpc-arguments ...``.

Runs the ordinary command line (:func:`ctwa_hpc.cli.main`) in this process and writes
``PREFIX.rank<k>.json`` with its ``ru_maxrss``, the duration and bytes of every checkpoint
save, the duration of the checkpoint start (load and adopt), the pre-flight estimate and the
load balance.  The measurements wrap the functions of the production code in this process
only; nothing in the production code paths is changed by it.

Only ever executed as ``python -m`` (under ``mpirun``): nothing imports this module, so its
import of the CLI (which imports :mod:`ctwa_hpc.bench`) makes no cycle.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

from .. import cli
from ..driver import blockloop, checkpoint, preflight
from ..tools import parallel


def rank_main(argv):
    """One rank of a scale run: ``PREFIX ctwa-hpc-arguments ...``; writes PREFIX.rank<k>.json."""
    prefix, args = argv[0], argv[1:]
    rep = {"saves": [], "start_s": None, "estimate": None, "load_balance": None}
    start, save = checkpoint.Checkpoint.start, checkpoint.Checkpoint.save
    estimate, balance = preflight.estimate, blockloop.Progress.balance
    finalize = parallel.finalize_and_exit

    def timed_start(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return start(self, *a, **k)
        finally:
            rep["start_s"] = time.perf_counter() - t0

    def timed_save(self, *a, **k):
        t0 = time.perf_counter()
        save(self, *a, **k)
        path = self._file(self.generation, self.comm.rank)
        rep["saves"].append(dict(seconds=time.perf_counter() - t0,
                                 bytes=os.path.getsize(path) if os.path.exists(path) else 0))

    def kept_estimate(*a, **k):
        est = estimate(*a, **k)
        rep["estimate"] = {k: v for k, v in est.items() if k != "calibration"}
        return est

    def kept_balance(self, loop):
        rep["load_balance"] = balance(self, loop)
        rep["busy_s"], rep["idle_s"] = loop.busy, loop.idle
        return rep["load_balance"]

    def write(code):
        rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0")))
        rep.update(rank=rank, code=code,
                   maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        with open(f"{prefix}.rank{rank}.json", "w") as fh:
            json.dump(rep, fh)

    def final(comm, code):
        write(code)
        finalize(comm, code)

    checkpoint.Checkpoint.start, checkpoint.Checkpoint.save = timed_start, timed_save
    preflight.estimate, blockloop.Progress.balance = kept_estimate, kept_balance
    parallel.finalize_and_exit = final
    code = cli.main(args)
    write(code)
    return code


if __name__ == "__main__":
    sys.exit(rank_main(sys.argv[1:]))
