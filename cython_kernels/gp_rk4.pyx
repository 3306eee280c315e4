# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
r"""Batched fixed-step RK4 for the R-vector Gross–Pitaevskii equations (19)/(61), ``nogil``.

The compiled twin of :func:`ctwa_hpc.dynamics.rk4` with
:class:`ctwa_hpc.dynamics.NumpyPropagator`.  Call it through :func:`ctwa_hpc.kernels.integrate`,
which builds the tables below from a :class:`~ctwa_hpc.clusters.ClusterProblem` and an
:class:`~ctwa_hpc.observables.ObservablePlan` (``kernels.compile_tables``).

Data layout
-----------
Samples are processed in *chunks* of ``SW`` samples (32 with AVX-512, 16 with AVX2, 8 with
SSE2).  Chunks are independent, so one chunk is integrated over all ``n_steps`` before the
next one starts (its working set stays in cache), and chunks are the unit of OpenMP
parallelism (``prange``; only when built with ``CTWA_OPENMP=1``, threads from
``OMP_NUM_THREADS``; every thread reuses one work space for all its chunks).  Inside a chunk every state array is
``x[a, r, part, s]`` (amplitude, vector, re/im, sample) with the SW samples innermost,
contiguous and 64-byte aligned.  Arithmetic is written on SIMD vectors of the native width
(GCC vector extension ``ctwa_vd``: 8 doubles with AVX-512, 4 with AVX2, 2 with SSE2), so
every statement of the kernel is a SIMD instruction over samples.

Right-hand side
---------------
For amplitude b of cluster c the RHS is a short *row program* built by the wrapper:
``(H_eff ψ)[b] = Σ_terms c_t(s) ψ[b ^ m_t]`` where the terms are the distinct flip masks m of
the cluster (local Hamiltonian entries merged with the coupling operators of the same mask,
zero coefficients dropped), and ``c_t(s) = h_t(t) + Σ_items coef · field_op(s)`` is built in
registers from the mean fields ``field_o = Σ_k J_k f_k(t) E_partner(k)``.  A cluster costs
O(D × distinct masks) per stage, and the accumulator of row b never leaves the registers.

Weyl symbols E_o = Σ_r w_r Re ψ_r† O_o ψ_r use the Hermitian pairs (b, b ^ m), b < b ^ m:
``Σ_b Re conj(ψ[b]) d[b] ψ[b^m] = 2 Σ_pairs Re(d[b] conj(ψ[b]) ψ[b^m])``.

RK4 sweep
---------
Each stage is one sweep over the clusters: apply the row programs of cluster c to the stage
state (fields from the Weyl symbols of the previous sweep), update the RK4 accumulators of c,
and compute the Weyl symbols of c's coupling operators for the *next* stage while c is still
in L1 cache.  Stage times are t, t+dt/2, t+dt/2, t+dt (classic RK4, as
:func:`ctwa_hpc.dynamics.rk4`); the final combination is regrouped as
(y0 + ys_1)/3 + dt/3 k2 + ys_3/3 + dt/6 k4 (ys_i: stage states), which is the same in exact
arithmetic and saves a quarter of the memory traffic (see ``rk_update`` in ``gp_core.pxd``).
Observables and a non-finite check run at steps 0, out_every, 2 out_every, ...; a chunk whose
columns or state become non-finite stops and reports its first bad sample.

Instruction sets
----------------
The kernel itself lives in ``gp_core.pxd`` (``cdef inline`` functions).  It is compiled three
times: here with the build flags, and in ``gp_rk4_avx2.pyx`` / ``gp_rk4_avx512.pyx`` under
``#pragma GCC target`` (GCC, x86-64), each with its native vector width.  :func:`run` uses
the best variant the running CPU supports (``CTWA_KERNEL_ISA=generic|avx2|avx512`` forces
one); the variant modules are imported only on CPUs that support them.  With
``CTWA_ARCH=native`` the baseline module is already native and is used directly.

Tangent
-------
:func:`run_tangent` integrates the pair (ψ, δψ) for linear response (paper eqs. (12),
(22)–(23); the compiled twin of :class:`ctwa_hpc.dynamics.TangentPropagator`): the tangent
obeys the linearized equations i ∂_t δψ = H_eff δψ + Σ_o δfield_o O_o ψ with
δ(O)_W = Σ_r w_r 2 Re ψ_r† O δψ_r and δfield = F(t)·δE (the couplings of the field).  Every
RK4 stage evaluates both right-hand sides at the same stage state in one pass over the row
programs (the coefficient c of a term is built once and applied to ψ and δψ; the tangent
coefficient δc = Σ coef · δfield only for terms with coupling items), and the Weyl symbols of
the stage carry their tangents (linearized pair products).  The columns are followed by their
tangents δ(column) = Σ_t c_t Σ_f δE_f Π_{g≠f} E_g; a non-finite value of either (or of the
state or tangent) stops the chunk as for the trajectory.
"""

