# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
r"""Types, SIMD vectors, work-space allocation, the dense-product tile and the plan structs of
the RK4 kernel (cimported by ``gp_core.pxd`` and ``gp_chunk.pxd``).

``gp_rk4.pyx`` (baseline build flags), ``gp_rk4_avx2.pyx`` and ``gp_rk4_avx512.pyx`` (which
switch the compiler to AVX2+FMA / AVX-512 with ``#pragma GCC target`` *before* their
cimports) each compile the kernel, so every variant uses its native SIMD width; the
``*_f32.pyx`` twins define ``CTWA_SINGLE`` first and compile the same code in single
precision.  The scalar type ``real`` (C ``ctwa_real``) is ``double`` or ``float``, the vector
type ``vd`` holds ``CTWA_VW`` reals (AVX-512: 8 doubles or 16 floats; AVX: 4 or 8; SSE2: 2
or 4), so single precision has twice the lanes, and a chunk of ``CTWA_SW = CTWA_NV ·
CTWA_VW`` samples is ``CTWA_NV`` vectors.  Everything that crosses the module boundary
(``Plan``, the tables) has the same layout in both precisions: scalars are double or integer,
arrays of the kernel's precision are typed ``real*`` and filled by the caller with arrays of
that precision.
"""
from libc.stdint cimport int64_t

