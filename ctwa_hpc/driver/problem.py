"""The compiled problem of a run: model, states, partitions, observables, the work plan, and
one work block (sampling eq. (18) or (52)-(54), integration eq. (19)/(61) or eq. (10)).

:class:`RunSetup` is the set-up half of :class:`~ctwa_hpc.driver.runner.Simulation`: it
builds realization 0 in its constructor, so bad model, state, observable or cluster input
fails before any work, and it knows the shapes of the run (offsets, replicas, samples, the
lazy :class:`~ctwa_hpc.driver.workplan.WorkPlan`).  :func:`propagate` and
:func:`propagate_two_time` integrate one batch of initial conditions through the compiled
kernels (or the NumPy density-matrix path of the operator method).
"""
from __future__ import annotations

import numpy as np

from .. import config as config_mod
from ..method import clusters, conservation, kernels, observables, sampling, stats
from ..method.dynamics import DensityPropagator, kick, rk4
from ..model import builder, states
from ..tools import parallel
from .workplan import WorkPlan


class RunSetup:
    """Set-up of one run described by a resolved config dict (see :mod:`ctwa_hpc.config`)."""

    def __init__(self, cfg, comm=None, backend=None, quiet=False):
        self.cfg = cfg
        self.comm = comm if comm is not None else parallel.SerialComm()
        self.backend = backend or cfg["method"]["backend"]
        self.quiet = quiet
        self.dt, self.n_steps, self.out_every, self.times = config_mod.time_grid(cfg)
        m = cfg["model"]
        self.n_sites = m["n_sites"]
        self.method = cfg["method"]["kind"]
        self.models = builder.ModelBuilder(cfg)
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
        """The :class:`~ctwa_hpc.model.builder.ModelInstance` of realization r (0-based)."""
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
            self._parts[r] = clusters.partitions(self.cfg, self.instance(r))
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

        A lazy :class:`~ctwa_hpc.driver.workplan.WorkPlan` (``len``, ``plan[k]``, iteration): item k
        is computed from k, so planning costs O(1) memory whatever the number of samples.
        """
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
                                        obs.cross, stats.grouped_columns(obs.outputs))

    MOMENTS_AUTO_BYTES = 256 * 2 ** 20   # output.moments = "auto": store /moments up to this

    def moments_bytes(self, obs=None):
        """Bytes of the moment sums of all rows (count, s1, s2, shift, sx)."""
        obs = obs or self.observable_set(0)
        K, P = obs.n_stat_columns, len(obs.cross)
        return 8 * self.n_replicas * (1 + len(self.times) * (3 * K + P)) + \
            self.n_replicas * stats.group_bytes(len(self.times), obs.n_grouped)

    def keep_moments(self, obs=None):
        """Whether the sums of every row are kept for ``/moments`` (``output.moments``)."""
        mode = self.cfg["output"]["moments"]
        if mode == "auto":
            return self.moments_bytes(obs) <= self.MOMENTS_AUTO_BYTES
        return mode == "always"

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


    def backend_used(self):
        if self.method == "operator":
            return "numpy-density"
        return kernels.resolve_backend(self.backend)


def propagate(problem, plan, init, method, dt, n_steps, out_every, tf_tab, backend="auto",
              precision="double", return_state=False):
    """Integrate one batch of initial conditions; per-sample columns (n_t, K, S).

    ``precision = "single"`` integrates float32 trajectories (observables accumulate in
    float64); the operator (density-matrix) path is always double.  With ``return_state``
    the final vectors (A, R, S) are returned too, ``(cols, psi)`` (psi is None for the
    density-matrix path).
    """
    if method == "operator":
        prop = DensityPropagator(problem, plan)
        rho = DensityPropagator.from_vectors(problem, init.psi, init.weights)
        cols, _ = rk4(prop, rho, 0.0, dt, n_steps, out_every, tf_tab, init.sample_ids)
        return (cols, None) if return_state else cols
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
    dpsi, ow0 = kick(problem, kick_ops, init.psi, init.weights)
    cols, _, _ = kernels.integrate_tangent(problem, plan, init.psi, dpsi, init.weights, 0.0, dt,
                                           n_steps, out_every, tf_tab,
                                           sample_ids=init.sample_ids, backend=backend)
    K = plan.n_columns
    return np.concatenate([cols[:, :K], 2.0 * ow0 * cols[:, :K], cols[:, K:]], axis=1)
