"""HDF5 output: writing the layout plan, reading files back, ``ctwa-hpc info`` (h5py through
:mod:`ctwa_hpc.tools.h5`).

:mod:`ctwa_hpc.output.layout` decides what goes where (groups, datasets, dimension scales, coordinate
variables, attributes: a netCDF-4 compatible layout documented in README.md, section "Output
(HDF5, netCDF-4 compatible)"); this module writes that plan with h5py, reads files back
(:func:`load`, :func:`to_xarray`) and describes them (``ctwa-hpc info``).

Writers.  With several ranks and an h5py built against parallel HDF5 the file is opened by
all ranks with ``driver='mpio'``: rank 0 builds the list of groups/datasets/attributes and
broadcasts it, every rank creates them collectively (identical calls), rank 0 writes the
disorder-averaged results and every rank writes the per-realization rows it owns
(:mod:`ctwa_hpc.output.rows`).  Otherwise (serial h5py, one rank, or ``CTWA_H5_GATHER=1``) rank 0
writes the same layout alone, receiving the other ranks' rows one rank at a time; both files
have identical contents apart from ``writer``/``mpi_size``-like provenance.  Files are written to ``<path>.tmp.<pid>`` and renamed by rank 0 after the
(collective) close; an existing file is never overwritten without ``force``.
"""
from __future__ import annotations

import faulthandler
import os
import sys
import time
import tomllib

import numpy as np

from . import layout
from ..tools import h5, parallel
from .schema import split_disorder_key
from .layout import build_plan, result_to_xarray  # noqa: F401 (API: Result.to_xarray)
from .rows import LocalRows, rows_from_result

PARTIAL_KEYS = ("count", "s1", "s2", "sx")   # moment sums (+ "shift" since format 3)


h5py_has_mpi = h5.has_mpi  # the writer choice below and the tests ask this module
OutputWriteError = h5.WriteError   # a failed serial/gather write (every rank raises it)


def writer_kind(comm):
    """'mpio' (parallel HDF5, all ranks write) or 'gather' (rank 0 writes after a gather)."""
    if comm.size > 1 and os.environ.get("CTWA_H5_GATHER", "0") in ("", "0") and h5.has_mpi() \
            and parallel.raw(comm) is not None:
        return "mpio"
    return "gather"


def check_writable(path, force):
    """Refuse to overwrite ``path`` unless ``force`` (call on rank 0 before any work)."""
    if os.path.exists(path) and not force:
        raise FileExistsError(f"output.path: {path} exists; use --force to overwrite")
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise FileNotFoundError(f"output.path: directory {d} does not exist")


def _create(f, ops):
    """Create every object of the plan (collective under mpio: same calls on all ranks)."""
    for op in ops:
        kind, path = op[0], op[1]
        if kind == "attrs":
            obj = f[path]
            attrs = op[2]
        elif kind == "group":
            obj = f.require_group(path)
            attrs = op[2]
        else:
            _, _, shape, dtype, attrs, scale, attach = op
            dt = h5.string_dtype("utf-8", dtype[1]) if isinstance(dtype, tuple) \
                else np.dtype(dtype)
            obj = f.create_dataset(path, shape=shape, dtype=dt)
            if scale:
                obj.make_scale(scale)
            for dim, spath in attach:
                obj.dims[dim].attach_scale(f[spath])
        for k, v in attrs.items():
            obj.attrs[k] = v


def _fill(f, data, guard=None):
    for path, value in data.items():
        if guard is not None and guard.error is not None:
            return   # the disk is full: the file is abandoned, write no more data
        if value.size:
            ds = f[path]
            # bytes → the dataset's fixed-length UTF-8 type (HDF5 converts no ASCII → UTF-8)
            ds[...] = value.astype(ds.dtype) if value.dtype.kind == "S" else value


def _fill_rows(f, rows, guard=None):
    """Write this rank's slice of every per-realization dataset (independent I/O)."""
    for path, value in rows.data.items():
        if guard is not None and guard.error is not None:
            return
        n = len(value)
        if n:
            f[path][rows.start[path]:rows.start[path] + n] = value