cdef extern from *:
    """
    /* ---- scalar type: the *_f32 modules define CTWA_SINGLE before their cimport ------- */
    #if defined(CTWA_SINGLE)
    typedef float ctwa_real;
    #define CTWA_RB 4
    #else
    typedef double ctwa_real;
    #define CTWA_RB 8
    #endif
    /* ---- SIMD vectors of CTWA_VW reals (GCC/Clang vector extension) ------------------ */
    #if defined(__AVX512F__)
    #define CTWA_VBYTES 64
    #define CTWA_NREG 32
    #define CTWA_LEVEL 2
    #elif defined(__AVX__)
    #define CTWA_VBYTES 32
    #define CTWA_NREG 16
    #if defined(__AVX2__) && defined(__FMA__)
    #define CTWA_LEVEL 1
    #else
    #define CTWA_LEVEL 0
    #endif
    #else
    #define CTWA_VBYTES 16
    #define CTWA_NREG 16
    #define CTWA_LEVEL 0
    #endif
    #ifndef CTWA_NV
    #define CTWA_NV 4
    #endif
    #define CTWA_VW (CTWA_VBYTES / CTWA_RB)
    #define CTWA_SW (CTWA_NV * CTWA_VW)
    #define CTWA_RPL (64 / CTWA_RB)          /* reals per 64-byte line */
    typedef ctwa_real ctwa_vd __attribute__((vector_size(CTWA_VBYTES)));
    #define VLOAD(p) (*(const ctwa_vd *)(p))
    #define VSTORE(p, v) (*(ctwa_vd *)(p) = (v))
    #define VSPLAT(x) ((ctwa_vd){0} + (ctwa_real)(x))
    #include <stdlib.h>
    #include <string.h>
    #if defined(__linux__)
    #include <sys/mman.h>
    #endif
    /* zeroed work space of n reals, 64-byte aligned; large blocks on transparent huge pages */
    static ctwa_real *ctwa_alloc(Py_ssize_t n) {
        void *p = NULL;
        size_t bytes = (size_t)(n > 0 ? n : 1) * sizeof(ctwa_real);
        size_t align = 64;
        bytes = (bytes + 63) & ~(size_t)63;
    #if defined(MADV_HUGEPAGE)
        if (bytes >= ((size_t)4 << 20)) {
            align = (size_t)2 << 20;
            bytes = (bytes + align - 1) & ~(align - 1);
        }
    #endif
        if (posix_memalign(&p, align, bytes) != 0) return NULL;
    #if defined(MADV_HUGEPAGE)
        if (align > 64) madvise(p, bytes, MADV_HUGEPAGE);
    #endif
        memset(p, 0, bytes);
        return (ctwa_real *)p;
    }

    /* ---- dense mean fields: one panel of CTWA_MR rows of F ----------------------------
     * F[r][0:SW] (+)= alpha * sum_j Mp[j][r] E[j][0:SW]  for r < CTWA_MR, j < kc;
     * Mp: packed panel [kc][CTWA_MR]; E, F: rows of SW samples (contiguous, aligned).
     * first: store instead of adding.  With 32 vector registers the whole 6 x 4-vector
     * tile stays in registers (24 accumulators, 4 E vectors, 1 broadcast); with 16 the
     * panel is two 3-row tiles.  An FMA per (row, vector, j): 2 flops per lane. */
    #define CTWA_MR 6
    /* columns per slice (AVX-512: one chunk's slice of E is 32 KB, in L1) and panels per
     * group; the packing of the matrices follows them, so they are the same in all builds */
    #define CTWA_KC 128
    #define CTWA_MC 32
    /* software prefetch into L2 (``dense_fields``: the next tile of M, ``npf`` lines from
     * ``pf`` issued one per column step j at the start of a panel; the next slice of E;
     * ``rk_update_pf``: the next cluster's state) */
    #define CTWA_PF(p) __builtin_prefetch((const void *)(p), 0, 2)
    static inline void ctwa_pf_r(const ctwa_real *p) { __builtin_prefetch((const void *)p, 0, 2); }
    static inline void ctwa_pf_w(const ctwa_real *p) { __builtin_prefetch((const void *)p, 1, 2); }
    static inline void ctwa_prefetch_lines(const char *p, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) CTWA_PF(p + i * 64);
    }
    #if CTWA_NV == 4
    #define CTWA_T_DECL(r) ctwa_vd c##r##0 = {0}, c##r##1 = {0}, c##r##2 = {0}, c##r##3 = {0};
    #define CTWA_T_FMA(r) { ctwa_vd bb = VSPLAT(a[r]); c##r##0 += bb * e0; c##r##1 += bb * e1; \\
                            c##r##2 += bb * e2; c##r##3 += bb * e3; }
    #define CTWA_T_ST1(r, v) { ctwa_real *f = F + (r) * CTWA_SW + (v) * CTWA_VW; \\
            if (first) VSTORE(f, al * c##r##v); else VSTORE(f, VLOAD(f) + al * c##r##v); }
    #define CTWA_T_ST(r) CTWA_T_ST1(r, 0) CTWA_T_ST1(r, 1) CTWA_T_ST1(r, 2) CTWA_T_ST1(r, 3)
    #define CTWA_T_LOADE \\
            const ctwa_real *e = E + j * CTWA_SW, *a = Mp + j * CTWA_MR; \\
            ctwa_vd e0 = VLOAD(e), e1 = VLOAD(e + CTWA_VW), e2 = VLOAD(e + 2 * CTWA_VW), \\
                    e3 = VLOAD(e + 3 * CTWA_VW);
    static inline void ctwa_tile6(const ctwa_real *restrict Mp, const ctwa_real *restrict E,
                                  Py_ssize_t kc, ctwa_real *restrict F, ctwa_real alpha,
                                  int first, const char *pf, Py_ssize_t npf) {
        CTWA_T_DECL(0) CTWA_T_DECL(1) CTWA_T_DECL(2) CTWA_T_DECL(3) CTWA_T_DECL(4) CTWA_T_DECL(5)
        Py_ssize_t j = 0, jp = npf < kc ? npf : kc;
        for (; j < jp; j++) {
            CTWA_PF(pf + j * 64);
            CTWA_T_LOADE
            CTWA_T_FMA(0) CTWA_T_FMA(1) CTWA_T_FMA(2) CTWA_T_FMA(3) CTWA_T_FMA(4) CTWA_T_FMA(5)
        }
        for (; j < kc; j++) {
            CTWA_T_LOADE
            CTWA_T_FMA(0) CTWA_T_FMA(1) CTWA_T_FMA(2) CTWA_T_FMA(3) CTWA_T_FMA(4) CTWA_T_FMA(5)
        }
        ctwa_vd al = VSPLAT(alpha);
        CTWA_T_ST(0) CTWA_T_ST(1) CTWA_T_ST(2) CTWA_T_ST(3) CTWA_T_ST(4) CTWA_T_ST(5)
    }
    static inline void ctwa_tile3(const ctwa_real *restrict Mp, const ctwa_real *restrict E,
                                  Py_ssize_t kc, ctwa_real *restrict F, ctwa_real alpha,
                                  int first, const char *pf, Py_ssize_t npf) {
        CTWA_T_DECL(0) CTWA_T_DECL(1) CTWA_T_DECL(2)
        Py_ssize_t j = 0, jp = npf < kc ? npf : kc;
        for (; j < jp; j++) {
            CTWA_PF(pf + j * 64);
            CTWA_T_LOADE
            CTWA_T_FMA(0) CTWA_T_FMA(1) CTWA_T_FMA(2)
        }
        for (; j < kc; j++) {
            CTWA_T_LOADE
            CTWA_T_FMA(0) CTWA_T_FMA(1) CTWA_T_FMA(2)
        }
        ctwa_vd al = VSPLAT(alpha);
        CTWA_T_ST(0) CTWA_T_ST(1) CTWA_T_ST(2)
    }
    static inline void ctwa_dense_tile(const ctwa_real *Mp, const ctwa_real *E, Py_ssize_t kc,
                                       ctwa_real *F, ctwa_real alpha, int first,
                                       const char *pf, Py_ssize_t npf) {
    #if CTWA_NREG >= 32
        ctwa_tile6(Mp, E, kc, F, alpha, first, pf, npf);
    #else
        ctwa_tile3(Mp, E, kc, F, alpha, first, pf, npf);
        ctwa_tile3(Mp + 3, E, kc, F + 3 * CTWA_SW, alpha, first, pf, 0);
    #endif
    }
    #else   /* any other CTWA_NV: one row at a time */
    static inline void ctwa_dense_tile(const ctwa_real *Mp, const ctwa_real *E, Py_ssize_t kc,
                                       ctwa_real *F, ctwa_real alpha, int first,
                                       const char *pf, Py_ssize_t npf) {
        for (Py_ssize_t i = 0; i < npf; i++) CTWA_PF(pf + i * 64);
        for (int r = 0; r < CTWA_MR; r++) {
            ctwa_vd acc[CTWA_NV];
            for (int v = 0; v < CTWA_NV; v++) acc[v] = VSPLAT(0.0);
            for (Py_ssize_t j = 0; j < kc; j++) {
                ctwa_vd bb = VSPLAT(Mp[j * CTWA_MR + r]);
                for (int v = 0; v < CTWA_NV; v++)
                    acc[v] += bb * VLOAD(E + j * CTWA_SW + v * CTWA_VW);
            }
            for (int v = 0; v < CTWA_NV; v++) {
                ctwa_real *f = F + r * CTWA_SW + v * CTWA_VW;
                if (first) VSTORE(f, VSPLAT(alpha) * acc[v]);
                else VSTORE(f, VLOAD(f) + VSPLAT(alpha) * acc[v]);
            }
        }
    }
    #endif
    /* ---- non-finite check: 1 if all n reals are finite (exponent bits not all ones);
     * vectorizes, unlike isfinite per sample ---- */
    #include <stdint.h>
    #if defined(CTWA_SINGLE)
    typedef uint32_t ctwa_ubits __attribute__((may_alias));
    #define CTWA_EXPBITS 0x7F800000u
    #else
    typedef uint64_t ctwa_ubits __attribute__((may_alias));
    #define CTWA_EXPBITS 0x7FF0000000000000ull
    #endif
    static inline int ctwa_all_finite(const ctwa_real *y, Py_ssize_t n) {
        const ctwa_ubits *u = (const ctwa_ubits *)y;
        ctwa_ubits bad = 0;
        for (Py_ssize_t i = 0; i < n; i++)
            bad |= (ctwa_ubits)((u[i] & CTWA_EXPBITS) == CTWA_EXPBITS);
        return bad == 0;
    }
    """
    ctypedef double real "ctwa_real"
    ctypedef double vd "ctwa_vd"
    vd VLOAD(const real*) noexcept nogil
    void VSTORE(real*, vd) noexcept nogil
    vd VSPLAT(double) noexcept nogil
    real* ctwa_alloc(Py_ssize_t n) noexcept nogil
    void ctwa_dense_tile(const real* Mp, const real* E, Py_ssize_t kc, real* F, real alpha,
                         int first, const char* pf, Py_ssize_t npf) noexcept nogil
    void ctwa_prefetch_lines(const char* p, Py_ssize_t n) noexcept nogil
    void ctwa_pf_r(const real* p) noexcept nogil
    void ctwa_pf_w(const real* p) noexcept nogil
    int ctwa_all_finite(const real* y, Py_ssize_t n) noexcept nogil
    enum:
        CTWA_VW    # reals per SIMD vector
        CTWA_NV    # vectors per chunk
        CTWA_SW    # samples per chunk
        CTWA_RPL   # reals per 64-byte line
        CTWA_RB    # bytes per real (8 double, 4 single)
        CTWA_LEVEL # 0 baseline, 1 AVX2+FMA, 2 AVX-512
        CTWA_MR    # rows per packed panel of a dense matrix
        CTWA_KC    # columns per slice of the dense product
        CTWA_MC    # panels per L2 group of the dense product

