r"""The ``[model]`` section → one model instance per disorder realization.

Every model kind goes through :class:`ModelBuilder`:

==============  ============================================================================
chain kinds     ``tfim``, ``ising_chaotic``, ``heisenberg``, ``xy``, ``custom``
                (:mod:`ctwa_hpc.model.models`, the paper's chains)
``couplings``   H = Σ_{i<j} Σ_{ab} J^{ab}_{ij} σ^a_i σ^b_j + Σ_i h^a_i σ^a_i from an .npz/.h5
                file (:mod:`ctwa_hpc.model.couplings`), optionally one set per realization
``lattice``     positions from :mod:`ctwa_hpc.model.geometry` (lattices, partially filled lattices,
                random boxes, blockade, files) and couplings from an interaction law
                (nearest neighbour, J/r^α, dipolar J(1 − 3cos²θ)/r³) with XXZ/XYZ anisotropy
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
from dataclasses import dataclass, field

import numpy as np

from ..tools.exceptions import ConfigError
from . import geometry, models
from .couplingfile import load_couplings
from .hamiltonian import Hamiltonian, TimeFunction

TAG_POSITIONS = 0x9051
TAG_FIELDS = 0xF1E1D
CHAIN_KINDS = ("tfim", "ising_chaotic", "heisenberg", "xy", "custom")
GEOMETRY_KEYS = ("lattice", "size", "boundary", "spacing", "positions", "filling", "n_sites",
                 "box", "blockade_radius", "positions_file", "sublattice")
INTERACTION_KEYS = ("interaction", "J", "alpha", "cutoff", "axis", "anisotropy")


@dataclass
class ModelInstance:
    """The model of one realization: Hamiltonian plus what the geometry tells the rest.

    ``signs`` is the staggered sign per site (+1 on sublattice A, −1 on B; None on a
    non-bipartite geometry); ``positions`` the site positions (chain kinds: r_i = i).
    ``couplings``/``fields`` are the coupling matrices and field vectors when the model was
    given as data (stored in the output), else None.
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


# Python objects given where a run file names a file (ctwa_hpc.run): the config holds a
# reference "python:<content hash>" (so the config hash and provenance name the content).
_OBJECTS = {}
OBJECT_PREFIX = "python:"


def register_object(obj):
    """Keep ``obj`` (a Hamiltonian, list of Hamiltonians, Geometry or positions array) and
    return the reference string that stands for it in a config."""
    if isinstance(obj, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(obj, dtype=float).tobytes()).hexdigest()
    elif hasattr(obj, "positions") and not hasattr(obj, "terms"):
        digest = hashlib.sha256(np.ascontiguousarray(obj.positions, dtype=float).tobytes()
                                ).hexdigest()
    else:
        digest = object_hash(obj)
    ref = OBJECT_PREFIX + digest[:32]
    _OBJECTS[ref] = obj
    return ref


def lookup(value, where):
    """The object behind a config value: a reference string → the registered object."""
    if isinstance(value, str) and value.startswith(OBJECT_PREFIX):
        if value not in _OBJECTS:
            raise ConfigError(f"{where}: {value!r} refers to a Python object of another "
                              "session (pass the object again through ctwa_hpc.run)")
        return _OBJECTS[value]
    return value


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
            n, n_file = _object_sizes(obj)
        else:
            try:
                data = load_couplings(m["file"])
            except (OSError, ValueError) as exc:
                msg = str(exc)
                raise ConfigError(msg if msg.startswith("model.file") else
                                  f"model.file: {msg}") from None
            n, n_file = data.n_sites, data.n_realizations
        random = n_file is not None and n_file > 1
    elif kind == "lattice":
        try:
            geom = build_geometry(m, rng_for(d["seed"], d["first"], TAG_POSITIONS))
            random = geometry.positions_are_random(_geometry_spec(m)) \
                if isinstance(m["positions_file"] or "", str) else False
            geometry.build_couplings(geom, _interaction_spec(m))
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
    if n_file is not None and n_file > 1 and d["first"] + d["realizations"] > n_file:
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


def _object_sizes(obj):
    """(n_sites, n_realizations) of a Hamiltonian or list of Hamiltonians given in Python."""
    if isinstance(obj, (list, tuple)):
        if not obj:
            raise ConfigError("model.file: an empty list of Hamiltonians")
        ns = {getattr(h, "n_sites", None) for h in obj}
        if len(ns) != 1 or None in ns:
            raise ConfigError("model.file: the Hamiltonians must all have the same n_sites")
        return ns.pop(), len(obj)
    if not hasattr(obj, "n_sites") or not hasattr(obj, "terms"):
        raise ConfigError(f"model.file: expected a path, a Hamiltonian or a list of "
                          f"Hamiltonians, got {type(obj).__name__}")
    return obj.n_sites, None


def object_hash(obj):
    """Content hash of a Hamiltonian (or list of them) given through the Python API."""
    h = hashlib.sha256()
    for ham in (obj if isinstance(obj, (list, tuple)) else [obj]):
        h.update(str(ham.n_sites).encode())
        for t in ham.terms:
            h.update(repr((t.coef, t.ops, t.tfunc.expr if t.tfunc is not None else None))
                     .encode())
    return h.hexdigest()


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
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
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
            self._file = load_couplings(self.m["file"])
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
            geom = build_geometry(m, rng_for(self.seed, rg, TAG_POSITIONS))
            if geom.n_sites != n:
                raise ValueError(f"model.n_sites: realization {rg} has {geom.n_sites} sites, "
                                 f"realization {self.first} has {n}")
            couplings = geometry.build_couplings(geom, _interaction_spec(m))
            H = Hamiltonian.from_couplings(couplings, None, tfuncs=self.tfuncs or None,
                                           name=f"lattice:{m['lattice'] or m['positions']}",
                                           info=dict(realization=rg))
            positions = np.asarray(geom.positions, dtype=float)
            signs = None if geom.sublattice is None else 1.0 - 2.0 * np.asarray(geom.sublattice)
        if self.kind in ("couplings", "lattice") and m["terms"]:
            models.add_terms(H, m["terms"], self.params)
        fields = self._add_fields(H, rg)
        return ModelInstance(H, r, geom, couplings, fields, signs, positions)

    def _from_file(self, r):
        obj = lookup(self.m["file"], "model.file")
        if not isinstance(obj, str):
            if isinstance(obj, (list, tuple)):
                return _copy(obj[self.global_realization(r)])
            return _copy(obj)
        data = self._couplings_file()
        idx = self.global_realization(r) if data.n_realizations is not None else 0
        return data.hamiltonian(idx, tfuncs=self.tfuncs or None)

    def _add_fields(self, H, rg):
        """``model.fields`` onto H; returns {component: (N,) static + dynamic amplitudes}."""
        specs = self.m["fields"]
        if not specs:
            return {}
        n = H.n_sites
        total = {}
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
                total[comp] = total.get(comp, 0.0) + v
                for i in np.flatnonzero(v):
                    H.add(float(v[i]), [(int(i), comp.upper())], tf, where=where)
        return total


def _copy(H):
    """A fresh Hamiltonian with the same terms (the API object is never mutated)."""
    return copy.deepcopy(H)


# -- clusters chosen per realization ------------------------------------------------------------
def coupling_strength(inst):
    """(N, N) nonnegative pair strength: sqrt(Σ_ab (J^{ab}_{ij})²) over all two-site terms."""
    return inst.hamiltonian.pair_strength()
