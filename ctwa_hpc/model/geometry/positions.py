"""Random and file-given site positions.

Every random builder takes a ``numpy.random.Generator``; the caller derives it from
(disorder.seed, realization) through ``np.random.SeedSequence``, so a realization's positions do
not depend on ranks or call order.

* :func:`random_box`: N points i.i.d. uniform in [0, L_0) x ... x [0, L_{d-1}).
* :func:`partial_fill`: keep n = round(f N_lattice) sites of a lattice (halves round up), chosen
  uniformly without replacement, in increasing site order.  The kept sites carry their lattice
  sublattice and cells; :meth:`Geometry.with_alternating_sublattice` gives the (-1)^k Néel
  pattern on the occupied sites used by Braemer, Vahedi & Gärttner, PRB 110, 054204 (2024).
* :func:`blockade`: random sequential placement, uniform candidates rejected while closer than
  r_b to an already placed atom (minimum image on periodic axes), so every pair has r >= r_b.
* :func:`from_file`: positions from .npy, .npz (array "positions", optional "box"), .txt or .csv.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .base import Geometry


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"disorder.seed: expected a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def _check_count(n, where="model.n_sites"):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{where}: expected a positive integer, got {n!r}")
    return int(n)


def _check_box(box):
    arr = np.asarray(box, dtype=float).reshape(-1) if not isinstance(box, str) else None
    if arr is None or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"model.box: expected positive edge lengths (a number for 1D or a list "
                         f"[Lx, Ly, ...]), got {box!r}")
    return arr


def _periodic(periodic, d):
    per = np.asarray(periodic)
    if per.ndim == 0:
        per = np.full(d, bool(per))
    if per.shape != (d,) or per.dtype != bool:
        raise ValueError(f"model.boundary: expected a bool or {d} bools, got {periodic!r}")
    return per


def random_box(N, box, rng, periodic=False):
    """N sites uniform in the box (edge lengths ``box``, one per dimension)."""
    n = _check_count(N)
    lengths = _check_box(box)
    rng = _check_rng(rng)
    per = _periodic(periodic, lengths.size)
    pos = rng.random((n, lengths.size)) * lengths
    return Geometry(positions=pos, box=lengths, periodic=per, kind="box")


def _kept_count(n_lattice, filling, n_keep):
    if n_keep is not None:
        n_keep = _check_count(n_keep)
        if n_keep > n_lattice:
            raise ValueError(f"model.n_sites: {n_keep} occupied sites exceed the {n_lattice} "
                             "lattice sites")
    if filling is None:
        if n_keep is None:
            raise ValueError("model.filling: required for positions = 'filled' (or give "
                             "model.n_sites)")
        return n_keep
    try:
        f = float(filling)
    except (TypeError, ValueError):
        raise ValueError(f"model.filling: expected a number in (0, 1], got {filling!r}") from None
    if not (0 < f <= 1):
        raise ValueError(f"model.filling: must be in (0, 1], got {filling!r}")
    n = int(math.floor(f * n_lattice + 0.5))
    if n < 1:
        raise ValueError(f"model.filling: {f} of {n_lattice} sites keeps no site")
    if n_keep is not None and n_keep != n:
        raise ValueError(f"model.n_sites: {n_keep} contradicts model.filling = {f} of "
                         f"{n_lattice} sites (= {n}); give one of them")
    return n


def partial_fill(geometry, filling, rng, *, n_keep=None):
    """Occupy a fraction ``filling`` of the sites of ``geometry`` at random.

    Keeps n = round(filling * N) sites (halves round up), or exactly ``n_keep`` sites when
    given (then ``filling`` may be None), drawn uniformly without replacement and listed in
    increasing order of the parent's site index.  Box, periodicity, sublattice (the parent's
    checkerboard) and cells carry over; see :meth:`Geometry.with_alternating_sublattice` for the
    (-1)^k convention by position in the kept list.
    """
    if not isinstance(geometry, Geometry):
        raise ValueError("model.lattice: partial_fill needs a Geometry")
    n = _kept_count(geometry.n_sites, filling, n_keep)
    rng = _check_rng(rng)
    kept = np.sort(rng.choice(geometry.n_sites, size=n, replace=False))
    return geometry.subset(kept, kind=f"{geometry.kind}-filled")


_PACKING = {1: 1.0, 2: math.pi / math.sqrt(12.0), 3: math.pi / math.sqrt(18.0)}


def _ball_volume(d, r):
    return math.pi ** (d / 2) / math.gamma(d / 2 + 1) * r ** d


class _Placed:
    """Atoms placed so far, with a cell grid for O(1) blockade checks per candidate.

    Grid cells have edges c_a <= r_b / sqrt(d), so a cell holds at most one atom (two atoms in
    one half-open cell are closer than r_b); a candidate can only conflict with atoms in the
    cells within ceil(r_b / c_a) along each axis (wrapped on periodic axes).  Boxes needing more
    than 2^22 cells fall back to comparing with every placed atom.
    """

    MAX_CELLS = 1 << 22

    def __init__(self, n, lengths, per, rb):
        d = lengths.size
        self.lengths, self.per, self.rb2 = lengths, per, rb * rb
        self.x = np.empty((n, d))
        self.k = 0
        ncell = np.maximum(1, np.ceil(lengths * np.sqrt(d) / rb)).astype(np.int64)
        self.grid = None
        if np.prod(ncell.astype(float)) <= self.MAX_CELLS:
            self.ncell = ncell
            self.cell = lengths / ncell
            reach = np.ceil(rb / self.cell).astype(np.int64)
            mesh = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
            self.offsets = np.stack([m.reshape(-1) for m in mesh], axis=1)
            self.grid = np.full(tuple(ncell), -1, dtype=np.int64)

    def _cell_of(self, pts):
        return np.minimum((pts // self.cell).astype(np.int64), self.ncell - 1)

    def _wrap(self, diff):
        if self.per.any():
            L = self.lengths[self.per]
            diff[..., self.per] -= L * np.round(diff[..., self.per] / L)
        return diff

    def first_free(self, cand):
        """Index of the first candidate at distance >= r_b from every placed atom, or -1."""
        if self.k == 0:
            return 0
        if self.grid is None:
            diff = self._wrap(cand[:, None, :] - self.x[None, :self.k, :])
            d2 = np.einsum("mkd,mkd->mk", diff, diff).min(axis=1)
        else:
            nb = self._cell_of(cand)[:, None, :] + self.offsets[None, :, :]
            nb = np.where(self.per, np.mod(nb, self.ncell), nb)
            inside = np.all((nb >= 0) & (nb < self.ncell), axis=2)
            nb = np.clip(nb, 0, self.ncell - 1)
            idx = self.grid[tuple(nb[..., a] for a in range(nb.shape[2]))]
            idx = np.where(inside, idx, -1)
            diff = self._wrap(cand[:, None, :] - self.x[np.maximum(idx, 0)])
            d2 = np.where(idx >= 0, np.einsum("mkd,mkd->mk", diff, diff), np.inf).min(axis=1)
        ok = np.nonzero(d2 >= self.rb2)[0]
        return int(ok[0]) if ok.size else -1

    def add(self, pt):
        self.x[self.k] = pt
        if self.grid is not None:
            self.grid[tuple(self._cell_of(pt[None, :])[0])] = self.k
        self.k += 1


def blockade(N, box, r_b, rng, periodic=False, max_attempts=20000):
    """N sites placed one by one uniformly in the box, no pair closer than ``r_b``.

    Random sequential adsorption: each site draws uniform candidates (in batches of growing size
    8, 16, ..., 1024) and takes the first one at distance >= r_b (minimum image on periodic
    axes) from every site placed before; after ``max_attempts`` rejected candidates for one
    site it gives up.  Raises ValueError naming ``model.blockade_radius`` then, or at once when
    the density exceeds close packing of r_b/2 balls.
    """
    n = _check_count(N)
    lengths = _check_box(box)
    d = lengths.size
    per = _periodic(periodic, d)
    try:
        rb = float(r_b)
    except (TypeError, ValueError):
        raise ValueError(f"model.blockade_radius: expected a number, got {r_b!r}") from None
    if not np.isfinite(rb) or rb <= 0:
        raise ValueError(f"model.blockade_radius: must be finite and > 0, got {r_b!r}")
    rng = _check_rng(rng)
    msg = (f"model.blockade_radius: could not place N = {n} atoms with r_b = {rb:g} in the box "
           f"{lengths.tolist()}")
    if d in _PACKING:
        # balls of radius r_b/2 around the atoms are disjoint and lie in the box grown by r_b/2
        # on each open side
        grown = np.prod(lengths + rb * (~per))
        if n * _ball_volume(d, rb / 2) > _PACKING[d] * grown:
            raise ValueError(msg + " (denser than close packing); lower N or r_b or enlarge the box")
    placed = _Placed(n, lengths, per, rb)
    for k in range(n):
        tries, m = 0, 8
        while True:
            if tries >= max_attempts:
                raise ValueError(msg + f" (placed {k}, then {max_attempts} rejected candidates); "
                                 "lower the density")
            m_now = min(m, max_attempts - tries)
            cand = rng.random((m_now, d)) * lengths
            tries += m_now
            hit = placed.first_free(cand)
            if hit >= 0:
                placed.add(cand[hit])
                break
            m = min(2 * m, 1024)
    return Geometry(positions=placed.x, box=lengths, periodic=per, kind="blockade")


def _load(path):
    ext = os.path.splitext(str(path))[1].lower()
    box = None
    if ext == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif ext == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "positions" not in data.files:
                raise ValueError(f"model.positions_file: {path} has no array 'positions' "
                                 f"(found {sorted(data.files)})")
            arr = data["positions"]
            if "box" in data.files:
                box = data["box"]
    elif ext in (".txt", ".dat", ".csv"):
        arr = np.loadtxt(path, delimiter="," if ext == ".csv" else None, comments="#", ndmin=2)
    else:
        raise ValueError(f"model.positions_file: unsupported extension {ext!r} of {path} "
                         "(expected .npy, .npz, .txt or .csv)")
    return arr, box


def from_file(path, box=None, periodic=False):
    """Positions (N, d) from a file; a 1D array is read as a chain (N, 1).

    ``box`` (or an array "box" inside an .npz) gives the box, needed for periodic axes.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"model.positions_file: expected a path, got {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"model.positions_file: no such file {path}")
    try:
        arr, file_box = _load(path)
    except ValueError as exc:
        if str(exc).startswith("model.positions_file"):
            raise
        raise ValueError(f"model.positions_file: cannot read {path}: {exc}") from None
    arr = np.asarray(arr)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] < 1 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"model.positions_file: expected a numeric array of shape (N, d), "
                         f"got {arr.shape} ({arr.dtype})")
    if np.iscomplexobj(arr) or not np.all(np.isfinite(arr)):
        raise ValueError(f"model.positions_file: positions in {path} must be finite real numbers")
    if box is None:
        box = file_box
    lengths = None if box is None else _check_box(box)
    per = _periodic(periodic, arr.shape[1])
    return Geometry(positions=arr.astype(float), box=lengths, periodic=per, kind="file")