cdef enum:
    MAXNV = 8      # upper bound of CTWA_NV (array sizes)


cdef struct RowTab:
    # RHS row programs: terms of amplitude a are row[a] .. row[a+1]
    const int64_t* row       # [A+1]
    const int64_t* t_src     # [T] source amplitude b ^ m (cluster relative)
    const int64_t* t_kind    # [T] 1: real coefficient, 2: imaginary, 3: complex
    const int64_t* t_it      # [T+1] items of term t
    const int64_t* t_im      # [T] first item that adds to Im c (items before: Re c)
    const real* t_hre        # [T] static coefficient
    const real* t_him
    const real* t_htre       # [G, T] coefficient multiplying f_g(t)
    const real* t_htim
    const int64_t* i_op      # [I] cluster-local index of the coupling operator (field buffer)
    const real* i_coef       # [I]
    Py_ssize_t T


cdef struct ExpTab:
    # Weyl symbols: groups (cluster, mask) visited pair by pair
    const int64_t* g_mask    # [ng]
    const int64_t* g_np      # [ng] number of pairs (b < b^m), or D for m = 0
    const int64_t* g_pp      # [ng] offset into pr_b
    const int64_t* g_it      # [ng+1] items of group g
    const int64_t* pr_b      # [P]
    const int64_t* it_op     # [I] row of the symbol buffer the item adds to
    const int64_t* it_part   # [I] 0: uses Re Q, 1: uses Im Q
    const int64_t* it_cp     # [I] offset of the item's per-pair coefficients in it_ec
    const real* it_ec        # (1 or 2) · Re d[b]  or  -(2) · Im d[b]
    const int64_t* it_first  # [I] 1 for the first item of its entry (stores instead of adding)
    Py_ssize_t maxnp


