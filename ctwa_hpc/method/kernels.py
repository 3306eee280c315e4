"""The single import point for the compiled kernels (``ctwa_hpc.method._kernels``), with the NumPy twin.

:func:`integrate` runs a batch of CTWA trajectories (R-vector Gross–Pitaevskii equations,
eqs. (19)/(61)) with fixed-step RK4 and returns the observable columns at every output step
plus the final state; :func:`integrate_tangent` integrates the tangent (Jacobian–vector
product) δψ alongside, for linear response and non-equal-time commutators (eqs. (12),
(22)–(23)).  ``backend``:

* ``"cython"``: the compiled kernel ``ctwa_hpc.method._kernels.gp_rk4`` (error if not built);
* ``"numpy"``: the reference :class:`ctwa_hpc.method.dynamics.NumpyPropagator` + :func:`~ctwa_hpc.method.dynamics.rk4`;
* ``"auto"``: compiled if importable, else NumPy.  ``CTWA_NO_CYTHON=1`` forces NumPy.

Both backends take the same arguments and agree to ~1e-12 (``tests/test_kernels.py``).  The
compiled path consumes the tables built (and cached) by :func:`compile_tables`
(:mod:`ctwa_hpc.method.tables`):

* ``rows``: the right-hand side as *row programs*: for every amplitude b of cluster c, one term
  per distinct flip mask m of c with a non-zero coefficient, ``c(s) = h(t) + Σ coef · field``
  (local Hamiltonian entries and coupling operators of the same mask merged), so a cluster
  costs O(D_c × distinct masks) per stage;
* ``dex`` / ``oex``: the Weyl symbols of the coupling operators / of the observable entries,
  grouped by (cluster, mask) and visited by Hermitian pairs (b, b ^ m).

* ``dense``: the *dense-coupling path* (:mod:`ctwa_hpc.method.densefields`).  The coupling graph of
  the coupling operators splits into connected components ("blocks"; e.g. XXZ: the σx, σy
  and σz operators of all sites form three blocks).  A block whose coupling matrix is dense (density ≥ ``DENSE_THRESHOLD``,
  at least ``DENSE_MIN_OPS`` operators) gets its mean fields as a matrix product
  F = Σ_g f_g(t) M_g E (one matrix M_g per time-function group g present in the block),
  computed for a super-chunk of samples at every RK4 stage; the other operators keep the
  per-coupling (sparse) programs.  ``fields="auto"`` (default) decides per block by density,
  ``"dense"`` makes every block with couplings dense, ``"sparse"`` none.  Both paths give the
  same trajectories up to rounding (``tests/test_kernels_dense.py``).

``precision="single"`` runs the float32 kernel (``gp_rk4*_f32``): twice the SIMD lanes,
float32 state, coefficients, Weyl symbols and fields; the observable columns are accumulated
in double and returned as float64 (their sample averages are taken in double by the caller).
The NumPy backend is double only.

See the docstring of ``cython_kernels/gp_rk4.pyx`` for the kernel itself.
"""
from __future__ import annotations

import os

import numpy as np

from . import dynamics
# the dense-path names are re-exported: callers use kernels.DENSE_THRESHOLD, coupling_blocks, ...
from .densefields import (DENSE_COLS, DENSE_GROUP, DENSE_MIN_OPS, DENSE_ROWS, DENSE_THRESHOLD,  # noqa: F401
    FIELDS, DenseFieldPropagator, coupling_blocks, numpy_propagator)
from .tables import compile_tables

BACKENDS = ("auto", "cython", "numpy")
PRECISIONS = ("double", "single")

# the compiled kernel is an optional dependency (built by `make build`): the NumPy twin without it
try:  # pragma: no cover - depends on the build
    from ._kernels import gp_rk4 as _gp
    _IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover
    _gp = None
    _IMPORT_ERROR = exc
try:  # pragma: no cover - the one-pass moment accumulation (cython_kernels/moments.pyx)
    from ._kernels.moments import accumulate as moments_accumulate
except ImportError:  # pragma: no cover
    moments_accumulate = None


def have_compiled():
    """True if the compiled kernel is importable (regardless of ``CTWA_NO_CYTHON``)."""
    return _gp is not None


