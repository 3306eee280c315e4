"""HDF5 in one place: the only module that imports h5py (the writers and readers use this).

h5py is imported at module level: it does not initialize MPI (its MPI-enabled build imports
mpi4py only when a file is opened with ``driver="mpio"`` and a communicator), and costs
~0.2 s once.  Everything the package needs from it is named here, so a site whose h5py lacks
a feature (parallel HDF5, a newer API) shows it in one file.
"""
from __future__ import annotations

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