def write_output(path, result, comm=None, rows=None, force=False):
    """Write a run to ``path`` atomically (collective: every rank calls it).

    ``result``: the RunResult on rank 0 (ignored elsewhere); ``rows``: this rank's
    :class:`~ctwa_hpc.output.rows.LocalRows` (the realizations it owns; None: rank 0 writes all
    rows of ``result``, other ranks none).  Per-realization datasets are created with their
    full length and every rank writes its own slice (mpio), or rank 0 receives the slices
    rank by rank (gather writer): no process holds the rows of all realizations.  A write
    that does not finish within :func:`write_timeout` ends the process (exit 1).
    """
    comm = comm if comm is not None else parallel.SerialComm()
    writer = writer_kind(comm)
    head = None
    plan = None
    if rows is None:
        rows = rows_from_result(result) if comm.rank == 0 else LocalRows()
    if comm.rank == 0:
        try:
            check_writable(path, force)
            err = None
        except (FileExistsError, FileNotFoundError) as exc:
            err = str(exc)
        plan = build_plan(result, writer, rows) if err is None else None
        head = (err, f"{path}.tmp.{os.getpid()}", plan.ops if plan else None)
    err, tmp, ops = comm.bcast(head, root=0)
    if err:
        raise FileExistsError(err)
    with _deadline(write_timeout(rows.nbytes + (plan.nbytes if plan else 0))):
        error = _write(tmp, writer, comm, ops, plan, rows)
    if writer == "mpio":
        comm.Barrier()
    else:   # rank 0 wrote alone: every rank learns whether it worked (no rank is left behind)
        text = comm.bcast(h5.failed_write(error, path, tmp) if comm.rank == 0 else None)
        if text:
            raise OutputWriteError(text)
    if comm.rank == 0:
        os.replace(tmp, path)
    comm.Barrier()
    return path


WRITE_TIMEOUT_S = 600.0     # plus 1 s per 5 MB: a write that takes longer is stuck


def write_timeout(nbytes):
    """Seconds after which a stuck write ends the process (``CTWA_WRITE_TIMEOUT_S``)."""
    env = os.environ.get("CTWA_WRITE_TIMEOUT_S")
    return float(env) if env else WRITE_TIMEOUT_S + nbytes / 5e6


class _deadline:
    """A watchdog that does not need the GIL (:func:`faulthandler.dump_traceback_later`):
    if the write has not finished after ``seconds`` (a parallel-HDF5 close that spins after
    ENOSPC, a hung file system), the process prints its traceback ("Timeout") and exits
    with code 1; the checkpoint is kept, the temporary file is removed by the next run."""

    def __init__(self, seconds):
        self.seconds = float(seconds)

    def __enter__(self):
        try:
            fd = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):  # a captured stream (pytest, notebook)
            fd = 2
        faulthandler.dump_traceback_later(self.seconds, exit=True, file=fd)

    def __exit__(self, *exc):
        faulthandler.cancel_dump_traceback_later()
        return False


def _write(tmp, writer, comm, ops, plan, rows):
    """Write the file ``tmp``; the serial/gather writer returns its first I/O error (or None)."""
    hang = float(os.environ.get("CTWA_TEST_WRITE_HANG_S", "0") or 0)  # test hook
    if writer == "mpio":
        with h5.File(tmp, "w", driver="mpio", comm=parallel.raw(comm)) as f:
            _create(f, ops)
            if comm.rank == 0:
                _fill(f, plan.data)
            _fill_rows(f, rows)
            if hang:
                time.sleep(hang)
    elif comm.rank == 0:
        f, guard = h5.create_guarded(tmp)   # HDF5 never sees ENOSPC (see h5.GuardedFile)
        try:
            _create(f, ops)
            _fill(f, plan.data, guard)
            _fill_rows(f, rows, guard)
            for k in range(1, comm.size):   # one rank's block in memory at a time
                _fill_rows(f, parallel.recv_object(comm, k), guard)
            if hang:
                time.sleep(hang)
        finally:
            f.close()
            error = guard.finish()
        return error
    else:
        parallel.send_object(comm, rows, 0)
    return None


def write_result(path, result, force=False):
    """Serial convenience: write a RunResult (with all its rows) from one process."""
    return write_output(path, result, parallel.SerialComm(), force=force)


