r"""The machine a benchmark runs on: its description, its BLAS reference and how benchmark
subprocesses are launched on it.

* :func:`machine_info`: platform, CPU, load average, kernel build;
* :func:`blas_reference`: single-core dgemm/sgemm GFLOP/s of numpy's BLAS in a subprocess,
  best (``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` removed) and pinned, with the kernel that
  ran (see the docstring of :mod:`ctwa_hpc.bench.throughput`); :func:`best_reference` and
  :func:`rescale` combine two measurements of a shared node and re-take a record's ratios;
* :data:`ROOT`, :data:`MPI_ENV`, :func:`launch_env`: the working directory and environment of
  the ``mpirun`` and ``python -m`` subprocesses of the benchmarks (run as root, oversubscribed,
  one BLAS/OpenMP thread unless the caller says otherwise, this tree on ``PYTHONPATH``).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np

from ..method import kernels

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1",
           "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def launch_env(extra=None):
    """Environment of a benchmark subprocess: this one's, :data:`MPI_ENV`, ``extra`` and
    :data:`ROOT` in front of ``PYTHONPATH``."""
    return {**os.environ, **MPI_ENV, **(extra or {}),
            "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


# ------------------------------------------------------------------------------------------
# BLAS reference
# ------------------------------------------------------------------------------------------
_GEMM_CODE = """
import json, time, numpy as np
try:
    import threadpoolctl
    blas = [{k: i.get(k) for k in ("internal_api", "architecture", "version", "num_threads")}
            for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
except ImportError:
    blas = None
rng = np.random.default_rng(0)
out = {}
for dtype in ("float64", "float32"):
    best = 0.0
    for n in %(sizes)r:
        a, b = rng.random((n, n)).astype(dtype), rng.random((n, n)).astype(dtype)
        a @ b
        for _ in range(%(reps)d):
            t = time.thread_time()
            a @ b
            best = max(best, 2.0 * n ** 3 / (time.thread_time() - t))
    out[dtype] = best / 1e9
print(json.dumps({"dgemm": out["float64"], "sgemm": out["float32"], "blas": blas}))
"""
PIN_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _gemm_subprocess(env, sizes, reps):
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = "1"
    out = subprocess.run([sys.executable, "-c", _GEMM_CODE % dict(sizes=sizes, reps=reps)],
                         env=env, capture_output=True, text=True, check=True, timeout=600)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    blas = res.get("blas") or []
    res["kernel"] = ", ".join(f"{b['internal_api']} {b['version']} {b['architecture']}"
                              for b in blas) or "unknown (no threadpoolctl)"
    return res


def blas_reference(quick=False):
    """Single-core dgemm/sgemm GFLOP/s of numpy's BLAS: best (pinning variables removed) and
    pinned (``OPENBLAS_CORETYPE`` of the environment, else Haswell); see the docstring of
    :mod:`ctwa_hpc.bench.throughput`."""
    sizes, reps = ((1000,), 3) if quick else ((1000, 2000), 5)
    env = {k: v for k, v in os.environ.items() if k not in PIN_VARS}
    best = _gemm_subprocess(env, sizes, reps)
    pin = dict(env, OPENBLAS_CORETYPE=os.environ.get("OPENBLAS_CORETYPE") or "Haswell")
    if "OPENBLAS_L2_SIZE" in os.environ:
        pin["OPENBLAS_L2_SIZE"] = os.environ["OPENBLAS_L2_SIZE"]
    pinned = _gemm_subprocess(pin, sizes, reps)
    return {"dgemm_gflops": max(best["dgemm"], pinned["dgemm"]),
            "sgemm_gflops": max(best["sgemm"], pinned["sgemm"]),
            "dgemm_best_gflops": best["dgemm"], "dgemm_best_kernel": best["kernel"],
            "dgemm_pinned_gflops": pinned["dgemm"], "dgemm_pinned_kernel": pinned["kernel"],
            "dgemm_pinned_coretype": pin["OPENBLAS_CORETYPE"],
            "environment_coretype": os.environ.get("OPENBLAS_CORETYPE"), "gemm_sizes": sizes}


def best_reference(a, b):
    """The better of two :func:`blas_reference` measurements, entry by entry."""
    out = dict(a)
    for kind in ("best", "pinned"):
        g, k = f"dgemm_{kind}_gflops", f"dgemm_{kind}_kernel"
        if b[g] > a[g]:
            out[g], out[k] = b[g], b[k]
    out["dgemm_gflops"] = max(a["dgemm_gflops"], b["dgemm_gflops"])
    out["sgemm_gflops"] = max(a["sgemm_gflops"], b["sgemm_gflops"])
    return out


def rescale(r, ref):
    """Ratios of a case record against the reference ``ref``."""
    d = ref["dgemm_gflops"]
    r["dgemm_gflops"] = d
    r["ratio_to_dgemm"] = r["gflops"] / d
    if r.get("mm_flops_per_sample_step") is not None:
        r["mm_ratio_to_dgemm"] = r["mm_flops_per_sample_step"] * r["sample_steps_per_s"] / 1e9 / d
    if "ratio_to_sgemm" in r:
        r["ratio_to_sgemm"] = r["gflops"] / ref["sgemm_gflops"]


def dgemm_gflops(n=1000, reps=5):
    """Single-core dgemm GFLOP/s with the best OpenBLAS kernel (pinning variables removed)."""
    env = {k: v for k, v in os.environ.items() if k not in PIN_VARS}
    return _gemm_subprocess(env, (n,), reps)["dgemm"]


def machine_info():
    """Platform, CPU, load average and the compiled kernel of this run."""
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "cpus": os.cpu_count(), "kernel": kernels.compiled_info()}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover
        pass
    try:
        info["load_average"] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    return info