def compiled_info():
    """Facts of the compiled kernel: instruction-set variant, vector and chunk width, OpenMP."""
    if _gp is None:
        return {"compiled": False, "error": str(_IMPORT_ERROR)}
    name, vw, sw = _gp.kernel_info()
    info = {"compiled": True, "isa": name, "vector_width": vw, "chunk_width": sw,
            "openmp": _gp.openmp(), "cpu_level": _gp.ISA_NAMES[_gp.cpu_level()]}
    try:
        _, vw32, sw32 = _gp.kernel_info(precision="single")
        info.update(single_vector_width=vw32, single_chunk_width=sw32)
    except ImportError as exc:  # pragma: no cover - partial build
        info.update(single_error=str(exc))
    return info


def resolve_backend(backend="auto"):
    """Backend actually used for ``backend`` (``auto`` → ``cython`` or ``numpy``)."""
    if backend not in BACKENDS:
        raise ValueError(f"method.backend: unknown backend {backend!r} (known: {list(BACKENDS)})")
    if backend == "numpy":
        return "numpy"
    if backend == "cython":
        if _gp is None:
            raise RuntimeError("method.backend = 'cython' but the compiled kernels are not built "
                               f"({_IMPORT_ERROR}); run `make build` or `python setup.py "
                               "build_ext --inplace`, or use backend = 'numpy'")
        return "cython"
    if os.environ.get("CTWA_NO_CYTHON", "0") not in ("", "0") or _gp is None:
        return "numpy"
    return "cython"


def _check_mode(which, precision, fields):
    """Validate ``precision`` and ``fields`` for the resolved backend ``which``."""
    if precision not in PRECISIONS:
        raise ValueError(f"method.precision: unknown precision {precision!r} "
                         f"(known: {list(PRECISIONS)})")
    if fields not in FIELDS:
        raise ValueError(f"method.fields: unknown mean-field path {fields!r} "
                         f"(known: {list(FIELDS)})")
    if precision == "single" and which == "numpy":
        raise ValueError("method.precision: 'single' needs the compiled kernel (the NumPy "
                         "backend integrates in double); build it or use precision = 'double'")


def _check_args(problem, psi0, weights, n_steps, out_every, tf_tab, sample_ids):
    """Normalized arguments shared by :func:`integrate` and :func:`integrate_tangent`."""
    psi0 = np.ascontiguousarray(psi0, dtype=np.complex128)
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    n_steps, out_every = int(n_steps), int(out_every)
    if out_every < 1 or n_steps % out_every:
        raise ValueError("time.output_dt must be a multiple of time.dt")
    tf_tab = np.ascontiguousarray(tf_tab, dtype=np.float64)
    if tf_tab.ndim != 2 or tf_tab.shape[0] != len(problem.tfuncs) \
            or (tf_tab.shape[0] and tf_tab.shape[1] < 2 * n_steps + 1):
        raise ValueError(f"tf_tab: expected shape ({len(problem.tfuncs)}, {2 * n_steps + 1}), "
                         f"got {tf_tab.shape}")
    if psi0.ndim != 3 or psi0.shape[0] != problem.n_amp or psi0.shape[1] != len(weights):
        raise ValueError(f"psi0: expected shape ({problem.n_amp}, {len(weights)}, S), "
                         f"got {psi0.shape}")
    S = psi0.shape[2]
    sample_ids = np.arange(S) if sample_ids is None else np.asarray(sample_ids)
    if sample_ids.shape != (S,):
        raise ValueError(f"sample_ids: expected {S} indices, got shape {sample_ids.shape}")
    return psi0, weights, n_steps, out_every, tf_tab, sample_ids


def _f64(psi):
    """float64 view (A, R, S, 2) of a contiguous complex128 array (A, R, S)."""
    return psi.view(np.float64).reshape(psi.shape + (2,))


