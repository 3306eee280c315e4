"""The model (eq. (1)): Pauli strings, time functions, the Hamiltonian, couplings and couplings
files, named models, geometry (lattices, positions, interactions, fields), initial states,
and the builder that makes each disorder realization's model from the ``[model]`` section.

Imports only :mod:`ctwa_hpc.tools`; knows nothing of clusters, sampling or output.
"""
