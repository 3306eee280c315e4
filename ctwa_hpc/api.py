"""The Python API: ``ctwa_hpc.run(config, overrides)`` for scripts and notebooks.

>>> import ctwa_hpc
>>> res = ctwa_hpc.run("jobs/tfim4.toml", {"method.samples": 200})
>>> res.mean("sz").shape, res.stderr("mz_staggered")[-1]

``config`` is a TOML path or a dict with the sections of a run file (README, "Run files");
``overrides`` a dict ``{"section.key": value}`` (dotted paths reach into tables:
``{"model.params.omega": 3.0}``).  Where a run file names a file, a Python object is accepted:
``model.file`` may be a :class:`~ctwa_hpc.model.hamiltonian.Hamiltonian` (or a list of them, one per
disorder realization), ``model.positions_file`` a :class:`~ctwa_hpc.model.geometry.Geometry` or an
(N, d) array of positions.  The config is validated exactly as on the command line (unknown keys
are errors naming the field) and stored with the result.

Under ``mpirun`` the call is collective (every rank calls it; rank 0 gets the result, the other
ranks ``None``) and progress lines go to the ``ctwa_hpc`` logger; on one process a live
progress bar is drawn on stderr (it shows in place in a terminal and in a notebook).  Under
``mpirun`` (without ``-m mpi4py``) the first call also makes an uncaught exception on any
rank end the whole job with ``MPI_Abort`` instead of hanging the other ranks.
Ctrl-C stops the run at the end of the current work block and raises ``KeyboardInterrupt``.
"""
from __future__ import annotations

import copy
import logging
import os
import sys

import numpy as np

from . import config as config_mod
from .driver.session import RunError, Session
from .model import objects
from .tools import parallel

log = logging.getLogger("ctwa_hpc")


class Result:
    """Means, standard errors, times and metadata of a run (the in-memory twin of the file).

    ``outputs[name]`` is a dict with ``mean`` (n_t, ...), ``stderr`` (None for exact and
    zero-noise runs), ``stderr_within``, per-realization ``real_mean``/``real_stderr``
    (None when the rows of all realizations exceed 64 MiB: they are in the output file, written
    by the ranks that own them), ``labels`` and ``description``; ``exact`` the exact
    reference's outputs (or None).
    """

    def __init__(self, run_result, path=None):
        self._r = run_result
        self.path = path

    @property
    def times(self):
        return self._r.times

    @property
    def config(self):
        return self._r.cfg

    @property
    def outputs(self):
        return self._r.outputs

    @property
    def exact(self):
        return self._r.exact

    @property
    def method(self):
        return self._r.method

    @property
    def n_samples(self):
        return self._r.n_samples

    @property
    def wall_time(self):
        return self._r.wall_time

    @property
    def metadata(self):
        r = self._r
        return dict(method=r.method, n_samples=r.n_samples, wall_time_s=r.wall_time,
                    mpi_size=r.mpi_size, backend=r.backend,
                    n_realizations=r.cfg["disorder"]["realizations"], **{
                        k: v for k, v in r.extra.items() if not isinstance(v, dict)})

    @property
    def disorder(self):
        """Positions, fields, couplings and clusters of every realization (see runner)."""
        return self._r.extra.get("disorder", {})

    def _get(self, name):
        if name not in self._r.outputs:
            raise KeyError(f"{name!r} is not an output of this run (known: "
                           f"{sorted(self._r.outputs)})")
        return self._r.outputs[name]

    def mean(self, name):
        return self._get(name)["mean"]

    def stderr(self, name):
        se = self._get(name).get("stderr")
        return np.zeros_like(self.mean(name)) if se is None else se

    def exact_mean(self, name):
        if not self._r.exact or name not in self._r.exact:
            raise KeyError(f"no exact reference for {name!r} (set output.compare_exact = true)")
        return self._r.exact[name]["mean"]

    def to_xarray(self):
        """An xarray.Dataset with ``<name>_mean`` / ``<name>_stderr`` and time coordinates."""
        return self._r.to_xarray()

    @property
    def run_result(self):
        return self._r

    def __repr__(self):
        names = ", ".join(self._r.outputs)
        return (f"<ctwa_hpc.Result {self._r.method}: {self._r.n_samples} samples, "
                f"{len(self.times)} times, outputs: {names}>")


def _objects_to_refs(raw):
    """Replace Python objects where a file is named by registered references."""
    model = raw.get("model")
    if isinstance(model, dict):
        for key in ("file", "positions_file"):
            v = model.get(key)
            if v is not None and not isinstance(v, (str, os.PathLike)):
                model[key] = objects.register_object(objects.check_object(key, v))
            elif isinstance(v, os.PathLike):
                model[key] = os.fspath(v)
                if not isinstance(model[key], str):
                    raise config_mod.ConfigError(f"model.{key}: expected a str path, got "
                                      f"{type(model[key]).__name__}")
        if isinstance(model.get("positions_file"), str) and \
                model["positions_file"].startswith(objects.OBJECT_PREFIX):
            model.setdefault("positions", "file")
    return raw


