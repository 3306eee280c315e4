"""Exact references of the same model, state and observables: state-vector dynamics
(:mod:`.statevector`, N <= 20), the Ising closed form at any N (:mod:`.ising`), free fermions.

Imports :mod:`ctwa_hpc.tools`, :mod:`ctwa_hpc.model` and :mod:`ctwa_hpc.method`.
"""
