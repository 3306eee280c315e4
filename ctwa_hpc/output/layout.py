"""The layout of an output file: netCDF-4 compatible HDF5 (plans for :mod:`ctwa_hpc.output.hdf5`).

Layout (README.md, section "Output (HDF5, netCDF-4 compatible)"); every dataset has named
dimension scales, so ``xarray.open_dataset(path, engine="h5netcdf", group="observables/sz")``
and ``xarray.open_datatree(path, engine="h5netcdf")`` read it:

=====================================  =======================================================
``/time``                              output times (time), coordinate variable
``/observables/<name>/mean``           disorder- and sample-averaged value (time[, comp])
``/observables/<name>/stderr``         its standard error (CTWA only; see ``STDERR``)
``/observables/<name>/stderr_within``  Monte Carlo part of the error (CTWA)
``/observables/<name>/stderr_disorder``  exact runs with several realizations
``/realizations/<name>/{mean,stderr}``  per-realization values (realization, time[, comp])
``/exact/<name>/{mean,stderr_disorder,per_realization}``  the exact reference
``/moments/{count,s1,s2,sx,cross}``    raw sums over samples (mergeable across jobs): count
                                       (replica), s1/s2 (replica, time, column), sx (replica,
                                       time, product), cross (product, factor) = the column
                                       pair of each product
``/partial/{count,s1,s2,sx}``          the same sums per rank before the reduction (rank, ...)
``/disorder/...``                      every realization's random inputs: positions (realization,
                                       site, spatial), field_<a> (realization, site),
                                       coupling_<ab> (realization, site, site_j),
                                       cluster_of_site (realization, offset, site)
root attributes                        config_toml, config_hash, provenance (see ``root_attrs``)
=====================================  =======================================================

Component axes (``comp``) and their coordinates, from the output's labels: ``site`` (site
index; sz, sx, sy and their two-time variants), ``pair`` (index into observables.pairs, with
``sites`` (pair, member)), ``distance`` (czz_map: Δ), ``subsystem`` (index into
observables.subsystems, with ``sites``), ``q`` (szz_q, with ``q_vector`` (q, spatial)),
otherwise ``component``; every labelled axis also has a ``label`` string coordinate.
Single-valued outputs (mz_staggered, energy, custom strings) have shape (time,).  Strings are fixed-length UTF-8 with ``_Encoding = "utf-8"`` (parallel
HDF5 cannot write variable-length data).  Every group carries its own copies of the
coordinates it uses (so it opens alone); time axes are attached to the root ``/time`` first and
to the group's ``time`` last (netCDF readers use the last scale).

The writer in :mod:`ctwa_hpc.output.hdf5` executes a :class:`_Plan` (ordered groups, datasets and
attributes, identical on every rank under parallel HDF5); :func:`to_dataset` builds the
xarray view of the same content.  No h5py here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import config as config_mod
from ..tools.version import __version__

from .rows import rows_from_result
from .schema import (STDERR, TIME_ATTRS, component_axes, disorder_key, realization_index,
                     root_attrs, split_disorder_key, value_units)

# -- the plan: every group/dataset/attribute of the file, built on rank 0 ---------------------
def _strings(values):
    enc = [str(v).encode() for v in values]
    n = max([1] + [len(e) for e in enc])
    return np.array(enc, dtype=f"S{n}"), ("utf8", n)


class _Plan:
    """Ordered structure operations (identical on all ranks) plus rank 0's data."""

    def __init__(self, rows=None):
        self.ops, self.data = [], {}
        self.rows = rows          # LocalRows: per-realization datasets written by their ranks

    def group(self, path, attrs=None):
        self.ops.append(("group", path, attrs or {}))

    @property
    def nbytes(self):
        return int(sum(np.asarray(v).nbytes for v in self.data.values()))

    def _add(self, path, value, shape, dtype, attrs, scale, attach):
        if self.rows is not None and path in self.rows.data:
            shape = (self.rows.length[path],) + tuple(np.shape(value)[1:])
            value = None          # filled rank by rank (ctwa_hpc.output.hdf5)
        self.ops.append(("dataset", path, tuple(shape), dtype, attrs, scale, tuple(attach)))
        if value is not None:
            self.data[path] = value

    def coord(self, group, name, dims, values, attrs=None):
        """A coordinate variable (a dimension scale when ``dims == (name,)``) in ``group``."""
        attrs = dict(attrs or {})
        if np.asarray(values).dtype.kind in "USO":
            value, dtype = _strings(values)
            attrs["_Encoding"] = "utf-8"
        else:
            value = np.asarray(values)
            dtype = value.dtype.str
        scale = name if tuple(dims) == (name,) else None
        attach = [] if scale else self._attach(group, dims)
        self._add(f"{group}/{name}", value, value.shape, dtype, attrs, scale, attach)

    @staticmethod
    def _attach(group, dims):
        out = []
        for ax, d in enumerate(dims):
            if d == "time" and group != "":
                out.append((ax, "/time"))
            out.append((ax, f"{group}/{d}"))
        return out

    def variable(self, group, name, dims, value=None, shape=None, attrs=None, aux=()):
        """A data variable; ``value=None``: created empty with ``shape`` (filled later)."""
        attrs = dict(attrs or {})
        if aux:
            attrs["coordinates"] = " ".join(aux)
        if value is not None:
            value = np.asarray(value)
            shape, dtype = value.shape, value.dtype.str
        else:
            dtype = "<f8"
        self._add(f"{group}/{name}", value, shape, dtype, attrs, None, self._attach(group, dims))


