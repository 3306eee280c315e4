"""The output's naming rules, shared by the writers, the readers, the rows and merge.

Attributes of time and standard errors, the two-time suffixes, the component axes of an
output (``site``, ``pair``, ``subsystem``, ``distance``, ``q`` or ``component``) derived from
its labels, units, moment column labels, the ``/disorder`` dataset names and the root
attributes (config, hash, provenance).  Nothing here reads or writes a file.
"""
from __future__ import annotations

import datetime
import os
import re
import socket
import subprocess

import numpy as np

from .. import config as config_mod
from ..config import config_hash
from ..tools import parallel
from ..tools.version import __version__

# /disorder/<prefix><component>: the random inputs of each realization, by kind
DISORDER_PREFIXES = {"fields": "field_", "couplings": "coupling_"}


def disorder_key(kind, comp):
    """Dataset name (without the group) of component ``comp`` of a ``/disorder`` kind."""
    return f"{DISORDER_PREFIXES.get(kind, kind + '_')}{comp}"


def split_disorder_key(name):
    """(kind, component) of a ``/disorder`` dataset name, or (None, name) for others."""
    for kind, prefix in DISORDER_PREFIXES.items():
        if name.startswith(prefix):
            return kind, name[len(prefix):]
    return None, name


TIME_ATTRS = {
    "long_name": "time t",
    "units": "1/E (hbar = 1)",
    "description": "hbar = 1: times are in the inverse units E of the Hamiltonian's "
                   "coefficients as given in the config (model.J, model.hx, fields, couplings); "
                   "e.g. with J = 0.125, t = 8 means J t = 1"}
STDERR = {
    "stderr": "standard error of mean (one sigma): with R >= 2 realizations the spread of the "
              "realization values / sqrt(R), which contains the Monte Carlo noise; with R = 1 "
              "the Monte Carlo error sqrt(s^2/n) over n independent samples (an antithetic pair "
              "counts once); connected correlators and entropies by the delta method",
    "stderr_within": "Monte Carlo part of the error of the disorder average: "
                     "sqrt(sum_r stderr_r^2)/R",
    "stderr_disorder": "exact reference: spread of the realization values / sqrt(R)",
    "realization_stderr": "Monte Carlo standard error (one sigma) of the realization's value "
                          "(sqrt(s^2/n), delta method for nonlinear outputs)",
}
SUFFIXES = ("_anticomm", "_response")