from cython.parallel cimport prange, threadid
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free

from gp_core cimport (Plan, RowTab, ExpTab, gp_chunk, CTWA_SW, CTWA_VW, CTWA_LEVEL)

import numpy as np

cdef extern from *:
    """
    static int ctwa_cpu_isa(void) {
    #if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
            && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512cd"))
            return 2;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
    #endif
        return 0;
    }
    #if defined(_OPENMP)
    #include <omp.h>
    #define CTWA_OPENMP 1
    static int ctwa_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define CTWA_OPENMP 0
    static int ctwa_max_threads(void) { return 1; }
    #endif
    """
    int ctwa_cpu_isa() noexcept nogil
    int ctwa_max_threads() noexcept nogil
    int CTWA_OPENMP

ctypedef void (*chunk_fn)(Plan*, Py_ssize_t, double**) noexcept nogil

ISA_NAMES = ("generic", "avx2", "avx512")
_VARIANTS = {1: "gp_rk4_avx2", 2: "gp_rk4_avx512"}
cdef int64_t _EMPTY_I[1]
cdef double _EMPTY_D[1]


cdef void _chunk_here(Plan* P, Py_ssize_t ch, double** ws) noexcept nogil:
    gp_chunk(P, ch, ws)


def cpu_level():
    """Instruction-set level of the running CPU: 0 baseline, 1 AVX2+FMA, 2 AVX-512."""
    return ctwa_cpu_isa()


def build_info():
    """(level, vector width, chunk width) this module was compiled for."""
    return CTWA_LEVEL, CTWA_VW, CTWA_SW


def openmp():
    """True when built with OpenMP (``CTWA_OPENMP=1``)."""
    return bool(CTWA_OPENMP)


def max_threads():
    """Threads a kernel call uses (``OMP_NUM_THREADS``; 1 without OpenMP)."""
    return ctwa_max_threads()


def isa(name=None):
    """Instruction-set variant used: ``name``, else ``CTWA_KERNEL_ISA`` if set, else the best
    one supported by both the CPU and the build."""
    import os
    name = name or os.environ.get("CTWA_KERNEL_ISA", "")
    best = max(CTWA_LEVEL, _best_variant())
    if not name:
        return ISA_NAMES[best]
    if name not in ISA_NAMES:
        raise ValueError(f"CTWA_KERNEL_ISA: unknown variant {name!r} (known: {ISA_NAMES})")
    if ISA_NAMES.index(name) > best:
        raise ValueError(f"CTWA_KERNEL_ISA={name}: not supported by this CPU/build "
                         f"(best: {ISA_NAMES[best]})")
    return name


def _variant_module(level):
    import importlib
    return importlib.import_module(f"ctwa_hpc._kernels.{_VARIANTS[level]}")


_BEST = None


def _best_variant():
    """Highest variant level that the CPU supports and that imports (0 if none)."""
    global _BEST
    if _BEST is None:
        _BEST = 0
        for level in (2, 1):
            if level <= ctwa_cpu_isa():
                try:
                    mod = _variant_module(level)
                    if mod.build_info()[0] >= level:
                        _BEST = level
                        break
                except ImportError:
                    pass
    return _BEST


def kernel_info(name=None):
    """(isa name, vector width, chunk width) of the variant :func:`run` uses."""
    level = ISA_NAMES.index(isa(name))
    if level <= CTWA_LEVEL:
        return ISA_NAMES[CTWA_LEVEL], CTWA_VW, CTWA_SW
    _, vw, sw = _variant_module(level).build_info()
    return ISA_NAMES[level], vw, sw


cdef chunk_fn _select(int level, Py_ssize_t* sw) except? NULL:
    if level <= CTWA_LEVEL:
        sw[0] = CTWA_SW
        return _chunk_here
    mod = _variant_module(level)
    sw[0] = mod.build_info()[2]
    return <chunk_fn>PyCapsule_GetPointer(mod.kernel(), b"ctwa_gp_chunk")


cdef const int64_t* _pi(a) except NULL:
    cdef const int64_t[::1] v = a
    if v.shape[0] == 0:
        return <const int64_t*>_EMPTY_I
    return &v[0]


