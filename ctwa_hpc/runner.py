"""The simulation driver: config → model → compiled problem → work blocks → moments → output.

:class:`Simulation` reads like the method section of the paper:

1. ``build_model(r)``: the Hamiltonian of disorder realization r (eq. (1) builders);
2. ``partitions(r)``: the cluster partitions of realization r, one per configured offset
   (sec. II A, step 1; ``method.clustering`` may choose them from the couplings of r);
3. ``plan_work()``: the (realization, offset, sample block) work items in one fixed global
   order, a lazy :class:`~ctwa_hpc.workplan.WorkPlan` (O(1) memory); every rank takes a
   balanced contiguous share of the items still to do (:meth:`~ctwa_hpc.workplan.Stage.share`);
4. ``run()``: per block draw the Wigner samples (eq. (18) or (52)–(54)), integrate the
   classical equations (eq. (19)/(61) kernels, or eq. (10) in density-matrix form), and add
   the per-sample observable columns into the shifted sums of their row
   (:class:`~ctwa_hpc.rowstore.RowStore`: only rows in flight keep sums; a complete row
   becomes estimates at once);
5. ``finish()``: rows split between ranks go to the owners of their realizations, which form
   the realization values; the disorder average is two allreduces; every rank keeps the rows
   of its realizations for the writer (``self.rows``).

Between blocks each rank checkpoints on its own clock (:mod:`ctwa_hpc.checkpoint`) and
exchanges a small status vector without blocking (:class:`~ctwa_hpc.parallel.Sync`): global
progress for rank 0's progress lines, and stop requests (SIGTERM/SIGUSR1) seen by every rank
at the same exchange.  With ``stop.stderr_target`` the items run in stages of
``stop.check_samples`` samples, and the run ends after the first stage whose standard errors
are below the target (the stopping point does not depend on the number of ranks).

``run_exact()`` produces the exact reference from the same model, state and observables.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from . import checkpoint as ckpt_mod
from . import clusters, config as config_mod, conservation, modelspec, observables, parallel
from . import layout, outrows, rowstore, sampling, states, stats
from .blockloop import BlockLoop, Progress, _hms  # noqa: F401  (Progress: re-exported)
from .workplan import WorkItem  # noqa: F401  (re-exported: items of Simulation.plan_work)

log = logging.getLogger("ctwa_hpc")


@dataclass
class RunResult:
    """Everything the writer needs; ``outputs[name]`` holds mean/stderr arrays and metadata."""

    cfg: dict
    times: np.ndarray
    method: str
    outputs: dict
    moments: object = None
    n_samples: int = 0
    wall_time: float = 0.0
    mpi_size: int = 1
    backend: str = "numpy"
    exact: dict | None = None
    extra: dict = field(default_factory=dict)

    def to_xarray(self):
        """An xarray.Dataset of every output (``<name>_mean``, ``<name>_stderr``, ...)."""
        from . import io
        return io.result_to_xarray(self)


class Simulation:
    """One run described by a resolved config dict (see :mod:`ctwa_hpc.config`)."""

    def __init__(self, cfg, comm=None, backend=None, quiet=False):
        self.cfg = cfg
        self.comm = comm if comm is not None else parallel.SerialComm()
        self.backend = backend or cfg["method"]["backend"]
        self.quiet = quiet
        self.dt, self.n_steps, self.out_every, self.times = config_mod.time_grid(cfg)
        m = cfg["model"]
        self.n_sites = m["n_sites"]
        self.method = cfg["method"]["kind"]
        self.models = modelspec.ModelBuilder(cfg)
        self._states = {}
        self._parts = {}
        # build realization 0 now: bad model/state/observable/cluster input fails before work
        self.state = self.state_for(0)
        self.observable_set(0)
        self.partitions(0)
        self.check_stop_config()
        self.rows = None           # this rank's per-realization rows after run() (the writer's)
        self.progress_bar = None   # a text stream: live progress bar (ctwa_hpc.run, serial)
        self._static = not self.build_model(0).time_dependent
        self.drift = conservation.DriftMonitor(self._static)

    # -- model pieces ---------------------------------------------------------------------
    def instance(self, r):
        """The :class:`~ctwa_hpc.modelspec.ModelInstance` of realization r (0-based)."""
        return self.models.instance(r)

    def build_model(self, r):
        return self.models.hamiltonian(r)

    def state_for(self, r):
        """Initial state of realization r (the Néel pattern follows the geometry's sublattice)."""
        s = self.cfg["state"]
        inst = self.instance(r)
        key = None if s["kind"] != "neel" or inst.signs is None else inst.signs.tobytes()
        if key not in self._states:
            if s["kind"] == "neel" and inst.signs is None:
                raise config_mod.ConfigError(
                    "state.kind: 'neel' needs a bipartite lattice; this geometry has none "
                    "(give state.kind = 'pattern' with state.pattern)")
            self._states[key] = states.make_state(
                s["kind"], self.n_sites, pattern=s["pattern"], angles=s["angles"],
                flipped=s["flipped"], polarized=s["polarized"],
                signs=inst.signs if s["kind"] == "neel" else None)
        return self._states[key]

    def observable_set(self, r):
        """Observables of realization r (staggered signs and positions from its geometry).

        ``r`` may also be a Hamiltonian (then realization 0's geometry is used with it).
        """
        o = self.cfg["observables"]
        H = None
        if not isinstance(r, (int, np.integer)):
            H, r = r, 0
        inst = self.instance(r)
        stag = [n for n in o["names"] if n.endswith("_staggered")]
        if stag and inst.signs is None:
            raise config_mod.ConfigError(
                f"observables.names: {stag[0]!r} needs a bipartite lattice; this geometry has "
                "none (set model.sublattice = 'alternating' for the pattern (-1)^i)")
        return observables.ObservableSet(self.n_sites, o["names"], o["pairs"], o["custom"],
                                         H or inst.hamiltonian, subsystems=o.get("subsystems"),
                                         kick=o.get("kick"), signs=inst.signs,
                                         positions=inst.positions, qs=o.get("q"))

    @property
    def n_offsets(self):
        meth = self.cfg["method"]
        if meth["clusters"] is not None or meth["clustering"] in ("strongest_pairs", "greedy"):
            return 1
        return len(meth["offsets"])

    def partitions(self, r):
        """The cluster partitions of realization r, one per offset (sec. II A, step 1)."""
        if r not in self._parts:
            if len(self._parts) >= 4:
                self._parts.pop(next(iter(self._parts)))
            self._parts[r] = modelspec.partitions(self.cfg, self.instance(r))
        return self._parts[r]

    @property
    def deterministic(self):
        """A pure-state mean field run: one noise-free trajectory per (realization, offset)."""
        return self.method == "meanfield" and self.state.is_pure

    @property
    def samples(self):
        """Samples per (realization, offset); a pure-state mean field run needs only one."""
        return 1 if self.deterministic else self.cfg["method"]["samples"]

    @property
    def antithetic(self):
        return self.cfg["method"]["antithetic"] and not self.deterministic

    @property
    def n_replicas(self):
        """Moment rows: one per (realization, cluster offset), row = r·n_offsets + offset."""
        return self.cfg["disorder"]["realizations"] * self.n_offsets

    def plan_work(self):
        """All work items in a fixed global order (independent of the number of ranks).

        A lazy :class:`~ctwa_hpc.workplan.WorkPlan` (``len``, ``plan[k]``, iteration): item k
        is computed from k, so planning costs O(1) memory whatever the number of samples.
        """
        from .workplan import WorkPlan
        batch = self.cfg["method"]["batch"]
        if self.antithetic and batch % 2:
            batch += 1
        return WorkPlan(self.cfg["disorder"]["realizations"], self.n_offsets, self.samples,
                        batch)

    def row(self, r, oi):
        """Moment row of (realization r of this job, offset oi)."""
        return r * self.n_offsets + oi

    def stream_key(self, r, oi):
        """Realization key of the sampling streams: (seed, r_global·n_offsets + offset, sample),
        r_global = disorder.first + r, so jobs over disjoint realizations draw disjoint streams."""
        return self.models.global_realization(r) * self.n_offsets + oi

    # -- CTWA ---------------------------------------------------------------------------------
    def _context(self, r, oi, cache):
        key = (r, oi)
        if cache.get("key") != key:
            H = self.build_model(r)
            part = self.partitions(r)[oi]
            prob = clusters.compile_problem(H, part)
            obs = self.observable_set(r)
            t_stage = np.arange(2 * self.n_steps + 1) * (0.5 * self.dt)
            cache.update(key=key, H=H, problem=prob, obs=obs, plan=obs.compile(part),
                         tf_tab=prob.tf_table(t_stage))
        return cache

    def run_block(self, item, cache):
        """Per-sample statistics columns (n_t, K or 3K, S) of one work item."""
        ctx = self._context(item.realization, item.offset_index, cache)
        ids = np.arange(item.start, item.stop) + self.cfg["method"]["first_sample"]
        init = sampling.draw_batch(ctx["problem"], self.state_for(item.realization), self.method,
                                   self.cfg["method"]["seed"],
                                   self.stream_key(item.realization, item.offset_index), ids,
                                   antithetic=self.antithetic,
                                   scheme=self.cfg["method"]["sampling"])
        if ctx["obs"].kick is not None:
            return propagate_two_time(ctx["problem"], ctx["plan"], init, ctx["obs"].kick,
                                      self.dt, self.n_steps, self.out_every, ctx["tf_tab"],
                                      self.backend)
        cols, psi = propagate(ctx["problem"], ctx["plan"], init, self.method, self.dt,
                              self.n_steps, self.out_every, ctx["tf_tab"], self.backend,
                              self.cfg["method"]["precision"], return_state=True)
        if psi is not None:
            # conserved quantities: Gram matrices of every block; H_W on a few samples of the
            # first block of each replica (a NumPy evaluation, kept cheap)
            sub = slice(None) if item.start else slice(0, 8)
            part = sampling.InitialBatch(init.psi[..., sub], init.weights, init.sample_ids[sub])
            self.drift.static = self._static and item.start == 0
            self.drift.update((item.realization, item.offset_index), ctx["problem"],
                              ctx["plan"], part, psi[..., sub])
        return cols

    def new_moments(self):
        obs = self.observable_set(0)
        return obs, stats.Moments.zeros(self.n_replicas, len(self.times), obs.n_stat_columns,
                                        obs.cross)

    MOMENTS_AUTO_BYTES = 256 * 2 ** 20   # output.moments = "auto": store /moments up to this
    GATHER_BYTES = 64 * 2 ** 20          # rows also kept in the in-memory result up to this

    def moments_bytes(self, obs=None):
        """Bytes of the moment sums of all rows (count, s1, s2, shift, sx)."""
        obs = obs or self.observable_set(0)
        K, P = obs.n_stat_columns, len(obs.cross)
        return 8 * self.n_replicas * (1 + len(self.times) * (3 * K + P))

    def keep_moments(self, obs=None):
        """Whether the sums of every row are kept for ``/moments`` (``output.moments``)."""
        mode = self.cfg["output"]["moments"]
        if mode == "auto":
            return self.moments_bytes(obs) <= self.MOMENTS_AUTO_BYTES
        return mode == "always"

    def new_store(self):
        """The ObservableSet and an empty :class:`~ctwa_hpc.rowstore.RowStore` of this run."""
        obs = self.observable_set(0)
        store = rowstore.RowStore(obs.outputs, self.plan_work(), len(self.times),
                                  obs.n_stat_columns, obs.cross, antithetic=self.antithetic,
                                  keep_moments=self.keep_moments(obs),
                                  deterministic=self.deterministic)
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
        ``items`` is the :class:`~ctwa_hpc.workplan.WorkPlan`; the stages are lazy
        :class:`~ctwa_hpc.workplan.Stage` objects (nothing per item is materialized).
        """
        stop = self.cfg.get("stop") or {}
        if not stop.get("stderr_target"):
            return items.stages(None)
        batch = items.largest_block
        width = stop.get("check_samples") or 4 * batch
        return items.stages(-(-width // batch))

    def run(self, checkpoint=None, resume=False, force=False, stop_flag=None):
        """Run this rank's share of the work; returns a RunResult on rank 0 (None elsewhere).

        ``checkpoint``: a :class:`~ctwa_hpc.checkpoint.Checkpoint` (collective start, resume
        with ``resume=True``; stop signals are honoured only with one).  After a stop request
        every rank saves its checkpoint and raises :class:`~ctwa_hpc.checkpoint.Interrupted`.
        At the end every rank saves its checkpoint once more (a failed write of the output
        loses nothing), and this rank's per-realization rows are left in ``self.rows`` (the
        writer stores them).  ``stop_flag``: an installed
        :class:`~ctwa_hpc.checkpoint.StopFlag` (the CLI keeps it installed until the output
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

    def check_stop_config(self):
        stop = self.cfg.get("stop") or {}
        if not stop:
            return
        if stop.get("stderr_target", 0.0) < 0:
            raise config_mod.ConfigError("stop.stderr_target: must be >= 0")
        if stop.get("check_samples", 0) < 0:
            raise config_mod.ConfigError("stop.check_samples: must be >= 0")
        known = self.observable_set(0).outputs
        for k, name in enumerate(stop.get("observables") or []):
            if name not in known:
                raise config_mod.ConfigError(f"stop.observables[{k}]: {name!r} is not an output "
                                             f"of this run (known: {sorted(known)})")

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
        res.extra["columns"] = layout.column_labels(obs)
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
        from . import exact
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
                    for key, J in inst.couplings.items():
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

    def backend_used(self):
        if self.method == "operator":
            return "numpy-density"
        from . import kernels
        return kernels.resolve_backend(self.backend)

    # -- exact reference ------------------------------------------------------------------------
    def run_exact(self, serial=False):
        """Exact dynamics per realization (split over ranks), disorder-averaged on rank 0."""
        from . import exact
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


def propagate(problem, plan, init, method, dt, n_steps, out_every, tf_tab, backend="auto",
              precision="double", return_state=False):
    """Integrate one batch of initial conditions; per-sample columns (n_t, K, S).

    ``precision = "single"`` integrates float32 trajectories (observables accumulate in
    float64); the operator (density-matrix) path is always double.  With ``return_state``
    the final vectors (A, R, S) are returned too, ``(cols, psi)`` (psi is None for the
    density-matrix path).
    """
    if method == "operator":
        from .dynamics import DensityPropagator, rk4
        prop = DensityPropagator(problem, plan)
        rho = DensityPropagator.from_vectors(problem, init.psi, init.weights)
        cols, _ = rk4(prop, rho, 0.0, dt, n_steps, out_every, tf_tab, init.sample_ids)
        return (cols, None) if return_state else cols
    from . import kernels
    extra = {} if precision == "double" else {"precision": precision}
    cols, psi = kernels.integrate(problem, plan, init.psi, init.weights, 0.0, dt, n_steps,
                                  out_every, tf_tab, sample_ids=init.sample_ids,
                                  backend=backend, **extra)
    return (cols, psi) if return_state else cols


def propagate_two_time(problem, plan, init, kick_ops, dt, n_steps, out_every, tf_tab,
                       backend="auto"):
    """Trajectory plus tangent after the kick e^{−iεO}: columns [Q, 2 O_W(0) Q, dQ/dε].

    Returns (n_t, 3K, S): the ordinary columns, the symmetric two-time products (eq. (21))
    and the linear responses i⟨[O(0), Q(t)]⟩ (eqs. (12), (22)).
    """
    from . import kernels
    from .dynamics import kick
    dpsi, ow0 = kick(problem, kick_ops, init.psi, init.weights)
    cols, _, _ = kernels.integrate_tangent(problem, plan, init.psi, dpsi, init.weights, 0.0, dt,
                                           n_steps, out_every, tf_tab,
                                           sample_ids=init.sample_ids, backend=backend)
    K = plan.n_columns
    return np.concatenate([cols[:, :K], 2.0 * ow0 * cols[:, :K], cols[:, K:]], axis=1)


def _cluster_of_site(partition):
    """(N,) cluster index of every site of a partition."""
    out = np.empty(partition.n_sites, dtype=np.int64)
    for c, sites in enumerate(partition.clusters):
        out[list(sites)] = c
    return out