def git_revision():
    """The checkout's commit (``-dirty`` with local changes), or "unknown"."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        rev = out.stdout.strip()
        if out.returncode == 0 and rev:
            dirty = subprocess.run(["git", "-C", here, "status", "--porcelain",
                                    "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def root_attrs(result, writer):
    """Root attributes: the resolved config, its hash and the provenance of the run."""
    cfg = result.cfg
    out = {
        "config_toml": config_mod.dumps(cfg),
        "config_hash": config_hash(cfg, result.extra.get("model_content_hash")),
        "ctwa_hpc_version": __version__,
        "git_revision": git_revision(),
        "method": result.method,
        "mpi_size": int(result.mpi_size),
        "mpi_library": parallel.library_version(),
        "writer": writer,
        "seed": int(cfg["method"]["seed"]),
        "disorder_seed": int(cfg["disorder"]["seed"]),
        "n_realizations": int(cfg["disorder"]["realizations"]),
        "n_samples": int(result.n_samples),
        "wall_time_s": float(result.wall_time),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "hostname": socket.gethostname(),
        "backend": result.backend,
        "conventions": "Pauli matrices sigma (not S = sigma/2), hbar = 1; site 0 is bit 0",
        "format": "ctwa-hpc output 2: netCDF-4 compatible HDF5 (named dimension scales)",
        "finished_run": True,
    }
    for k, v in result.extra.items():   # scalar provenance (model_content_hash, merged_from...)
        if isinstance(v, (str, bool, int, float, np.integer, np.floating)):
            out.setdefault(k, v)
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, str) for x in v) \
                and k != "columns":
            out.setdefault(k, "\n".join(v))
    return out


def realization_index(result):
    """Global realization numbers (disorder.first + r) of a RunResult."""
    idx = (result.extra.get("disorder") or {}).get("realization_index")
    if idx is not None:
        return np.asarray(idx, dtype=np.int64)
    d = result.cfg["disorder"]
    return d.get("first", 0) + np.arange(d["realizations"], dtype=np.int64)


# -- component axes of an output ------------------------------------------------------------------
_SITE = re.compile(r"site (\d+)$")
_SITES = re.compile(r"\d+(,\d+)*$")
_Q = re.compile(r"q=\((.*)\)$")


def base_name(name):
    """The output a two-time variant derives from (``sz_response`` → ``sz``)."""
    for s in SUFFIXES:
        if name.endswith(s):
            return name[:-len(s)]
    return name


def component_axes(name, kind, labels, trailing):
    """(squeeze, dims, coords) of the axes after time of output ``name``.

    ``trailing``: the shape after the time axis; ``squeeze``: drop a single unlabelled axis
    (a scalar output).  ``coords``: list of (name, dims, values, attrs); the first entry of a
    labelled axis is the dimension coordinate.
    """
    trailing = tuple(trailing)
    labels = [str(x) for x in (labels or [])]
    if not trailing or (trailing == (1,) and not labels):
        return bool(trailing), (), []
    n = trailing[0]
    coords = []
    if labels and len(labels) == n and all(_SITE.match(x) for x in labels):
        dim = "site"
        coords.append(("site", ("site",), np.array([int(_SITE.match(x).group(1))
                                                    for x in labels]),
                       {"long_name": "site index i"}))
    elif labels and len(labels) == n and all(_SITES.match(x) for x in labels):
        sites = [list(map(int, x.split(","))) for x in labels]
        k = max(map(len, sites))
        rdm = kind in ("entropy", "renyi2", "rdm_min_eig")
        if base_name(name) == "czz_map" and all(len(s) == 2 for s in sites):
            dim, values, desc = "distance", np.array([s[1] - s[0] for s in sites]), "Δ = j − i"
        elif rdm or k != 2:
            dim, values, desc = "subsystem", np.arange(n), "index into observables.subsystems"
        else:
            dim, values, desc = "pair", np.arange(n), "index into observables.pairs"
        coords.append((dim, (dim,), values, {"long_name": desc}))
        if all(len(s) == k for s in sites):
            coords.append(("member", ("member",), np.arange(k),
                           {"long_name": "position of a site within its pair or subsystem"}))
            coords.append(("sites", (dim, "member"), np.array(sites, dtype=np.int64),
                           {"long_name": "site indices"}))
    elif labels and len(labels) == n and all(_Q.match(x) for x in labels):
        dim = "q"
        coords.append(("q", ("q",), np.arange(n), {"long_name": "index into observables.q"}))
        vecs = [[float(v) for v in _Q.match(x).group(1).split(",")] for x in labels]
        d = len(vecs[0])
        if all(len(v) == d for v in vecs):
            coords.append(("spatial", ("spatial",), list("xyz")[:d] if d <= 3 else
                           [f"axis {k}" for k in range(d)], {"long_name": "spatial axis"}))
            coords.append(("q_vector", ("q", "spatial"), np.array(vecs),
                           {"long_name": "wave vector q (6 digits, as labelled; exact values: "
                            "observables.q)"}))
    else:
        dim = "component"
        coords.append(("component", ("component",), np.arange(n), {"long_name": "index"}))
    if labels and len(labels) == n:
        coords.append(("label", (dim,), labels, {"long_name": "label"}))
    dims = (dim,)
    for k, m in enumerate(trailing[1:], start=1):
        dims += (f"axis{k}",)
        coords.append((f"axis{k}", (f"axis{k}",), np.arange(m), {"long_name": "index"}))
    return False, dims, coords


def value_units(name, kind):
    """The ``units`` attribute of an output: Pauli expectation values are dimensionless."""
    if kind in ("entropy", "renyi2"):
        return "bit"
    if base_name(name) == "energy":
        return "E (units of the Hamiltonian's coefficients)"
    return "1"


def column_labels(obs):
    """Human-readable labels of the moment columns of an ObservableSet (K or 3K of them)."""
    def one(col):
        parts = []
        for coef, ops in col[:4]:
            s = " ".join(f"{lab}{site}" for site, lab in ops) or "I"
            parts.append(s if coef == 1.0 and len(col) == 1 else f"{coef:+.6g} {s}")
        if len(col) > 4:
            parts.append(f"... ({len(col)} Pauli strings)")
        return " ".join(parts)
    base = [one(c) for c in obs.columns]
    if getattr(obs, "kick", None) is None:
        return base
    o = " ".join(f"{lab}{site}" for site, lab in obs.kick)
    return base + [f"2 ({o})_W(0) * [{b}]" for b in base] + [f"d/d eps [{b}] (kick {o})"
                                                               for b in base]