cdef const double* _pd(a) except NULL:
    cdef const double[::1] v = a
    if v.shape[0] == 0:
        return <const double*>_EMPTY_D
    return &v[0]


cdef int _fill_rows(RowTab* T, dict d) except -1:
    T.T = d["t_src"].shape[0]
    T.row = _pi(d["row"]); T.t_src = _pi(d["t_src"]); T.t_kind = _pi(d["t_kind"])
    T.t_it = _pi(d["t_it"]); T.t_im = _pi(d["t_im"])
    T.t_hre = _pd(d["t_hre"]); T.t_him = _pd(d["t_him"])
    T.t_htre = _pd(d["t_htre"]); T.t_htim = _pd(d["t_htim"])
    T.i_op = _pi(d["i_op"]); T.i_coef = _pd(d["i_coef"])
    return 0


cdef int _fill_exp(ExpTab* T, dict d) except -1:
    T.g_mask = _pi(d["g_mask"]); T.g_np = _pi(d["g_np"]); T.g_pp = _pi(d["g_pp"])
    T.g_it = _pi(d["g_it"]); T.pr_b = _pi(d["pr_b"])
    T.it_op = _pi(d["it_op"]); T.it_part = _pi(d["it_part"]); T.it_cp = _pi(d["it_cp"])
    T.it_ec = _pd(d["it_ec"]); T.it_first = _pi(d["it_first"])
    T.maxnp = d["maxnp"]
    return 0


def run(dict T, const double[:, :, :, ::1] psi_in, const double[::1] weights,
        double dt, Py_ssize_t n_steps, Py_ssize_t out_every, const double[:, ::1] tf_tab,
        str isa_name=None, threads=None):
    """Integrate a batch; see :func:`ctwa_hpc.kernels.integrate` (which builds ``T``).

    psi_in: float64 view (A, R, S, 2) of the complex initial state.  Returns
    ``(cols (n_out, K, S), psi_out (A, R, S, 2), bad)``, ``bad`` being None or
    ``(output index, sample index)`` of the first non-finite value.  ``threads``: OpenMP
    threads (default ``OMP_NUM_THREADS``; ignored without OpenMP).
    """
    cols, psi_out, _, bad = _run(T, psi_in, None, weights, dt, n_steps, out_every, tf_tab,
                                 isa_name, threads)
    return cols, psi_out, bad


def run_tangent(dict T, const double[:, :, :, ::1] psi_in,
                const double[:, :, :, ::1] dpsi_in not None, const double[::1] weights,
                double dt, Py_ssize_t n_steps, Py_ssize_t out_every,
                const double[:, ::1] tf_tab, str isa_name=None, threads=None):
    """Integrate a batch and its tangent; see :func:`ctwa_hpc.kernels.integrate_tangent`.

    dpsi_in: float64 view (A, R, S, 2) of the complex tangent δψ(0).  Returns
    ``(cols (n_out, 2K, S), psi_out, dpsi_out, bad)``: the K observable columns followed by
    their K tangents, the final state and tangent (A, R, S, 2), and ``bad`` as for :func:`run`.
    """
    cdef int d
    for d in range(4):
        if dpsi_in.shape[d] != psi_in.shape[d]:
            raise ValueError("dpsi must have the shape of psi")
    return _run(T, psi_in, dpsi_in, weights, dt, n_steps, out_every, tf_tab, isa_name, threads)


