"""The paper's figures 4–9 at a size that runs on a workstation (``ctwa-hpc plot``).

Each figure is a list of runs (plain config dicts, validated like any TOML run file) plus the
exact reference where N ≤ 20 (free fermions for the XY chain).  Results are cached as HDF5
files in ``<outdir>/data`` so a re-plot costs nothing; ``--force`` recomputes.  Every figure
also writes ``<outdir>/<fig>.json`` with the measured deviations from the reference, the
numbers quoted in the closing notes.  Paper-size runs are the SLURM scripts in ``jobs/``.

=====  ==========================================================================
fig4   4-spin Ising eq. (24), staggered magnetization, clusters 1/2/4, SB and operator
fig5   chaotic Ising eq. (39): N = 16 pure bath, N = 16 mixed bath, ⟨σz_0(t)⟩, 1/√t
       (the paper's N = 20 pure-bath run is jobs/ising20.toml: its exact reference alone
       takes ~15 min here)
fig6   disordered Heisenberg eq. (41): N = 16 vs exact at h_z = 1, 5; SB and operator
fig7   entanglement entropy of 2-site subsystems, N = 16, one realization, all offsets
fig8   XY chain eq. (49), N = 64: connected ⟨σz_i σz_{i+Δ}⟩_c map vs free fermions
fig9   mean field vs CTWA at h_z = 10, N = 16
discrete  Gaussian vs discrete cluster sampling (operator CTWA): shot noise and bias vs
       exact on the 4-spin example and on disordered Heisenberg N = 16
=====  ==========================================================================
"""
from __future__ import annotations

import copy
import json
import os

import numpy as np

from .. import config as config_mod
from ..exact import freefermion
from ..model import models, states
from ..output import hdf5
from ..driver.runner import Simulation

FIGURES = ("fig4", "fig5", "fig6", "fig7", "fig8", "fig9", "discrete")


def _cfg(model, state, method, time, observables, disorder=None):
    raw = {"model": model, "state": state, "method": method, "time": time,
           "observables": observables, "output": {"path": "unused.h5"}}
    if disorder:
        raw["disorder"] = disorder
    return config_mod.resolve(copy.deepcopy(raw))


def _with(cfg, **sections):
    out = copy.deepcopy(cfg)
    for sec, upd in sections.items():
        out[sec].update(upd)
    return config_mod.resolve(out)


class Runner:
    """Runs (or loads cached) configs; one HDF5 file per (figure, label)."""

    def __init__(self, outdir, force=False, comm=None, quiet=True):
        self.outdir, self.force, self.comm, self.quiet = outdir, force, comm, quiet
        os.makedirs(os.path.join(outdir, "data"), exist_ok=True)

    def get(self, fig, label, cfg, exact=False):
        path = os.path.join(self.outdir, "data", f"{fig}_{label}.h5")
        if os.path.exists(path) and not self.force:
            data = hdf5.load(path)
            if data["attrs"].get("config_toml") == config_mod.dumps(cfg):
                return data
        sim = Simulation(cfg, self.comm, quiet=self.quiet)
        res = sim.run_exact() if exact else sim.run()   # collective under MPI
        if sim.comm.rank == 0:
            hdf5.write_result(path, res, force=True)
        sim.comm.bcast(None, root=0)                    # every rank waits for the file
        return hdf5.load(path)


def _series(data, name, index=0):
    m = data["observables"][name]["mean"]
    m = m.reshape(m.shape[0], -1)[:, index]
    se = data["observables"][name].get("stderr")
    se = se.reshape(se.shape[0], -1)[:, index] if se is not None else None
    return m, se


def _dev(a, b):
    return float(np.max(np.abs(a - b))), float(np.mean(np.abs(a - b)))


_LABEL = {"reduced": "operator", "sb": "SB", "meanfield": "mean field"}


def _sweep(run, fig, tag, base, ex, methods, sizes, obs):
    """Runs of every (method, cluster size) beside the exact data ``ex``: (curves, stats)."""
    curves, stats = [], {}
    for method in methods:
        for n in sizes:
            d = run.get(fig, f"{tag}{method}_c{n}",
                        _with(base, method={"kind": method, "cluster_size": n}))
            curves.append((f"{_LABEL[method]} n={n}", d, method))
            stats[f"{tag}{method}_c{n}"] = _dev(_series(d, obs)[0], _series(ex, obs)[0])
    return curves, stats