# -- reading ----------------------------------------------------------------------------------
def _decode(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.dtype.kind in "SO":
        return [x.decode() if isinstance(x, bytes) else x for x in v.tolist()]
    return v


def _data_items(g):
    """{name: array} of a group's data variables (no dimension scales or coordinates)."""
    dsets = {k: d for k, d in g.items() if isinstance(d, h5.Dataset)}
    aux = set()
    for d in dsets.values():
        aux.update(str(_decode(d.attrs.get("coordinates", ""))).split())
    return {k: d[...] for k, d in dsets.items() if not d.is_scale and k not in aux}


def load(path):
    """Read an output file into plain dicts.

    Keys: time, observables, realizations, exact ({name: {dataset: array}}), moments and
    ({key: array}, CTWA runs with output.moments), realization_samples (samples per
    realization), disorder ({name: array}), realization_index (global
    realization numbers), attrs (root attributes), group_attrs ({"observables/sz": {...}},
    with ``labels`` from the label coordinate), config (the config parsed from
    ``config_toml``).  Coordinate variables are not returned as data.  A file that cannot be
    read (truncated, damaged) or is not a ctwa-hpc output raises ValueError naming the file
    and the dataset or attribute.
    """
    try:
        out = _load(path)
    except KeyError as exc:
        raise ValueError(f"{path}: {_key_text(exc)} missing: not a ctwa-hpc output file, or "
                         "an incomplete one (rerun the job that wrote it)") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the file ({exc}): it is truncated or damaged; "
                         "rerun the job that wrote it") from None
    out["config"] = stored_config(path, out["attrs"])
    if "realization_index" not in out:
        d = out["config"].get("disorder", {})
        try:
            out["realization_index"] = d.get("first", 0) + np.arange(d.get("realizations", 1))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: root attribute config_toml: disorder.first/realizations "
                             f"are not integers ({exc}); the file is damaged") from None
    return out


def _key_text(exc):
    msg = str(exc.args[0]) if exc.args else str(exc)
    if "object '" in msg:       # h5py: "Unable to open object (object 'time' doesn't exist)"
        return "/" + msg.split("object '", 1)[1].split("'", 1)[0]
    return msg


def _load(path):
    out = {"observables": {}, "realizations": {}, "exact": {}, "group_attrs": {}, "disorder": {}}
    with h5.File(path, "r") as f:
        out["attrs"] = {k: _decode(v) for k, v in f.attrs.items()}
        if "config_toml" not in out["attrs"]:
            raise KeyError("root attribute config_toml")
        if "time" not in f:
            raise KeyError("/time")
        out["time"] = f["time"][...]
        for grp in ("observables", "realizations", "exact"):
            if grp in f:
                for name, g in f[grp].items():
                    if not isinstance(g, h5.Group):   # /realizations/n_samples, coordinates
                        continue
                    out[grp][name] = _data_items(g)
                    ga = {k: _decode(v) for k, v in g.attrs.items()}
                    if "label" in g:
                        ga["labels"] = _decode(g["label"][...])
                    out["group_attrs"][f"{grp}/{name}"] = ga
                    if "realization" in g and "realization_index" not in out:
                        out["realization_index"] = g["realization"][...]
        if "realizations" in f and "n_samples" in f["realizations"]:
            out["realization_samples"] = f["realizations"]["n_samples"][...]
        for grp in ("moments", "disorder"):
            if grp in f:
                out[grp] = _data_items(f[grp])
    return out


def stored_config(path, attrs):
    """The config parsed from the root attribute ``config_toml`` of ``path`` (a table of
    tables); ValueError naming the file and the attribute when it is not."""
    text = attrs.get("config_toml")
    if not isinstance(text, str):
        raise ValueError(f"{path}: root attribute config_toml is not a string "
                         f"({type(text).__name__}); the file is damaged or not a ctwa-hpc output")
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: root attribute config_toml is not valid TOML ({exc}); the "
                         "file is damaged: rerun the job that wrote it") from None
    bad = sorted(k for k, v in cfg.items() if not isinstance(v, dict))
    if bad:
        raise ValueError(f"{path}: root attribute config_toml: {bad[0]} is not a table "
                         f"[{bad[0]}]; the file is damaged: rerun the job that wrote it")
    return cfg


def read_disorder(path):
    """The ``/disorder`` group as RunResult.extra["disorder"] (positions, fields, couplings,
    cluster_of_site, realization_index, other arrays); {} when absent."""
    with h5.File(path, "r") as f:
        if "disorder" not in f:
            return {}
        g = f["disorder"]
        data = _data_items(g)
        out = {"realization_index": g["realization"][...]}
    for k, v in data.items():
        kind, comp = split_disorder_key(k)
        if kind is None:
            out[k] = v
        else:
            out.setdefault(kind, {})[comp] = v
    return out


def datasets(path):
    """{path: array} of every dataset in a file (tests and comparisons)."""
    found = {}
    with h5.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, obj[...])
                     if isinstance(obj, h5.Dataset) else None)
    return found


