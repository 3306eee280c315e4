r"""Conserved quantities of the CTWA trajectories, checked on every work block.

Every CTWA trajectory evolves each cluster's vectors ψ_{c,r} (r = 1 … R: the SB vector, or the
pair p, q of the reduced operator form, sec. V D) with the same time-dependent effective
cluster Hamiltonian, i.e. by a unitary: the per-cluster Gram matrices

.. math::  G_{c,rs}(t) = ψ_{c,r}^†(t)\, ψ_{c,s}(t)

are constants of motion.  Their diagonal is the SB norm (b†b = √(1+D) on average, eq. (18));
for the reduced form they fix the eigenvalues λ± of ρ_c = |p⟩⟨p| − |q⟩⟨q| (eq. (57)).  For a
time-independent Hamiltonian the classical energy H_W(ψ) of every sample is conserved as well
(the equations of motion are Hamiltonian in ψ, eq. (19)).  RK4 conserves all of them to
O(dt⁴) per unit time; a large drift means the time step is unstable or too coarse.

:class:`DriftMonitor` keeps the largest absolute drift seen by this rank, reduces it over the
ranks at the end of a run, stores it in the output (``conservation_drift_*`` attributes) and
warns when it exceeds the tolerances below.
"""
from __future__ import annotations

import logging

import numpy as np
from .dynamics import NumpyPropagator

log = logging.getLogger("ctwa_hpc")

#: warn above these drifts (absolute, per sample and cluster; RK4 at a sensible dt gives
#: ~1e-8, an unstable one O(1)); well below the Monte Carlo error of typical runs
NORM_TOLERANCE = 1e-3
#: energy drift tolerance relative to max(1, |H_W(0)|) per sample
ENERGY_TOLERANCE = 1e-3


def gram(problem, psi):
    """Per-cluster Gram matrices ψ_r†ψ_s: complex array (C, R, R, S)."""
    offs = problem.offsets
    return np.stack([np.einsum("ars,aqs->rqs", psi[offs[c]:offs[c + 1]].conj(),
                               psi[offs[c]:offs[c + 1]]) for c in range(len(offs) - 1)])


class DriftMonitor:
    """Largest drift of the Gram matrices and of H_W over the blocks this rank ran."""

    def __init__(self, static):
        self.static = bool(static)
        self.norm = 0.0
        self.energy = 0.0
        self.energy_scale = 1.0
        self._prop = None
        self._key = None

    def _propagator(self, key, problem, plan, weights):
        if self._key != key:
            self._prop, self._key = NumpyPropagator(problem, plan, weights), key
        return self._prop

    def update(self, key, problem, plan, init, psi_end):
        """Compare a block's initial and final vectors (psi: (A, R, S))."""
        if psi_end is None:
            return
        d = np.abs(gram(problem, psi_end) - gram(problem, init.psi))
        self.norm = max(self.norm, float(d.max(initial=0.0)))
        if self.static:
            prop = self._propagator(key, problem, plan, init.weights)
            e0, e1 = prop.energy(init.psi), prop.energy(psi_end)
            scale = np.maximum(1.0, np.abs(e0))
            rel = np.abs(e1 - e0) / scale
            k = int(np.argmax(rel)) if rel.size else 0
            if rel.size and rel[k] > self.energy:
                self.energy = float(rel[k])
                self.energy_scale = float(scale[k])

    def reduce(self, comm):
        """Maxima over the ranks on rank 0 (collective; other ranks get None): the dict that
        is stored in the output."""
        rows = comm.gather((self.norm, self.energy), root=0)
        if comm.rank != 0:
            return None
        out = {"conservation_drift_gram": float(max(r[0] for r in rows))}
        if self.static:
            out["conservation_drift_energy_rel"] = float(max(r[1] for r in rows))
        return out

    @staticmethod
    def report(drift, dt):
        """Warn (rank 0) when a drift exceeds its tolerance; returns the warning texts."""
        msgs = []
        g = drift.get("conservation_drift_gram", 0.0)
        if g > NORM_TOLERANCE:
            msgs.append(f"the cluster norms/overlaps (SB norm, λ± of the reduced form) drifted "
                        f"by {g:.3g} > {NORM_TOLERANCE:g}: time.dt = {dt:g} is too large "
                        "(halve it, or run ctwa-hpc check-dt)")
        e = drift.get("conservation_drift_energy_rel", 0.0)
        if e > ENERGY_TOLERANCE:
            msgs.append(f"the classical energy H_W drifted by {e:.3g} (relative) > "
                        f"{ENERGY_TOLERANCE:g}: time.dt = {dt:g} is too large (halve it)")
        for m in msgs:
            log.warning("conservation: %s", m)
        return msgs

