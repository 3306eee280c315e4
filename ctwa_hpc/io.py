"""HDF5 output: the only module that imports h5py.

Layout (self-describing; README.md documents it):

=====================================  =======================================================
``/time``                              output times (n_t,), an HDF5 dimension scale
``/observables/<name>/mean``           disorder- and sample-averaged value (n_t, ...)
``/observables/<name>/stderr``         its standard error (CTWA only; absent for exact)
``/observables/<name>/stderr_within``  within-realization part of the error (CTWA)
``/observables/<name>/stderr_disorder``  exact runs with several realizations: spread of the
                                       realization values / √R
``/realizations/<name>/mean``          per-realization values (n_real, n_t, ...)
``/realizations/<name>/stderr``        per-realization standard errors (CTWA)
``/moments/{count,s1,s2,sx}``          raw sums over samples, all ranks reduced (mergeable
                                       across jobs): count (n_real,), s1/s2 (n_real, n_t, K),
                                       sx (n_real, n_t, P)
``/moments/cross``                     column pairs (P, 2) of ``sx``
``/partial/{count,s1,s2,sx}``          the same sums as held by each rank before the reduction,
                                       with a leading rank axis (mpi_size, ...); the rows sum
                                       to ``/moments`` (CTWA only)
``/exact/<name>/mean``                 the exact reference, when ``output.compare_exact``
root attributes                        config_toml, config_hash, ctwa_hpc_version,
                                       git_revision, method, mpi_size, mpi_library, writer,
                                       seed, disorder_seed, n_realizations, n_samples,
                                       wall_time_s, created, hostname, backend, conventions,
                                       finished_run
=====================================  =======================================================

Writers.  With several ranks and an h5py built against parallel HDF5 the file is opened by
all ranks with ``driver='mpio'``: rank 0 builds the list of groups/datasets/attributes and
broadcasts it, every rank creates them collectively (identical calls), rank 0 writes the
reduced results and every rank writes its own row of ``/partial``.  Otherwise (serial h5py,
one rank, or ``CTWA_H5_GATHER=1``) the partial sums are gathered and rank 0 writes the same
layout alone; both files have identical contents apart from ``writer``/``mpi_size``-like
provenance.  Files are written to ``<path>.tmp.<pid>`` and renamed by rank 0 after the
(collective) close; an existing file is never overwritten without ``force``.
"""
from __future__ import annotations

import datetime
import os
import socket
import subprocess

import numpy as np

from . import __version__, config as config_mod, parallel

PARTIAL_KEYS = ("count", "s1", "s2", "sx")


def h5py_has_mpi():
    import h5py
    return bool(h5py.get_config().mpi)


def writer_kind(comm):
    """'mpio' (parallel HDF5, all ranks write) or 'gather' (rank 0 writes after a gather)."""
    if comm.size > 1 and os.environ.get("CTWA_H5_GATHER", "0") in ("", "0") and h5py_has_mpi() \
            and parallel.raw(comm) is not None:
        return "mpio"
    return "gather"


def git_revision():
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


def check_writable(path, force):
    """Refuse to overwrite ``path`` unless ``force`` (call on rank 0 before any work)."""
    if os.path.exists(path) and not force:
        raise FileExistsError(f"output.path: {path} exists; use --force to overwrite")
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise FileNotFoundError(f"output.path: directory {d} does not exist")


def _attrs(result, writer):
    from .checkpoint import config_hash
    cfg = result.cfg
    return {
        "config_toml": config_mod.dumps(cfg),
        "config_hash": config_hash(cfg),
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
        "finished_run": True,
    }


# -- the plan: every group/dataset/attribute of the file, built on rank 0 ---------------------
class _Plan:
    """Ordered structure operations (identical on all ranks) plus rank 0's data."""

    def __init__(self):
        self.ops, self.data = [], {}

    def group(self, path, attrs=None):
        self.ops.append(("group", path, attrs or {}))

    def dataset(self, path, value, attrs=None, scale=None, attach=()):
        value = np.asarray(value)
        self.ops.append(("dataset", path, value.shape, value.dtype.str, attrs or {}, scale,
                         tuple(attach)))
        self.data[path] = value

    def empty(self, path, shape, dtype="<f8", attrs=None):
        self.ops.append(("dataset", path, tuple(shape), dtype, attrs or {}, None, ()))


def _outputs(plan, root, outputs, per_real=None):
    plan.group(root)
    if per_real is not None:
        plan.group(per_real)
    for name, o in outputs.items():
        attrs = {"description": o["description"], "kind": o["kind"]}
        if o["labels"]:
            attrs["labels"] = np.array(o["labels"], dtype="S")
        plan.group(f"{root}/{name}", attrs)
        for key in ("mean", "stderr", "stderr_within", "stderr_disorder"):
            if o.get(key) is not None:
                plan.dataset(f"{root}/{name}/{key}", o[key], attach=((0, "/time"),))
        if per_real is not None:
            plan.group(f"{per_real}/{name}", attrs)
            plan.dataset(f"{per_real}/{name}/mean", o["real_mean"], attach=((1, "/time"),))
            if o.get("real_stderr") is not None:
                plan.dataset(f"{per_real}/{name}/stderr", o["real_stderr"],
                             attach=((1, "/time"),))


