"""MPI in one place: the only module that imports mpi4py (lazily), with a serial stand-in.

Everything else takes a ``comm`` argument and uses only the methods of :class:`SerialComm`
(``rank``, ``size``, ``bcast``, ``allreduce``, ``gather``, ``Barrier``) plus the helpers
below.  Without mpi4py (or with ``CTWA_NO_MPI=1``) the code runs on one process.

Rank 0 decides (file names, resume state, stop flags) and broadcasts; every reduction of
Monte Carlo moments is a sum, so results do not depend on the number of ranks beyond
floating-point summation order.

Work split
----------
The runner plans all work items in one fixed global order; :func:`split_list` gives every rank
a balanced contiguous block of that order (of the items still to do after a resume).

Failures
--------
A failing rank must never leave the others waiting in a collective.  Errors found before the
first collective are gathered with :func:`agree` and every rank exits with the same code;
errors during the work (where the other ranks may be waiting in an exchange or a reduction)
end the job with :func:`abort` (``MPI_Abort(code)``; Open MPI's ``mpirun`` then returns
``code``).

Non-blocking status exchange
----------------------------
:class:`Sync` carries small status vectors (blocks and samples done, stop request, finished)
between ranks with ``MPI_Iallreduce`` tested at block boundaries, so progress lines and
SIGTERM-triggered stops need no blocking collective per block and cannot deadlock: the k-th
exchange on every rank is the same collective and every rank sees the same result, so all
ranks leave the loop after the same exchange (see :meth:`Sync.exchange`).
"""
from __future__ import annotations

import os
import sys
import warnings

import numpy as np

MPI_ENV_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


class SerialComm:
    """The subset of an mpi4py communicator that ctwa-hpc uses, for one process."""

    rank = 0
    size = 1
    is_mpi = False

    def bcast(self, obj, root=0):
        return obj

    def allreduce(self, obj, op=None):
        return obj

    def gather(self, obj, root=0):
        return [obj]

    def allgather(self, obj):
        return [obj]

    def Barrier(self):
        pass

    def Abort(self, code=1):  # pragma: no cover
        os._exit(code)


class _MPIComm:
    """Thin wrapper of an mpi4py communicator exposing the same names as SerialComm."""

    is_mpi = True

    def __init__(self, comm):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def __getattr__(self, name):
        return getattr(self.comm, name)


def _mpi():
    """``mpi4py.MPI``, imported on first use (optional dependency; the import calls MPI_Init,
    so importing ctwa_hpc never starts MPI)."""
    from mpi4py import MPI  # optional dependency, MPI_Init on import
    return MPI


def mpi_available():
    if os.environ.get("CTWA_NO_MPI") == "1":
        return False
    try:
        import mpi4py  # noqa: F401  (optional dependency: is it installed?)
    except ImportError:
        return False
    return True


def launched_under_mpi():
    """True if the environment says this process is one rank of an MPI launch."""
    return any(v in os.environ for v in MPI_ENV_VARS)


def get_comm():
    """MPI.COMM_WORLD wrapped, or a SerialComm when MPI is unavailable or disabled."""
    if not mpi_available():
        if launched_under_mpi():
            warnings.warn("launched under MPI but mpi4py is unavailable (or CTWA_NO_MPI=1): "
                          "every rank will run the whole job independently")
        return SerialComm()
    MPI = _mpi()
    return _MPIComm(MPI.COMM_WORLD)


def raw(comm):
    """The underlying mpi4py communicator (for h5py's mpio driver), or None."""
    return getattr(comm, "comm", None)


# -- reductions -------------------------------------------------------------------------------
def reduce_sum(comm, arr, root=0):
    """Element-wise sum of a float64 array over ranks, result on ``root`` (others: None)."""
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if comm.size == 1:
        return arr.copy()
    MPI = _mpi()
    out = np.empty_like(arr) if comm.rank == root else None
    comm.comm.Reduce(arr, out, op=MPI.SUM, root=root)
    return out


def allreduce_sum(comm, arr):
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if comm.size == 1:
        return arr.copy()
    MPI = _mpi()
    out = np.empty_like(arr)
    comm.comm.Allreduce(arr, out, op=MPI.SUM)
    return out


