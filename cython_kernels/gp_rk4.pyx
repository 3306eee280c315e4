# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
r"""Batched fixed-step RK4 for the R-vector Gross–Pitaevskii equations (19)/(61), ``nogil``.

The compiled twin of :func:`ctwa_hpc.method.dynamics.rk4` with
:class:`ctwa_hpc.method.dynamics.NumpyPropagator`.  Call it through :func:`ctwa_hpc.method.kernels.integrate`,
which builds the tables below from a :class:`~ctwa_hpc.method.clusters.ClusterProblem` and an
:class:`~ctwa_hpc.method.observables.ObservablePlan` (``kernels.compile_tables``).

Data layout
-----------
Samples are processed in *chunks* of ``SW`` samples (double: 32 with AVX-512, 16 with AVX2,
8 with SSE2; single precision twice as many).  Chunks are independent, so one chunk is
integrated over all ``n_steps`` before the next one starts (its working set stays in cache),
and chunks are the unit of OpenMP parallelism (``prange``; only when built with
``CTWA_OPENMP=1``, threads from ``OMP_NUM_THREADS``; every thread reuses one work space for
all its chunks; results do not depend on the number of threads).  Inside a chunk every state
array is ``x[a, r, part, s]`` (amplitude, vector, re/im, sample) with the SW samples
innermost, contiguous and 64-byte aligned.  Arithmetic is written on SIMD vectors of the
native width (GCC vector extension ``ctwa_vd``: 8 doubles or 16 floats with AVX-512, 4 or 8
with AVX2, 2 or 4 with SSE2), so every statement of the kernel is a SIMD instruction over
samples.

Right-hand side
---------------
For amplitude b of cluster c the RHS is a short *row program* built by the wrapper:
``(H_eff ψ)[b] = Σ_terms c_t(s) ψ[b ^ m_t]`` where the terms are the distinct flip masks m of
the cluster (local Hamiltonian entries merged with the coupling operators of the same mask,
zero coefficients dropped), and ``c_t(s) = h_t(t) + Σ_items coef · field_op(s)`` is built in
registers from the mean fields ``field_o = Σ_k J_k f_k(t) E_partner(k)``.  A cluster costs
O(D × distinct masks) per stage, and the accumulator of row b never leaves the registers.

Mean fields: per coupling (sparse programs), or — for the dense coupling blocks chosen by
:func:`ctwa_hpc.method.kernels.compile_tables` — as matrix products F = Σ_g f_g(t) M_g E computed at
the start of every stage for a *super-chunk* of up to ``NB_MAX`` chunks (``dense_fields`` in
``gp_core.pxd``: a register-tiled, cache-blocked product on the kernel's own arrays, samples
innermost; M packed once by the wrapper in the order of use).  The F rows follow the Weyl
symbols in the chunk's symbol buffer, and each dense operator's sparse program is the single
term "its F row", so the cluster sweep is the same on both paths.

Weyl symbols E_o = Σ_r w_r Re ψ_r† O_o ψ_r use the Hermitian pairs (b, b ^ m), b < b ^ m:
``Σ_b Re conj(ψ[b]) d[b] ψ[b^m] = 2 Σ_pairs Re(d[b] conj(ψ[b]) ψ[b^m])``.

RK4 sweep
---------
Each stage is one sweep over the clusters: apply the row programs of cluster c to the stage
state (fields from the Weyl symbols of the previous sweep), update the RK4 accumulators of c,
and compute the Weyl symbols of c's coupling operators for the *next* stage while c is still
in L1 cache.  Stage times are t, t+dt/2, t+dt/2, t+dt (classic RK4, as
:func:`ctwa_hpc.method.dynamics.rk4`); the final combination is regrouped as
y0 + (ys_1 − y0)/3 + dt/3 k2 + (ys_3 − y0)/3 + dt/6 k4 (ys_i: stage states), which is the
same in exact arithmetic, makes 13 instead of 16 passes over the state and scales only small
increments by the rounded 1/3 (see ``rk_update`` in ``gp_core.pxd``).
Observables and a non-finite check run at steps 0, out_every, 2 out_every, ...; a chunk whose
columns or state become non-finite stops and reports its first bad sample.

Instruction sets
----------------
The kernel itself lives in ``gp_types.pxd``, ``gp_core.pxd`` and ``gp_chunk.pxd``
(``cdef inline`` functions).  It is compiled six times: here with the build flags, and in
``gp_rk4_avx2.pyx`` / ``gp_rk4_avx512.pyx`` under ``#pragma GCC target`` (GCC, x86-64), each
with its native vector width, and the three again in single precision (``gp_rk4_f32.pyx``,
``gp_rk4_avx2_f32.pyx``, ``gp_rk4_avx512_f32.pyx``, ``precision="single"``).  :func:`run` uses
the best variant the running CPU supports (``CTWA_KERNEL_ISA=generic|avx2|avx512`` forces
one); the variant modules are imported only on CPUs that support them.  With
``CTWA_ARCH=native`` the baseline modules are already native and are used directly.

Tangent
-------
:func:`run_tangent` integrates the pair (ψ, δψ) for linear response (paper eqs. (12),
(22)–(23); the compiled twin of :class:`ctwa_hpc.method.dynamics.TangentPropagator`): the tangent
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

from gp_types cimport (Plan, RowTab, ExpTab, real, CTWA_SW, CTWA_VW, CTWA_LEVEL, CTWA_RB,
                      CTWA_MR, CTWA_KC, CTWA_MC)
from gp_chunk cimport gp_chunk

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

ctypedef void (*chunk_fn)(Plan*, Py_ssize_t, void**) noexcept nogil

ISA_NAMES = ("generic", "avx2", "avx512")
PRECISIONS = ("double", "single")
_VARIANTS = {1: "gp_rk4_avx2", 2: "gp_rk4_avx512"}
# the package the build variants live in (beside this module: ctwa_hpc.method._kernels)
_PACKAGE = __name__.rpartition(".")[0]
DENSE_PACKING = (CTWA_MR, CTWA_KC, CTWA_MC)   # rows per panel, columns per slice, panels per group
NB_MAX = 2                    # chunks per super-chunk of the dense path (at most; measured)
cdef int64_t _EMPTY_I[1]
cdef double _EMPTY_D[1]


cdef void _chunk_here(Plan* P, Py_ssize_t ch, void** ws) noexcept nogil:
    gp_chunk(P, ch, ws)


def cpu_level():
    """Instruction-set level of the running CPU: 0 baseline, 1 AVX2+FMA, 2 AVX-512."""
    return ctwa_cpu_isa()


def build_info():
    """(level, vector width, chunk width, bytes per real) this module was compiled for."""
    return CTWA_LEVEL, CTWA_VW, CTWA_SW, CTWA_RB


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
    return importlib.import_module(f"{_PACKAGE}.{_VARIANTS[level]}")


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


def _module_name(level, single):
    """Module of the kernel for instruction-set level ``level`` and precision."""
    base = "gp_rk4" if level == 0 else _VARIANTS[level]
    return base + ("_f32" if single else "")


def _f32_base_level():
    """Level the baseline single-precision module was compiled for (native builds: > 0)."""
    import importlib
    return importlib.import_module(f"{_PACKAGE}.gp_rk4_f32").build_info()[0]


def kernel_info(name=None, precision="double"):
    """(isa name, vector width, chunk width) of the variant :func:`run` uses."""
    level = ISA_NAMES.index(isa(name))
    single = _single(precision)
    if not single and level <= CTWA_LEVEL:
        return ISA_NAMES[CTWA_LEVEL], CTWA_VW, CTWA_SW
    mod = _kernel_module(level, single)
    lv, vw, sw = mod.build_info()[:3]
    return ISA_NAMES[max(lv, level)], vw, sw


def _single(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"method.precision: unknown precision {precision!r} "
                         f"(known: {list(PRECISIONS)})")
    return precision == "single"


def _kernel_module(int level, bint single):
    import importlib
    if single and level <= _f32_base_level():
        level = 0
    return importlib.import_module(f"{_PACKAGE}.{_module_name(level, single)}")


cdef chunk_fn _select(int level, bint single, Py_ssize_t* sw) except? NULL:
    if not single and level <= CTWA_LEVEL:
        sw[0] = CTWA_SW
        return _chunk_here
    mod = _kernel_module(level, single)
    info = mod.build_info()
    if info[3] != (4 if single else 8):       # pragma: no cover - a broken build
        raise ImportError(f"{mod.__name__} was not built in {'single' if single else 'double'}"
                          " precision")
    sw[0] = info[2]
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


cdef const real* _pr(a, bint single) except NULL:
    """Pointer to an array of the kernel's precision (float32 for single, float64 else)."""
    cdef const float[::1] vf
    cdef const double[::1] vd_
    if single:
        vf = a
        if vf.shape[0] == 0:
            return <const real*>_EMPTY_D
        return <const real*><const void*>&vf[0]
    vd_ = a
    if vd_.shape[0] == 0:
        return <const real*>_EMPTY_D
    return <const real*><const void*>&vd_[0]