# -- figure definitions -------------------------------------------------------------------------
def fig4(run, samples=2000):
    base = _cfg({"kind": "tfim", "n_sites": 4, "J": 0.125, "hx": 1.0},
                {"kind": "neel"},
                {"kind": "sb", "cluster_size": 1, "samples": samples, "antithetic": True},
                {"dt": 0.01, "t_max": 20.0, "output_dt": 0.1},
                {"names": ["mz_staggered"]})
    ex = run.get("fig4", "exact", _with(base, method={"kind": "exact"}), exact=True)
    curves, stats = _sweep(run, "fig4", "", base, ex, ("reduced", "sb"), (1, 2, 4),
                           "mz_staggered")
    return dict(kind="lines", obs="mz_staggered", exact=ex, curves=curves, stats=stats,
                ylabel="staggered magnetization", title="Fig. 4: 4-spin Ising, eq. (24)")


def fig5(run, samples=4000):
    pure = _cfg({"kind": "ising_chaotic", "n_sites": 16},
                {"kind": "down", "flipped": [0]},
                {"kind": "sb", "cluster_size": 1, "samples": samples, "antithetic": True},
                {"dt": 0.02, "t_max": 20.0, "output_dt": 0.2},
                {"names": ["sz"]})
    mixed = _cfg({"kind": "ising_chaotic", "n_sites": 16},
                 {"kind": "bath", "polarized": [0]},
                 {"kind": "sb", "cluster_size": 1, "samples": samples},
                 {"dt": 0.02, "t_max": 20.0, "output_dt": 0.2},
                 {"names": ["sz"]})
    out = {"panels": []}
    for tag, base in (("pure", pure), ("mixed", mixed)):
        ex = run.get("fig5", f"{tag}_exact",
                     _with(base, method={"kind": "exact"}, output={"exact_draws": 8}), exact=True)
        curves, stats = [], {}
        for n in (1, 2, 4):
            d = run.get("fig5", f"{tag}_sb_c{n}", _with(base, method={"cluster_size": n}))
            curves.append((f"SB n={n}", d, "sb"))
            stats[f"{tag}_sb_c{n}"] = _dev(_series(d, "sz")[0], _series(ex, "sz")[0])
        out["panels"].append(dict(kind="lines", obs="sz", exact=ex, curves=curves, stats=stats,
                                  ylabel=r"$\langle\sigma^z_0\rangle$", sqrt_tail=True,
                                  title=f"Fig. 5: chaotic Ising, {tag} bath"))
    return out


def fig6(run, samples=1000, realizations=10):
    out = {"panels": []}
    for hz in (1.0, 5.0):
        base = _cfg({"kind": "heisenberg", "n_sites": 16, "hz": hz},
                    {"kind": "neel"},
                    {"kind": "sb", "cluster_size": 1, "samples": samples, "antithetic": True},
                    {"dt": 0.01, "t_max": 10.0, "output_dt": 0.1},
                    {"names": ["mz_staggered"]},
                    {"realizations": realizations, "seed": 6})
        ex = run.get("fig6", f"hz{hz:g}_exact", _with(base, method={"kind": "exact"}), exact=True)
        curves, stats = _sweep(run, "fig6", f"hz{hz:g}_", base, ex, ("reduced", "sb"),
                               (1, 2, 4), "mz_staggered")
        out["panels"].append(dict(kind="lines", obs="mz_staggered", exact=ex, curves=curves,
                                  stats=stats, ylabel="$m_z$",
                                  title=f"Fig. 6: disordered Heisenberg N=16, $h_z$={hz:g}"))
    # bottom row of fig. 6: N = 64 (no exact reference), long times, diffusive 1/√t decay
    long = _cfg({"kind": "heisenberg", "n_sites": 64, "hz": 5.0},
                {"kind": "neel"},
                {"kind": "sb", "cluster_size": 2, "samples": 400, "antithetic": True},
                {"dt": 0.02, "t_max": 60.0, "output_dt": 0.2},
                {"names": ["mz_staggered"]},
                {"realizations": 4, "seed": 64})
    curves, stats = [], {}
    for method in ("reduced", "sb"):
        for n in (2, 4):
            d = run.get("fig6", f"N64_{method}_c{n}",
                        _with(long, method={"kind": method, "cluster_size": n}))
            curves.append((f"{_LABEL[method]} n={n}", d, method))
            m, _ = _series(d, "mz_staggered")
            t = d["time"]
            sel = t >= 10.0
            slope = np.polyfit(np.log(t[sel]), np.log(np.abs(m[sel]) + 1e-12), 1)[0]
            stats[f"N64_{method}_c{n}_loglog_slope_t>=10"] = float(slope)
    out["panels"].append(dict(kind="lines", obs="mz_staggered", exact=None, curves=curves,
                              stats=stats, ylabel="$|m_z|$", loglog=True,
                              title="Fig. 6: N=64, $h_z$=5, long times (dotted: $t^{-1/2}$)"))
    return out


