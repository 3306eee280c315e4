#!/usr/bin/env bash
# Install the MPI + parallel-HDF5 Python stack for ctwa-hpc into a virtual environment.
#
# * If `mpicc` is already on PATH (site modules on a supercomputer), that MPI is used and
#   apt is never called; HDF5 is then expected from the site (HDF5_DIR or pkg-config).
# * Otherwise (a Debian/Ubuntu machine where we are root) OpenMPI and parallel HDF5 come
#   from Debian packages.
# * h5py is built from source against the parallel HDF5 (--no-build-isolation: the isolated
#   build compiles an old mpi4py and can exhaust memory), then checked: h5py.get_config().mpi.
# * CTWA_SERIAL=1 skips MPI entirely: numpy/scipy/cython/h5py wheels only (serial fallback).
set -euo pipefail
VENV=${VENV:-.venv}
PY=${PY:-python3}
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

base_pkgs=("setuptools>=77" wheel pkgconfig packaging "cython>=3,<4" "numpy>=2,<3" scipy
           pytest pytest-timeout matplotlib threadpoolctl xarray h5netcdf)

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q "${base_pkgs[@]}"

if [ "${CTWA_SERIAL:-0}" = 1 ]; then
  "$VENV/bin/python" -c 'import h5py' 2>/dev/null || "$VENV/bin/pip" install -q h5py
  echo "install_hpc: serial stack ready in $VENV (no MPI)"
  exit 0
fi

if command -v mpicc >/dev/null 2>&1; then
  echo "install_hpc: using the MPI on PATH: $(command -v mpicc)"
  HDF5_PC=${HDF5_PKGCONFIG_NAME:-}
  if [ -z "$HDF5_PC" ] && [ -z "${HDF5_DIR:-}" ]; then
    for name in hdf5-openmpi hdf5-mpich hdf5-mpi hdf5; do
      if pkg-config --exists "$name" 2>/dev/null; then HDF5_PC=$name; break; fi
    done
  fi
else
  if [ "$(id -u)" != 0 ]; then
    echo "install_hpc: no mpicc on PATH and not root: load your site's MPI/HDF5 modules first" >&2
    exit 1
  fi
  if ! dpkg -s openmpi-bin libopenmpi-dev libhdf5-openmpi-dev pkg-config >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev libhdf5-openmpi-dev pkg-config
  fi
  HDF5_PC=hdf5-openmpi
fi

"$VENV/bin/pip" install -q "mpi4py>=4.1,<5"
if ! "$VENV/bin/python" -c 'import h5py,sys; sys.exit(not h5py.get_config().mpi)' 2>/dev/null; then
  env CC=mpicc HDF5_MPI=ON ${HDF5_PC:+HDF5_PKGCONFIG_NAME=$HDF5_PC} \
    "$VENV/bin/pip" install -q --no-build-isolation --no-binary=h5py --force-reinstall --no-deps "h5py==3.16.0"
fi
"$VENV/bin/python" -c 'import h5py,sys; sys.exit(0 if h5py.get_config().mpi else "h5py has no MPI support")'
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
  mpirun -n 2 "$VENV/bin/python" -c 'from mpi4py import MPI; assert MPI.COMM_WORLD.allreduce(1) == 2'
echo "install_hpc: MPI stack ready in $VENV"
