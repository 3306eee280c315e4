r"""The ``[model]`` section → one model instance per disorder realization.

Every model kind goes through :class:`ModelBuilder`:

==============  ============================================================================
chain kinds     ``tfim``, ``ising_chaotic``, ``heisenberg``, ``xy``, ``custom``
                (:mod:`ctwa_hpc.model.models`, the paper's chains)
``couplings``   H = Σ_{i<j} Σ_{ab} J^{ab}_{ij} σ^a_i σ^b_j + Σ_i h^a_i σ^a_i from an .npz/.h5
                file (:mod:`ctwa_hpc.model.couplings`), optionally one set per realization
``lattice``     positions from :mod:`ctwa_hpc.model.geometry` (lattices, partially filled lattices,
                random boxes, blockade, files) and couplings from an interaction law
                (nearest neighbour, J/r^α, dipolar J(1 − 3cos²θ)/r³) with XXZ/XYZ anisotropy;
                sized before they are built (:mod:`ctwa_hpc.model.latticesize`), and built
                as coupling lists when short-range (nearest, or a cutoff)
==============  ============================================================================

and, for every kind, ``model.fields`` (uniform, box-random or Gaussian fields on any
component, optionally time dependent) and, for couplings/lattice models, extra ``model.terms``.

Disorder.  Every random ingredient of realization r (positions, fields, δ_i of ``heisenberg``)
is drawn from ``SeedSequence([disorder.seed, disorder.first + r, tag])`` with one tag per
ingredient: independent of the MPI layout and of the other ingredients.  A run with
``disorder.realizations > 1`` and nothing random is refused (its error bar would be wrong).

Time functions take the named parameters of ``model.params``: ``f = "cos(omega*t)"`` with
``params = {omega = 2.0}``, so a frequency sweep is one ``--set model.params.omega=3``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..tools.exceptions import ConfigError
from . import geometry, latticesize, limits, models
from .couplingfile import load_couplings
from .geometry.pairs import PairCouplings
from .hamiltonian import Hamiltonian, TimeFunction
from .objects import OBJECT_PREFIX, lookup, object_sizes, short_repr

TAG_POSITIONS = 0x9051
TAG_FIELDS = 0xF1E1D
DENSE_VIEW_NUMBERS = 4_000_000
"""Coupling lists of models up to this many N·N·families numbers are kept as (N, N) arrays in
:attr:`ModelInstance.couplings` (the Hamiltonian is built from the lists either way)."""
CHAIN_KINDS = ("tfim", "ising_chaotic", "heisenberg", "xy", "custom")
GEOMETRY_KEYS = ("lattice", "size", "boundary", "spacing", "positions", "filling", "n_sites",
                 "box", "blockade_radius", "positions_file", "sublattice")
INTERACTION_KEYS = ("interaction", "J", "alpha", "cutoff", "axis", "anisotropy")


@dataclass
class ModelInstance:
    """The model of one realization: Hamiltonian plus what the geometry tells the rest.

    ``signs`` is the staggered sign per site (+1 on sublattice A, −1 on B; None on a
    non-bipartite geometry); ``positions`` the site positions (chain kinds: r_i = i).
    ``couplings`` are the pair couplings of a lattice model (a dict of (N, N) arrays, or a
    :class:`~ctwa_hpc.model.geometry.pairs.PairCouplings` of coupling lists for short-range
    interactions), else None; ``fields`` {"x", "y", "z": (N,)} the full coefficient of σ^a_i
    in H (every one-site term summed: model.fields, model.hx/hz, file fields, the h_z δ_i of
    ``heisenberg``; a time-dependent term counts with its amplitude).  Both are stored in
    the output's ``/disorder``.
    """

    hamiltonian: object
    realization: int
    geometry: object = None
    couplings: dict | None = None
    fields: dict = field(default_factory=dict)
    signs: np.ndarray | None = None
    positions: np.ndarray | None = None

    @property
    def n_sites(self):
        return self.hamiltonian.n_sites


def _memory_gb(cfg):
    return (cfg.get("output") or {}).get("max_memory_gb") or 0.0


def anchor_paths(model, base):
    """Relative ``model.file`` / ``model.positions_file`` of a run file → paths in ``base``
    (the run file's directory, never the working directory), stored in the config as read."""
    if not isinstance(model, dict):
        return
    for k in ("file", "positions_file"):
        v = model.get(k)
        if isinstance(v, str) and v and not v.startswith(OBJECT_PREFIX) \
                and not os.path.isabs(os.path.expanduser(v)):
            model[k] = os.path.normpath(os.path.join(base, v))


def rng_for(seed, realization, tag, k=0):
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(realization), tag, k]))


