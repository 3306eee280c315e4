"""Plots of output files: ``ctwa-hpc plot --file A.h5 [--file B.h5] --obs NAME [--obs ...]``.

:func:`plot` overlays any number of files × observables × components on one matplotlib Axes:
every curve is the mean with a shaded ±1σ band (σ = the stored ``stderr``, the standard error
of the mean; for exact runs over several realizations the disorder spread ``stderr_disorder``),
and the file's exact reference (``/exact``, written with ``output.compare_exact``) as a black
dashed line.  Model and method parameters shared by all files go into the title, the ones
that differ into the legend labels.  The paper's figures are in :mod:`ctwa_hpc.extras.figures`.

>>> from ctwa_hpc import plotting
>>> ax = plotting.plot(["a.h5", "b.h5"], ["sz", "mz_staggered"], index=[0, 1])
>>> ax.figure.savefig("overlay.png")
"""
from __future__ import annotations

import os
import sys

import numpy as np
from ..output import hdf5

# (section, key, short name) of the parameters shown in titles and legends
PARAMS = (("model", "kind", ""), ("model", "lattice", ""), ("model", "n_sites", "N"),
          ("model", "J", "J"), ("model", "hx", "hx"), ("model", "hz", "hz"),
          ("model", "interaction", ""), ("model", "alpha", "α"), ("model", "boundary", ""),
          ("disorder", "realizations", "R"), ("state", "kind", "state"),
          ("method", "kind", ""), ("method", "cluster_size", "c"),
          ("method", "clustering", ""), ("method", "samples", "S"), ("time", "dt", "dt"))
DEFAULT = {("model", "interaction"): "nearest", ("method", "clustering"): "blocks"}


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def describe_params(data):
    """{(section, key): "text"} of the parameters of one loaded file shown by :func:`plot`."""
    cfg = data["config"]
    out = {}
    for sec, key, short in PARAMS:
        v = cfg.get(sec, {}).get(key)
        if v is None or DEFAULT.get((sec, key)) == v:
            continue
        if (sec, key) == ("method", "samples"):
            v = data["attrs"].get("n_samples", v)
        if (sec, key) == ("method", "cluster_size") and (cfg["method"].get("clusters") or
                                                         cfg["method"].get("kind") == "exact"):
            continue
        if sec == "method" and cfg["method"].get("kind") == "exact" and key != "kind":
            continue
        out[(sec, key)] = f"{short}={v:g}" if isinstance(v, float) and short else \
            (f"{short}={v}" if short else str(v))
    return out


def _components(data, name, indices):
    """[(index, label)] of the components of output ``name`` to draw."""
    mean = data["observables"][name]["mean"]
    n = int(np.prod(mean.shape[1:], dtype=int))
    labels = data["group_attrs"].get(f"observables/{name}", {}).get("labels") or []
    if n == 1:
        return [(0, labels[0] if labels else "")]
    out = []
    for i in indices:
        if not 0 <= i < n:
            raise ValueError(f"plot --index: {i} is out of range for {name!r} ({n} components: "
                             f"0..{n - 1})")
        out.append((i, labels[i] if i < len(labels) else str(i)))
    return out


def _column(arr, n_t, i):
    return None if arr is None else np.asarray(arr).reshape(n_t, -1)[:, i]


def plot(files, obs, index=0, ax=None, exact=True):
    """Overlay observables of output files; returns the matplotlib Axes.

    ``files``: a path or a list of paths; ``obs``: an output name or a list of names;
    ``index``: component (site, pair, ...) or list of components, applied to every
    observable with several components (single-valued observables are drawn once);
    ``ax``: draw into this Axes (default: a new figure); ``exact``: overlay ``/exact``.
    """
    import matplotlib.pyplot as plt  # optional dependency (matplotlib)
    from matplotlib.patches import Patch  # optional dependency (matplotlib)

    files, obs, indices = _as_list(files), _as_list(obs), _as_list(index)
    if not files or not obs:
        raise ValueError("plot: give at least one file and one observable")
    datas = []
    for path in files:
        hdf5.check_readable(os.fspath(path), "plot")
        d = hdf5.load(os.fspath(path))
        for name in obs:
            if name not in d["observables"]:
                raise ValueError(f"plot: {path} has no observable {name!r} (has: "
                                 f"{sorted(d['observables'])})")
        datas.append(d)
    params = [describe_params(d) for d in datas]
    keys = [k for k in dict.fromkeys(k for p in params for k in p)]
    common = [k for k in keys if all(p.get(k) == params[0].get(k) for p in params)]
    varying = [k for k in keys if k not in common]
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.2))
    handles, texts, drawn_exact = [], [], []
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    k = 0
    for path, d, p in zip(files, datas, params):
        t = d["time"]
        tag = " ".join(p[key] for key in varying if key in p)
        if len(files) > 1 and not tag:
            tag = os.path.basename(os.fspath(path))
        for name in obs:
            o = d["observables"][name]
            se_all = o.get("stderr", o.get("stderr_disorder"))
            for i, lab in _components(d, name, indices):
                color = colors[k % len(colors)]
                k += 1
                m, se = _column(o["mean"], len(t), i), _column(se_all, len(t), i)
                what = name + (f"[{lab}]" if lab else "")
                text = ", ".join(x for x in (what if len(obs) > 1 or lab else "", tag) if x) \
                    or name
                (line,) = ax.plot(t, m, color=color, lw=1.4)
                if se is not None and np.any(se > 0):
                    ax.fill_between(t, m - se, m + se, color=color, alpha=0.25, lw=0)
                    handles.append((Patch(facecolor=color, alpha=0.25), line))
                    texts.append(f"{text} (mean ±1σ)")
                else:
                    handles.append(line)
                    texts.append(text)
                ex = d["exact"].get(name) if exact else None
                if ex is not None:
                    e = _column(ex["mean"], len(t), i)
                    if any(np.array_equal(e, x) for x in drawn_exact):
                        continue
                    drawn_exact.append(e)
                    (el,) = ax.plot(t, e, "k--", lw=1.0, zorder=3)
                    handles.append(el)
                    texts.append(f"exact{': ' + what if len(obs) > 1 or lab else ''}")
    ax.set_xlabel("t  [1/E, ħ = 1]")
    if len(obs) == 1:
        ga = datas[0]["group_attrs"].get(f"observables/{obs[0]}", {})
        ax.set_ylabel(f"{obs[0]}: {ga.get('description', '')}".rstrip(": "))
    else:
        ax.set_ylabel("value")
    title = " ".join(params[0][key] for key in common)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(handles, texts, fontsize=7, loc="best")
    return ax


def plot_command(args):
    """``ctwa-hpc plot --file ...``: write the overlay image; exit 0, or 2 with a message."""
    files, obs = list(args.file or []), list(args.obs or [])
    if not obs:
        print("ctwa-hpc: error: plot --file needs --obs NAME (repeatable)", file=sys.stderr)
        return 2
    try:
        import matplotlib  # optional dependency (matplotlib)
    except ImportError:
        print("ctwa-hpc: error: plot: matplotlib is not installed (pip install "
              "'ctwa-hpc[plot]')", file=sys.stderr)
        return 2
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional dependency (matplotlib)
    out = args.output or (os.path.splitext(files[0])[0] + "_" + "_".join(obs)
                          + f".{args.format}")
    try:
        ax = plot(files, obs, args.index if args.index else [0])
        ax.figure.tight_layout()
        ax.figure.savefig(out, dpi=120)
        plt.close(ax.figure)
    except (ValueError, OSError) as exc:
        print(f"ctwa-hpc: error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