def gather_arrays(comm, arrays, root=0):
    """Gather a dict of arrays from every rank: list (by rank) on ``root``, None elsewhere."""
    if comm.size == 1:
        return [arrays]
    return comm.gather(arrays, root=root)


def exchange(comm, outgoing, tag=71):
    """Point-to-point delivery of Python objects: ``outgoing`` {dest rank: obj}; returns the
    list of objects sent to this rank (collective; any order of arrival).

    The number of messages each rank receives comes from one allreduce of a P-vector of
    counts; the objects travel as pickles (``isend``/``recv``), so only the ranks that share
    data talk to each other.  Serial: the object addressed to rank 0, if any.
    """
    if comm.size == 1:
        return [obj for dest, obj in outgoing.items() if dest == 0]
    counts = np.zeros(comm.size)
    for dest in outgoing:
        counts[int(dest)] += 1
    n_in = int(round(allreduce_sum(comm, counts)[comm.rank]))
    MPI = _mpi()
    reqs = [comm.comm.isend(obj, dest=int(dest), tag=tag) for dest, obj in outgoing.items()]
    got = [comm.comm.recv(source=MPI.ANY_SOURCE, tag=tag) for _ in range(n_in)]
    MPI.Request.waitall(reqs)
    return got


def send_object(comm, obj, dest, tag=72):
    """Blocking send of a pickled object (the gather writer's rows)."""
    comm.comm.send(obj, dest=dest, tag=tag)


def recv_object(comm, source, tag=72):
    return comm.comm.recv(source=source, tag=tag)


# -- work split ---------------------------------------------------------------------------------
def split_items(n_items, comm):
    """Indices of the work items owned by this rank: balanced contiguous blocks."""
    return np.array_split(np.arange(n_items), comm.size)[comm.rank]


def split_list(indices, comm):
    """This rank's balanced contiguous block of ``indices`` (kept in their given order)."""
    indices = np.asarray(indices, dtype=np.int64)
    return [int(i) for i in np.array_split(indices, comm.size)[comm.rank]]


class Sync:
    """Non-blocking sum of small status vectors across ranks (``MPI_Iallreduce``).

    ``exchange(local)`` posts ``local`` if no exchange is in flight, then tests it (or waits for
    it with ``wait=True``) and returns the global sum, or None if it has not completed yet.
    Each completed exchange is seen by every rank with identical values, so a decision taken
    from it (stop, all finished) is the same on all ranks.  Ranks without work left must keep
    calling ``exchange(..., wait=True)`` until such a decision is reached.
    """

    def __init__(self, comm, n):
        self.comm = comm
        self.send = np.zeros(n)
        self.recv = np.zeros(n)
        self.req = None

    def exchange(self, local, wait=False):
        if self.comm.size == 1:
            return np.array(local, dtype=np.float64)
        if self.req is None:
            MPI = _mpi()
            self.send[:] = local
            self.req = self.comm.comm.Iallreduce(self.send, self.recv, op=MPI.SUM)
        if wait:
            self.req.Wait()
        elif not self.req.Test():
            return None
        self.req = None
        return self.recv.copy()


def agree(comm, obj):
    """Every rank's ``obj`` on every rank (``allgather``): a rank-local failure found before any
    other collective becomes a decision all ranks take together (no rank left waiting)."""
    return comm.allgather(obj) if comm.size > 1 else [obj]


def abort(comm, code):
    """End the whole job with exit ``code`` from one rank (``MPI_Abort``): for errors that
    cannot be agreed on because other ranks may be inside a collective.  Serial: returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    if comm.size > 1:
        comm.Abort(code)


def finalize_and_exit(comm, code):
    """Leave with exit ``code`` after a clean MPI_Finalize (no MPI_Abort noise), e.g. the
    'interrupted, resume later' code 3 on every rank.  Serial: ``sys.exit(code)``."""
    sys.stdout.flush()
    sys.stderr.flush()
    if comm.size > 1 or getattr(comm, "is_mpi", False):
        MPI = _mpi()
        comm.Barrier()
        if not MPI.Is_finalized():
            MPI.Finalize()
        os._exit(code)
    sys.exit(code)


def library_version():
    if not mpi_available():
        return "none"
    MPI = _mpi()
    return MPI.Get_library_version().replace("\x00", "").splitlines()[0].strip()
