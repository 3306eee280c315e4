"""Tools every room uses: MPI in one place (:mod:`.parallel`, the only mpi4py import), HDF5 in
one place (:mod:`.h5`, the only h5py import), logging, the shared exceptions, the version.

Imports nothing else of ctwa_hpc: every other room may import it.
"""
