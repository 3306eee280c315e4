"""The block loop of one rank and its progress report (used by :mod:`ctwa_hpc.driver.runner`).

:class:`BlockLoop` runs this rank's share of a stage: per work item it integrates the block
(``Simulation.run_block``), adds the per-sample columns to its row in the
:class:`~ctwa_hpc.driver.rowstore.RowStore` (a row whose blocks are all here is turned into
estimates at once and its sums released), checkpoints on its own
clock and exchanges a small status vector without blocking (:class:`~ctwa_hpc.tools.parallel.Sync`):
global progress for rank 0's progress lines, and stop requests (SIGTERM/SIGUSR1) seen by every
rank at the same exchange.  :class:`Progress` prints the progress lines (or a live bar on one
process) and the busy time per rank at the end.
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from ..tools import parallel

log = logging.getLogger("ctwa_hpc")


class BlockLoop:
    """The block loop of one rank: integrate, accumulate, checkpoint, exchange status.

    ``busy`` accumulates the seconds this rank spent on its blocks (drawing, integrating,
    accumulating, checkpointing); ``idle`` the seconds it waited for the other ranks at the
    end of each stage.  :meth:`Progress.balance` reports them over ranks.
    """

    def __init__(self, sim, items, store, checkpoint, flag, progress):
        self.sim, self.items, self.store = sim, items, store
        self.checkpoint, self.flag, self.progress = checkpoint, flag, progress
        self.blocks = 0      # blocks finished by this process (all stages)
        self.samples = 0
        self.reason = None
        self.cache = {}
        self.busy = 0.0      # wall seconds on blocks
        self.busy_cpu = 0.0  # CPU seconds on blocks (robust against oversubscribed cores)
        self.idle = 0.0

    def _stop_requested(self):
        stop = self.flag is not None and self.flag.check(self.blocks)
        if stop and self.reason is None:
            self.reason = self.flag.reason
        return stop

    def run(self, mine):
        """Run the item indices ``mine``; True if a stop was requested (on any rank).

        A rank whose own stop flag is set takes no new block; it keeps exchanging its status
        (stop = 1, finished = whether its list is done) until every rank has seen the stop in
        the same exchange.  All ranks finished wins over a stop (the output is then written).
        """
        sim = self.sim
        sync = parallel.Sync(sim.comm, 4)
        n_done = 0
        delay = float(os.environ.get("CTWA_TEST_BLOCK_DELAY_S", "0") or 0)  # test hook
        for i in mine:
            if self._stop_requested():
                break
            t_block, c_block = time.perf_counter(), time.process_time()
            it = self.items[i]
            self.store.add(i, sim.row(it.realization, it.offset_index),
                           sim.run_block(it, self.cache))
            if delay:
                time.sleep(delay)
            n_done += 1
            self.blocks += 1
            self.samples += it.stop - it.start
            if self.checkpoint is not None:
                self.checkpoint.maybe_save(self.store)
            self.busy += time.perf_counter() - t_block
            self.busy_cpu += time.process_time() - c_block
            res = sync.exchange([self.blocks, self.samples, 0.0, 0.0])
            if res is not None:
                self.progress.update(res)
                if res[2] > 0:
                    return True
        finished = float(n_done == len(mine))
        t_wait = time.perf_counter()
        try:
            while True:  # no work taken any more: exchange until all finished or a stop is seen
                res = sync.exchange([self.blocks, self.samples, float(self._stop_requested()),
                                     finished], wait=True)
                self.progress.update(res)
                if res[3] >= sim.comm.size:
                    return False
                if res[2] > 0:
                    return True
        finally:
            self.idle += time.perf_counter() - t_wait


def _hms(seconds):
    """12.3s, 4m05s, 2h03m (or '?' when unknown)."""
    if not np.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


class Progress:
    """Progress lines on rank 0: samples done over all ranks (~%), elapsed, remaining, rate.

    Fed with the global status sums of :class:`~ctwa_hpc.tools.parallel.Sync` (blocks, samples of
    this process run), so it needs no extra communication.
    """

    BAR_EVERY_S = 0.5
    BAR_WIDTH = 30

    def __init__(self, comm, total, already, n_blocks, every_s, quiet, bar=None):
        self.comm = comm
        self.bar = bar if (bar is not None and not quiet and comm.size == 1) else None
        self.last_bar = 0.0
        self.total, self.already, self.n_blocks = total, already, n_blocks
        self.every, self.quiet = every_s, quiet or comm.rank != 0
        self.load_balance = None
        self.t0 = self.last = time.time()
        self.blocks = self.samples = 0

    def update(self, res):
        self.blocks, self.samples = int(res[0]), int(res[1])
        now = time.time()
        if self.bar is not None and now - self.last_bar >= self.BAR_EVERY_S:
            self.last_bar = now
            self._draw(now)
        if self.quiet or self.bar is not None or now - self.last < self.every:
            return
        self.last = now
        self._line(now, "progress")

    def _line(self, now, what):
        done = min(self.already + self.samples, self.total)
        el = now - self.t0
        rate = self.samples / el if el > 0 else 0.0
        rem = (self.total - done) / rate if rate > 0 else float("nan")
        log.info("%s: samples %d/%d (~%.0f%%), elapsed %s, remaining ~%s, rate %.4g "
                 "samples/s", what, done, self.total, 100.0 * done / max(self.total, 1),
                 _hms(el), _hms(rem), rate)

    def _draw(self, now, end=""):
        """One carriage-return-updated line (a progress bar in a terminal or notebook)."""
        done = min(self.already + self.samples, self.total)
        frac = done / max(self.total, 1)
        el = now - self.t0
        rate = self.samples / el if el > 0 else 0.0
        rem = (self.total - done) / rate if rate > 0 else float("nan")
        full = int(round(frac * self.BAR_WIDTH))
        self.bar.write(f"\rctwa-hpc [{'#' * full}{'.' * (self.BAR_WIDTH - full)}] "
                       f"{100 * frac:5.1f}%  {done}/{self.total} samples  elapsed {_hms(el)}"
                       f"  remaining ~{_hms(rem)}   {end}")
        self.bar.flush()

    def final(self):
        if self.bar is not None:
            self._draw(time.time(), end="\n")
        elif not self.quiet:
            self._line(time.time(), "done")

    def balance(self, loop):
        """Log (rank 0) the busy time per rank, min / median / max, and the imbalance
        max / mean − 1 (collective: one gather of two floats per rank)."""
        times = self.comm.gather((loop.busy, loop.idle, loop.busy_cpu), root=0)
        if self.comm.rank != 0 or not times:
            return None
        busy, idle, cpu = (np.array([t[k] for t in times]) for k in range(3))

        def excess(a):
            return float(a.max() / a.mean() - 1.0) if a.mean() > 0 else 0.0

        stats_ = dict(min=float(busy.min()), median=float(np.median(busy)),
                      max=float(busy.max()), mean=float(busy.mean()), imbalance=excess(busy),
                      cpu_min=float(cpu.min()), cpu_max=float(cpu.max()),
                      cpu_imbalance=excess(cpu), idle_max=float(idle.max()), ranks=len(busy))
        log.info("load balance: busy time per rank min %.3fs / median %.3fs / max %.3fs over "
                 "%d rank(s); imbalance max/mean - 1 = %.1f%% (CPU time: %.1f%%); longest "
                 "wait for the others %.3fs", stats_["min"], stats_["median"], stats_["max"],
                 len(busy), 100.0 * stats_["imbalance"], 100.0 * stats_["cpu_imbalance"],
                 stats_["idle_max"])
        self.load_balance = stats_
        return stats_