cdef int _fill_rows(RowTab* T, dict d, dict r, bint single) except -1:
    T.T = d["t_src"].shape[0]
    T.row = _pi(d["row"]); T.t_src = _pi(d["t_src"]); T.t_kind = _pi(d["t_kind"])
    T.t_it = _pi(d["t_it"]); T.t_im = _pi(d["t_im"])
    T.t_hre = _pr(r["t_hre"], single); T.t_him = _pr(r["t_him"], single)
    T.t_htre = _pr(r["t_htre"], single); T.t_htim = _pr(r["t_htim"], single)
    T.i_op = _pi(d["i_op"]); T.i_coef = _pr(r["i_coef"], single)
    return 0


cdef int _fill_exp(ExpTab* T, dict d, dict r, bint single) except -1:
    T.g_mask = _pi(d["g_mask"]); T.g_np = _pi(d["g_np"]); T.g_pp = _pi(d["g_pp"])
    T.g_it = _pi(d["g_it"]); T.pr_b = _pi(d["pr_b"])
    T.it_op = _pi(d["it_op"]); T.it_part = _pi(d["it_part"]); T.it_cp = _pi(d["it_cp"])
    T.it_ec = _pr(r["it_ec"], single); T.it_first = _pi(d["it_first"])
    T.maxnp = d["maxnp"]
    return 0


