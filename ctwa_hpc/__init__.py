"""ctwa-hpc: MPI-parallel cluster truncated Wigner approximation (CTWA) for spin-1/2 systems.

``ctwa_hpc.run(config, overrides)`` runs a simulation from a TOML path or a dict and returns a
:class:`~ctwa_hpc.api.Result` (README, "Python API").

Conventions: Pauli matrices σ (not S = σ/2), ħ = 1; inside a cluster the k-th site is bit k
of the basis index and a set bit means spin down (|0> = |↑↑…↑>, eq. (14) of the paper).
Importing the package has no side effects (no MPI initialization, no logging setup).
"""
__version__ = "0.1.0"

from .hamiltonian import Hamiltonian, Term, TimeFunction  # noqa: E402,F401
from .clusters import Partition, compile_problem  # noqa: E402,F401
from .observables import ObservableSet  # noqa: E402,F401
from .states import make_state  # noqa: E402,F401
from .api import Result, run  # noqa: E402,F401
