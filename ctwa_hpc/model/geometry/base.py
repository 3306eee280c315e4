"""The :class:`Geometry` of a spin model: site positions, simulation box and bipartition.

Conventions
-----------
* ``positions`` has shape (N, d): site i sits at r_i (d = 1, 2 or 3 for the builders here; the
  class itself accepts any d >= 1).
* ``box`` (d,) holds the edge lengths of the simulation box [0, L_0) x ... x [0, L_{d-1});
  ``periodic`` (d,) says which axes wrap.  A periodic axis needs a box.  On a periodic axis the
  displacement uses the minimum image,

  .. math::  (r_j - r_i)_a \\to (r_j - r_i)_a - L_a \\operatorname{round}((r_j - r_i)_a / L_a),

  so every component lies in [-L_a/2, L_a/2].  Open axes never wrap, whatever ``box`` says
  (lattices store their extent there for reference).
* ``sublattice`` (N,) with values 0/1 is a bipartition (a proper 2-colouring of the
  nearest-neighbour bonds of a lattice: checkerboard on chain, square and cubic lattices, A/B on
  honeycomb), or None when there is none (triangular lattices, periodic axes of odd length,
  random positions).  The staggered sign of site i is s_i = +1 on sublattice 0 and -1 on
  sublattice 1 (:meth:`Geometry.staggered_signs`), so the Néel state is "up on sublattice 0".
* ``cells`` (N, d) are integer cell coordinates on a lattice (several basis sites may share a
  cell, e.g. the A and B sites of a honeycomb cell), or None off-lattice.  ``lattice_shape``
  (d,) is the number of cells per axis of the parent lattice (kept by :func:`partial_fill`),
  which the plaquette clustering needs to wrap periodic axes.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


def _as_int_array(value, shape, where):
    arr = np.asarray(value)
    if arr.shape != shape:
        raise ValueError(f"{where}: expected shape {shape}, got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{where}: expected integers")
    return arr.astype(np.int64)


@dataclass(eq=False)
class Geometry:
    """Sites of a spin model (see the module docstring for the conventions)."""

    positions: np.ndarray
    box: np.ndarray | None = None
    periodic: np.ndarray | None = None
    sublattice: np.ndarray | None = None
    cells: np.ndarray | None = None
    kind: str = "custom"
    lattice_shape: tuple | None = field(default=None)

    def __post_init__(self):
        pos = np.asarray(self.positions, dtype=float)
        if pos.ndim == 1:
            pos = pos[:, None]
        if pos.ndim != 2 or pos.shape[1] < 1:
            raise ValueError(f"model.positions: expected an array of shape (N, d), got {pos.shape}")
        if not np.all(np.isfinite(pos)):
            raise ValueError("model.positions: positions must be finite numbers")
        n, d = pos.shape
        self.positions = pos
        if self.box is not None:
            box = np.asarray(self.box, dtype=float).reshape(-1)
            if box.size == 1 and d > 1:
                box = np.full(d, float(box[0]))
            if box.shape != (d,):
                raise ValueError(f"model.box: expected {d} edge lengths, got {box.size}")
            if not np.all(np.isfinite(box)) or np.any(box <= 0):
                raise ValueError(f"model.box: edge lengths must be finite and > 0, got {box.tolist()}")
            self.box = box
        per = np.zeros(d, bool) if self.periodic is None else np.asarray(self.periodic)
        if per.ndim == 0:
            per = np.full(d, bool(per))
        if per.shape != (d,) or per.dtype != bool:
            raise ValueError(f"model.boundary: expected {d} periodic flags (bool), got {per!r}")
        if per.any() and self.box is None:
            raise ValueError("model.boundary: periodic axes need a box (model.box)")
        self.periodic = per
        if self.sublattice is not None:
            sub = _as_int_array(self.sublattice, (n,), "model.sublattice")
            if np.any((sub != 0) & (sub != 1)):
                raise ValueError("model.sublattice: values must be 0 or 1")
            self.sublattice = sub
        if self.cells is not None:
            self.cells = _as_int_array(self.cells, (n, d), "model.cells")
        if self.lattice_shape is not None:
            shape = tuple(int(s) for s in np.asarray(self.lattice_shape).reshape(-1))
            if len(shape) != d or min(shape) < 1:
                raise ValueError(f"model.size: expected {d} positive cell counts, got {shape}")
            self.lattice_shape = shape
        if not isinstance(self.kind, str):
            raise ValueError(f"model.lattice: kind must be a string, got {self.kind!r}")

    # ----------------------------------------------------------------------------- basics
    @property
    def n_sites(self) -> int:
        return int(self.positions.shape[0])

    @property
    def dim(self) -> int:
        return int(self.positions.shape[1])

    @property
    def bipartite(self) -> bool:
        return self.sublattice is not None

    def __repr__(self):
        box = None if self.box is None else self.box.tolist()
        return (f"Geometry(kind={self.kind!r}, n_sites={self.n_sites}, dim={self.dim}, box={box}, "
                f"periodic={self.periodic.tolist()}, bipartite={self.bipartite})")

    # ------------------------------------------------------------------- pair geometry
    def axis_displacement(self, a):
        """(N, N) array of the minimum-image component a of r_j - r_i (entry [i, j])."""
        x = self.positions[:, a]
        dx = x[None, :] - x[:, None]
        if self.periodic[a]:
            length = self.box[a]
            dx -= length * np.round(dx / length)
        return dx

    def displacements(self):
        """(N, N, d) minimum-image vectors r_j - r_i (entry [i, j, :])."""
        return np.stack([self.axis_displacement(a) for a in range(self.dim)], axis=-1)

    def squared_distances(self):
        """(N, N) squared minimum-image distances, built axis by axis (memory O(N^2))."""
        r2 = np.zeros((self.n_sites, self.n_sites))
        for a in range(self.dim):
            dx = self.axis_displacement(a)
            r2 += dx * dx
        return r2

    def distances(self):
        """(N, N) minimum-image distances |r_j - r_i|."""
        return np.sqrt(self.squared_distances())

    # --------------------------------------------------------------- derived geometries
    def subset(self, sites, kind=None):
        """The geometry of the listed sites (in the given order), carrying every per-site field."""
        idx = np.asarray(sites, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_sites):
            raise ValueError(f"model.positions: site indices outside 0..{self.n_sites - 1}")
        return Geometry(
            positions=self.positions[idx],
            box=self.box, periodic=self.periodic,
            sublattice=None if self.sublattice is None else self.sublattice[idx],
            cells=None if self.cells is None else self.cells[idx],
            kind=self.kind if kind is None else kind,
            lattice_shape=self.lattice_shape)

    def with_alternating_sublattice(self):
        """A copy whose bipartition alternates with the site index: sublattice_k = k mod 2.

        This is the Néel pattern of Braemer, Vahedi & Gärttner, PRB 110, 054204 (2024) on a
        partially filled chain: the k-th *occupied* site (in increasing position) carries
        (-1)^k, whatever its lattice parity.  :func:`partial_fill` itself keeps the parent
        lattice's checkerboard; call this method for the PRB convention.
        """
        return replace(self, sublattice=np.arange(self.n_sites) % 2)

    def staggered_signs(self, where="state.kind"):
        """(N,) int array s_i = +1 on sublattice 0, -1 on sublattice 1.

        Raises ValueError (message starting with ``where``) on a non-bipartite geometry.
        """
        if self.sublattice is None:
            raise ValueError(f"{where}: the {self.kind} geometry has no bipartition (not "
                             "bipartite), so the Néel state / staggered sign is undefined; "
                             "give an explicit pattern")
        return 1 - 2 * self.sublattice
