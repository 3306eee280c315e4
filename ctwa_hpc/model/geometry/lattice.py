"""Regular lattices: chain, square, triangular, honeycomb, cubic; open or periodic.

Site order: row-major over cells with x fastest, basis index innermost,

.. math::  i = b + n_b\\,(x + L_x (y + L_y z)),

and ``cells[i] = (x, y, z)``.  ``spacing`` a is the nearest-neighbour distance on every lattice.

* chain:      r = a x                                           (d = 1)
* square:     r = a (x, y)
* triangular: r = a (x + (y mod 2)/2, (sqrt 3 / 2) y)           offset rows, 6 neighbours
* honeycomb:  cell origin o = a (sqrt 3 (x + (y mod 2)/2), (3/2) y); A at o, B at o + (0, a)
              (bond length a, 3 neighbours; A/B are the basis sites b = 0, 1)
* cubic:      r = a (x, y, z)

The triangular and honeycomb lattices are stored with offset rows so that their periodic cell is
a rectangle, box = (a L_x, a (sqrt 3/2) L_y) and (a sqrt 3 L_x, a (3/2) L_y): periodic boundary
conditions along y therefore need an even L_y.  On a periodic axis the box edge is L_a times the
cell period and distances use the minimum image (:class:`~ctwa_hpc.model.geometry.base.Geometry`);
open lattices store the same box but never wrap.

Bipartition: chain, square and cubic get the checkerboard (sum of cell coordinates mod 2),
honeycomb gets A/B.  A periodic axis of odd length L >= 3 closes an odd loop, so chain, square and
cubic lattices with one have ``sublattice = None`` (honeycomb stays bipartite: its bonds always
join A to B).  Triangular lattices are never bipartite.
"""
from __future__ import annotations

import numpy as np

from .base import Geometry

KINDS = {"chain": 1, "square": 2, "triangular": 2, "honeycomb": 2, "cubic": 3}
_SQ3 = np.sqrt(3.0)


def _check_size(sizes):
    out = []
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"model.size: lattice lengths must be positive integers, got {s!r}")
        out.append(int(s))
    return tuple(out)


def _check_spacing(spacing):
    try:
        a = float(spacing)
    except (TypeError, ValueError):
        raise ValueError(f"model.spacing: expected a number, got {spacing!r}") from None
    if not np.isfinite(a) or a <= 0:
        raise ValueError(f"model.spacing: must be finite and > 0, got {spacing!r}")
    return a


def _periodic_flags(boundary, d):
    """'open' / 'periodic' (all axes) or one such string (or bool) per axis -> (d,) bool."""
    if isinstance(boundary, str) or isinstance(boundary, (bool, np.bool_)):
        boundary = [boundary] * d
    if not isinstance(boundary, (list, tuple, np.ndarray)) or len(boundary) != d:
        raise ValueError(f"model.boundary: expected 'open', 'periodic' or {d} such entries, "
                         f"got {boundary!r}")
    flags = []
    for b in boundary:
        if isinstance(b, (bool, np.bool_)):
            flags.append(bool(b))
        elif b in ("open", "periodic"):
            flags.append(b == "periodic")
        else:
            raise ValueError(f"model.boundary: expected 'open' or 'periodic', got {b!r}")
    return np.array(flags, dtype=bool)


def _cell_grid(sizes):
    """(n_cells, d) integer cell coordinates, x fastest."""
    grids = np.meshgrid(*[np.arange(s) for s in sizes[::-1]], indexing="ij")
    return np.stack([g.reshape(-1) for g in grids[::-1]], axis=1).astype(np.int64)


def _checkerboard(cells, sizes, periodic):
    """Sum of cell coordinates mod 2, or None if a periodic axis has odd length >= 3."""
    if any(p and s % 2 == 1 and s >= 3 for s, p in zip(sizes, periodic)):
        return None
    return (cells.sum(axis=1) % 2).astype(np.int64)


def _hypercubic(sizes, kind, boundary, spacing):
    """Simple hypercubic lattice of ``sizes`` cells, r = a · cell, checkerboard bipartition."""
    sizes = _check_size(list(sizes))
    a = _check_spacing(spacing)
    per = _periodic_flags(boundary, len(sizes))
    cells = _cell_grid(sizes)
    return Geometry(positions=a * cells.astype(float), box=a * np.array(sizes, float),
                    periodic=per, sublattice=_checkerboard(cells, sizes, per), cells=cells,
                    kind=kind, lattice_shape=sizes)