def _raw_config(config):
    if isinstance(config, (str, os.PathLike)):
        return config_mod.read_toml(os.fspath(config))
    if isinstance(config, dict):
        out = {}
        for sec, val in config.items():   # copy the tables, keep the objects themselves
            out[sec] = {k: (v if k in ("file", "positions_file") else copy.deepcopy(v))
                        for k, v in val.items()} if isinstance(val, dict) else val
        return out
    raise config_mod.ConfigError(f"config: expected a TOML path or a dict, got "
                                 f"{type(config).__name__}")


def resolve(config, overrides=None):
    """The validated config dict of ``config`` + ``overrides`` (what :func:`run` runs)."""
    raw = _raw_config(config)
    if overrides:
        if not isinstance(overrides, dict):
            raise config_mod.ConfigError("overrides: expected a dict {'section.key': value}")
        config_mod.apply_overrides(raw, overrides)
    return config_mod.resolve(_objects_to_refs(raw))


def _abort_on_uncaught(comm):
    """Under MPI (``comm.size > 1``): an exception that reaches the top level of the script on
    one rank ends the whole job (its traceback and ``MPI_Abort``), as ``python -m mpi4py``
    does, instead of leaving the other ranks waiting in a collective (installed once)."""
    if comm.size <= 1 or getattr(sys.excepthook, "ctwa_abort", False):
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        try:
            previous(kind, value, tb)
        finally:
            print(f"ctwa-hpc: error (rank {comm.rank}): uncaught {kind.__name__}: ending the "
                  "MPI job (MPI_Abort)", file=sys.stderr)
            parallel.abort(comm, 1)

    hook.ctwa_abort = True
    sys.excepthook = hook


def _ensure_handler(quiet):
    root_has = logging.getLogger().handlers or log.handlers
    if not root_has and not quiet:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s ctwa-hpc %(message)s", "%H:%M:%S"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False
        return h
    return None


def run(config, overrides=None, *, output=None, force=False, comm=None, quiet=False,
        backend=None, progress=True, ignore_limits=False):
    """Run a CTWA (or exact, ``method.kind = "exact"``) simulation; returns a :class:`Result`.

    ``output``: also write the HDF5 file there (``force`` to overwrite).  ``comm``: an MPI
    communicator wrapper from :func:`ctwa_hpc.tools.parallel.get_comm` (default: MPI when
    launched under mpirun, else serial).  ``quiet``: no progress output.  ``progress``: on one
    process, a live progress bar on stderr (one carriage-return-updated line, rendered in place
    by terminals and notebooks) instead of periodic progress lines.  ``ignore_limits``: start
    even when the pre-flight estimate refuses the run (as ``ctwa-hpc run --ignore-limits``).

    The stages are those of ``ctwa-hpc run`` (:class:`~ctwa_hpc.driver.session.Session`): the
    same guards and pre-flight estimate refuse the same runs before any work (an existing
    ``output`` without ``force``, an output equal to an input, a run over the memory limit),
    with the same messages.  On one process the original exception is raised
    (``ConfigError``, ``FileExistsError``, ...).  No checkpoint is kept: Ctrl-C stops the run
    at the end of the current work block and raises ``KeyboardInterrupt``.
    """
    if comm is None:   # MPI only when launched by mpirun/srun: a singleton MPI_Init in a
        # notebook would start Open MPI's runtime and take over SIGINT (Ctrl-C)
        comm = parallel.get_comm() if parallel.launched_under_mpi() else parallel.SerialComm()

    def resolve_config():
        cfg = resolve(config, overrides)
        if output is not None:
            cfg["output"]["path"] = os.fspath(output)
        return cfg

    bar = sys.stderr if progress and not quiet and comm.size == 1 else None
    sess = Session(resolve_config, comm,
                   config_path=os.fspath(config) if isinstance(config, (str, os.PathLike))
                   else None, write=output is not None, force=force, backend=backend,
                   quiet=quiet, ignore_limits=ignore_limits, use_checkpoint=False,
                   progress_bar=bar)
    handler = _ensure_handler(quiet or comm.rank != 0)
    _abort_on_uncaught(comm)
    try:
        res = sess.run()
    except RunError as err:   # the same on every rank (or the job was aborted)
        if err.cause is not None:
            raise err.cause from None
        raise
    except BaseException as exc:   # on this rank only: the others may wait in a collective
        if comm.size > 1:
            print(f"ctwa-hpc: error (rank {comm.rank}): {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            parallel.abort(comm, 1)
        raise
    finally:
        if handler is not None:
            log.removeHandler(handler)
            log.propagate = True
    return Result(res, sess.path if output is not None else None) if res is not None else None
