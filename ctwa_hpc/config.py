"""Run configuration: one TOML file, validated into a plain dict with every default filled in.

Config is data.  Unknown sections or keys are errors, every value is type-checked, and every
error names the offending field (``method.samples: ...``) before any expensive work starts.
The resolved config (defaults included) is written into the HDF5 output as TOML text.

Sections and keys (README.md documents each one; ``SCHEMA`` below is the source of truth):

``[model]``       kind, n_sites, boundary, J, hx, hz, terms, fields, params, coupling_f, file,
                  lattice, size, spacing, positions, filling, box, blockade_radius,
                  positions_file, interaction, alpha, cutoff, axis, anisotropy
``[disorder]``    realizations, seed, first
``[state]``       kind, pattern, angles, flipped, polarized
``[method]``      kind, cluster_size, offsets, clusters, clustering, plaquette, samples, seed,
                  first_sample, antithetic, sampling, precision, backend, batch
``[time]``        dt, t_max, output_dt
``[observables]`` names, pairs, custom, subsystems, kick
``[output]``      path, compare_exact, checkpoint_every_s, progress_every_s, exact_draws,
                  moments, max_memory_gb
``[stop]``        stderr_target, observables, check_samples (optional stopping rule)
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tomllib

import numpy as np

from .model import builder
from .model.models import MODEL_PARAMS
from .tools.exceptions import ConfigError

REQUIRED = object()
METHODS = ("sb", "operator", "reduced", "meanfield", "exact")
BACKENDS = ("auto", "cython", "numpy")
CLUSTERINGS = ("blocks", "plaquettes", "strongest_pairs", "greedy")

# section -> key -> (type, default, description)
SCHEMA = {
    "model": {
        "kind": (str, REQUIRED, "tfim | ising_chaotic | heisenberg | xy | custom | couplings | "
                 "lattice"),
        "n_sites": (int, None, "number of spins N (derived for couplings and lattice models)"),
        "boundary": (str, None, "open | periodic (model default if omitted)"),
        "J": (float, None, "coupling (model default if omitted)"),
        "hx": (float, None, "transverse field (tfim, ising_chaotic)"),
        "hz": (float, None, "longitudinal field or disorder strength (heisenberg: h_z δ_i)"),
        "terms": (list, None, "list of {coef, ops, f} tables (custom; extra terms of any "
                  "couplings or lattice model)"),
        "fields": (list, [], "single-site fields of any model: [{component, kind = uniform | "
                   "box | gaussian, value | W | sigma, f}]; box/gaussian are random per "
                   "realization"),
        "params": (dict, {}, "named parameters of the time functions, e.g. {omega = 2.0}"),
        "coupling_f": (dict, {}, "time function per coupling family of couplings/lattice "
                       "models, e.g. {zz = \"cos(omega*t)\"}"),
        "file": (str, None, "couplings model: .npz or .h5 file with J_xx, J_yy, J_zz, "
                 "[J_xy, J_xz, J_yz] (N, N) and [h_x, h_y, h_z] (N,), optional leading "
                 "realization axis (a relative path is next to the run file)"),
        "lattice": (str, None, "lattice model: chain | square | triangular | honeycomb | cubic"),
        "size": (list, None, "lattice model: cells per axis, e.g. [4, 4]"),
        "spacing": (float, 1.0, "lattice model: lattice constant"),
        "positions": (str, "lattice", "lattice model: lattice | filled | box | blockade | file"),
        "filling": (float, None, "positions = filled: fraction of lattice sites occupied "
                    "(random per realization)"),
        "box": (list, None, "positions = box | blockade: box lengths per axis"),
        "blockade_radius": (float, None, "positions = blockade: no pair closer than this"),
        "positions_file": (str, None, "positions = file: .npy/.npz/.txt/.csv of shape (N, d) "
                           "(a relative path is next to the run file)"),
        "sublattice": (str, None, "staggered sign / Néel pattern: lattice (the lattice's "
                       "bipartition, default) | alternating ((-1)^k in site order, e.g. the "
                       "occupied sites of a partially filled chain)"),
        "interaction": (str, "nearest", "lattice model: nearest | power_law | dipolar"),
        "alpha": (float, None, "power_law: exponent of J / r^alpha"),
        "cutoff": (float, None, "power_law | dipolar: no coupling beyond this distance"),
        "axis": (list, None, "dipolar: quantization axis (default [0, 0, 1])"),
        "anisotropy": (dict, None, "coefficients of XX, YY, ZZ (XY, XZ, YZ) per pair, e.g. "
                       "{xx = 1.0, yy = 1.0, zz = 2.0} (default Heisenberg: all 1)"),
    },
    "disorder": {
        "realizations": (int, None, "number of disorder realizations (default 1; a couplings "
                         "file with a realization axis: all of its realizations from first)"),
        "seed": (int, 0, "disorder seed: every random model ingredient keyed by (seed, "
                 "realization)"),
        "first": (int, 0, "index of this job's first realization (jobs over disjoint "
                  "realizations merge exactly)"),
    },
    "state": {
        "kind": (str, "neel", "up | down | neel | x | y | pattern | angles | bath"),
        "pattern": (str, None, "pattern state: one of u d + - r per site"),
        "angles": (list, None, "angles state: [[theta, phi], ...] per site"),
        "flipped": (list, [], "sites whose spin is reversed"),
        "polarized": (list, [0], "bath state: sites kept up (the others uniform on the sphere)"),
    },
    "method": {
        "kind": (str, "sb", "sb | operator | reduced | meanfield | exact"),
        "cluster_size": (int, 1, "sites per contiguous cluster"),
        "offsets": (list, [0], "cluster offsets averaged over (list of ints)"),
        "clusters": (list, None, "explicit partition [[sites], ...] (overrides cluster_size)"),
        "clustering": (str, "blocks", "blocks | plaquettes | strongest_pairs | greedy: clusters "
                       "chosen per realization"),
        "plaquette": (list, None, "clustering = plaquettes: cells per cluster and axis, e.g. "
                      "[2, 2]"),
        "samples": (int, 1000, "Monte Carlo samples per realization and offset"),
        "seed": (int, 1, "sampling seed: streams keyed by (seed, realization, sample)"),
        "first_sample": (int, 0, "index of this job's first sample (jobs over disjoint sample "
                         "ranges merge exactly through /moments)"),
        "antithetic": (bool, False, "antithetic pairs ξ, −ξ (samples must be even)"),
        "sampling": (str, "gaussian", "gaussian | discrete (operator/reduced only)"),
        "precision": (str, "double", "double | single (float32 trajectories, float64 "
                      "accumulation)"),
        "backend": (str, "auto", "auto | cython | numpy"),
        "batch": (int, 256, "samples per kernel call (work block)"),
    },
    "time": {
        "dt": (float, 0.01, "RK4 step"),
        "t_max": (float, REQUIRED, "final time"),
        "output_dt": (float, None, "output interval, a multiple of dt (default: dt)"),
    },
    "observables": {
        "names": (list, ["sz", "mz_staggered"], "named observables"),
        "pairs": (list, None, "site pairs for czz/czz_connected (default: nearest neighbours)"),
        "custom": (list, [], "custom observables: [{name, ops}] or [{name, terms = [{coef, "
                   "ops}, ...]}] (sums of Pauli strings)"),
        "q": (list, None, "wave vectors of szz_q, e.g. [[3.14159, 0.0]]"),
        "subsystems": (list, None, "site sets for entropy/renyi2/rdm_min_eig (default: (i, i+1))"),
        "kick": (str, None, "Pauli string O: adds <{O(0),Q(t)}> and i<[O(0),Q(t)]> outputs"),
    },
    "output": {
        "path": (str, "ctwa_out.h5", "HDF5 output file"),
        "compare_exact": (bool, False, "also run the exact reference and print the deviation"),
        "checkpoint_every_s": (float, 300.0, "seconds between checkpoints"),
        "progress_every_s": (float, 10.0, "seconds between progress lines"),
        "exact_draws": (int, 16, "exact reference of a mixed state: typical states averaged"),
        "moments": (str, "auto", "store the moment sums of every (realization, offset) "
                    "row in /moments (needed to merge jobs over sample ranges): 'auto' (when "
                    "they take <= 256 MiB), 'always' or 'never'"),
        "max_memory_gb": (float, 0.0, "pre-flight limit of the estimated memory per rank in "
                          "GiB (0: the node's MemAvailable shared by its ranks)"),
    },
    "stop": {
        "stderr_target": (float, 0.0, "stop early once the standard error of stop.observables "
                          "is <= this at every time (0: always run all method.samples)"),
        "observables": (list, [], "outputs checked by the stopping rule (default: all)"),
        "check_samples": (int, 0, "samples per realization and offset between checks, rounded "
                          "up to a multiple of method.batch (0: 4 batches)"),
    },
}

_LATTICE_KEYS = {"lattice", "size", "spacing", "positions", "filling", "box", "blockade_radius",
                 "positions_file", "sublattice", "interaction", "alpha", "cutoff", "axis", "anisotropy", "J"}
_MODEL_KEYS = {"tfim": {"J", "hx", "hz"}, "ising_chaotic": {"J", "hx", "hz"},
               "heisenberg": {"J", "hz"}, "xy": {"J"}, "custom": {"terms"},
               "couplings": {"file", "terms", "coupling_f"},
               "lattice": _LATTICE_KEYS | {"terms", "coupling_f"}}
# keys whose schema default is not None: only "given" when they differ from the default
_MODEL_DEFAULTED = {"spacing", "positions", "interaction", "coupling_f"}


def _check_type(where, value, typ):
    if typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        try:
            ok and float(value)
        except OverflowError:
            raise ConfigError(f"{where}: a {len(str(abs(value)))}-digit integer is too large "
                              "for a number (give |x| < 1.8e308)") from None
        if ok and not math.isfinite(value):
            raise ConfigError(f"{where}: {value} is not finite")
        return float(value) if ok else _type_error(where, value, "a number")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return _type_error(where, value, "an integer")
    if typ is bool:
        return value if isinstance(value, bool) else _type_error(where, value, "true or false")
    if typ is str:
        return value if isinstance(value, str) else _type_error(where, value, "a string")
    if typ is list:
        return value if isinstance(value, list) else _type_error(where, value, "a list")
    if typ is dict:
        return value if isinstance(value, dict) else _type_error(where, value, "a table")
    raise AssertionError(typ)


def _type_error(where, value, expected):
    raise ConfigError(f"{where}: expected {expected}, got {value!r} ({type(value).__name__})")


def resolve(raw):
    """Validate a raw config dict and fill defaults; returns a new dict."""
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a table of sections")
    for sec in raw:
        if sec not in SCHEMA:
            raise ConfigError(f"{sec}: unknown section (known: {sorted(SCHEMA)})")
    cfg = {}
    for sec, keys in SCHEMA.items():
        given = raw.get(sec, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{sec}: expected a table")
        for k in given:
            if k not in keys:
                if (sec, k) == ("output", "write_partial"):
                    raise ConfigError("output.write_partial: removed: per-rank partial sums are "
                                      "no longer stored (the output does not depend on the "
                                      "number of ranks); output.moments = 'always' keeps the "
                                      "moment sums")
                raise ConfigError(f"{sec}.{k}: unknown key (known: {sorted(keys)})")
        out = {}
        for k, (typ, default, _) in keys.items():
            where = f"{sec}.{k}"
            if k in given and not (given[k] is None and default is None):
                out[k] = _check_type(where, given[k], typ)
            elif default is REQUIRED:
                raise ConfigError(f"{where}: required")
            else:
                out[k] = copy.deepcopy(default)
        cfg[sec] = out
    _semantic_checks(cfg)
    return cfg


def _positive(cfg, sec, key, strict=True):
    v = cfg[sec][key]
    if (v <= 0) if strict else (v < 0):
        raise ConfigError(f"{sec}.{key}: must be {'> 0' if strict else '>= 0'}, got {v}")


def _one_of(cfg, sec, key, known, expected):
    v = cfg[sec][key]
    if v not in known:
        raise ConfigError(f"{sec}.{key}: expected {expected}, got {v!r}")


def _semantic_checks(cfg):
    """Checks across the keys of a typed config, in this order (the first failure is raised):
    ``[model]`` and ``[disorder]``, resolving the model (n_sites, realizations), then
    :func:`_check_method` and :func:`_check_time_and_outputs`."""
    m, d = cfg["model"], cfg["disorder"]
    if m["kind"] not in MODEL_PARAMS:
        raise ConfigError(f"model.kind: unknown model {m['kind']!r} (known: {sorted(MODEL_PARAMS)})")
    for k in sorted(set().union(*_MODEL_KEYS.values())):
        given = m[k] is not None and not (k in _MODEL_DEFAULTED and m[k] == SCHEMA["model"][k][1])
        if given and k not in _MODEL_KEYS[m["kind"]]:
            raise ConfigError(f"model.{k}: not a parameter of model {m['kind']!r}")
    if m["kind"] == "custom" and not m["terms"]:
        raise ConfigError("model.terms: a custom model needs a non-empty list of terms")
    if m["kind"] == "couplings" and not m["file"]:
        raise ConfigError("model.file: a couplings model needs a .npz or .h5 file")
    if m["kind"] not in ("couplings", "lattice") and m["n_sites"] is None:
        raise ConfigError("model.n_sites: required")
    _one_of(cfg, "model", "boundary", (None, "open", "periodic"), "'open' or 'periodic'")
    _positive(cfg, "disorder", "first", strict=False)
    if d["realizations"] is not None:
        _positive(cfg, "disorder", "realizations")
    builder.resolve_model(cfg)      # derives n_sites, realizations; checks randomness
    _positive(cfg, "model", "n_sites")
    _check_method(cfg)
    _check_time_and_outputs(cfg)


def _check_method(cfg):
    """``[method]`` (with the seeds and ``output.moments``): options, sizes, offsets."""
    meth = cfg["method"]
    for sec, key in (("method", "first_sample"), ("method", "seed"), ("disorder", "seed")):
        _positive(cfg, sec, key, strict=False)
    _one_of(cfg, "output", "moments", ("auto", "always", "never"), "'auto', 'always' or 'never'")
    _one_of(cfg, "method", "precision", ("double", "single"), "'double' or 'single'")
    _one_of(cfg, "method", "clustering", CLUSTERINGS, f"one of {list(CLUSTERINGS)}")
    if meth["clusters"] is not None and meth["clustering"] != "blocks":
        raise ConfigError("method.clustering: cannot be combined with explicit method.clusters")
    if (meth["plaquette"] is not None) != (meth["clustering"] == "plaquettes"):
        raise ConfigError("method.plaquette: required with (and only with) method.clustering = "
                          "'plaquettes'")
    if meth["kind"] not in METHODS:
        raise ConfigError(f"method.kind: unknown method {meth['kind']!r} (known: {list(METHODS)})")
    _one_of(cfg, "method", "sampling", ("gaussian", "discrete"), "'gaussian' or 'discrete'")
    if meth["sampling"] == "discrete" and meth["kind"] not in ("operator", "reduced", "exact"):
        raise ConfigError("method.sampling: 'discrete' applies to method.kind 'operator' or "
                          "'reduced' only")
    _one_of(cfg, "method", "backend", BACKENDS, f"one of {list(BACKENDS)}")
    for key in ("samples", "batch", "cluster_size"):
        if meth[key] < 1:
            raise ConfigError(f"method.{key}: must be >= 1, got {meth[key]}")
    if meth["antithetic"] and meth["samples"] % 2:
        raise ConfigError("method.samples: must be even with method.antithetic = true")
    if meth["antithetic"] and meth["first_sample"] % 2:
        raise ConfigError("method.first_sample: must be even with method.antithetic = true "
                          "(antithetic pairs are (2k, 2k+1))")
    if meth["cluster_size"] > cfg["model"]["n_sites"]:
        raise ConfigError(f"method.cluster_size: {meth['cluster_size']} exceeds model.n_sites "
                          f"= {cfg['model']['n_sites']}")
    offs = meth["offsets"]
    if not offs or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs):
        raise ConfigError(f"method.offsets: expected a non-empty list of integers, got {offs!r}")
    if len(set(offs)) != len(offs):
        raise ConfigError(f"method.offsets: duplicate offsets in {offs!r}")
    if meth["clustering"] in ("strongest_pairs", "greedy") and offs != [0]:
        raise ConfigError(f"method.offsets: not used by method.clustering = "
                          f"{meth['clustering']!r}")
    if meth["clusters"] is not None and offs != [0]:
        raise ConfigError("method.offsets: cannot be combined with an explicit method.clusters")


def _check_time_and_outputs(cfg):
    """``[time]`` (``output_dt`` defaults to ``dt``), ``[observables]``, ``[output]``."""
    t, obs = cfg["time"], cfg["observables"]
    _positive(cfg, "time", "dt")
    _positive(cfg, "time", "t_max", strict=False)
    if t["output_dt"] is None:
        t["output_dt"] = t["dt"]
    _positive(cfg, "time", "output_dt")
    ratio = t["output_dt"] / t["dt"]
    if abs(ratio - round(ratio)) > 1e-9 * max(1.0, ratio) or round(ratio) < 1:
        raise ConfigError(f"time.output_dt: {t['output_dt']} is not a multiple of time.dt = {t['dt']}")
    n_out = t["t_max"] / t["output_dt"]
    if abs(n_out - round(n_out)) > 1e-9 * max(1.0, n_out):
        raise ConfigError(f"time.t_max: {t['t_max']} is not a multiple of time.output_dt = "
                          f"{t['output_dt']}")
    if not obs["names"] and not obs["custom"]:
        raise ConfigError("observables.names: no observable requested")
    for k, n in enumerate(obs["names"]):
        if not isinstance(n, str):
            raise ConfigError(f"observables.names[{k}]: expected a string, got {n!r}")
    if obs["kick"] is not None and cfg["method"]["kind"] == "operator":
        raise ConfigError("observables.kick: two-time correlators need the tangent equations of "
                          "the vector form; use method.kind = 'reduced' (the same trajectories "
                          "as 'operator')")
    for key in ("checkpoint_every_s", "progress_every_s", "exact_draws"):
        _positive(cfg, "output", key)
    if not cfg["output"]["path"]:
        raise ConfigError("output.path: must not be empty")


def time_grid(cfg):
    """(dt, n_steps, out_every, output times)."""
    t = cfg["time"]
    out_every = int(round(t["output_dt"] / t["dt"]))
    n_out = int(round(t["t_max"] / t["output_dt"]))
    return t["dt"], n_out * out_every, out_every, np.arange(n_out + 1) * t["output_dt"]


def parse_override(text):
    """``section.key=value`` → (section, key, value); value parsed as TOML (fallback: string).

    ``key`` may be a dotted path into a table, e.g. ``model.params.omega=3.0``.
    """
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    path, value = text.split("=", 1)
    sec, key = path.strip().split(".", 1)
    try:
        val = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        val = value
    return sec, key, val


def apply_overrides(raw, overrides):
    """Apply ``{"section.key[.sub]": value}`` overrides to a raw config dict (in place)."""
    for path, val in overrides.items():
        if not isinstance(path, str) or "." not in path:
            raise ConfigError(f"override {path!r}: expected 'section.key'")
        sec, *keys = path.split(".")
        node = raw.setdefault(sec, {})
        where = sec
        for k in keys[:-1]:
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: expected a table")
            node = node.setdefault(k, {})
            where += "." + k
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: expected a table")
        node[keys[-1]] = val
    return raw


def read_toml(path):
    """A run file as a raw dict; relative data-file paths are relative to the file's directory."""
    if os.path.isdir(path):
        raise ConfigError(f"config: {path!r} is a directory, not a TOML file")
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config: file {path!r} not found") from None
    except (PermissionError, IsADirectoryError) as exc:
        raise ConfigError(f"config: cannot read {path!r}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config: {path}: invalid TOML: {exc}") from None
    builder.anchor_paths(raw.get("model"), os.path.dirname(os.path.abspath(path)))
    return raw


def load(path, overrides=()):
    """Read a TOML run file, apply ``--set`` overrides, validate; returns the resolved dict."""
    raw = read_toml(path)
    for ov in overrides:
        sec, key, val = parse_override(ov)
        apply_overrides(raw, {f"{sec}.{key}": val})
    return resolve(raw)


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def dumps(cfg):
    """Resolved config as TOML text (None values are omitted)."""
    lines = []
    for sec, keys in cfg.items():
        lines.append(f"[{sec}]")
        for k, v in keys.items():
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)


# sections (None: whole section) and keys that do not change the sampled numbers
_HASH_NEUTRAL = {"output": None, "stop": None, "method": ("backend",)}
def config_hash(cfg, extra=None):
    """SHA-256 of the parts of a resolved config that determine the sampled numbers.

    ``extra``: a string folded in as well (e.g. the content hash of a couplings file)."""
    keep = {}
    for sec, keys in cfg.items():
        if sec in _HASH_NEUTRAL and _HASH_NEUTRAL[sec] is None:
            continue
        drop = _HASH_NEUTRAL.get(sec) or ()
        keep[sec] = {k: v for k, v in keys.items() if k not in drop}
    if extra:
        keep["__content__"] = str(extra)
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()