def chain(L, boundary="open", spacing=1.0):
    """Chain of L sites at x = a i."""
    return _hypercubic([L], "chain", boundary, spacing)


def square(Lx, Ly, boundary="open", spacing=1.0):
    """Lx x Ly square lattice, r = a (x, y)."""
    return _hypercubic([Lx, Ly], "square", boundary, spacing)


def cubic(Lx, Ly, Lz, boundary="open", spacing=1.0):
    """Lx x Ly x Lz simple cubic lattice, r = a (x, y, z)."""
    return _hypercubic([Lx, Ly, Lz], "cubic", boundary, spacing)


def _even_rows(kind, Ly, per):
    if per[1] and Ly % 2 == 1:
        raise ValueError(f"model.size: a {kind} lattice periodic along y needs an even Ly "
                         f"(offset rows), got Ly = {Ly}")


def triangular(Lx, Ly, boundary="open", spacing=1.0):
    """Lx x Ly triangular lattice in offset rows: r = a (x + (y mod 2)/2, (sqrt 3/2) y)."""
    sizes = _check_size([Lx, Ly])
    a = _check_spacing(spacing)
    per = _periodic_flags(boundary, 2)
    _even_rows("triangular", sizes[1], per)
    cells = _cell_grid(sizes)
    x, y = cells[:, 0].astype(float), cells[:, 1].astype(float)
    pos = a * np.stack([x + 0.5 * (cells[:, 1] % 2), 0.5 * _SQ3 * y], axis=1)
    box = a * np.array([sizes[0], 0.5 * _SQ3 * sizes[1]])
    return Geometry(positions=pos, box=box, periodic=per, sublattice=None, cells=cells,
                    kind="triangular", lattice_shape=sizes)


def honeycomb(Lx, Ly, boundary="open", spacing=1.0):
    """Lx x Ly cells of a honeycomb lattice (2 sites per cell, bond length a).

    Cell (x, y) has origin a (sqrt 3 (x + (y mod 2)/2), (3/2) y); the A site (basis 0) sits at
    the origin, the B site (basis 1) at origin + (0, a).  ``sublattice`` is the basis index.
    """
    sizes = _check_size([Lx, Ly])
    a = _check_spacing(spacing)
    per = _periodic_flags(boundary, 2)
    _even_rows("honeycomb", sizes[1], per)
    cell_grid = _cell_grid(sizes)
    cells = np.repeat(cell_grid, 2, axis=0)
    basis = np.tile(np.array([0, 1], dtype=np.int64), len(cell_grid))
    x, y = cells[:, 0].astype(float), cells[:, 1].astype(float)
    pos = a * np.stack([_SQ3 * (x + 0.5 * (cells[:, 1] % 2)), 1.5 * y + basis], axis=1)
    box = a * np.array([_SQ3 * sizes[0], 1.5 * sizes[1]])
    return Geometry(positions=pos, box=box, periodic=per, sublattice=basis, cells=cells,
                    kind="honeycomb", lattice_shape=sizes)


_BUILDERS = {"chain": chain, "square": square, "triangular": triangular,
             "honeycomb": honeycomb, "cubic": cubic}


def _sizes(kind, size):
    if kind not in _BUILDERS:
        raise ValueError(f"model.lattice: unknown lattice {kind!r}; expected one of "
                         f"{sorted(_BUILDERS)}")
    d = KINDS[kind]
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return [size] * d
    if isinstance(size, (list, tuple, np.ndarray)) and len(size) == d:
        return list(size)
    raise ValueError(f"model.size: a {kind} lattice needs an integer or {d} lengths, "
                     f"got {size!r}")


def lattice_sites(kind, size):
    """Number of sites of ``lattice(kind, size)``, without building it (Python integer)."""
    n = 2 if kind == "honeycomb" else 1
    for s in _check_size(_sizes(kind, size)):
        n *= s
    return n


def lattice(kind, size, boundary="open", spacing=1.0):
    """Build a lattice by name.

    kind: "chain", "square", "triangular", "honeycomb" or "cubic".
    size: an integer (the same length along every axis) or one length per axis (cells; the
    honeycomb has 2 sites per cell).  boundary: "open", "periodic" or one of those per axis.
    """
    sizes = _sizes(kind, size)
    return _BUILDERS[kind](*sizes, boundary=boundary, spacing=spacing)
