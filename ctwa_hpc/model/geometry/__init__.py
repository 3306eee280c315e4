"""Geometry of spin models: lattices, random positions, pair couplings, fields, clusterings.

Pure NumPy; no config parsing beyond plain dicts (:mod:`.spec`); imports nothing else of
ctwa_hpc, so every room may use it (the public face: ``from ctwa_hpc import geometry``).
Conventions:

* :class:`Geometry` holds positions (N, d), box, periodic flags, a 0/1 bipartition
  (``sublattice``, None if not bipartite) and integer cell coordinates (``cells``).
  Distances are minimum-image on periodic axes.
* Coupling dicts: {"xx", "yy", "zz"[, "xy", "xz", "yz"]: (N, N)} symmetric, zero diagonal, entry
  (i, j), i < j, the coefficient of sigma^a_i sigma^b_j; fields {"x", "y", "z": (N,)}.
* Clusterings: list of lists of site indices, a partition of range(N).

Example (a 4x4 periodic XXZ lattice with a random z field and 2x2 plaquettes)::

    import numpy as np
    from ctwa_hpc import geometry as g
    rng = np.random.default_rng(np.random.SeedSequence([seed, realization]))
    geom = g.square(4, 4, boundary="periodic")
    J = g.nearest_neighbour(geom, {"xx": 1.0, "yy": 1.0, "zz": 2.0})
    h = g.make_fields(geom.n_sites, [{"component": "z", "kind": "box", "W": 1.0}], rng)
    clusters = g.plaquettes(geom, (2, 2))
    signs = geom.staggered_signs()          # checkerboard Néel pattern
"""
from .base import Geometry
from .clustering import (blocks, greedy, greedy_lists, plaquettes, strongest_pairs,
                         strongest_pairs_lists)
from .fields import is_random as fields_are_random, make_fields
from .interactions import coupling_strength, dipolar, nearest_neighbour, power_law
from .lattice import chain, cubic, honeycomb, lattice, square, triangular
from .positions import blockade, from_file, partial_fill, random_box
from .pairs import PairCouplings, close_pairs
from .spec import build_couplings, build_geometry, build_model, is_random as positions_are_random
from .spec import is_short_range

__all__ = [
    "Geometry",
    "chain", "square", "triangular", "honeycomb", "cubic", "lattice",
    "random_box", "partial_fill", "blockade", "from_file",
    "nearest_neighbour", "power_law", "dipolar", "coupling_strength",
    "make_fields", "fields_are_random",
    "blocks", "plaquettes", "strongest_pairs", "greedy", "strongest_pairs_lists", "greedy_lists",
    "PairCouplings", "close_pairs",
    "build_geometry", "build_couplings", "build_model", "positions_are_random", "is_short_range",
]