def fig7(run, samples=8000):
    N = 16
    subs = [[i, (i + 1) % N] for i in range(N)]
    base = _cfg({"kind": "heisenberg", "n_sites": N, "hz": 5.0},
                {"kind": "neel"},
                {"kind": "reduced", "cluster_size": 2, "samples": samples, "antithetic": True},
                {"dt": 0.01, "t_max": 10.0, "output_dt": 0.1},
                {"names": ["entropy", "rdm_min_eig"], "subsystems": subs},
                {"realizations": 1, "seed": 7})
    ex = run.get("fig7", "exact", _with(base, method={"kind": "exact"}), exact=True)
    curves, stats = [], {}
    for n in (1, 2, 4):
        d = run.get("fig7", f"reduced_c{n}",
                    _with(base, method={"cluster_size": n, "offsets": list(range(n))}))
        curves.append((f"operator n={n}, {n} offsets", d, "reduced"))
        stats[f"reduced_c{n}"] = _dev(d["observables"]["entropy"]["mean"].mean(axis=1),
                                      ex["observables"]["entropy"]["mean"].mean(axis=1))
        stats[f"reduced_c{n}_min_eig"] = float(d["observables"]["rdm_min_eig"]["mean"].min())
    return dict(kind="lines", obs="entropy", average=True, exact=ex, curves=curves, stats=stats,
                ylabel="entropy of 2-site subsystems (bits)",
                title="Fig. 7: entanglement, Heisenberg N=16, $h_z$=5")


def fig8(run, samples=4000):
    N, dmax = 64, 12
    pairs = [[0, d] for d in range(1, dmax + 1)]
    base = _cfg({"kind": "xy", "n_sites": N},
                {"kind": "neel"},
                {"kind": "reduced", "cluster_size": 2, "samples": samples, "antithetic": True},
                {"dt": 0.01, "t_max": 6.0, "output_dt": 0.1},
                {"names": ["czz_connected"], "pairs": pairs})
    times = np.arange(61) * 0.1
    _, ref = freefermion.xy_reference(models.xy(N), states.make_state("neel", N), times, pairs)
    maps, stats = [], {}
    for n in (2, 4):
        d = run.get("fig8", f"reduced_c{n}", _with(base, method={"cluster_size": n}))
        m = d["observables"]["czz_connected"]["mean"]
        maps.append((f"operator n={n}", m))
        stats[f"reduced_c{n}"] = _dev(m, ref)
        stats[f"reduced_c{n}_mean_stderr"] = float(
            np.mean(d["observables"]["czz_connected"]["stderr"]))
    return dict(kind="map", maps=maps, reference=ref, times=times, stats=stats,
                title="Fig. 8: XY chain N=64, connected zz correlator")