def _real_arrays(dict T, bint single):
    """The tables' real-valued arrays in the kernel's precision (float32 copies cached in
    ``T["f32"]`` for single precision)."""
    if not single:
        return T["rows"], T["dex"], T["oex"], T["dense"]["M"]
    f32 = T.get("f32")
    if f32 is None:
        cv = lambda d, keys: {k: np.ascontiguousarray(d[k], dtype=np.float32)  # noqa: E731
                              for k in keys}
        f32 = dict(rows=cv(T["rows"], ("t_hre", "t_him", "t_htre", "t_htim", "i_coef")),
                   dex=cv(T["dex"], ("it_ec",)), oex=cv(T["oex"], ("it_ec",)),
                   M=np.ascontiguousarray(T["dense"]["M"], dtype=np.float32))
        T["f32"] = f32
    return f32["rows"], f32["dex"], f32["oex"], f32["M"]


def run(dict T, const double[:, :, :, ::1] psi_in, const double[::1] weights,
        double dt, Py_ssize_t n_steps, Py_ssize_t out_every, const double[:, ::1] tf_tab,
        str isa_name=None, threads=None, str precision="double"):
    """Integrate a batch; see :func:`ctwa_hpc.method.kernels.integrate` (which builds ``T``).

    psi_in: float64 view (A, R, S, 2) of the complex initial state.  Returns
    ``(cols (n_out, K, S), psi_out (A, R, S, 2), bad)``, ``bad`` being None or
    ``(output index, sample index)`` of the first non-finite value.  ``threads``: OpenMP
    threads (default ``OMP_NUM_THREADS``; ignored without OpenMP).  ``precision``:
    ``"double"`` or ``"single"`` (float32 state, columns accumulated and returned in double).
    """
    cols, psi_out, _, bad = _run(T, psi_in, None, weights, dt, n_steps, out_every, tf_tab,
                                 isa_name, threads, precision)
    return cols, psi_out, bad