def _run(dict T, const double[:, :, :, ::1] psi_in, dpsi_in, const double[::1] weights,
         double dt, Py_ssize_t n_steps, Py_ssize_t out_every, const double[:, ::1] tf_tab,
         str isa_name, threads):
    """Common body of :func:`run` and :func:`run_tangent` (``dpsi_in`` None: no tangent)."""
    cdef Plan P
    cdef Py_ssize_t A = psi_in.shape[0], R = psi_in.shape[1], S = psi_in.shape[2]
    cdef Py_ssize_t sw = 0
    cdef chunk_fn fn = _select(ISA_NAMES.index(isa(isa_name)), &sw)
    cdef Py_ssize_t n_chunks = (S + sw - 1) // sw
    cdef Py_ssize_t ch
    cdef Py_ssize_t G = T["G"]
    cdef int nthreads = ctwa_max_threads() if threads is None else threads
    cdef double** slots
    cdef bint tan = dpsi_in is not None
    cdef const double[:, :, :, ::1] dpsi_v
    if out_every < 1 or n_steps < 0 or n_steps % out_every:
        raise ValueError("time.output_dt must be a multiple of time.dt")
    if psi_in.shape[3] != 2 or weights.shape[0] != R or R < 1:
        raise ValueError("psi/weights shape mismatch")
    if A != T["A"]:
        raise ValueError(f"psi has {A} amplitudes but the problem has {T['A']}")
    if tf_tab.shape[0] != G or (G > 0 and tf_tab.shape[1] < 2 * n_steps + 1):
        raise ValueError(f"tf_tab must have shape ({G}, {2 * n_steps + 1}), "
                         f"got ({tf_tab.shape[0]}, {tf_tab.shape[1]})")
    n_out = n_steps // out_every + 1
    K = T["K"]
    cols = np.zeros((n_out, 2 * K if tan else K, S), dtype=np.float64)
    psi_out = np.zeros((A, R, S, 2), dtype=np.float64)
    dpsi_out = np.zeros((A, R, S, 2), dtype=np.float64) if tan else None
    if S == 0:
        return cols, psi_out, dpsi_out, None
    bad_out = np.full(n_chunks, -1, dtype=np.int64)
    bad_s = np.zeros(n_chunks, dtype=np.int64)
    status = np.zeros(n_chunks, dtype=np.int64)
    cdef double[:, :, ::1] cols_v = cols
    cdef double[:, :, :, ::1] psi_v = psi_out
    cdef double[:, :, :, ::1] dpsi_ov
    cdef int64_t[::1] bo = bad_out, bs = bad_s, stv = status
    P.S = S; P.A = A; P.R = R; P.C = T["C"]
    P.n_steps = n_steps; P.out_every = out_every; P.n_out = n_out; P.K = K; P.G = G
    P.n_ops = T["n_ops"]; P.n_obs = T["n_obs"]; P.n_cp = T["cp_J"].shape[0]; P.Dmax = T["Dmax"]
    P.dt = dt
    P.w = &weights[0]
    P.psi_in = &psi_in[0, 0, 0, 0]
    P.psi_out = &psi_v[0, 0, 0, 0]
    P.cols = &cols_v[0, 0, 0] if K > 0 else _EMPTY_D
    P.tan = 1 if tan else 0
    P.dpsi_in = NULL
    P.dpsi_out = NULL
    if tan:
        dpsi_v = dpsi_in
        dpsi_ov = dpsi_out
        P.dpsi_in = &dpsi_v[0, 0, 0, 0]
        P.dpsi_out = &dpsi_ov[0, 0, 0, 0]
    P.tf = &tf_tab[0, 0] if G > 0 else _EMPTY_D
    P.tf_stride = tf_tab.shape[1]
    P.cp_tf = _pi(T["cp_tf"]); P.cp_J = _pd(T["cp_J"])
    P.c_fo = _pi(T["c_fo"]); P.fo_ptr = _pi(T["fo_ptr"]); P.fo_src = _pi(T["fo_src"])
    P.fo_k = _pi(T["fo_k"]); P.max_fo = T["max_fo"]
    P.c_off = _pi(T["c_off"]); P.c_D = _pi(T["c_D"])
    P.c_ge = _pi(T["c_ge"]); P.c_go = _pi(T["c_go"])
    _fill_rows(&P.rows, T["rows"])
    _fill_exp(&P.dex, T["dex"])
    _fill_exp(&P.oex, T["oex"])
    P.col_ptr = _pi(T["col_ptr"]); P.term_coef = _pd(T["term_coef"])
    P.term_ptr = _pi(T["term_ptr"]); P.fac = _pi(T["fac"])
    P.bad_out = &bo[0]; P.bad_s = &bs[0]; P.status = &stv[0]
    if nthreads < 1:
        nthreads = 1
    slots = <double**>calloc(nthreads, sizeof(double*))
    if slots == NULL:
        raise MemoryError()
    try:
        with nogil:
            for ch in prange(n_chunks, schedule="dynamic", chunksize=1, num_threads=nthreads):
                fn(&P, ch, &slots[threadid()])
    finally:
        for ch in range(nthreads):
            free(slots[ch])
        free(slots)
    if np.any(status != 0):
        raise MemoryError("gp_rk4: could not allocate the work space of a sample chunk")
    bad = None
    hit = np.flatnonzero(bad_out >= 0)
    if len(hit):
        c = hit[np.lexsort((hit, bad_out[hit]))[0]]
        bad = (int(bad_out[c]), int(c * sw + bad_s[c]))
    return cols, psi_out, dpsi_out, bad