def build_plan(result, writer, mpi_size):
    plan = _Plan()
    plan.ops.append(("attrs", "/", _attrs(result, writer)))
    plan.dataset("/time", result.times, attrs={"units": "1/J (hbar = 1)"}, scale="time")
    _outputs(plan, "/observables", result.outputs, "/realizations")
    if result.moments is not None:
        plan.group("/moments", {"description": "sums over samples (antithetic: over pairs)"})
        for k, v in result.moments.arrays().items():
            plan.dataset(f"/moments/{k}", v)
        plan.dataset("/moments/cross", np.asarray(result.moments.cross, dtype=np.int64))
    if result.moments is not None and result.cfg["output"].get("write_partial", True):
        plan.group("/partial", {"description": "row k: the sums held by rank k before the "
                                "reduction; rows sum to /moments"})
        for k, v in result.moments.arrays().items():
            plan.empty(f"/partial/{k}", (mpi_size,) + np.shape(v))
    if result.exact is not None:
        _outputs(plan, "/exact", result.exact)
    return plan


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
            obj = f.create_dataset(path, shape=shape, dtype=np.dtype(dtype))
            if scale:
                obj.make_scale(scale)
            for dim, spath in attach:
                obj.dims[dim].attach_scale(f[spath])
        for k, v in attrs.items():
            obj.attrs[k] = v


def _fill(f, data):
    for path, value in data.items():
        if value.size:
            f[path][...] = value


def _fill_partial(f, rank, arrays):
    for k in PARTIAL_KEYS:
        v = np.asarray(arrays[k])
        if v.size:
            f[f"/partial/{k}"][rank] = v


def write_output(path, result, comm=None, partial=None, force=False):
    """Write a run to ``path`` atomically (collective: every rank calls it).

    ``result``: the RunResult on rank 0 (ignored elsewhere); ``partial``: this rank's
    :class:`~ctwa_hpc.stats.Moments` before the reduction (None for exact runs).
    """
    import h5py
    comm = comm if comm is not None else parallel.SerialComm()
    writer = writer_kind(comm)
    head = None
    plan = None
    if comm.rank == 0:
        try:
            check_writable(path, force)
            err = None
        except (FileExistsError, FileNotFoundError) as exc:
            err = str(exc)
        plan = build_plan(result, writer, comm.size) if err is None else None
        head = (err, f"{path}.tmp.{os.getpid()}", plan.ops if plan else None)
    err, tmp, ops = comm.bcast(head, root=0)
    if err:
        raise FileExistsError(err)
    has_partial = any(op[1] == "/partial" for op in ops)
    if writer == "mpio":
        with h5py.File(tmp, "w", driver="mpio", comm=parallel.raw(comm)) as f:
            _create(f, ops)
            if comm.rank == 0:
                _fill(f, plan.data)
            if has_partial:
                _fill_partial(f, comm.rank, partial.arrays())
    else:
        parts = parallel.gather_arrays(comm, partial.arrays() if has_partial else None)
        if comm.rank == 0:
            with h5py.File(tmp, "w") as f:
                _create(f, ops)
                _fill(f, plan.data)
                if has_partial:
                    for k, arrays in enumerate(parts):
                        _fill_partial(f, k, arrays)
    comm.Barrier()
    if comm.rank == 0:
        os.replace(tmp, path)
    comm.Barrier()
    return path


def write_result(path, result, force=False):
    """Serial convenience: write a RunResult from one process (partial = the totals)."""
    return write_output(path, result, parallel.SerialComm(), partial=result.moments, force=force)


def _decode(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.dtype.kind == "S":
        return [x.decode() for x in v.tolist()]
    return v


def load(path):
    """Read an output file into plain dicts.

    Keys: time, observables, realizations, exact ({name: {dataset: array}}), moments and
    partial ({key: array}, CTWA only), attrs (root attributes), group_attrs ({"observables/sz":
    {...}}), config (the resolved config parsed from ``config_toml``).
    """
    import tomllib

    import h5py
    out = {"observables": {}, "realizations": {}, "exact": {}, "group_attrs": {}}
    with h5py.File(path, "r") as f:
        out["attrs"] = {k: _decode(v) for k, v in f.attrs.items()}
        out["time"] = f["time"][...]
        for grp in ("observables", "realizations", "exact"):
            if grp in f:
                for name, g in f[grp].items():
                    out[grp][name] = {k: d[...] for k, d in g.items()}
                    out["group_attrs"][f"{grp}/{name}"] = {k: _decode(v)
                                                           for k, v in g.attrs.items()}
        for grp in ("moments", "partial"):
            if grp in f:
                out[grp] = {k: d[...] for k, d in f[grp].items()}
    out["config"] = tomllib.loads(out["attrs"]["config_toml"])
    return out


def datasets(path):
    """{path: array} of every dataset in a file (tests and comparisons)."""
    import h5py
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, obj[...])
                     if isinstance(obj, h5py.Dataset) else None)
    return found


def stored_config_hash(path):
    """The ``config_hash`` attribute of an existing output file (None if unreadable)."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            return _decode(f.attrs.get("config_hash"))
    except OSError:
        return None