def run_tangent(dict T, const double[:, :, :, ::1] psi_in,
                const double[:, :, :, ::1] dpsi_in not None, const double[::1] weights,
                double dt, Py_ssize_t n_steps, Py_ssize_t out_every,
                const double[:, ::1] tf_tab, str isa_name=None, threads=None,
                str precision="double"):
    """Integrate a batch and its tangent; see :func:`ctwa_hpc.method.kernels.integrate_tangent`.

    dpsi_in: float64 view (A, R, S, 2) of the complex tangent δψ(0).  Returns
    ``(cols (n_out, 2K, S), psi_out, dpsi_out, bad)``: the K observable columns followed by
    their K tangents, the final state and tangent (A, R, S, 2), and ``bad`` as for :func:`run`.
    """
    cdef int d
    for d in range(4):
        if dpsi_in.shape[d] != psi_in.shape[d]:
            raise ValueError("dpsi must have the shape of psi")
    return _run(T, psi_in, dpsi_in, weights, dt, n_steps, out_every, tf_tab, isa_name, threads,
                precision)


# Work spaces of the threads, kept between calls: allocating (and the kernel's first touch of)
# tens of MB per call is a sizeable part of a short call at large N.  One set is cached; a
# call that finds it taken (another Python thread) or too short uses its own set.  Taken and
# given back with the GIL held.
cdef void** _ws_slots = NULL
cdef int _ws_n = 0
cdef bint _ws_busy = False
WORKSPACE_CACHE = True


cdef void** _ws_take(int n) except NULL:
    global _ws_busy
    cdef void** s
    if WORKSPACE_CACHE and _ws_slots != NULL and not _ws_busy and _ws_n >= n:
        _ws_busy = True
        return _ws_slots
    s = <void**>calloc(n, sizeof(void*))
    if s == NULL:
        raise MemoryError()
    return s


cdef void _ws_free(void** s, int n) noexcept:
    cdef int i
    for i in range(n):
        free(s[i])
    free(s)


cdef void _ws_give(void** s, int n) noexcept:
    global _ws_slots, _ws_n, _ws_busy
    if s == _ws_slots:
        _ws_busy = False
    elif WORKSPACE_CACHE and not _ws_busy:
        if _ws_slots != NULL:
            _ws_free(_ws_slots, _ws_n)
        _ws_slots = s
        _ws_n = n
    else:
        _ws_free(s, n)


def release_workspace():
    """Free the work spaces kept between calls (they are reallocated when needed)."""
    global _ws_slots, _ws_n
    if _ws_slots != NULL and not _ws_busy:
        _ws_free(_ws_slots, _ws_n)
        _ws_slots = NULL
        _ws_n = 0


def super_chunk(Py_ssize_t n_chunks, int nthreads, bint dense):
    """Chunks per super-chunk: 1 on the sparse path; on the dense path as many as keep every
    thread busy, at most ``NB_MAX`` (the reuse of a dense matrix slice grows with it)."""
    if not dense or n_chunks <= 1:
        return 1
    nb = (n_chunks + max(nthreads, 1) - 1) // max(nthreads, 1)
    return max(1, min(NB_MAX, nb))