def _aux_for(coords):
    """Names of the auxiliary (non-dimension) coordinates (the ``coordinates`` attribute)."""
    return tuple(c for c, cd, _, _ in coords if cd != (c,))


def _output_groups(plan, root, outputs, times, real_index, per_real=None, exact=False):
    plan.group(root)
    if per_real is not None:
        plan.group(per_real)
    for name, o in outputs.items():
        mean = np.asarray(o["mean"])
        squeeze, cdims, coords = component_axes(name, o["kind"], o["labels"], mean.shape[1:])
        fix = (lambda a: np.asarray(a).reshape(np.shape(a)[:-1])) if squeeze else np.asarray
        attrs = {"description": o["description"], "kind": o["kind"]}
        units = value_units(name, o["kind"])
        targets = [(f"{root}/{name}", False)]
        if per_real is not None:
            targets.append((f"{per_real}/{name}", True))
        for group, real in targets:
            plan.group(group, attrs)
            dims = (("realization",) if real else ()) + ("time",) + cdims
            has_real = real or (exact and o.get("real_mean") is not None)
            plan.coord(group, "time", ("time",), times, TIME_ATTRS)
            if has_real:
                plan.coord(group, "realization", ("realization",), real_index,
                           {"long_name": "disorder realization (disorder.first + r)"})
            for c in sorted(coords, key=lambda c: c[1] != (c[0],)):   # dimension scales first
                plan.coord(group, c[0], c[1], c[2], c[3])
            aux = _aux_for(coords)
            va = {"units": units, "long_name": o["description"]}
            if real:
                rows = plan.rows.data if plan.rows is not None else {}
                rm = rows.get(f"{group}/mean", o.get("real_mean"))
                rs = rows.get(f"{group}/stderr", o.get("real_stderr"))
                if rm is not None:
                    plan.variable(group, "mean", dims, fix(rm) if rm is o.get("real_mean")
                                  else rm, attrs=va, aux=aux)
                if rs is not None:
                    plan.variable(group, "stderr", dims, fix(rs) if rs is o.get("real_stderr")
                                  else rs, attrs={"units": units, "description": STDERR[
                                      "realization_stderr"]}, aux=aux)
                continue
            plan.variable(group, "mean", dims, fix(mean), attrs=va, aux=aux)
            for key in ("stderr", "stderr_within", "stderr_disorder"):
                if o.get(key) is not None:
                    plan.variable(group, key, dims, fix(o[key]),
                                  attrs={"units": units, "description": STDERR[key]}, aux=aux)
            if exact and o.get("real_mean") is not None:
                plan.variable(group, "per_realization", ("realization",) + dims,
                              fix(o["real_mean"]), attrs=dict(va, description="exact value of "
                                                              "every realization"), aux=aux)


def _realization_samples(plan, real_index):
    if plan.rows is None or "/realizations/n_samples" not in plan.rows.data:
        return
    g = "/realizations"
    plan.coord(g, "realization", ("realization",), real_index,
               {"long_name": "disorder realization (disorder.first + r)"})
    plan.variable(g, "n_samples", ("realization",), plan.rows.data[f"{g}/n_samples"],
                  attrs={"description": "samples of the realization over all cluster offsets "
                         "(an antithetic pair counts 2)", "units": "1"})


