"""HDF5 in one place: the only module that imports h5py (the writers and readers use this).

h5py is imported at module level: it does not initialize MPI (its MPI-enabled build imports
mpi4py only when a file is opened with ``driver="mpio"`` and a communicator), and costs
~0.2 s once.  Everything the package needs from it is named here, so a site whose h5py lacks
a feature (parallel HDF5, a newer API) shows it in one file.  The serial and gather writers'
file goes through :class:`GuardedFile`, so a full disk is one clean error, never HDF5's error
stack or a crash.
"""
from __future__ import annotations

import errno
import io
import os
import shutil

import h5py
import numpy as np

File = h5py.File
Group = h5py.Group
Dataset = h5py.Dataset
string_dtype = h5py.string_dtype
is_hdf5 = h5py.is_hdf5


def has_mpi():
    """True when h5py was built against parallel HDF5 (``driver="mpio"`` available)."""
    return bool(h5py.get_config().mpi)


def read_arrays(path):
    """{name: ndarray} of the top-level datasets of an HDF5 file (groups are skipped); used by
    :func:`ctwa_hpc.model.couplingfile.load_couplings` for ``.h5`` couplings files."""
    out = {}
    with h5py.File(path, "r") as f:
        for name, obj in f.items():
            if isinstance(obj, h5py.Dataset):
                out[name] = np.asarray(obj[()])
    return out


class GuardedFile(io.RawIOBase):
    """The file under an HDF5 file written through h5py's ``fileobj`` driver, for the serial
    and gather writers (:func:`create_guarded`).

    HDF5 must never see a failed write: after an error inside its default (sec2) driver the
    library's state is damaged, and closing the file dumps its error stack (hundreds of
    lines) and can segfault (``h5py.File.__exit__`` after ENOSPC).  Here the first failed
    write (ENOSPC, EIO, ...) is recorded in :attr:`error` and nothing more goes to disk: later
    writes up to :data:`KEEP` bytes are kept in memory (HDF5 may read its metadata back),
    larger ones (raw data) are dropped, so the file closes normally and the writer raises one
    clean error (the temporary is deleted: its content does not matter).
    """

    KEEP = 1 << 20

    def __init__(self, path):
        super().__init__()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.pos = self.size = 0
        self.error = None
        self._mem = {}

    def readable(self):
        return True

    def writable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self):
        return self.pos

    def write(self, data):
        mv = memoryview(data).cast("B")
        n = len(mv)
        if self.error is None:
            try:
                done = 0
                while done < n:
                    done += os.pwrite(self.fd, mv[done:], self.pos + done)
            except OSError as exc:
                self.error = exc
        if self.error is not None and n <= self.KEEP:
            self._mem.pop(self.pos, None)      # re-inserted last: the newest write wins
            self._mem[self.pos] = bytes(mv)
        self.pos += n
        self.size = max(self.size, self.pos)
        return n

    def readinto(self, buf):
        mv = memoryview(buf).cast("B")
        n = len(mv)
        got = os.pread(self.fd, n, self.pos)
        mv[:len(got)] = got
        mv[len(got):] = bytes(n - len(got))
        for off, blob in self._mem.items():
            lo, hi = max(off, self.pos), min(off + len(blob), self.pos + n)
            if lo < hi:
                mv[lo - self.pos:hi - self.pos] = blob[lo - off:hi - off]
        self.pos += n
        return n

    def truncate(self, size=None):
        size = self.pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as exc:
                self.error = exc
        self.size = size
        return size

    def flush(self):
        pass

    def finish(self):
        """fsync and close the descriptor; the first error (None: the file is complete)."""
        if self.fd is not None:
            if self.error is None:
                try:
                    os.fsync(self.fd)
                except OSError as exc:
                    self.error = exc
            os.close(self.fd)
            self.fd = None
        return self.error

    def close(self):
        self.finish()
        super().close()


def create_guarded(path):
    """(an h5py.File created at ``path`` for writing, its :class:`GuardedFile`): close the File,
    then ``guard.finish()`` returns the first I/O error of the whole write (or None)."""
    guard = GuardedFile(path)
    try:
        return h5py.File(guard, "w"), guard
    except BaseException:
        guard.close()
        raise


class WriteError(OSError):
    """The serial/gather writer could not write the file (disk full, I/O error): raised on
    every rank alike, the temporary removed, HDF5 left in a sound state."""


def failed_write(error, path, tmp):
    """None when ``error`` is None; else remove the temporary ``tmp`` and return the one
    message of the failed write of ``path`` (``error``: the first OSError of the file)."""
    if error is None:
        return None
    try:
        os.remove(tmp)
    except OSError:
        pass
    d = os.path.dirname(os.path.abspath(path))
    if error.errno != errno.ENOSPC:
        return f"output.path: cannot write {path}: {error.strerror or error}"
    try:
        free = f"{shutil.disk_usage(d).free / 2**20:.3g} MiB free"
    except OSError:
        free = "full"
    return (f"output.path: no space left in {d} ({free}) while writing {path}: the disk filled "
            "up during the write; free space there (or choose another output)")
