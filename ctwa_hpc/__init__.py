"""ctwa-hpc: MPI-parallel cluster truncated Wigner approximation (CTWA) for spin-1/2 systems.

``ctwa_hpc.run(config, overrides)`` runs a simulation from a TOML path or a dict and returns a
:class:`~ctwa_hpc.api.Result` (README, "Python API").

Conventions: Pauli matrices σ (not S = σ/2), ħ = 1; inside a cluster the k-th site is bit k
of the basis index and a set bit means spin down (|0> = |↑↑…↑>, eq. (14) of the paper).
Importing the package has no side effects (no MPI initialization, no logging setup).

The rooms, in the order of the method (each imports only those before it): ``tools``,
``model``, ``config``, ``method``, ``exact``, ``output``, ``driver``, ``extras``, ``bench``;
the faces are this module, ``api``, ``cli`` and ``__main__``.
"""
from .tools.version import __version__
from .model import geometry
from .model.hamiltonian import Hamiltonian, Term, TimeFunction
from .model.states import make_state
from .method.clusters import Partition, compile_problem
from .method.observables import ObservableSet
from .api import Result, run

__all__ = ["Hamiltonian", "ObservableSet", "Partition", "Result", "Term", "TimeFunction",
           "__version__", "compile_problem", "geometry", "make_state", "run"]
