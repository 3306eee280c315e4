"""One run as stages, shared by ``ctwa-hpc run``/``exact`` and ``ctwa_hpc.run``:

1. **set-up** on every rank without any collective: the output path against the config and
   every input file, the time grid, a lower bound of one work block (a large set-up is
   announced, an impossible one refused, before it is built), the
   :class:`~ctwa_hpc.driver.runner.Simulation` (realization 0 is built, so model, state,
   observable and cluster errors name their field), the memory of an exact reference, the
   kernel backend and the pre-flight estimate (:func:`~ctwa_hpc.driver.preflight.gate`:
   memory, run time, refusal).  Failures are gathered (allgather), so a rank-local error (a
   config not visible on one node, a kernel not loadable) stops every rank and rank 0
   reports the failing rank.  A stop signal ends the set-up at once (exit 3, nothing written);
2. **decision** on rank 0, broadcast: the output lock, stale temporaries, an existing output
   (refused without ``force``; with ``resume`` a finished output ends the run), free space;
3. **work**, collective inside the runner.  An error on one rank cannot be agreed on: that
   rank reports it, marks the checkpoint failed and aborts the job with its code;
4. **write**: final checkpoint save, free-space check (rank 0, broadcast), the output file.
   A disk that fills up during the serial or gather write is one error known to every rank
   (exit 1, the temporary removed, the checkpoint kept for ``--resume``).

Both faces refuse the same things at the same moment, before any expensive work: the CLI turns
a :class:`RunError` into its message and exit code, the API re-raises the original exception
(on one process) so a notebook sees ``ConfigError``, ``FileExistsError``, ...

Exit codes (:attr:`RunError.code`): 2 bad input or refused, 1 unexpected error or the output
could not be written (the checkpoint keeps every finished block), 3 interrupted with a
checkpoint saved (``EXIT_INTERRUPTED``), or during the set-up before anything was written.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
import traceback

import numpy as np

from ..output import hdf5
from ..tools import parallel
from . import checkpoint, guards, preflight
from .runner import Simulation

log = logging.getLogger("ctwa_hpc")


class RunError(Exception):
    """A run that did not complete: ``lines`` are (where, text) pairs that rank 0 prints as
    ``ctwa-hpc: error<where>: <text>`` (``where`` is "" or " (rank k)"; None for a plain
    note), ``code`` the exit code, ``cause`` the original exception (or None)."""

    def __init__(self, lines, code=2, cause=None):
        self.lines = [("", lines)] if isinstance(lines, str) else list(lines)
        self.code = code
        self.cause = cause
        super().__init__("; ".join(text for _, text in self.lines))


def message(exc):
    """The text of an exception (its type name when it has none)."""
    return str(exc) or type(exc).__name__


#: exceptions of the set-up that are the user's input (exit 2), not a bug (exit 1)
INPUT_ERRORS = (ValueError, ArithmeticError, FileExistsError, RuntimeError, ImportError, OSError)


class Session:
    """One run on ``comm``; ``resolve()`` returns the validated config dict (called in the
    set-up stage on every rank, so a config error on one rank stops them all).

    ``config_path``: the run file (an output equal to it is refused); ``write``: write the
    output file ``cfg["output"]["path"]`` (the API without ``output`` writes nothing);
    ``use_checkpoint``: keep a checkpoint next to the output (the CLI; the API runs without
    one and Ctrl-C raises KeyboardInterrupt); ``stop_flag``: an installed
    :class:`~ctwa_hpc.driver.checkpoint.StopFlag` (stop signals from the start of the set-up
    until the output is written).  ``summary``: called with the loaded output file on rank
    0 after the write (the CLI prints its table).
    """

    def __init__(self, resolve, comm, *, config_path=None, write=True, force=False, resume=False,
                 backend=None, quiet=False, ignore_limits=False, use_checkpoint=True,
                 stop_flag=None, progress_bar=None, summary=None):
        self.resolve, self.comm = resolve, comm
        self.cfg = None
        self.config_path = config_path
        self.write, self.force, self.resume = write, force, resume
        self.backend, self.quiet, self.ignore_limits = backend, quiet, ignore_limits
        self.use_checkpoint = use_checkpoint
        self.flag = stop_flag
        self.progress_bar = progress_bar
        self.summary = summary
        self.sim = None
        self.ck = None
        self.lock = None
        self.result = None
        self.hard_exit = None      # a failed HDF5 write: leave without finalizers (see cli)
        self._disk_bytes = 0

    @property
    def path(self):
        return self.cfg["output"]["path"]

    @property
    def exact(self):
        return self.sim is not None and self.sim.method == "exact"

    # -- the stages ---------------------------------------------------------------------------
    def run(self):
        """All stages; returns the RunResult on rank 0 (None elsewhere, or when a finished
        output made ``resume`` a no-op).  Raises :class:`RunError` (already reported on the
        failing rank when the job must abort)."""
        self.set_up()
        try:
            if not self.decide():
                return None
            self.result = self.work()
            if self.write:
                self.write_output()
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None
        return self.result

    def set_up(self):
        """Stage 1 on every rank; a failure on any rank raises RunError on every rank."""
        err, code, exc = self._set_up_local()
        gathered = parallel.agree(self.comm, (err, code))
        bad = [(k, e, c) for k, (e, c) in enumerate(gathered) if e]
        if not bad:
            return
        stop = checkpoint.EXIT_INTERRUPTED   # a stop signal: only if no rank has an error
        code = max((c for _, _, c in bad if c != stop), default=stop)
        lines, shown = [], set()
        for k, e, c in bad:
            if e not in shown:
                shown.add(e)
                where = "" if len(bad) == len(gathered) else f" (rank {k})"
                lines.append((None if c == stop else where, e))
        raise RunError(lines, code, exc)

    def _set_up_local(self):
        """(error message or None, exit code, exception) of this rank; never raises.  Stop
        signals end the set-up at once (nothing is done yet: exit 3 without a checkpoint)."""
        try:
            with self.flag.during_setup() if self.flag is not None else contextlib.nullcontext():
                self._set_up_stages()
        except checkpoint.SetupInterrupted as exc:
            return (f"stop requested ({exc}) during the set-up: stopped before any work, "
                    "nothing was written (no checkpoint, no output); run the same command "
                    "again to start", checkpoint.EXIT_INTERRUPTED, exc)
        except INPUT_ERRORS as exc:
            return message(exc), 2, exc
        except Exception as exc:  # a bug: keep the traceback, but do not hang the other ranks
            traceback.print_exc()
            return f"unexpected {type(exc).__name__}: {message(exc)}", 1, exc
        return None, 0, None

    def _set_up_stages(self):
        """The checks of stage 1, cheapest first: a large set-up is announced (or refused)
        before it is built, and every stage that takes long says so when it is done."""
        self.cfg = cfg = self.resolve()
        if self.write:
            guards.check_output_path(self.path, self.config_path, guards.input_files(cfg))
        guards.check_time_grid(cfg, self.comm)
        loud = self.comm.rank == 0 and not self.quiet
        if cfg["method"]["kind"] != "exact":
            guards.check_setup_size(cfg, self.comm, self.ignore_limits, announce=loud)
        t0 = time.monotonic()
        self.sim = Simulation(cfg, self.comm, backend=self.backend, quiet=self.quiet)
        self.sim.progress_bar = self.progress_bar
        t0 = _stage_done(loud, t0, "realization 0 built (model, state, observables, clusters)")
        guards.check_simulation(self.sim)  # model/observable errors with their field
        _stage_done(loud, t0, "realization 0 checked and compiled")
        if self.exact or cfg["output"]["compare_exact"]:
            guards.check_exact_memory(self.sim, self.comm, self.ignore_limits)
        if not self.exact:
            self.sim.backend_used()  # method.backend = "cython" without a build fails here
            est = preflight.gate(self.sim, self.comm, ignore=self.ignore_limits)
            # disk: the output plus two checkpoint generations (the switch keeps the old)
            self._disk_bytes = est["output"] + 2 * est["checkpoint_per_save"]

    def decide(self):
        """Stage 2: rank 0 takes the lock and decides; False when there is nothing to do."""
        if self.exact and self.flag is not None:
            self.flag.restore()  # no checkpoint: stop signals keep their default action
            stopped = int(self.flag.reason is not None)
            if self.comm.size > 1:
                stopped = self.comm.allreduce(stopped)
            if stopped:
                if self.comm.rank == 0:
                    log.warning("stop requested before the exact run started: nothing done")
                raise RunError([], checkpoint.EXIT_INTERRUPTED)
        if not self.write:
            return True
        decision, exc = None, None
        if self.comm.rank == 0:
            try:
                self.lock = guards.OutputLock(self.path).acquire()
                guards.remove_output_temporaries(self.path)
                decision = self._rank0_verdict()
                if decision[0] is None and decision[1] == "run" and not self.exact:
                    guards.check_free_space(self.path, self._disk_bytes,
                                            "this run (output and checkpoint)")
            except (ValueError, OSError) as e:
                decision, exc = (message(e), "run"), e
        err, action = self.comm.bcast(decision, root=0)
        if err:
            raise RunError(err, 2, exc if exc is not None else FileExistsError(err))
        if action == "complete":
            log.info("nothing to resume: %s is complete for this configuration (--force "
                     "recomputes)", self.path)
            return False
        return True

    def _rank0_verdict(self):
        """(error message or None, 'run' | 'complete') on rank 0."""
        path = self.path
        try:
            if self.resume and not self.exact and os.path.exists(path) and not self.force:
                if hdf5.stored_config_hash(path) == checkpoint.config_hash(
                        self.cfg, self.sim.models.content_hash):
                    # finished earlier (a checkpoint left by a kill after the write is stale)
                    shutil.rmtree(checkpoint.directory_for(path), ignore_errors=True)
                    return None, "complete"
                return (f"output.path: {path} exists (another configuration); use --force to "
                        "overwrite it"), "run"
            hdf5.check_writable(path, self.force)
        except (FileExistsError, FileNotFoundError) as exc:
            return str(exc), "run"
        return None, "run"

    def work(self):
        """Stage 3: the runner's work; the RunResult on rank 0."""
        sim, cfg = self.sim, self.cfg
        log.info("%s; method %s, %d realization(s), %d sample(s), %d rank(s)",
                 sim.build_model(0).summary(), cfg["method"]["kind"],
                 cfg["disorder"]["realizations"], sim.samples, self.comm.size)
        if self.use_checkpoint and self.write and not self.exact:
            self.ck = checkpoint.Checkpoint(
                checkpoint.directory_for(self.path), self.comm, cfg, len(sim.plan_work()),
                cfg["output"]["checkpoint_every_s"], content_hash=sim.models.content_hash)
        try:
            return sim.run(checkpoint=self.ck, resume=self.resume, force=self.force,
                           stop_flag=self.flag if self.ck is not None else None)
        except checkpoint.CheckpointError as exc:  # raised on every rank alike
            raise RunError(message(exc), 2, exc) from None
        except checkpoint.Interrupted as exc:
            if self.comm.rank == 0:
                log.warning("%s; resume with: %s", exc, checkpoint.resume_hint())
            raise RunError([], checkpoint.EXIT_INTERRUPTED, exc) from None
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            self.fail(exc)

    def write_output(self):
        """Stage 4: free space, the file, the checkpoint removed, the summary."""
        sim, comm, ck = self.sim, self.comm, self.ck
        try:
            # (sim.run saved every finished block in the checkpoint: a failed write loses nothing)
            row_bytes = parallel.allreduce_sum(
                comm, np.array([float(sim.rows.nbytes if sim.rows is not None else 0)]))[0]
            verdict = None
            if comm.rank == 0:
                try:
                    guards.check_free_space(self.path, guards.result_bytes(self.result)
                                            + int(row_bytes), "the output file")
                except ValueError as exc:
                    verdict = message(exc)
            verdict = comm.bcast(verdict, root=0)
            if verdict:   # the same on every rank
                raise hdf5.OutputWriteError(verdict)
            hdf5.write_output(self.path, self.result, comm, rows=sim.rows, force=self.force)
        except Exception as exc:
            self.fail(exc, writing=True)
        if ck is not None:
            ck.remove()
        if self.flag is not None and self.flag.reason and not self.flag.acted:
            log.warning("%s arrived after the last work block: ignored", self.flag.reason)
        if comm.rank == 0:
            log.info("wrote %s", self.path)
            if self.summary is not None:
                try:
                    self.summary(hdf5.load(self.path))
                except Exception as exc:  # the file is written; a summary problem is not fatal
                    log.warning("cannot summarize %s: %s", self.path, exc)

    def fail(self, exc, writing=False):
        """An error during the work or the write: the checkpoint marked (or removed when it
        holds nothing), the temporaries and the lock removed; on one process the error is
        raised as :class:`RunError`, under MPI this rank reports it and aborts the job."""
        comm, ck = self.comm, self.ck
        # the serial/gather writer's failure is known to every rank and leaves HDF5 sound;
        # after a failed mpio write keep the h5py objects alive until os._exit (see cli.main)
        agreed = isinstance(exc, hdf5.OutputWriteError)
        if writing and not agreed:
            self.hard_exit = exc
        code = 2 if isinstance(exc, (ValueError, ArithmeticError)) and not writing else 1
        if code == 1 and not isinstance(exc, (OSError, RuntimeError) if writing else OSError):
            traceback.print_exc()
        where = f" (rank {comm.rank})" if comm.size > 1 and not agreed else ""
        text = message(exc)
        if writing and not agreed:   # parallel HDF5's own words: add the room left
            d = os.path.dirname(os.path.abspath(self.path))
            try:
                text += f" ({shutil.disk_usage(d).free / 2**20:.3g} MiB free in {d})"
            except OSError:
                pass
        lines = [(where, text)]
        if ck is not None:
            if comm.size == 1 and not ck.items_saved and ck.generation == 0:
                ck.remove()  # nothing finished: leave no state behind
            else:
                if not agreed or comm.rank == 0:
                    ck.mark_failed(message(exc))
                lines.append((None, f"the checkpoint {ck.dir} keeps the finished work blocks: "
                              "after fixing the cause, run the same command with --resume (a "
                              "changed configuration must discard them with --force)"))
        if comm.rank == 0 and self.write:
            guards.remove_output_temporaries(self.path)
            if self.lock is not None:
                self.lock.release()
                self.lock = None
        if comm.size > 1 and not agreed:
            report(lines, comm, everywhere=True)
            parallel.abort(comm, code)  # other ranks may be waiting inside a collective
        raise RunError(lines, code, exc) from exc


def _stage_done(loud, t0, what):
    """Log a set-up stage that took more than 2 s (rank 0); the time now."""
    now = time.monotonic()
    if loud and now - t0 > 2.0:
        log.info("set-up: %s in %.1f s", what, now - t0)
    return now


def report(lines, comm, everywhere=False):
    """Print RunError lines on rank 0 (``everywhere``: on this rank, whichever it is)."""
    if not (everywhere or comm.rank == 0):
        return
    for where, text in lines:
        if where is None:
            print(f"ctwa-hpc: {text}", file=sys.stderr)
        else:
            print(f"ctwa-hpc: error{where}: {text}", file=sys.stderr)
