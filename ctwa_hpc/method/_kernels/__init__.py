"""The compiled Cython kernels (built from ``cython_kernels/`` by ``make build``).

Imported only through :mod:`ctwa_hpc.method.kernels` (which falls back to the NumPy twin
when they are not built); the kernels import nothing of ctwa_hpc and never see MPI.
"""
