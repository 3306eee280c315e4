"""One benchmark case prepared for timing (:class:`TimedCase`), shared by the throughput
(:mod:`ctwa_hpc.bench.throughput`) and the thread/hybrid scaling (:mod:`ctwa_hpc.bench.scaling`)
measurements: the inputs are built once, :meth:`TimedCase.once` times one integration (CPU
time of the calling thread and wall clock), :meth:`TimedCase.record` turns the best
repetition into the report record of the case.
"""
from __future__ import annotations

import time

import numpy as np

from ..method import kernels
from .cases import (DT, build_case, flop_count, kick, matrix_product_flops, output_every,
                    timing_sizes)


class TimedCase:
    """One case prepared for timing: ``once(backend, steps, samples)`` runs one integration."""

    def __init__(self, case):
        self.case = case
        self.n_samples, self.steps, self.np_samples, self.np_steps = timing_sizes(case)
        t0 = time.perf_counter()
        self.problem, self.plan, self.psi, self.weights = build_case(case, self.n_samples)
        kernels.compile_tables(self.problem, self.plan)
        self.setup_s = time.perf_counter() - t0
        self.dpsi = kick(self.problem, self.psi, self.weights) if case.tangent else None
        self.best = self.best_wall = np.inf     # CPU seconds of the best repetition, its wall
        self.best_traj = np.inf      # tangent cases: the same case without the tangent
        self.reps = 1

    def once(self, backend, steps, samples=None, tangent=None, precision=None, threads=1):
        """Time one integration (``tangent``: default the case's; False: trajectory only).

        Returns the wall-clock seconds; ``self.last_cpu`` holds the CPU seconds of the calling
        thread (the single-thread kernel runs in it), which exclude the time the thread waited
        for the core on a shared node."""
        tangent = self.case.tangent if tangent is None else tangent
        precision = precision or self.case.precision
        if backend == "numpy":
            precision = "double"
        cut = (lambda x: x) if samples is None else (
            lambda x: np.ascontiguousarray(x[:, :, :samples]))
        psi = cut(self.psi)
        tf = np.zeros((len(self.problem.tfuncs), 2 * steps + 1))
        every = output_every(steps)
        kw = dict(backend=backend, threads=threads, precision=precision)
        c = time.thread_time()
        t = time.perf_counter()
        if tangent:
            self.last = kernels.integrate_tangent(self.problem, self.plan, psi, cut(self.dpsi),
                                                  self.weights, 0.0, DT, steps, every, tf, **kw)
        else:
            self.last = kernels.integrate(self.problem, self.plan, psi, self.weights, 0.0, DT,
                                          steps, every, tf, **kw)
        wall = time.perf_counter() - t
        self.last_cpu = time.thread_time() - c
        return wall

    def record(self, backend, ref, t_np):
        """The report record of the case: best rate (``self.best``), NumPy's rate from its
        CPU seconds ``t_np``, flop counts and the ratios against the BLAS reference ``ref``."""
        problem, case = self.problem, self.case
        rate = self.n_samples * self.steps / self.best
        rate_np = self.np_samples * self.np_steps / t_np
        tables = kernels.compile_tables(problem, self.plan)
        flops = flop_count(tables, self.psi.shape[1], output_every(self.steps),
                           tangent=case.tangent)
        units = problem.dims * problem.n_distinct_masks()
        gflops = flops * rate / 1e9
        dgemm = ref.get("dgemm_gflops")
        extra = {}
        if case.tangent:
            rate_traj = self.n_samples * self.steps / self.best_traj
            extra = dict(tangent=True, trajectory_sample_steps_per_s=rate_traj,
                         cost_vs_trajectory=rate_traj / rate)
        if case.long_range:
            mm = matrix_product_flops(tables, case.tangent)
            blocks = kernels.coupling_blocks(problem)
            extra.update(mm_flops_per_sample_step=mm,
                         mm_ratio_to_dgemm=mm * rate / 1e9 / dgemm if dgemm else None,
                         dense_blocks=int(len(tables["dense"]["n"])),
                         dense_density=float(min((b["density"] for b in blocks), default=0)))
        if case.precision == "single" and ref.get("sgemm_gflops"):
            extra["ratio_to_sgemm"] = gflops / ref["sgemm_gflops"]
        return dict(
            name=case.name, model=case.model, n_sites=case.n_sites,
            cluster_size=case.cluster_size, n_clusters=int(problem.partition.n_clusters),
            precision=case.precision, backend=backend, samples=self.n_samples,
            steps=self.steps, out_every=output_every(self.steps), seconds=self.best,
            wall_seconds=self.best_wall, cpu_share=self.best / self.best_wall,
            repetitions=self.reps,
            setup_seconds=self.setup_s,
            sample_steps_per_s=rate, flops_per_sample_step=flops, gflops=gflops,
            dgemm_gflops=dgemm, ratio_to_dgemm=(gflops / dgemm) if dgemm else None,
            numpy_sample_steps_per_s=rate_np, speedup_vs_numpy=rate / rate_np,
            ns_per_site_step=1e9 / (rate * case.n_sites),
            ns_per_cluster_step=1e9 / (rate * problem.partition.n_clusters),
            mean_D_times_masks=float(units.mean()),
            ns_per_unit=1e9 / (rate * units.sum()),
            **extra,
        )