def fig9(run, samples=1000, realizations=10):
    base = _cfg({"kind": "heisenberg", "n_sites": 16, "hz": 10.0},
                {"kind": "neel"},
                {"kind": "sb", "cluster_size": 2, "samples": samples, "antithetic": True},
                {"dt": 0.005, "t_max": 5.0, "output_dt": 0.05},
                {"names": ["mz_staggered"]},
                {"realizations": realizations, "seed": 9})
    ex = run.get("fig9", "exact", _with(base, method={"kind": "exact"}), exact=True)
    curves, stats = _sweep(run, "fig9", "", base, ex, ("meanfield", "sb"), (1, 2, 4),
                           "mz_staggered")
    return dict(kind="lines", obs="mz_staggered", exact=ex, curves=curves, stats=stats,
                ylabel="$m_z$", title="Fig. 9: mean field vs CTWA, $h_z$=10")


def discrete(run, samples=4000):
    """Gaussian (52)–(54) vs discrete (products of single-spin DTWA points) sampling.

    Reported per run: ``noise`` = per-sample standard deviation of m_z averaged over time
    (√samples × stderr), ``rms_dev`` = RMS deviation from exact over time, ``bias`` =
    √max(rms_dev² − mean stderr², 0) (the part of the deviation not explained by noise).
    """
    cases = [
        ("tfim4", _cfg({"kind": "tfim", "n_sites": 4, "J": 0.125, "hx": 1.0}, {"kind": "neel"},
                       {"kind": "reduced", "samples": samples}, {"dt": 0.01, "t_max": 10.0,
                                                                 "output_dt": 0.1},
                       {"names": ["mz_staggered"]}), (1, 2)),
        ("heis16", _cfg({"kind": "heisenberg", "n_sites": 16, "hz": 5.0}, {"kind": "neel"},
                        {"kind": "reduced", "samples": samples // 4}, {"dt": 0.01, "t_max": 5.0,
                                                                       "output_dt": 0.1},
                        {"names": ["mz_staggered"]}, {"realizations": 4, "seed": 16}), (2, 4)),
    ]
    panels = []
    for tag, base, sizes in cases:
        ex = run.get("discrete", f"{tag}_exact", _with(base, method={"kind": "exact"}),
                     exact=True)
        e = _series(ex, "mz_staggered")[0]
        curves, stats = [], {}
        for scheme in ("gaussian", "discrete"):
            for n in sizes:
                cfg = _with(base, method={"cluster_size": n, "sampling": scheme})
                d = run.get("discrete", f"{tag}_{scheme}_c{n}", cfg)
                m, _ = _series(d, "mz_staggered")
                # Monte Carlo part of the error only (not the disorder spread)
                se = d["observables"]["mz_staggered"]["stderr_within"].reshape(-1)
                n_s = cfg["method"]["samples"] * cfg["disorder"]["realizations"]
                rms = float(np.sqrt(np.mean((m - e) ** 2)))
                stats[f"{tag}_{scheme}_c{n}"] = {
                    "noise": float(np.mean(se[1:]) * np.sqrt(n_s)), "rms_dev": rms,
                    "bias": float(np.sqrt(max(rms ** 2 - np.mean(se ** 2), 0.0)))}
                curves.append((f"{scheme} n={n}", d, "sb" if scheme == "discrete" else "reduced"))
        panels.append(dict(kind="lines", obs="mz_staggered", exact=ex, curves=curves, stats=stats,
                           ylabel="$m_z$", title=f"Gaussian vs discrete sampling: {tag}"))
    return {"panels": panels}


