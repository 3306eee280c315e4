"""Geometry and couplings from plain dicts (the keys of the TOML ``[model]`` table).

Geometry keys (:func:`build_geometry`)::

    positions        "lattice" (default) | "filled" | "box" | "blockade" | "file"
    lattice, size    lattice name and size (int or one length per axis)      lattice, filled
    boundary         "open" (default) | "periodic" | one per axis           all
    spacing          nearest-neighbour distance, default 1                   lattice, filled
    filling          occupied fraction in (0, 1]                             filled
    n_sites          number of sites (occupied sites for "filled")           box, blockade, filled
    box              box edge lengths [Lx, Ly, ...] (a number means 1D)      box, blockade, file
    blockade_radius  minimum pair distance r_b                               blockade
    positions_file   .npy/.npz/.txt/.csv path                                file
    sublattice       "lattice" (default: the lattice checkerboard, carried
                     over by "filled") | "alternating" ((-1)^k in site
                     order, the PRB 110, 054204 Néel state on a filled chain)

Coupling keys (:func:`build_couplings`)::

    interaction      "nearest" | "power_law" | "dipolar"
    anisotropy       {xx = cx, yy = cy, zz = cz[, xy = .., xz = .., yz = ..]} (required)
    J                overall scale, default 1
    alpha            exponent of J / r^alpha                                 power_law
    cutoff           couplings vanish beyond this distance                   power_law, dipolar
    axis             dipolar quantization axis, default [0, 0, 1]            dipolar

Keys not listed are ignored (the same dict may carry the rest of ``[model]``); a key given for a
choice that does not use it (e.g. ``filling`` with positions = "box") is an error.  A value None
counts as absent.  Error messages start with ``model.<key>``.
"""
from __future__ import annotations

import numpy as np

from . import fields as _fields
from .base import Geometry
from .interactions import dipolar, nearest_neighbour, power_law
from .lattice import KINDS, lattice
from .positions import _kept_count, blockade, from_file, partial_fill, random_box

POSITIONS = ("lattice", "filled", "box", "blockade", "file")
INTERACTIONS = ("nearest", "power_law", "dipolar")
_USED_BY = {"filling": ("filled",), "blockade_radius": ("blockade",),
            "positions_file": ("file",)}
_COUPLING_USED_BY = {"alpha": ("power_law",), "cutoff": ("power_law", "dipolar"),
                     "axis": ("dipolar",)}


def _get(spec, key, default=None):
    val = spec.get(key)
    return default if val is None else val


def _need(spec, key, what):
    val = spec.get(key)
    if val is None:
        raise ValueError(f"model.{key}: required for {what}")
    return val


def _check_spec(spec):
    if not isinstance(spec, dict):
        raise ValueError(f"model: expected a table (dict), got {type(spec).__name__}")


def _positions_kind(spec):
    kind = _get(spec, "positions", "lattice")
    if kind not in POSITIONS:
        raise ValueError(f"model.positions: expected one of {list(POSITIONS)}, got {kind!r}")
    for key, users in _USED_BY.items():
        if spec.get(key) is not None and kind not in users:
            raise ValueError(f"model.{key}: only used with positions = {users[0]!r} "
                             f"(positions = {kind!r})")
    return kind


def _boundary_flags(spec, d):
    b = _get(spec, "boundary", "open")
    if isinstance(b, str):
        b = [b] * d
    if not isinstance(b, (list, tuple)) or len(b) != d or any(x not in ("open", "periodic")
                                                            for x in b):
        raise ValueError(f"model.boundary: expected 'open', 'periodic' or {d} such entries, "
                         f"got {spec.get('boundary')!r}")
    return np.array([x == "periodic" for x in b])


def _box_dim(spec):
    box = _need(spec, "box", f"positions = {spec.get('positions')!r}")
    return box, (1 if np.ndim(box) == 0 else len(box))


def _parent_lattice(spec, what):
    kind = _need(spec, "lattice", what)
    return lattice(kind, _need(spec, "size", what), boundary=_get(spec, "boundary", "open"),
                   spacing=_get(spec, "spacing", 1.0))