def stored_config_hash(path):
    """The ``config_hash`` attribute of an existing output file (None if unreadable)."""
    try:
        with h5.File(path, "r") as f:
            return _decode(f.attrs.get("config_hash"))
    except OSError:
        return None


def check_readable(path, what="info"):
    """Raise ValueError('<what>: ...') unless ``path`` is an existing HDF5 file."""
    if not os.path.exists(path):
        raise ValueError(f"{what}: {path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{what}: {path} is a directory, not an output file")
    try:
        ok = h5.is_hdf5(path)
    except OSError as exc:
        raise ValueError(f"{what}: {path}: cannot read ({exc})") from None
    if not ok:
        raise ValueError(f"{what}: {path} is not an HDF5 file")


def describe(path):
    """The text of ``ctwa-hpc info``: layout (shapes, dims), config, provenance."""
    check_readable(path)
    lines = [f"{path}", "", "layout (dataset (dim: size, ...) dtype; [c] = coordinate):"]
    try:
        f = h5.File(path, "r")
    except OSError as exc:
        raise ValueError(f"info: {path}: cannot read the file ({exc}): it is truncated or "
                         "damaged") from None
    with f:
        attrs = {k: _decode(v) for k, v in f.attrs.items()}

        def visit(name, obj):
            if isinstance(obj, h5.Group):
                desc = _decode(obj.attrs.get("description", ""))
                lines.append(f"  /{name}/" + (f"    {desc}" if desc else ""))
                return
            dims = []
            for ax, dim in enumerate(obj.dims):
                label = dim.label or (dim[len(dim) - 1].name.rsplit("/", 1)[-1] if len(dim)
                                      else "?")
                dims.append(f"{label}: {obj.shape[ax]}")
            if obj.is_scale:
                dims = [f"{name.rsplit('/', 1)[-1]}: {obj.shape[0]}"]
            dt = "str" if obj.dtype.kind == "S" else str(obj.dtype)
            units = _decode(obj.attrs.get("units", ""))
            mark = " [c]" if obj.is_scale else ""
            lines.append(f"  /{name:<40s} ({', '.join(dims)}) {dt}{mark}"
                         + (f"  units: {units}" if units else ""))
        f.visititems(visit)
    lines += ["", "config:"]
    lines += ["  " + x for x in str(attrs.get("config_toml", "(none: not a ctwa-hpc output)"))
              .strip().splitlines()]
    lines += ["", "provenance:"]
    for k, v in attrs.items():
        if k != "config_toml":
            lines.append(f"  {k} = {v}")
    return "\n".join(lines)


def info_command(args, summary=None):
    """``ctwa-hpc info OUT.h5``; exit code 2 with a message for a missing or non-HDF5 file."""
    try:
        text = describe(args.path)
        data = None
        if summary is not None and "config_toml" in text_attrs(args.path):
            data = load(args.path)
    except (ValueError, OSError, KeyError) as exc:
        msg = str(exc) if isinstance(exc, ValueError) else f"info: {args.path}: {exc}"
        print(f"ctwa-hpc: error: {msg}", file=sys.stderr)
        return 2
    print(text)
    if data is not None:
        print("\nsummary:")
        summary(data)
    return 0


def text_attrs(path):
    """Root attribute names of an HDF5 file."""
    with h5.File(path, "r") as f:
        return set(f.attrs)


def to_xarray(path):
    """An output file as one :class:`xarray.Dataset`.

    Variables ``<name>_mean``, ``<name>_stderr`` (for exact runs the disorder spread, or
    zeros), ``<name>_stderr_within`` (CTWA), ``<name>_realization_mean`` /
    ``<name>_realization_stderr`` (realization, time, ...), and ``<name>_exact`` /
    ``<name>_exact_stderr`` when the file holds an exact reference.  Coordinates: ``time``,
    ``realization`` (global indices), ``site`` (shared by the per-site outputs) and, for other
    component axes, ``<name>_<dim>`` with ``<name>_label`` / ``<name>_sites``.  Root
    attributes (config_toml, provenance) become ``attrs``.  Per-group datasets straight from
    the file: ``xarray.open_dataset(path, engine="h5netcdf", group="observables/<name>")``.
    """
    data = load(path)
    outs, exact = layout.outputs_from_load(data)
    return layout.to_dataset(data["time"], outs, exact, data["attrs"], data["realization_index"])