# -- plotting -------------------------------------------------------------------------------------
def _plot_lines(ax, panel):
    t = panel["exact"]["time"] if panel.get("exact") else None
    if panel.get("loglog"):
        return _plot_loglog(ax, panel)
    colors = {1: "tab:blue", 2: "tab:orange", 4: "tab:green"}
    for label, d, method in panel["curves"]:
        n = int(label.split("n=")[1].split(",")[0])
        m = d["observables"][panel["obs"]]["mean"]
        m = m.reshape(m.shape[0], -1)
        y = m.mean(axis=1) if panel.get("average") else m[:, 0]
        ls = "--" if method in ("sb",) else ":" if method == "meanfield" else "-"
        ax.plot(d["time"], y, ls, color=colors.get(n, "k"), label=label, lw=1.2)
    if t is not None:
        e = panel["exact"]["observables"][panel["obs"]]["mean"]
        e = e.reshape(e.shape[0], -1)
        ax.plot(t, e.mean(axis=1) if panel.get("average") else e[:, 0], "k-", lw=2,
                label="exact", zorder=0)
    if panel.get("sqrt_tail"):
        # diffusive approach to equilibrium: m(t) ≈ m_eq + a/√t, least squares on t ≥ 2
        e = panel["exact"]["observables"][panel["obs"]]["mean"].reshape(len(t), -1)[:, 0]
        sel = t >= 2.0
        A = np.stack([np.ones(sel.sum()), 1.0 / np.sqrt(t[sel])], axis=1)
        (m_eq, a), *_ = np.linalg.lstsq(A, e[sel], rcond=None)
        tt = np.linspace(1.0, t[-1], 80)
        ax.plot(tt, m_eq + a / np.sqrt(tt), "k:", lw=1,
                label=rf"${m_eq:.2f} {a:+.2f}/\sqrt{{t}}$")
    ax.set_xlabel("t")
    ax.set_ylabel(panel["ylabel"])
    ax.set_title(panel["title"], fontsize=9)
    ax.legend(fontsize=6, ncol=2)


def _plot_loglog(ax, panel):
    colors = {1: "tab:blue", 2: "tab:orange", 4: "tab:green"}
    for label, d, method in panel["curves"]:
        n = int(label.split("n=")[1].split(",")[0])
        m = np.abs(d["observables"][panel["obs"]]["mean"].reshape(len(d["time"]), -1)[:, 0])
        t = d["time"]
        ax.loglog(t[1:], m[1:], "--" if method == "sb" else "-", color=colors.get(n, "k"),
                  label=label, lw=1.2)
    tt = np.linspace(5.0, t[-1], 50)
    amp = m[np.searchsorted(t, 10.0)] * np.sqrt(10.0)
    ax.loglog(tt, amp / np.sqrt(tt), "k:", lw=1, label=r"$\propto t^{-1/2}$")
    ax.set_xlabel("t")
    ax.set_ylabel(panel["ylabel"])
    ax.set_title(panel["title"], fontsize=9)
    ax.legend(fontsize=6, ncol=2)


def _plot_map(fig, panel):
    maps = panel["maps"] + [("free fermions (exact)", panel["reference"])]
    vmax = max(np.abs(m).max() for _, m in maps)
    axes = fig.subplots(1, len(maps), sharey=True)
    for ax, (label, m) in zip(axes, maps):
        im = ax.imshow(m, origin="lower", aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                       extent=[0.5, m.shape[1] + 0.5, panel["times"][0], panel["times"][-1]])
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(r"$\Delta$")
    axes[0].set_ylabel("t")
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    fig.suptitle(panel["title"], fontsize=10)


def make(names, outdir="figures", force=False, comm=None, fmt="png", quiet=True):
    """Compute (or load) and plot the figures; returns {fig: stats}."""
    import matplotlib  # optional dependency (matplotlib)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional dependency (matplotlib)
    run = Runner(outdir, force, comm, quiet)
    summary = {}
    for name in names:
        if name not in FIGURES:
            raise ValueError(f"plot: unknown figure {name!r} (known: {list(FIGURES)})")
        res = globals()[name](run)
        if comm is not None and comm.rank != 0:
            continue
        panels = res.get("panels", [res])
        fig = plt.figure(figsize=(5.5 * len(panels) if panels[0]["kind"] == "lines" else 13, 4),
                         layout="constrained")
        if panels[0]["kind"] == "map":
            _plot_map(fig, panels[0])
        else:
            axes = fig.subplots(1, len(panels))
            for ax, p in zip(np.atleast_1d(axes), panels):
                _plot_lines(ax, p)
        path = os.path.join(outdir, f"{name}.{fmt}")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        stats = {}
        for p in panels:
            stats.update(p["stats"])
        summary[name] = stats
        with open(os.path.join(outdir, f"{name}.json"), "w") as fh:
            json.dump(stats, fh, indent=1)
        print(f"{name}: wrote {path}; deviation from the reference (max, mean |dev|):")
        for k, v in stats.items():
            print(f"    {k}: {v}")
    return summary
