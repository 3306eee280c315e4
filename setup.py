"""Build ctwa-hpc: the Python package plus the Cython RK4 kernels in cython_kernels/.

Compiler flags: -O3 by default; ``CTWA_ARCH=native`` (``make ARCH=native``) adds
-march=native for a cluster's own nodes; ``CTWA_OPENMP=1`` builds the kernels with OpenMP
(threads inside a rank, hybrid MPI+OpenMP); extra flags come from ``CFLAGS`` as usual.
The kernels never see MPI, so they build with the plain C compiler.
"""
import glob
import os

import numpy
from setuptools import Extension, find_packages, setup

try:
    from Cython.Build import cythonize
except ImportError:  # pragma: no cover - the Makefile installs Cython first
    cythonize = None


def extensions():
    if cythonize is None:
        return []
    args = ["-O3", "-ffast-math", "-fno-finite-math-only"]
    link = []
    if os.environ.get("CTWA_ARCH"):
        args.append(f"-march={os.environ['CTWA_ARCH']}")
    if os.environ.get("CTWA_OPENMP", "0") == "1":
        args.append("-fopenmp")
        link.append("-fopenmp")
    exts = []
    for pyx in sorted(glob.glob("cython_kernels/*.pyx")):
        name = os.path.splitext(os.path.basename(pyx))[0]
        exts.append(Extension(f"ctwa_hpc.method._kernels.{name}", [pyx],
                              include_dirs=[numpy.get_include()],
                              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                              extra_compile_args=args, extra_link_args=link))
    return cythonize(exts, include_path=["cython_kernels"], language_level=3,
                     compiler_directives={"boundscheck": False, "wraparound": False,
                                          "cdivision": True, "initializedcheck": False})


setup(
    name="ctwa-hpc",
    version="0.1.0",
    description="MPI-parallel cluster truncated Wigner approximation (CTWA) for spin-1/2 dynamics",
    packages=find_packages(include=["ctwa_hpc", "ctwa_hpc.*"]),
    ext_modules=extensions(),
    python_requires=">=3.11",  # tomllib
    install_requires=["numpy>=1.24", "scipy>=1.10", "h5py>=3.7", "xarray>=2024.10",
                      "h5netcdf>=1.3"],
    extras_require={"mpi": ["mpi4py>=3.1"], "plot": ["matplotlib"]},
    entry_points={"console_scripts": ["ctwa-hpc = ctwa_hpc.cli:main"]},
)
