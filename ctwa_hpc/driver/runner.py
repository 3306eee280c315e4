"""The simulation driver: config → model → compiled problem → work blocks → moments → output.

:class:`Simulation` reads like the method section of the paper (its set-up half is
:class:`~ctwa_hpc.driver.problem.RunSetup`, its result half
:class:`~ctwa_hpc.driver.results.ResultAssembly`; this module drives the block loop):

1. ``build_model(r)``: the Hamiltonian of disorder realization r (eq. (1) builders);
2. ``partitions(r)``: the cluster partitions of realization r, one per configured offset
   (sec. II A, step 1; ``method.clustering`` may choose them from the couplings of r);
3. ``plan_work()``: the (realization, offset, sample block) work items in one fixed global
   order, a lazy :class:`~ctwa_hpc.driver.workplan.WorkPlan` (O(1) memory); every rank takes a
   balanced contiguous share of the items still to do (:meth:`~ctwa_hpc.driver.workplan.Stage.share`);
4. ``run()``: per block draw the Wigner samples (eq. (18) or (52)–(54)), integrate the
   classical equations (eq. (19)/(61) kernels, or eq. (10) in density-matrix form), and add
   the per-sample observable columns into the shifted sums of their row
   (:class:`~ctwa_hpc.driver.rowstore.RowStore`: only rows in flight keep sums; a complete row
   becomes estimates at once);
5. ``finish()``: rows split between ranks go to the owners of their realizations, which form
   the realization values; the disorder average is two allreduces; every rank keeps the rows
   of its realizations for the writer (``self.rows``).

Between blocks each rank checkpoints on its own clock (:mod:`ctwa_hpc.driver.checkpoint`) and
exchanges a small status vector without blocking (:class:`~ctwa_hpc.tools.parallel.Sync`): global
progress for rank 0's progress lines, and stop requests (SIGTERM/SIGUSR1) seen by every rank
at the same exchange.  With ``stop.stderr_target`` the items run in stages of
``stop.check_samples`` samples, and the run ends after the first stage whose standard errors
are below the target (the stopping point does not depend on the number of ranks).

``run_exact()`` produces the exact reference from the same model, state and observables.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from . import checkpoint as ckpt_mod, rowstore
from .blockloop import BlockLoop, Progress
from .problem import RunSetup
from .results import ResultAssembly

log = logging.getLogger("ctwa_hpc")


class Simulation(RunSetup, ResultAssembly):
    """One run described by a resolved config dict (see :mod:`ctwa_hpc.config`): set-up
    (:class:`~ctwa_hpc.driver.problem.RunSetup`), the block loop (here) and the result
    (:class:`~ctwa_hpc.driver.results.ResultAssembly`)."""

    def new_store(self):
        """The ObservableSet and an empty :class:`~ctwa_hpc.driver.rowstore.RowStore` of this run."""
        obs = self.observable_set(0)
        store = rowstore.RowStore(obs.outputs, self.plan_work(), len(self.times),
                                  obs.n_stat_columns, obs.cross, antithetic=self.antithetic,
                                  keep_moments=self.keep_moments(obs),
                                  deterministic=self.deterministic,
                                  first_sample=self.cfg["method"]["first_sample"])
        store.compiled = self.backend != "numpy"
        return obs, store

    def store_from_moments(self, total):
        """A serial RowStore whose rows are all done, from the sums of every row (merge)."""
        obs, store = self.new_store()
        for row in range(len(total.count)):
            store.frags[row] = [total.take([row]), []]
            store._finish(row)
        return obs, store

    def stages(self, items):
        """Item indices grouped into the stages between two checks of the stopping rule.

        Without ``stop.stderr_target`` there is one stage.  Otherwise stage k holds the blocks
        whose first sample lies in [k·w, (k+1)·w), w = ``stop.check_samples`` rounded up to a
        multiple of the batch: the stopping point depends on the data only, not on the ranks.
        ``items`` is the :class:`~ctwa_hpc.driver.workplan.WorkPlan`; the stages are lazy
        :class:`~ctwa_hpc.driver.workplan.Stage` objects (nothing per item is materialized).
        """
        stop = self.cfg.get("stop") or {}
        if not stop.get("stderr_target"):
            return items.stages(None)
        batch = items.largest_block
        width = stop.get("check_samples") or 4 * batch
        return items.stages(-(-width // batch))

    def run(self, checkpoint=None, resume=False, force=False, stop_flag=None):
        """Run this rank's share of the work; returns a RunResult on rank 0 (None elsewhere).

        ``checkpoint``: a :class:`~ctwa_hpc.driver.checkpoint.Checkpoint` (collective start, resume
        with ``resume=True``; stop signals are honoured only with one).  After a stop request
        every rank saves its checkpoint and raises :class:`~ctwa_hpc.driver.checkpoint.Interrupted`.
        At the end every rank saves its checkpoint once more (a failed write of the output
        loses nothing), and this rank's per-realization rows are left in ``self.rows`` (the
        writer stores them).  ``stop_flag``: an installed
        :class:`~ctwa_hpc.driver.checkpoint.StopFlag` (the CLI keeps it installed until the output
        is written); by default one is installed for the run.
        """
        if self.method == "exact":
            self.rows = None
            return self.run_exact()
        t0 = time.time()
        obs, store = self.new_store()
        items = store.plan
        done = np.zeros(0, np.int64)
        flag, own_flag = stop_flag, False
        self._checkpoint = checkpoint
        if checkpoint is not None:
            done = checkpoint.start(resume, force, store)
            if flag is None:
                flag, own_flag = ckpt_mod.StopFlag().install(), True
        progress = Progress(self.comm, items.total_samples, items.samples_of(done),
                            items.n_items, self.cfg["output"]["progress_every_s"], self.quiet,
                            bar=self.progress_bar)
        loop = BlockLoop(self, items, store, checkpoint, flag, progress)
        try:
            stopped = False
            for stage in self.stages(items):
                # this rank's contiguous share of the stage's unfinished items (lazy ranges)
                if loop.run(stage.share(done, self.comm.size, self.comm.rank)):
                    stopped = True
                    break
                if self._precise_enough(obs, store):
                    break
        finally:
            if own_flag:
                flag.restore()
        if checkpoint is not None:
            checkpoint.save(store)
        if stopped:
            n_done = self.comm.allreduce(store.n_items)
            if self.comm.rank == 0:
                log.warning("stop requested (%s): checkpoint saved with %d/%d work blocks",
                            loop.reason or "another rank", n_done, items.n_items)
            raise ckpt_mod.Interrupted(checkpoint.dir if checkpoint else None, n_done,
                                       items.n_items)
        progress.final()
        progress.balance(loop)
        return self.finish(obs, store, time.time() - t0)

    def _precise_enough(self, obs, store):
        """The optional stopping rule (collective): max stderr of ``stop.observables`` over
        times and components below ``stop.stderr_target`` (decided on rank 0).

        The fragments go to the owners of their realizations first (a new checkpoint
        generation records the move), so every rank checks its own realizations."""
        stop = self.cfg.get("stop") or {}
        target = stop.get("stderr_target")
        if not target:
            return False
        store.consolidate(self.comm)
        if getattr(self, "_checkpoint", None) is not None:
            self._checkpoint.commit(store)
        names = stop.get("observables") or list(obs.outputs)
        _, _, vals, counts, _ = store.realization_values(self.comm, allow_partial=True)
        avg = rowstore.disorder_average(self.comm, {n: vals[n] for n in names},
                                        self.cfg["disorder"]["realizations"])
        n_min = min(x for x in self.comm.allgather(counts.min() if len(counts) else np.inf))
        decision = None
        if self.comm.rank == 0:
            worst = 0.0
            for _, se, _ in avg.values():
                worst = max(worst, float(np.nanmax(se)) if np.isfinite(se).any() else np.inf)
            decision = bool(worst <= target)
            log.info("stopping rule: max stderr %.3g %s target %.3g after %d samples per "
                     "realization%s", worst, "<=" if decision else ">", target, int(n_min),
                     ": stopping" if decision else "")
        return self.comm.bcast(decision, root=0)