def _moment_coords(plan, group, result, rows, n_cols, n_prod, real_index):
    plan.coord(group, "replica", ("replica",), np.arange(rows),
               {"long_name": "moment row = r * n_offsets + offset (r: realization of this file)"})
    plan.coord(group, "time", ("time",), result.times, TIME_ATTRS)
    plan.coord(group, "column", ("column",), np.arange(n_cols),
               {"long_name": "statistics column (a sum of Pauli strings)"})
    plan.coord(group, "product", ("product",), np.arange(n_prod),
               {"long_name": "cross product x_a x_b of two columns (a, b) = cross[product]"})
    R = max(len(real_index), 1)
    O = max(rows // R, 1)
    plan.coord(group, "replica_realization", ("replica",), real_index[np.arange(rows) // O]
               if rows else np.zeros(0, np.int64), {"long_name": "global realization index"})
    plan.coord(group, "replica_offset", ("replica",), np.arange(rows) % O,
               {"long_name": "cluster partition index (into method.offsets)"})
    labels = list(result.extra.get("columns") or [])
    if len(labels) != n_cols:
        labels = [f"column {k}" for k in range(n_cols)]
    plan.coord(group, "column_label", ("column",), labels, {"long_name": "column definition"})


_MOMENT_DIMS = {"count": ("replica",), "s1": ("replica", "time", "column"),
                "s2": ("replica", "time", "column"), "sx": ("replica", "time", "product"),
                "shift": ("replica", "time", "column"), "gcount": ("replica", "group"),
                "gs1": ("replica", "time", "group", "gcolumn")}   # g*: with renyi2_pairs only
_MOMENT_DESC = {"count": "independent units summed in the row (antithetic: pairs)",
                "s1": "sum over units of x - shift", "s2": "sum of (x - shift)^2",
                "sx": "sum of (x_a - shift_a)(x_b - shift_b), (a, b) = cross[product]",
                "shift": "the row's shift c of every column (the values of its first sample): "
                         "mean = shift + s1/count, variance = (s2 - s1^2/count)/(count - 1)",
                "gcount": "units in sample group g (global unit index mod G)",
                "gs1": "sum over the units of group g of x - shift, for the columns `grouped`"}


def _moments(plan, result, real_index):
    """``/moments`` from the rows (stored when ``output.moments`` keeps them)."""
    rows = plan.rows
    if rows is None or "/moments/s1" not in rows.data:
        return
    n_rows = rows.length["/moments/s1"]
    s1 = rows.data["/moments/s1"]
    n_cols, n_prod = s1.shape[2], len(rows.cross)
    plan.group("/moments", {"description": "sums over samples (antithetic: over pairs), "
                            "shifted per row; merge jobs by adding re-shifted sums (samples) or "
                            "stacking rows (realizations): ctwa-hpc merge"})
    _moment_coords(plan, "/moments", result, n_rows, n_cols, n_prod, real_index)
    aux = ("replica_realization", "replica_offset")
    if rows.grouped is not None:         # sample groups (ctwa_hpc.method.moments)
        plan.coord("/moments", "group", ("group",),
                   np.arange(rows.data["/moments/gcount"].shape[1]), {"long_name": "sample group"})
        plan.coord("/moments", "gcolumn", ("gcolumn",), np.arange(len(rows.grouped)),
                   {"long_name": "grouped column"})
        plan.variable("/moments", "grouped", ("gcolumn",), np.asarray(rows.grouped, np.int64),
                      attrs={"description": "statistics column of every grouped column"})
    for k in _MOMENT_DIMS:
        if f"/moments/{k}" not in rows.data:
            continue
        plan.variable("/moments", k, _MOMENT_DIMS[k], rows.data[f"/moments/{k}"],
                      attrs={"description": _MOMENT_DESC[k]},
                      aux=aux + (("column_label",) if k in ("s1", "s2", "shift") else ()))
    plan.coord("/moments", "factor", ("factor",), np.arange(2), {"long_name": "a or b"})
    plan.variable("/moments", "cross", ("product", "factor"),
                  np.asarray(rows.cross, dtype=np.int64).reshape(-1, 2),
                  attrs={"description": "column pair (a, b) of every cross product"})


def _disorder(plan, result, real_index):
    rows = plan.rows.data if plan.rows is not None else {}
    items = {}
    for path, v in rows.items():
        if path.startswith("/disorder/"):
            key = path[len("/disorder/"):]
            kind, comp = split_disorder_key(key)
            if kind is None:
                items[key] = v
            else:
                items.setdefault(kind, {})[comp] = v
    if not items:
        return
    g = "/disorder"
    R, N = len(real_index), int(result.cfg["model"]["n_sites"])
    plan.group(g, {"description": "random inputs of every disorder realization (coefficients in "
                   "the units E of the Hamiltonian)"})
    plan.coord(g, "realization", ("realization",), real_index,
               {"long_name": "disorder realization (disorder.first + r)"})
    plan.coord(g, "site", ("site",), np.arange(N), {"long_name": "site index i"})
    made = {"realization", "site"}

    def dims_for(key, shape):
        dims = ["realization"] + [f"{key}_axis{k}" for k in range(1, len(shape))]
        for k, n in enumerate(shape[1:], start=1):
            if n == N and "site" not in dims:
                dims[k] = "site"
        for d, n in zip(dims, shape):
            if d not in made:
                plan.coord(g, d, (d,), np.arange(n), {"long_name": "index"})
                made.add(d)
        return tuple(dims)

    for key, v in items.items():
        if key == "positions":
            v = np.asarray(v, dtype=float)
            d = v.shape[-1]
            plan.coord(g, "spatial", ("spatial",), list("xyz")[:d] if d <= 3 else
                       [f"axis {k}" for k in range(d)], {"long_name": "spatial axis"})
            plan.variable(g, "positions", ("realization", "site", "spatial"), v,
                          attrs={"description": "site positions r_i", "units": "length unit of "
                                 "the lattice (model.spacing, model.box, positions_file)"})
        elif key in ("fields", "couplings") and isinstance(v, dict):
            if key == "couplings" and "site_j" not in made:
                plan.coord(g, "site_j", ("site_j",), np.arange(N), {"long_name": "site index j"})
                made.add("site_j")
            for comp, a in v.items():
                if key == "fields":
                    plan.variable(g, disorder_key("fields", comp), ("realization", "site"), a, attrs={
                        "description": f"full coefficient h^{comp}_i of sigma^{comp}_i in H: "
                                       "every one-site term summed (model.fields, uniform and "
                                       "random parts, model.hx/hz, file h_a, heisenberg "
                                       "h_z delta_i; time-dependent terms by amplitude)",
                        "units": "E"})
                else:
                    plan.variable(g, disorder_key("couplings", comp), ("realization", "site", "site_j"), a,
                                  attrs={"description": f"coefficient J^{comp}_ij of sigma^a_i "
                                         "sigma^b_j in H (i < j; stored symmetric)",
                                         "units": "E"})
        elif key == "cluster_of_site":
            v = np.asarray(v, dtype=np.int64)
            plan.coord(g, "offset", ("offset",), np.arange(v.shape[1]),
                       {"long_name": "cluster partition index (into method.offsets)"})
            plan.variable(g, key, ("realization", "offset", "site"), v, attrs={
                "description": "index of the cluster holding each site (the CTWA partition)"})
        elif isinstance(v, np.ndarray) and v.ndim and v.dtype.kind in "biuf":
            plan.variable(g, key, dims_for(key, (R,) + v.shape[1:]), v)


def build_plan(result, writer, rows=None):
    """The plan of the file; ``rows``: rank 0's LocalRows (their datasets get their full
    length and are filled by every rank; default: all rows of ``result``)."""
    if rows is None:
        rows = rows_from_result(result)
    plan = _Plan(rows)
    plan.ops.append(("attrs", "/", root_attrs(result, writer)))
    plan.coord("", "time", ("time",), result.times, TIME_ATTRS)
    real_index = realization_index(result)
    _output_groups(plan, "/observables", result.outputs, result.times, real_index,
                   "/realizations")
    _realization_samples(plan, real_index)
    _moments(plan, result, real_index)
    if result.exact is not None:
        _output_groups(plan, "/exact", result.exact, result.times, real_index, exact=True)
    _disorder(plan, result, real_index)
    return plan


# -- xarray ---------------------------------------------------------------------------------
def outputs_from_load(data):
    """RunResult-style output dicts (and the exact ones) from :func:`load`."""
    outs, exact = {}, {}
    for grp, target in (("observables", outs), ("exact", exact)):
        for name, o in data[grp].items():
            ga = data["group_attrs"][f"{grp}/{name}"]
            real = data["realizations"].get(name, {}) if grp == "observables" else {}
            target[name] = dict(o, labels=ga.get("labels") or [], kind=ga.get("kind", "direct"),
                                description=ga.get("description", ""),
                                real_mean=real.get("mean", o.get("per_realization")),
                                real_stderr=real.get("stderr"))
    return outs, exact or None


def to_dataset(times, outputs, exact, attrs, real_index):
    """The xarray.Dataset of :func:`ctwa_hpc.output.hdf5.to_xarray` from RunResult-style outputs."""
    import xarray as xr  # optional dependency (xarray)
    ds = xr.Dataset(coords={"time": ("time", np.asarray(times), TIME_ATTRS),
                            "realization": ("realization", np.asarray(real_index))})
    n_sites = None
    for src, is_exact in ((outputs, False), (exact or {}, True)):
        for name, o in src.items():
            mean = np.asarray(o["mean"])
            squeeze, cdims, coords = component_axes(name, o["kind"], o["labels"], mean.shape[1:])
            ren = {}
            for c, cd, vals, ca in coords:
                if c == "site" and np.array_equal(vals, np.arange(len(vals))) and \
                        n_sites in (None, len(vals)):
                    n_sites = len(vals)
                    ren[c] = c
                elif not (c == "label" and ren.get("site") == "site"):
                    ren[c] = f"{name}_{c}"
            dims = tuple(ren.get(d, d) for d in cdims)
            for c, cd, vals, ca in coords:
                if c in ren and ren[c] not in ds.coords:
                    ds.coords[ren[c]] = (tuple(ren.get(d, d) for d in cd), np.asarray(vals), ca)
            fix = (lambda a: np.asarray(a).reshape(np.shape(a)[:-1])) if squeeze else np.asarray
            units = value_units(name, o["kind"])
            va = {"long_name": o["description"], "units": units}
            prefix = f"{name}_exact" if is_exact else name
            se, se_key = o.get("stderr"), "stderr"
            if se is None:
                se, se_key = o.get("stderr_disorder"), "stderr_disorder"
            if se is None:
                se, se_key = np.zeros_like(mean), None
            td = ("time",) + dims
            ds[prefix if is_exact else f"{name}_mean"] = (td, fix(mean), va)
            ds[f"{prefix}_stderr"] = (td, fix(se), {"units": units, "description": STDERR.get(
                se_key, "no statistical error (exact, one realization)")})
            if o.get("stderr_within") is not None:
                ds[f"{prefix}_stderr_within"] = (td, fix(o["stderr_within"]),
                                                 {"units": units,
                                                  "description": STDERR["stderr_within"]})
            if o.get("real_mean") is not None:
                ds[f"{prefix}_realization_mean"] = (("realization",) + td, fix(o["real_mean"]),
                                                    va)
            if o.get("real_stderr") is not None:
                ds[f"{prefix}_realization_stderr"] = (
                    ("realization",) + td, fix(o["real_stderr"]),
                    {"units": units, "description": STDERR["realization_stderr"]})
    ds.attrs.update({k: v for k, v in attrs.items()
                     if isinstance(v, (str, int, float, bool, np.integer, np.floating))})
    return ds


def result_to_xarray(result):
    """A RunResult as the :func:`to_xarray` Dataset (the same variables and coordinates)."""
    attrs = {"method": result.method, "n_samples": int(result.n_samples),
             "n_realizations": int(result.cfg["disorder"]["realizations"]),
             "config_toml": config_mod.dumps(result.cfg),
             "ctwa_hpc_version": __version__,
             "backend": result.backend, "mpi_size": int(result.mpi_size),
             "wall_time_s": float(result.wall_time)}
    return to_dataset(result.times, result.outputs, result.exact, attrs,
                             realization_index(result))


@dataclass
class RunResult:
    """Everything the writer needs; ``outputs[name]`` holds mean/stderr arrays and metadata."""

    cfg: dict
    times: np.ndarray
    method: str
    outputs: dict
    moments: object = None
    n_samples: int = 0
    wall_time: float = 0.0
    mpi_size: int = 1
    backend: str = "numpy"
    exact: dict | None = None
    extra: dict = field(default_factory=dict)

    def to_xarray(self):
        """An xarray.Dataset of every output (``<name>_mean``, ``<name>_stderr``, ...)."""
        return result_to_xarray(self)