def _geometry_spec(m):
    spec = {k: m[k] for k in GEOMETRY_KEYS if m.get(k) is not None}
    if "positions_file" in spec:
        spec["positions_file"] = lookup(spec["positions_file"], "model.positions_file")
    return spec


def _interaction_spec(m):
    return {k: m[k] for k in INTERACTION_KEYS if m.get(k) is not None}


def build_geometry(m, rng):
    """Realization geometry from the ``[model]`` table (a Geometry or positions array given
    through the Python API as ``model.positions_file`` is used as it is)."""
    spec = _geometry_spec(m)
    obj = spec.get("positions_file")
    if obj is not None and not isinstance(obj, str):
        if isinstance(obj, geometry.Geometry):
            geom = obj
        else:
            pos = np.asarray(obj, dtype=float)
            if pos.ndim == 1:
                pos = pos[:, None]
            if pos.ndim != 2 or not np.all(np.isfinite(pos)):
                raise ValueError("model.positions_file: expected an (N, d) array of finite "
                                 "positions")
            geom = geometry.Geometry(positions=pos, box=None,
                                     periodic=np.zeros(pos.shape[1], bool), sublattice=None,
                                     cells=None, kind="positions")
        if spec.get("sublattice") == "alternating":
            geom = geom.with_alternating_sublattice()
        return geom
    return geometry.build_geometry(spec, rng)


