# ctwa-hpc: install, build, run, test, benchmark.
#   make run        install everything (first time) and run the default job (jobs/tfim4.toml)
#   make test       install everything and run the test suite (MPI cases included)
#   make bench      kernel benchmark (ratios vs NumPy path and the best single-core dgemm)
#   make bench-threads  OpenMP threads 1, 2 and hybrid MPI x OpenMP (an OpenMP build of the
#                   kernels in build/omp; the tree's own build is left alone)
#   make bench-mpi  strong/weak scaling 1 -> 2 ranks
#   make test-slurm submit a small job script to a local single-node SLURM (needs root)
#   make figures    the paper's figures 4-9 (+ discrete sampling) into figures/, < 30 min here
#   make ARCH=native ...   tune the kernels for this machine's CPU; OPENMP=1 for threads
# On a supercomputer load the MPI/HDF5 modules first: with mpicc on PATH nothing calls apt.

VENV    ?= .venv
PY      := $(VENV)/bin/python
ARCH    ?=
OPENMP  ?= 0
NP      ?= 2
STAMP_STACK := $(VENV)/.stack-ready
STAMP_BUILD := $(VENV)/.build-ready
PYX     := $(wildcard cython_kernels/*.pyx cython_kernels/*.pxd cython_kernels/*.pxi)

# Open MPI as root in containers/CI, and more ranks than cores for tests; harmless elsewhere.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export OMPI_MCA_rmaps_base_oversubscribe := 1
export OMPI_MCA_btl_vader_single_copy_mechanism := none
export OMP_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: all install build run test test-fast test-mpi test-slurm bench bench-threads bench-mpi figures clean distclean

all: build

$(STAMP_STACK): scripts/install_hpc.sh
	VENV=$(VENV) ./scripts/install_hpc.sh
	touch $@

install: $(STAMP_STACK)

$(STAMP_BUILD): $(STAMP_STACK) setup.py $(PYX)
	CTWA_ARCH=$(ARCH) CTWA_OPENMP=$(OPENMP) $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	CTWA_ARCH=$(ARCH) CTWA_OPENMP=$(OPENMP) $(PY) setup.py -q build_ext --inplace
	touch $@

build: $(STAMP_BUILD)

run: build
	@mkdir -p out
	@if command -v mpirun >/dev/null 2>&1 && $(PY) -c 'import mpi4py' 2>/dev/null; then \
	  echo "+ mpirun -n $(NP) $(PY) -m mpi4py -m ctwa_hpc run jobs/tfim4.toml -o out/tfim4.h5 --force"; \
	  mpirun -n $(NP) $(PY) -m mpi4py -m ctwa_hpc run jobs/tfim4.toml -o out/tfim4.h5 --force; \
	else \
	  echo "+ $(PY) -m ctwa_hpc run jobs/tfim4.toml -o out/tfim4.h5 --force (serial: no MPI)"; \
	  $(PY) -m ctwa_hpc run jobs/tfim4.toml -o out/tfim4.h5 --force; \
	fi

test: build
	@$(MAKE) --no-print-directory test-slurm
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900 tests

test-fast: build
	$(PY) -m pytest -q -p no:cacheprovider -x -m "not slow" tests

test-slurm: build
	@$(PY) tests/slurm_check.py

bench: build
	$(PY) -m ctwa_hpc bench --json bench.json

OMP_DIR := build/omp
bench-threads: build
	rm -rf $(OMP_DIR) && mkdir -p $(OMP_DIR)
	cp -r ctwa_hpc $(OMP_DIR)/ && rm -f $(OMP_DIR)/ctwa_hpc/method/_kernels/*.so
	CTWA_ARCH=$(ARCH) CTWA_OPENMP=1 $(PY) setup.py -q build_ext --build-lib $(OMP_DIR) --build-temp $(OMP_DIR)-tmp
	cd $(OMP_DIR) && $(abspath $(PY)) -m ctwa_hpc bench --case heis64_c4 --threads 1,$(NP) \
	  --json $(CURDIR)/bench-threads.json

bench-mpi: build
	$(PY) -m ctwa_hpc.bench.mpi

figures: build
	@if command -v mpirun >/dev/null 2>&1 && $(PY) -c 'import mpi4py' 2>/dev/null; then \
	  mpirun -n $(NP) $(PY) -m mpi4py -m ctwa_hpc plot --all --outdir figures; \
	else \
	  $(PY) -m ctwa_hpc plot --all --outdir figures; \
	fi

clean:
	rm -rf build *.egg-info cython_kernels/*.c ctwa_hpc/_kernels/*.so $(STAMP_BUILD) out

distclean: clean
	rm -rf $(VENV)