def _run(dict T, const double[:, :, :, ::1] psi_in, dpsi_in, const double[::1] weights,
         double dt, Py_ssize_t n_steps, Py_ssize_t out_every, const double[:, ::1] tf_tab,
         str isa_name, threads, str precision):
    """Common body of :func:`run` and :func:`run_tangent` (``dpsi_in`` None: no tangent)."""
    cdef Plan P
    cdef Py_ssize_t A = psi_in.shape[0], R = psi_in.shape[1], S = psi_in.shape[2]
    cdef Py_ssize_t sw = 0
    cdef bint single = _single(precision)
    cdef chunk_fn fn = _select(ISA_NAMES.index(isa(isa_name)), single, &sw)
    cdef Py_ssize_t n_chunks = (S + sw - 1) // sw
    cdef Py_ssize_t ch, nb, n_super
    cdef Py_ssize_t G = T["G"]
    cdef int nthreads = ctwa_max_threads() if threads is None else threads
    cdef void** slots
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
    if tuple(T["dense"]["packing"]) != DENSE_PACKING:     # pragma: no cover - another build
        raise ValueError(f"dense tables packed as {T['dense']['packing']}, the kernel uses "
                         f"{DENSE_PACKING}")
    n_out = n_steps // out_every + 1
    K = T["K"]
    cols = np.zeros((n_out, 2 * K if tan else K, S), dtype=np.float64)
    psi_out = np.zeros((A, R, S, 2), dtype=np.float64)
    dpsi_out = np.zeros((A, R, S, 2), dtype=np.float64) if tan else None
    if S == 0:
        return cols, psi_out, dpsi_out, None
    if nthreads < 1:
        nthreads = 1
    dn = T["dense"]
    n_dm = len(dn["r0"])
    nb = super_chunk(n_chunks, nthreads, n_dm > 0)
    n_super = (n_chunks + nb - 1) // nb
    rows_r, dex_r, oex_r, dM = _real_arrays(T, single)
    w = np.ascontiguousarray(weights, dtype=np.float32 if single else np.float64)
    bad_out = np.full(n_super, -1, dtype=np.int64)
    bad_s = np.zeros(n_super, dtype=np.int64)
    status = np.zeros(n_super, dtype=np.int64)
    cdef double[:, :, ::1] cols_v = cols
    cdef double[:, :, :, ::1] psi_v = psi_out
    cdef double[:, :, :, ::1] dpsi_ov
    cdef int64_t[::1] bo = bad_out, bs = bad_s, stv = status
    P.S = S; P.A = A; P.R = R; P.C = T["C"]
    P.n_steps = n_steps; P.out_every = out_every; P.n_out = n_out; P.K = K; P.G = G
    P.n_ops = T["n_ops"]; P.n_obs = T["n_obs"]; P.n_cp = T["cp_J"].shape[0]; P.Dmax = T["Dmax"]
    P.dt = dt
    P.w = _pr(w, single)
    P.psi_in = &psi_in[0, 0, 0, 0]
    P.psi_out = &psi_v[0, 0, 0, 0]
    P.cols = &cols_v[0, 0, 0] if cols.size > 0 else _EMPTY_D
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
    _fill_rows(&P.rows, T["rows"], rows_r, single)
    _fill_exp(&P.dex, T["dex"], dex_r, single)
    _fill_exp(&P.oex, T["oex"], oex_r, single)
    P.col_ptr = _pi(T["col_ptr"]); P.term_coef = _pd(T["term_coef"])
    P.term_ptr = _pi(T["term_ptr"]); P.fac = _pi(T["fac"])
    P.nb = nb
    P.n_rows = dn["n_rows"]
    P.n_dm = n_dm
    P.dm_r0 = _pi(dn["r0"]); P.dm_n = _pi(dn["n"]); P.dm_f0 = _pi(dn["f0"])
    P.dm_npan = _pi(dn["npan"]); P.dm_tf = _pi(dn["tf"]); P.dm_first = _pi(dn["first"])
    P.dm_off = _pi(dn["off"]); P.dM = _pr(dM, single)
    P.bad_out = &bo[0]; P.bad_s = &bs[0]; P.status = &stv[0]
    slots = _ws_take(nthreads)
    try:
        with nogil:
            for ch in prange(n_super, schedule="dynamic", chunksize=1, num_threads=nthreads):
                fn(&P, ch, &slots[threadid()])
    finally:
        _ws_give(slots, nthreads)
    if np.any(status != 0):
        raise MemoryError("gp_rk4: could not allocate the work space of a sample chunk")
    bad = None
    hit = np.flatnonzero(bad_out >= 0)
    if len(hit):
        c = hit[np.lexsort((hit, bad_out[hit]))[0]]
        bad = (int(bad_out[c]), int(c * nb * sw + bad_s[c]))
    return cols, psi_out, dpsi_out, bad