def resolve_model(cfg):
    """Derive ``model.n_sites`` and ``disorder.realizations``; refuse disorder-free replicas.

    Called by :func:`ctwa_hpc.config.resolve` (cheap: reads a couplings file's header, builds
    realization 0's geometry).
    """
    m, d = cfg["model"], cfg["disorder"]
    kind = m["kind"]
    n_file = None
    random = False
    if kind == "couplings":
        obj = lookup(m["file"], "model.file")
        if not isinstance(obj, str):   # an object passed through the Python API
            n, n_file = object_sizes(obj)
        else:
            try:
                data = load_couplings(m["file"], max_memory_gb=_memory_gb(cfg))
            except (OSError, ValueError) as exc:
                msg = str(exc)
                raise ConfigError(msg if msg.startswith("model.file") else
                                  f"model.file: {msg}") from None
            n = data.n_sites
            n_file = data.n_realizations if data.per_realization else None
        random = n_file is not None and n_file > 1
    elif kind == "lattice":
        try:
            geom, _ = lattice_parts(cfg, rng_for(d["seed"], d["first"], TAG_POSITIONS))
            random = geometry.positions_are_random(_geometry_spec(m)) \
                if isinstance(m["positions_file"] or "", str) else False
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        n = geom.n_sites
    else:
        n = m["n_sites"]
        random = kind == "heisenberg" and (m["hz"] or 0.0) != 0.0
    if m["n_sites"] is not None and m["n_sites"] != n:
        raise ConfigError(f"model.n_sites: {m['n_sites']} given, but the model has {n} sites")
    m["n_sites"] = n
    if m["fields"]:
        try:
            geometry.make_fields(n, m["fields"], rng_for(d["seed"], d["first"], TAG_FIELDS))
            random = random or geometry.fields_are_random(m["fields"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if d["realizations"] is None:
        d["realizations"] = (n_file - d["first"]) if (n_file or 1) > 1 else 1
        if d["realizations"] < 1:
            raise ConfigError(f"disorder.first: {d['first']} leaves no realization of the "
                              f"{n_file} in model.file")
    if n_file is not None and d["first"] + d["realizations"] > n_file:
        raise ConfigError(f"disorder.realizations: realizations {d['first']}.."
                          f"{d['first'] + d['realizations'] - 1} requested, model.file holds "
                          f"{n_file}")
    params = m["params"] or {}
    try:
        ModelBuilder(cfg)                         # model.params, model.coupling_f
        for k, spec in enumerate(m["fields"]):
            _time_function(spec.get("f"), f"model.fields[{k}].f", params)
        for k, t in enumerate(m["terms"] or []):
            if isinstance(t, dict) and isinstance(t.get("f"), str):
                _time_function(t["f"], f"model.terms[{k}].f", params)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if d["realizations"] > 1 and not random:
        raise ConfigError(f"disorder.realizations: {d['realizations']} realizations requested "
                          f"but nothing in model {kind!r} is random (add a random field, "
                          "random positions or per-realization couplings, or set it to 1)")


def lattice_parts(cfg, rng):
    """(geometry, couplings) of a lattice model's realization, sized before they are built
    (:mod:`ctwa_hpc.model.latticesize`): short-range couplings (nearest, or a cutoff) come as
    coupling lists (:class:`~ctwa_hpc.model.geometry.pairs.PairCouplings`), never as (N, N)
    arrays; a pair too strongly coupled for ``time.dt`` is refused."""
    m = cfg["model"]
    gb = _memory_gb(cfg)
    dt = (cfg.get("time") or {}).get("dt")
    # realization 0 is built by resolve_model and again by the run: the last build is kept for
    # one reuse (the key leaves out n_sites, which resolve_model derives; another n_sites is
    # another geometry)
    key = json.dumps([{k: v for k, v in m.items() if k != "n_sites"}, gb, dt,
                      rng.bit_generator.state], sort_keys=True, default=str)
    hit = _LAST_PARTS.pop(key, None)
    if hit is not None and m.get("n_sites") in (None, hit[0].n_sites):
        return hit
    budget = limits.memory_budget(gb)
    spec = _interaction_spec(m)
    n0 = latticesize.expected_sites(m)           # known before building (not for files)
    latticesize.check_sites(m, n0, budget)
    latticesize.check_dense(m, n0, spec, budget)
    pf = m.get("positions_file")
    if m.get("positions") == "file" and isinstance(pf, str) and not pf.startswith(OBJECT_PREFIX):
        limits.check_file(pf, "model.positions_file", gb)     # before reading it
    geom = build_geometry(m, rng)
    latticesize.check_sites(m, geom.n_sites, budget)
    max_pairs = latticesize.check_couplings(m, geom, spec, budget)
    couplings = geometry.build_couplings(geom, spec, sparse=True, max_pairs=max_pairs,
                                         where=latticesize.positions_field(m))
    latticesize.check_strongest(m, couplings, geom, dt)
    _LAST_PARTS.clear()
    _LAST_PARTS[key] = (geom, couplings)
    return geom, couplings


_LAST_PARTS = {}


def _time_function(expr, where, params):
    if expr is None:
        return None
    return TimeFunction(expr, where, **({"params": params} if params else {}))


class ModelBuilder:
    """Builds :class:`ModelInstance` for realization r (0-based within this job)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.m = cfg["model"]
        self.kind = self.m["kind"]
        self.seed = cfg["disorder"]["seed"]
        self.first = cfg["disorder"]["first"]
        self.params = dict(self.m["params"] or {})
        self._file = None
        self._cache = {}
        for k, v in self.params.items():
            if not isinstance(k, str) or not k.isidentifier():
                raise ConfigError(f"model.params.{k}: not a valid parameter name")
            ok = not isinstance(v, bool) and isinstance(v, (int, float))
            try:
                ok = ok and math.isfinite(float(v))
            except OverflowError:
                raise ConfigError(f"model.params.{k}: {short_repr(v)} is too large (expected a "
                                  "finite number, |x| < 1.8e308)") from None
            if not ok:
                raise ConfigError(f"model.params.{k}: expected a finite number, got {v!r}")
        if self.m["coupling_f"] and not isinstance(self.m["coupling_f"], dict):
            raise ConfigError("model.coupling_f: expected a table {family = expression}")
        self.tfuncs = {}
        for fam, expr in (self.m["coupling_f"] or {}).items():
            where = f"model.coupling_f.{fam}"
            if fam not in ("xx", "yy", "zz", "xy", "xz", "yz"):
                raise ConfigError(f"{where}: unknown coupling family (xx yy zz xy xz yz)")
            try:
                self.tfuncs[fam] = _time_function(expr, where, self.params)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

    def global_realization(self, r):
        return self.first + int(r)

    @property
    def content_hash(self):
        """Hash of the data the model reads (couplings file or API object), else None."""
        if self.kind != "couplings":
            pf = self.m.get("positions_file")
            if isinstance(pf, str) and pf.startswith(OBJECT_PREFIX):
                return pf[len(OBJECT_PREFIX):]
            if self.m.get("positions") == "file" and pf:
                with open(self.m["positions_file"], "rb") as fh:
                    return hashlib.sha256(fh.read()).hexdigest()
            return None
        if not isinstance(lookup(self.m["file"], "model.file"), str):
            return self.m["file"][len(OBJECT_PREFIX):]
        return self._couplings_file().content_hash

    def _couplings_file(self):
        if self._file is None:
            self._file = load_couplings(self.m["file"], max_memory_gb=_memory_gb(self.cfg))
        return self._file

    def instance(self, r):
        """The model of realization r (the last few are cached)."""
        if r not in self._cache:
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[r] = self._build(r)
        return self._cache[r]

    def hamiltonian(self, r):
        return self.instance(r).hamiltonian

    # -- builders ---------------------------------------------------------------------------
    def _build(self, r):
        m = self.m
        rg = self.global_realization(r)
        n = m["n_sites"]
        geom = couplings = None
        positions = np.arange(n, dtype=float)[:, None]
        signs = 1.0 - 2.0 * (np.arange(n) % 2)
        if self.kind in CHAIN_KINDS:
            params = {k: m[k] for k in ("J", "hx", "hz") if m[k] is not None}
            H = models.build(self.kind, n, params, boundary=m["boundary"], disorder_seed=self.seed,
                             realization=rg, terms=m["terms"], tparams=self.params)
        elif self.kind == "couplings":
            H = self._from_file(r)
        else:
            geom, couplings = lattice_parts(self.cfg, rng_for(self.seed, rg, TAG_POSITIONS))
            if geom.n_sites != n:
                raise ValueError(f"model.n_sites: realization {rg} has {geom.n_sites} sites, "
                                 f"realization {self.first} has {n}")
            H = Hamiltonian.from_couplings(couplings, None, tfuncs=self.tfuncs or None,
                                           name=f"lattice:{m['lattice'] or m['positions']}",
                                           info=dict(realization=rg))
            if isinstance(couplings, PairCouplings) and \
                    n * n * max(len(couplings), 1) <= DENSE_VIEW_NUMBERS:
                couplings = couplings.dense()     # small models keep the (N, N) view
            positions = np.asarray(geom.positions, dtype=float)
            signs = None if geom.sublattice is None else 1.0 - 2.0 * np.asarray(geom.sublattice)
        if self.kind in ("couplings", "lattice") and m["terms"]:
            models.add_terms(H, m["terms"], self.params)
        self._add_fields(H, rg)
        # the full coefficient of σ^a_i (model.fields and the rest), a = x, y, z: the same
        # components for every realization (every rank writes the same /disorder datasets)
        fields = H.one_site_fields(every=True)
        return ModelInstance(H, r, geom, couplings, fields, signs, positions)

    def _from_file(self, r):
        obj = lookup(self.m["file"], "model.file")
        if not isinstance(obj, str):
            if isinstance(obj, (list, tuple)):
                return _copy(obj[self.global_realization(r)])
            return _copy(obj)
        data = self._couplings_file()
        idx = self.global_realization(r) if data.per_realization else 0   # shared arrays
        return data.hamiltonian(idx, tfuncs=self.tfuncs or None)

    def _add_fields(self, H, rg):
        """``model.fields`` onto H."""
        specs = self.m["fields"]
        if not specs:
            return
        n = H.n_sites
        for k, spec in enumerate(specs):
            where = f"model.fields[{k}]"
            spec = dict(spec)
            f = spec.pop("f", None)
            vals = geometry.make_fields(n, [spec], rng_for(self.seed, rg, TAG_FIELDS, k),
                                        where=where)   # validated with the right index in
            # resolve_model: every spec draws from its own stream (seed, realization, k)
            tf = _time_function(f, where + ".f", self.params)
            for comp, v in vals.items():
                v = np.asarray(v, dtype=float)
                for i in np.flatnonzero(v):
                    H.add(float(v[i]), [(int(i), comp.upper())], tf, where=where)


def _copy(H):
    """A fresh Hamiltonian with the same terms (the API object is never mutated)."""
    return copy.deepcopy(H)


# -- clusters chosen per realization ------------------------------------------------------------
def coupling_strength(inst):
    """(N, N) nonnegative pair strength: sqrt(Σ_ab (J^{ab}_{ij})²) over all two-site terms."""
    return inst.hamiltonian.pair_strength()
