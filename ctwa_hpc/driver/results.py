"""From rows to the result: realization values, the disorder average, what the output records
of every realization, and the exact reference (the result half of
:class:`~ctwa_hpc.driver.runner.Simulation`).

:meth:`ResultAssembly.finish` sends rows split between ranks to the owners of their
realizations, forms the realization values (offset average) and the disorder average (two
allreduces), and builds the :class:`~ctwa_hpc.output.layout.RunResult` on rank 0;
:meth:`ResultAssembly.run_exact` evaluates the exact reference of the same model, state and
observables, realizations split over the ranks.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from ..exact import statevector as exact
from ..method import conservation, stats
from ..output import rows as outrows, schema
from ..output.layout import RunResult
from ..tools import parallel
from . import rowstore
from .blockloop import _hms

log = logging.getLogger("ctwa_hpc")


class ResultAssembly:
    """The result half of a Simulation (needs the :class:`~ctwa_hpc.driver.problem.RunSetup`
    attributes: cfg, comm, models, times, method, partitions, observable_set, ...)."""

    GATHER_BYTES = 64 * 2 ** 20          # rows also kept in the in-memory result up to this

    def finish(self, obs, store, wall):
        """Rows to their owners, realization values, disorder average; RunResult on rank 0.

        Every rank keeps its realizations' rows in ``self.rows`` (for the writer); the
        in-memory result holds all rows too when they are small (:attr:`GATHER_BYTES`).
        """
        comm = self.comm
        R, O = self.cfg["disorder"]["realizations"], self.n_offsets
        store.consolidate(comm)
        if (self.cfg.get("stop") or {}).get("stderr_target"):
            store.finish_all()   # the stopping rule ended the rows early
        lo, hi, vals, counts, mom = store.realization_values(comm)
        avg = rowstore.disorder_average(comm, vals, R)
        drift = self.drift.reduce(comm)
        n_units = parallel.allreduce_sum(comm, np.array([counts.sum()]))[0]
        disorder = self.disorder_record(lo, hi)
        local = {n: dict(real_mean=vals[n][0], real_stderr=vals[n][1], kind=o.kind,
                         labels=o.labels) for n, o in obs.outputs.items()}
        self.rows = outrows.realization_rows(local, lo, R, O, disorder=disorder, moments=mom,
                                             counts=counts, cross=obs.cross)
        small = parallel.allreduce_sum(comm, np.array([float(self.rows.nbytes)]))[0] \
            <= self.GATHER_BYTES
        blocks = comm.gather((vals, counts, disorder, mom) if small else None, root=0)
        if comm.rank != 0:
            return None
        full = outrows.concat_blocks(blocks, store.cross) if small else None
        outputs = {}
        for name, (mean, se, within) in avg.items():
            o = obs.outputs[name]
            outputs[name] = dict(mean=mean, stderr=se, stderr_within=within,
                                 real_mean=full["vals"][name][0] if full else None,
                                 real_stderr=full["vals"][name][1] if full else None,
                                 description=o.description, labels=o.labels, kind=o.kind)
        res = RunResult(self.cfg, self.times, self.method, outputs,
                        full["moments"] if full else None, int(round(n_units)), wall,
                        comm.size, self.backend_used())
        if full:
            res.extra["disorder"] = full["disorder"]
            res.extra["realization_samples"] = full["counts"]
        res.extra["columns"] = schema.column_labels(obs)
        if self.method != "operator":
            self.drift.static = self._static
            res.extra.update(drift)
            warn = conservation.DriftMonitor.report(drift, self.dt)
            if warn:
                res.extra["warnings"] = "; ".join(warn)
        if self.models.content_hash:
            res.extra["model_content_hash"] = self.models.content_hash
        if self.cfg["output"]["compare_exact"]:
            ok, reason = self.exact_available()
            if ok:
                res.exact = self.run_exact(serial=True).outputs
            else:
                res.extra["exact_skipped"] = reason
                log.warning("output.compare_exact: %s", reason)
        return res

    def exact_available(self):
        """(True, "") if an exact reference exists for this run, else (False, reason)."""
        obs = self.observable_set(0)
        return exact.available(self.build_model(0), self.state_for(0), obs.columns, obs.kick)

    # -- what the output records of every realization -----------------------------------------
    MAX_STORED_COUPLINGS = 4_000_000

    def disorder_record(self, lo=0, hi=None):
        """Positions, fields, couplings (when not too large) and clusters of realizations
        [lo, hi) (default: all).

        Returns arrays with a leading realization axis (hi − lo, ...): ``positions`` (R, N, d),
        ``fields`` {component: (R, N)}, ``couplings`` {key: (R, N, N)} (omitted above
        :attr:`MAX_STORED_COUPLINGS` numbers, or for chain models), ``cluster_of_site``
        (R, n_offsets, N): the cluster index of every site in every partition, and
        ``realization_index`` (R,): the global realization numbers (disorder.first + r).
        """
        R, N = self.cfg["disorder"]["realizations"], self.n_sites
        hi = R if hi is None else hi
        n = hi - lo
        pos, cl, fields, coup = [], [], {}, {}
        for i, r in enumerate(range(lo, hi)):
            inst = self.instance(r)
            pos.append(np.asarray(inst.positions, dtype=float))
            cl.append([_cluster_of_site(p) for p in self.partitions(r)])
            for comp, v in inst.fields.items():
                fields.setdefault(comp, np.zeros((n, N)))[i] = v
            if inst.couplings is not None:
                n_keys = len(inst.couplings)
                if R * N * N * n_keys <= self.MAX_STORED_COUPLINGS:
                    dense = getattr(inst.couplings, "dense", None)   # coupling lists: small N
                    for key, J in (dense() if dense else inst.couplings).items():
                        coup.setdefault(key, np.zeros((n, N, N)))[i] = J
        if not pos:
            return dict(realization_index=np.zeros(0, np.int64))
        out = dict(positions=np.array(pos), cluster_of_site=np.array(cl, dtype=np.int64),
                   realization_index=self.models.global_realization(lo) + np.arange(n))
        if fields:
            out["fields"] = fields
        if coup:
            out["couplings"] = coup
        return out


    # -- exact reference ------------------------------------------------------------------------
    def run_exact(self, serial=False):
        """Exact dynamics per realization (split over ranks), disorder-averaged on rank 0."""
        t0 = time.time()
        comm = parallel.SerialComm() if serial else self.comm
        R = self.cfg["disorder"]["realizations"]
        mine = parallel.split_items(R, comm)
        rows = {}
        for r in mine:
            H = self.build_model(r)
            obs = self.observable_set(r)
            state = self.state_for(r)
            t_r = time.time()
            mean, _ = exact.evolve(H, state, self.times, obs.columns,
                                   seed=self.cfg["method"]["seed"],
                                   realization=self.models.global_realization(r),
                                   draws=self.cfg["output"]["exact_draws"])
            if obs.kick is not None:
                if not state.is_pure:
                    raise ValueError("observables.kick: the exact two-time reference needs a "
                                     "pure initial state")
                anti, resp = exact.two_time(H, state.theta, state.phi, self.times,
                                            obs.columns, obs.kick)
                mean = np.concatenate([mean, anti, resp], axis=1)
            rows[r] = mean
            if comm.rank == 0 and not self.quiet:
                log.info("exact reference: realization %d (%d of %d on rank 0) in %s",
                         self.models.global_realization(r), len(rows), len(mine),
                         _hms(time.time() - t_r))
        gathered = comm.gather(rows, root=0)
        if comm.rank != 0:
            return None
        allrows = {}
        for g in gathered:
            allrows.update(g)
        cols = np.array([allrows[r] for r in range(R)])
        obs = self.observable_set(0)
        vals = stats.exact_connected(obs.outputs, cols)
        outputs = {}
        for name, v in vals.items():
            mean, se, _ = stats.disorder_average(v)
            o = obs.outputs[name]
            outputs[name] = dict(mean=mean, stderr=None, stderr_within=None,
                                 stderr_disorder=se if R > 1 else None,
                                 real_mean=v, real_stderr=None, description=o.description,
                                 labels=o.labels, kind=o.kind)
        res = RunResult(self.cfg, self.times, "exact", outputs, None, 0, time.time() - t0,
                        comm.size, "exact")
        if not serial:
            res.extra["disorder"] = self.disorder_record()
        return res


def _cluster_of_site(partition):
    """(N,) cluster index of every site of a partition."""
    out = np.empty(partition.n_sites, dtype=np.int64)
    for c, sites in enumerate(partition.clusters):
        out[list(sites)] = c
    return out