def build_geometry(spec, rng=None):
    """A :class:`~ctwa_hpc.model.geometry.base.Geometry` from the dict ``spec``.

    ``rng`` (numpy.random.Generator, keyed by (disorder.seed, realization)) is needed when
    :func:`is_random` (spec) is True.
    """
    _check_spec(spec)
    kind = _positions_kind(spec)
    what = f"positions = {kind!r}"
    if kind in ("box", "blockade") and spec.get("n_sites") is None:
        raise ValueError(f"model.n_sites: required for {what}")
    if kind == "lattice":
        geom = _parent_lattice(spec, what)
    elif kind == "filled":
        parent = _parent_lattice(spec, what)
        geom = partial_fill(parent, spec.get("filling"), rng, n_keep=spec.get("n_sites"))
    elif kind == "box":
        box, d = _box_dim(spec)
        geom = random_box(spec["n_sites"], box, rng, periodic=_boundary_flags(spec, d))
    elif kind == "blockade":
        box, d = _box_dim(spec)
        geom = blockade(spec["n_sites"], box, _need(spec, "blockade_radius", what), rng,
                        periodic=_boundary_flags(spec, d))
    else:
        path = _need(spec, "positions_file", what)
        box = spec.get("box")
        geom = from_file(path, box=box)
        per = _boundary_flags(spec, geom.dim)
        if per.any():
            geom = Geometry(positions=geom.positions, box=geom.box, periodic=per, kind="file")
    n = spec.get("n_sites")
    if n is not None and kind in ("lattice", "file") and n != geom.n_sites:
        raise ValueError(f"model.n_sites: {n!r} but the {what} geometry has {geom.n_sites} sites")
    sub = _get(spec, "sublattice", "lattice")
    if sub == "alternating":
        geom = geom.with_alternating_sublattice()
    elif sub != "lattice":
        raise ValueError(f"model.sublattice: expected 'lattice' or 'alternating', got {sub!r}")
    return geom


def is_short_range(spec):
    """True if the couplings of ``spec`` are short-range (interaction = "nearest", or a
    cutoff): :func:`build_couplings` can then build them sparse."""
    _check_spec(spec)
    return spec.get("interaction") == "nearest" or spec.get("cutoff") is not None


def build_couplings(geom, spec, sparse=False, where="model.positions", max_pairs=None):
    """The coupling dict {"xx": (N, N), ...} of ``geom`` described by ``spec``.

    ``sparse``: short-range couplings (:func:`is_short_range`) come as a
    :class:`~ctwa_hpc.model.geometry.pairs.PairCouplings` (coupling lists, no (N, N) array;
    ``max_pairs`` bounds the candidate pairs); long-range ones stay dense.  ``where`` names
    the config field that placed the sites (in messages about coincident sites)."""
    _check_spec(spec)
    kind = spec.get("interaction")
    if kind not in INTERACTIONS:
        raise ValueError(f"model.interaction: expected one of {list(INTERACTIONS)}, got {kind!r}")
    for key, users in _COUPLING_USED_BY.items():
        if spec.get(key) is not None and kind not in users:
            raise ValueError(f"model.{key}: not used with interaction = {kind!r}")
    what = f"interaction = {kind!r}"
    aniso = _need(spec, "anisotropy", what + " (e.g. {xx = 1, yy = 1, zz = 2})")
    J = _get(spec, "J", 1.0)
    sp = dict(sparse=bool(sparse) and is_short_range(spec), where=where)
    if kind == "nearest":
        return nearest_neighbour(geom, aniso, J=J, **sp)
    sp["max_pairs"] = max_pairs
    if kind == "power_law":
        return power_law(geom, _need(spec, "alpha", what), aniso, J=J, cutoff=spec.get("cutoff"),
                         **sp)
    return dipolar(geom, aniso, J=J, axis=_get(spec, "axis", (0.0, 0.0, 1.0)),
                   cutoff=spec.get("cutoff"), **sp)


def build_model(spec, rng=None):
    """(geometry, couplings, fields) from one dict; fields come from ``spec["fields"]``.

    The geometry draws from ``rng`` first, then the fields, in that fixed order.
    """
    geom = build_geometry(spec, rng)
    J = build_couplings(geom, spec)
    h = _fields.make_fields(geom.n_sites, spec.get("fields"), rng)
    return geom, J, h


def is_random(spec):
    """True if ``build_geometry(spec, rng)`` draws positions at random.

    "box" and "blockade" always do; "filled" does unless every lattice site is kept.
    """
    _check_spec(spec)
    kind = _positions_kind(spec)
    if kind in ("box", "blockade"):
        return True
    if kind != "filled":
        return False
    kind_l = _need(spec, "lattice", "positions = 'filled'")
    if kind_l not in KINDS:
        raise ValueError(f"model.lattice: unknown lattice {kind_l!r}; expected one of "
                         f"{sorted(KINDS)}")
    n_lattice = _parent_lattice(spec, "positions = 'filled'").n_sites
    return _kept_count(n_lattice, spec.get("filling"), spec.get("n_sites")) < n_lattice
