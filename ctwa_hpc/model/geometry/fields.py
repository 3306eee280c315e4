"""Single-site fields h^a_i (the term sum_i h^a_i sigma^a_i of the Hamiltonian).

A field is a list of specs (plain dicts, one per TOML table of ``model.fields``)::

    {"component": "z", "kind": "uniform",  "value": 0.5}          h_i = value
    {"component": "z", "kind": "box",      "W": 2.0}              h_i = value + U[-W, W]
    {"component": "x", "kind": "gaussian", "sigma": 1.0}          h_i = value + N(0, sigma^2)

``value`` defaults to 0 for the random kinds (it is the mean) and is required for "uniform";
``kind`` defaults to "uniform".  Specs of the same component add up.  Random values are drawn
spec by spec, in list order, as N i.i.d. numbers each, from the Generator the caller keyed by
(disorder.seed, realization).  Keys in :data:`PASSTHROUGH_KEYS` (time dependence handled by the
caller) are accepted and ignored here; any other unknown key is an error.
"""
from __future__ import annotations

import numpy as np

FIELD_COMPONENTS = ("x", "y", "z")
FIELD_KINDS = ("uniform", "box", "gaussian")
PASSTHROUGH_KEYS = ("f", "params")
_KEYS = {"uniform": ("component", "kind", "value"),
         "box": ("component", "kind", "value", "W"),
         "gaussian": ("component", "kind", "value", "sigma")}


def _num(spec, key, where, default=None, nonnegative=False):
    if key not in spec or spec[key] is None:
        if default is None:
            raise ValueError(f"{where}.{key}: required")
        return float(default)
    val = spec[key]
    if isinstance(val, bool):
        raise ValueError(f"{where}.{key}: expected a number, got {val!r}")
    try:
        x = float(val)
    except (TypeError, ValueError):
        raise ValueError(f"{where}.{key}: expected a number, got {val!r}") from None
    if not np.isfinite(x):
        raise ValueError(f"{where}.{key}: must be finite, got {val!r}")
    if nonnegative and x < 0:
        raise ValueError(f"{where}.{key}: must be >= 0, got {val!r}")
    return x


def check_field_spec(spec, k, where="model.fields"):
    """Validate spec k -> (component, kind, value, width) with width = W or sigma (0 if uniform)."""
    loc = f"{where}[{k}]"
    if not isinstance(spec, dict):
        raise ValueError(f"{loc}: expected a table such as {{component = \"z\", kind = \"box\", "
                         f"W = 1.0}}, got {spec!r}")
    comp = spec.get("component")
    if not isinstance(comp, str) or comp.lower() not in FIELD_COMPONENTS:
        raise ValueError(f"{loc}.component: expected one of {list(FIELD_COMPONENTS)}, got {comp!r}")
    kind = spec.get("kind", "uniform")
    if kind not in FIELD_KINDS:
        raise ValueError(f"{loc}.kind: expected one of {list(FIELD_KINDS)}, got {kind!r}")
    for key in spec:
        if key not in _KEYS[kind] and key not in PASSTHROUGH_KEYS:
            raise ValueError(f"{loc}.{key}: unknown key for a {kind!r} field (allowed: "
                             f"{list(_KEYS[kind])})")
    if kind == "uniform":
        return comp.lower(), kind, _num(spec, "value", loc), 0.0
    value = _num(spec, "value", loc, default=0.0)
    width = _num(spec, "W" if kind == "box" else "sigma", loc, nonnegative=True)
    return comp.lower(), kind, value, width


def _check_specs(specs, where):
    if specs is None:
        return []
    if isinstance(specs, dict):
        specs = [specs]
    if not isinstance(specs, (list, tuple)):
        raise ValueError(f"{where}: expected a list of field tables, got {specs!r}")
    return [check_field_spec(s, k, where) for k, s in enumerate(specs)]


def make_fields(N, specs, rng=None, where="model.fields"):
    """{component: (N,) float array} summed over the specs (only components that appear).

    ``rng`` (numpy.random.Generator) is needed only if some spec is random.
    """
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
        raise ValueError(f"model.n_sites: expected a positive integer, got {N!r}")
    parsed = _check_specs(specs, where)
    out = {}
    for k, (comp, kind, value, width) in enumerate(parsed):
        h = np.full(int(N), value)
        if kind != "uniform":
            if not isinstance(rng, np.random.Generator):
                raise ValueError(f"{where}[{k}].kind: a {kind!r} field needs a "
                                 "numpy.random.Generator (disorder.seed)")
            if kind == "box":
                h += rng.uniform(-width, width, int(N))
            else:
                h += rng.normal(0.0, width, int(N))
        out[comp] = out[comp] + h if comp in out else h
    return out


def is_random(specs, where="model.fields"):
    """True if some spec draws random values (a box or Gaussian field of nonzero width)."""
    return any(kind != "uniform" and width > 0
               for _, kind, _, width in _check_specs(specs, where))