cdef struct Plan:
    Py_ssize_t S, A, R, C, n_steps, out_every, n_out, K, G, n_ops, n_obs, n_cp, Dmax
    double dt
    const real* w            # [R]
    const double* psi_in     # [A, R, S, 2]
    double* psi_out          # [A, R, S, 2]
    double* cols             # [n_out, K, S]  (tangent: [n_out, 2K, S], columns then tangents)
    int tan                  # 1: also propagate the tangent δψ (dpsi_in/dpsi_out)
    const double* dpsi_in    # [A, R, S, 2] (tangent only)
    double* dpsi_out         # [A, R, S, 2] (tangent only)
    const double* tf         # [G, tf_stride]
    Py_ssize_t tf_stride
    const int64_t* cp_tf     # [n_cp] time function of coupling k (-1: static)
    const double* cp_J       # [n_cp]
    const int64_t* c_fo      # [C+1] coupling operators of cluster c: fo_ptr[c_fo[c]:c_fo[c+1]]
    const int64_t* fo_ptr    # [n_ops+1] partners of the q-th operator: fo_src/fo_k[...]
    const int64_t* fo_src    # partner row of the symbol buffer (a Weyl symbol or an F row)
    const int64_t* fo_k      # coupling index (J_k f_k(t)); n_cp: the unit slot (F rows)
    Py_ssize_t max_fo        # max operators of one cluster
    const int64_t* c_off     # [C] amplitude offsets
    const int64_t* c_D       # [C] dimensions
    const int64_t* c_ge      # [C+1] Weyl-symbol groups of the coupling operators of cluster c
    const int64_t* c_go      # [C+1] Weyl-symbol groups of the observables of cluster c
    RowTab rows
    ExpTab dex
    ExpTab oex
    const int64_t* col_ptr
    const double* term_coef
    const int64_t* term_ptr
    const int64_t* fac
    # dense path (n_dm = 0: sparse path, nb = 1, n_rows = n_ops)
    Py_ssize_t nb            # chunks per super-chunk
    Py_ssize_t n_rows        # rows of one chunk's symbol buffer: n_ops symbols, then F rows
    Py_ssize_t n_dm          # dense matrices (one per block and time function)
    const int64_t* dm_r0     # [n_dm] first symbol row of the block
    const int64_t* dm_n      # [n_dm] operators of the block (rows = columns)
    const int64_t* dm_f0     # [n_dm] first F row of the block
    const int64_t* dm_npan   # [n_dm] panels of CTWA_MR rows
    const int64_t* dm_tf     # [n_dm] time function (-1: static)
    const int64_t* dm_first  # [n_dm] 1 for the first matrix of its block
    const int64_t* dm_off    # [n_dm] offset of the packed matrix in dM
    const real* dM           # packed matrices [panel][column][CTWA_MR]
    int64_t* bad_out         # [n_super] first non-finite output index (-1: none)
    int64_t* bad_s           # [n_super] first non-finite sample of that output (local)
    int64_t* status          # [n_super] 0 ok, 1 out of memory
