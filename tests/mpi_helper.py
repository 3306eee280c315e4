"""Run ctwa-hpc as subprocesses, serially or under ``mpirun -n k python -m mpi4py``.

Every launch has a timeout, and ``python -m mpi4py`` turns an exception on one rank into
MPI_Abort of the whole job, so a failing rank fails the test quickly instead of hanging it
(see the shared notes, "pytest + MPI").
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1",
           "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
TINY = os.path.join(ROOT, "jobs", "tiny.toml")
# outputs whose values are compared between runs
SKIP_ATTRS = {"wall_time_s", "created", "writer", "mpi_size", "hostname"}


def have_mpi():
    if shutil.which("mpirun") is None:
        return False
    r = subprocess.run([PY, "-c", "import mpi4py"], capture_output=True, timeout=60)
    return r.returncode == 0


def env(extra=None):
    e = {**os.environ, **MPI_ENV,
         "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for k in ("CTWA_TEST_STOP_AFTER_BLOCKS", "CTWA_H5_GATHER", "CTWA_NO_MPI"):
        e.pop(k, None)
    e.update(extra or {})
    return e


def command(args, n=None):
    """The command line of ``ctwa-hpc ARGS``: serial (n=None) or under mpirun -n n."""
    if n is None:
        return [PY, "-m", "ctwa_hpc", *map(str, args)]
    return ["mpirun", "-n", str(n), PY, "-m", "mpi4py", "-m", "ctwa_hpc", *map(str, args)]


def run_cli(args, n=None, timeout=120, extra_env=None):
    """Run ``ctwa-hpc ARGS``; returns the CompletedProcess (stdout, stderr as text)."""
    return subprocess.run(command(args, n), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env(extra_env))


def popen_cli(args, n=None, extra_env=None):
    return subprocess.Popen(command(args, n), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=env(extra_env), start_new_session=True)


def check(r, code=0):
    assert r.returncode == code, f"exit {r.returncode} (expected {code})\n{r.stdout}\n{r.stderr}"
    return r


def max_diff(a, b, groups=("observables", "realizations")):
    """Largest absolute difference of all datasets under ``groups`` of two loaded files."""
    worst = 0.0
    for g in groups:
        assert set(a[g]) == set(b[g]), (g, sorted(a[g]), sorted(b[g]))
        for name in a[g]:
            assert set(a[g][name]) == set(b[g][name])
            for key, x in a[g][name].items():
                y = b[g][name][key]
                assert x.shape == y.shape, (g, name, key)
                if x.size:
                    with np.errstate(invalid="ignore"):
                        d = np.abs(x - y)
                    same_nan = np.isnan(x) & np.isnan(y)
                    worst = max(worst, float(np.max(np.where(same_nan, 0.0, d))))
    return worst