def integrate(problem, plan, psi0, weights, t0, dt, n_steps, out_every, tf_tab,
              sample_ids=None, backend="auto", threads=None, precision="double",
              fields="auto"):
    """Integrate a batch with fixed-step RK4 and evaluate observable columns.

    Parameters
    ----------
    problem : ClusterProblem
    plan : ObservablePlan (compiled on the same partition)
    psi0 : complex128 array (A, R, S), samples innermost
    weights : float array (R,)  (SB / mean field: (1,); reduced operator CTWA: (1, -1))
    t0, dt : float;  n_steps : int;  out_every : int (n_steps must be a multiple)
    tf_tab : float array (G, 2 n_steps + 1), ``tf_tab[g, j] = f_g(t0 + j dt / 2)``
    sample_ids : int array (S,), global sample indices (for error messages)
    backend : "auto" | "cython" | "numpy"
    threads : int, optional — OpenMP threads of the compiled kernel (default
        ``OMP_NUM_THREADS``; only with a ``CTWA_OPENMP=1`` build); results do not depend on it
    precision : "double" (default) | "single" — float32 trajectories (compiled kernel only),
        columns accumulated in double
    fields : "auto" (default) | "sparse" | "dense" — mean fields per coupling or, for dense
        coupling blocks, as matrix products (see the module docstring)

    Returns
    -------
    cols : float64 (n_out, K, S), columns at steps 0, out_every, 2 out_every, ..., n_steps
    psi : complex128 (A, R, S), the state after n_steps (single precision: the float32
        state, widened)

    Raises
    ------
    dynamics.NonFiniteError  with the first non-finite sample (global id) and its time.
    """
    which = resolve_backend(backend)
    _check_mode(which, precision, fields)
    psi0, weights, n_steps, out_every, tf_tab, sample_ids = _check_args(
        problem, psi0, weights, n_steps, out_every, tf_tab, sample_ids)
    if which == "numpy":
        prop = numpy_propagator(problem, plan, weights, fields)
        return dynamics.rk4(prop, psi0, t0, dt, n_steps, out_every, tf_tab, sample_ids)
    tables = compile_tables(problem, plan, fields)
    cols, psi, bad = _gp.run(tables, _f64(psi0), weights, float(dt), n_steps, out_every, tf_tab,
                             threads=threads, precision=precision)
    _raise_non_finite(bad, sample_ids, t0, out_every * dt)
    return cols, _complex(psi, psi0.shape)


def integrate_tangent(problem, plan, psi0, dpsi0, weights, t0, dt, n_steps, out_every, tf_tab,
                      sample_ids=None, backend="auto", threads=None, precision="double",
                      fields="auto"):
    """Integrate a batch together with its tangent δψ (linear response, eqs. (12), (22)–(23)).

    The tangent obeys the linearized R-vector equations
    ``i ∂t δψ = H_eff δψ + Σ_o δfield_o O_o ψ`` with ``δ(O)_W = Σ_r w_r 2 Re ψ_r† O δψ_r`` and
    ``δfield = F(t)·δE`` (see :class:`ctwa_hpc.method.dynamics.TangentPropagator`, the NumPy
    backend); RK4 acts on the pair (ψ, δψ), every stage evaluating both right-hand sides at the
    same stage state.  ``dpsi0`` (complex, shape of ``psi0``) is typically the kick of
    :func:`ctwa_hpc.method.dynamics.kick`.  Other arguments (``precision``, ``fields``, ...) as for
    :func:`integrate`.

    Returns
    -------
    cols : float64 (n_out, 2K, S): the K observable columns followed by their K tangents
        δ(column) = Σ_t c_t Σ_f δE_f Π_{g≠f} E_g
    psi, dpsi : complex128 (A, R, S), the state and the tangent after n_steps

    Raises
    ------
    dynamics.NonFiniteError  with the first non-finite sample (global id) and its time.
    """
    which = resolve_backend(backend)
    _check_mode(which, precision, fields)
    psi0, weights, n_steps, out_every, tf_tab, sample_ids = _check_args(
        problem, psi0, weights, n_steps, out_every, tf_tab, sample_ids)
    dpsi0 = np.ascontiguousarray(dpsi0, dtype=np.complex128)
    if dpsi0.shape != psi0.shape:
        raise ValueError(f"dpsi0: expected shape {psi0.shape}, got {dpsi0.shape}")
    if which == "numpy":
        prop = dynamics.TangentPropagator(numpy_propagator(problem, plan, weights, fields))
        cols, (psi, dpsi) = dynamics.rk4(prop, (psi0, dpsi0), t0, dt, n_steps, out_every,
                                         tf_tab, sample_ids)
        return cols, psi, dpsi
    tables = compile_tables(problem, plan, fields)
    cols, psi, dpsi, bad = _gp.run_tangent(tables, _f64(psi0), _f64(dpsi0), weights, float(dt),
                                           n_steps, out_every, tf_tab, threads=threads,
                                           precision=precision)
    _raise_non_finite(bad, sample_ids, t0, out_every * dt)
    return cols, _complex(psi, psi0.shape), _complex(dpsi, psi0.shape)


def _raise_non_finite(bad, sample_ids, t0, out_dt):
    """The kernel reports (output index, batch index) of the first non-finite sample."""
    if bad is not None:
        out_idx, s = bad
        raise dynamics.NonFiniteError(sample_ids[s], t0 + out_idx * out_dt)


def _complex(split, shape):
    """The kernel's interleaved float64 state as complex128 of ``shape``."""
    return split.view(np.complex128).reshape(shape)
