# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
r"""The RK4 kernel of ``gp_rk4`` as ``cdef inline`` functions, compiled once per instruction set.

``gp_rk4.pyx`` (baseline build flags), ``gp_rk4_avx2.pyx`` and ``gp_rk4_avx512.pyx`` (which
switch the compiler to AVX2+FMA / AVX-512 with ``#pragma GCC target`` *before* cimporting this
file) each compile the functions below, so every variant uses its native SIMD width: the
vector type ``vd`` holds ``CTWA_VW`` doubles (8 with AVX-512, 4 with AVX, 2 otherwise) and a
chunk of ``CTWA_SW = CTWA_NV * CTWA_VW`` samples is ``CTWA_NV`` vectors.  See the docstring of
``gp_rk4.pyx`` for the algorithm and the data layout.

The same chunk function integrates the tangent (Jacobian–vector product) δψ alongside the
trajectory when ``Plan.tan`` is set (linear response, paper eqs. (12), (22)–(23)): the pieces
of the trajectory (row coefficients ``row_coef``, complex multiply–add ``row_mac``, RK4
bookkeeping ``rk_update``, mean fields ``cluster_fields``, Weyl-symbol items ``group_items``)
are shared, and only the linearized pair products (``pair_dq``) and the fused row pass
(``apply_rows_tan``: c·ψ, c·δψ and δc·ψ from one read of the row program, in two halves of
the chunk's vectors so that its accumulators stay in registers) are specific to the tangent.
``gp_chunk`` calls its body with a constant ``tan`` flag, so the compiler specializes it and
the trajectory-only path is unchanged.
"""
from libc.stdint cimport int64_t
from libc.string cimport memset, memcpy
from libc.math cimport isfinite

cdef extern from *:
    """
    /* ---- SIMD vectors of CTWA_VW doubles (GCC/Clang vector extension) ------------- */
    #if defined(__AVX512F__)
    #define CTWA_VW 8
    #ifndef CTWA_NV
    #define CTWA_NV 4
    #endif
    #define CTWA_LEVEL 2
    #elif defined(__AVX__)
    #define CTWA_VW 4
    #ifndef CTWA_NV
    #define CTWA_NV 4
    #endif
    #if defined(__AVX2__) && defined(__FMA__)
    #define CTWA_LEVEL 1
    #else
    #define CTWA_LEVEL 0
    #endif
    #else
    #define CTWA_VW 2
    #ifndef CTWA_NV
    #define CTWA_NV 4
    #endif
    #define CTWA_LEVEL 0
    #endif
    #define CTWA_SW (CTWA_NV * CTWA_VW)
    typedef double ctwa_vd __attribute__((vector_size(CTWA_VW * 8)));
    #define VLOAD(p) (*(const ctwa_vd *)(p))
    #define VSTORE(p, v) (*(ctwa_vd *)(p) = (v))
    #define VSPLAT(x) ((ctwa_vd){0} + (double)(x))
    #include <stdlib.h>
    #include <string.h>
    #if defined(__linux__)
    #include <sys/mman.h>
    #endif
    /* zeroed work space, 64-byte aligned; large blocks on transparent huge pages */
    static double *ctwa_alloc(Py_ssize_t n) {
        void *p = NULL;
        size_t bytes = (size_t)(n > 0 ? n : 1) * sizeof(double);
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
        return (double *)p;
    }
    """
    ctypedef double vd "ctwa_vd"
    vd VLOAD(const double*) noexcept nogil
    void VSTORE(double*, vd) noexcept nogil
    vd VSPLAT(double) noexcept nogil
    double* ctwa_alloc(Py_ssize_t n) noexcept nogil
    enum:
        CTWA_VW    # doubles per SIMD vector
        CTWA_NV    # vectors per chunk
        CTWA_SW    # samples per chunk
        CTWA_LEVEL # 0 baseline, 1 AVX2+FMA, 2 AVX-512

cdef enum:
    MAXNV = 8      # upper bound of CTWA_NV (array sizes)


cdef struct RowTab:
    # RHS row programs: terms of amplitude a are row[a] .. row[a+1]
    const int64_t* row       # [A+1]
    const int64_t* t_src     # [T] source amplitude b ^ m (cluster relative)
    const int64_t* t_kind    # [T] 1: real coefficient, 2: imaginary, 3: complex
    const int64_t* t_it      # [T+1] items of term t
    const int64_t* t_im      # [T] first item that adds to Im c (items before: Re c)
    const double* t_hre      # [T] static coefficient
    const double* t_him
    const double* t_htre     # [G, T] coefficient multiplying f_g(t)
    const double* t_htim
    const int64_t* i_op      # [I] cluster-local index of the coupling operator (field buffer)
    const double* i_coef     # [I]
    Py_ssize_t T


cdef struct ExpTab:
    # Weyl symbols: groups (cluster, mask) visited pair by pair
    const int64_t* g_mask    # [ng]
    const int64_t* g_np      # [ng] number of pairs (b < b^m), or D for m = 0
    const int64_t* g_pp      # [ng] offset into pr_b
    const int64_t* g_it      # [ng+1] items of group g
    const int64_t* pr_b      # [P]
    const int64_t* it_op     # [I] entry whose symbol the item adds to
    const int64_t* it_part   # [I] 0: uses Re Q, 1: uses Im Q
    const int64_t* it_cp     # [I] offset of the item's per-pair coefficients in it_ec
    const double* it_ec      # (1 or 2) · Re d[b]  or  -(2) · Im d[b]
    const int64_t* it_first  # [I] 1 for the first item of its entry (stores instead of adding)
    Py_ssize_t maxnp


cdef struct Plan:
    Py_ssize_t S, A, R, C, n_steps, out_every, n_out, K, G, n_ops, n_obs, n_cp, Dmax
    double dt
    const double* w          # [R]
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
    const int64_t* fo_src    # [2 n_cp] partner operator (global entry index of E)
    const int64_t* fo_k      # [2 n_cp] coupling index (J_k f_k(t))
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
    int64_t* bad_out         # [n_chunks] first non-finite output index (-1: none)
    int64_t* bad_s           # [n_chunks] first non-finite sample of that output (chunk local)
    int64_t* status          # [n_chunks] 0 ok, 1 out of memory


# ------------------------------------------------------------------------------------------
# right-hand side: row programs
# ------------------------------------------------------------------------------------------
cdef inline void row_coef(const RowTab* T, Py_ssize_t t, const double* fld, double h_r,
                          double h_i, vd* cr, vd* ci, Py_ssize_t nv) noexcept nogil:
    """Coefficient of term t: c = h + Σ_items coef · fld[op] (items before t_im add to Re c);
    nv vectors of samples."""
    cdef Py_ssize_t it, v, im = T.t_im[t], i1 = T.t_it[t + 1]
    cdef double co
    cdef const double* fp
    for v in range(nv):
        cr[v] = VSPLAT(h_r)
        ci[v] = VSPLAT(h_i)
    for it in range(T.t_it[t], im):
        co = T.i_coef[it]
        fp = fld + T.i_op[it] * CTWA_SW
        for v in range(nv):
            cr[v] = cr[v] + VSPLAT(co) * VLOAD(fp + v * CTWA_VW)
    for it in range(im, i1):
        co = T.i_coef[it]
        fp = fld + T.i_op[it] * CTWA_SW
        for v in range(nv):
            ci[v] = ci[v] + VSPLAT(co) * VLOAD(fp + v * CTWA_VW)


cdef inline void row_mac(int64_t kind, const vd* cr, const vd* ci, const double* xs,
                         vd* ar, vd* ai, Py_ssize_t nv) noexcept nogil:
    """a += c · x for one term (kind 1: c real, 2: c imaginary, 3: complex)."""
    cdef Py_ssize_t v
    cdef vd xr, xi
    if kind == 1:
        for v in range(nv):
            ar[v] = ar[v] + cr[v] * VLOAD(xs + v * CTWA_VW)
            ai[v] = ai[v] + cr[v] * VLOAD(xs + CTWA_SW + v * CTWA_VW)
    elif kind == 2:
        for v in range(nv):
            ar[v] = ar[v] - ci[v] * VLOAD(xs + CTWA_SW + v * CTWA_VW)
            ai[v] = ai[v] + ci[v] * VLOAD(xs + v * CTWA_VW)
    else:
        for v in range(nv):
            xr = VLOAD(xs + v * CTWA_VW)
            xi = VLOAD(xs + CTWA_SW + v * CTWA_VW)
            ar[v] = ar[v] + cr[v] * xr - ci[v] * xi
            ai[v] = ai[v] + cr[v] * xi + ci[v] * xr


cdef inline void row_store(double* kp, const vd* ar, const vd* ai, Py_ssize_t nv) noexcept nogil:
    """k = -i a."""
    cdef Py_ssize_t v
    for v in range(nv):
        VSTORE(kp + v * CTWA_VW, ai[v])
        VSTORE(kp + CTWA_SW + v * CTWA_VW, -ar[v])


cdef inline void apply_rows(const RowTab* T, Py_ssize_t a0, Py_ssize_t D, Py_ssize_t R,
                            const double* X, double* kb, const double* fld,
                            const double* hre, const double* him) noexcept nogil:
    """kb = -i H_eff X for one cluster (X, kb: cluster blocks [D, R, 2, CTWA_SW])."""
    cdef vd ar[MAXNV]
    cdef vd ai[MAXNV]
    cdef vd cr[MAXNV]
    cdef vd ci[MAXNV]
    cdef Py_ssize_t r, b, t, v
    for r in range(R):
        for b in range(D):
            for v in range(CTWA_NV):
                ar[v] = VSPLAT(0.0)
                ai[v] = VSPLAT(0.0)
            for t in range(T.row[a0 + b], T.row[a0 + b + 1]):
                row_coef(T, t, fld, hre[t], him[t], cr, ci, CTWA_NV)
                row_mac(T.t_kind[t], cr, ci, X + (T.t_src[t] * R + r) * 2 * CTWA_SW, ar, ai,
                        CTWA_NV)
            row_store(kb + (b * R + r) * 2 * CTWA_SW, ar, ai, CTWA_NV)


cdef inline void rows_tan_block(const RowTab* T, Py_ssize_t a0, Py_ssize_t D, Py_ssize_t R,
                                const double* X, const double* dX, double* kb, double* dkb,
                                const double* fld, const double* dfld,
                                const double* hre, const double* him,
                                Py_ssize_t nv) noexcept nogil:
    """``apply_rows_tan`` on nv vectors of samples (the pointers already offset)."""
    cdef vd ar[MAXNV]
    cdef vd ai[MAXNV]
    cdef vd dr[MAXNV]
    cdef vd di[MAXNV]
    cdef vd cr[MAXNV]
    cdef vd ci[MAXNV]
    cdef Py_ssize_t r, b, t, v, xo
    cdef int64_t kind
    for r in range(R):
        for b in range(D):
            for v in range(nv):
                ar[v] = VSPLAT(0.0)
                ai[v] = VSPLAT(0.0)
                dr[v] = VSPLAT(0.0)
                di[v] = VSPLAT(0.0)
            for t in range(T.row[a0 + b], T.row[a0 + b + 1]):
                xo = (T.t_src[t] * R + r) * 2 * CTWA_SW
                kind = T.t_kind[t]
                row_coef(T, t, fld, hre[t], him[t], cr, ci, nv)
                row_mac(kind, cr, ci, X + xo, ar, ai, nv)
                row_mac(kind, cr, ci, dX + xo, dr, di, nv)
                if T.t_it[t] < T.t_it[t + 1]:
                    row_coef(T, t, dfld, 0.0, 0.0, cr, ci, nv)
                    row_mac(kind, cr, ci, X + xo, dr, di, nv)
            row_store(kb + (b * R + r) * 2 * CTWA_SW, ar, ai, nv)
            row_store(dkb + (b * R + r) * 2 * CTWA_SW, dr, di, nv)


cdef inline void apply_rows_tan(const RowTab* T, Py_ssize_t a0, Py_ssize_t D, Py_ssize_t R,
                                const double* X, const double* dX, double* kb, double* dkb,
                                const double* fld, const double* dfld,
                                const double* hre, const double* him) noexcept nogil:
    """Trajectory and tangent right-hand sides of one cluster in one pass over the rows:
    kb = -i H_eff X and dkb = -i (H_eff dX + Σ_o δfield_o O_o X).

    The second term is the row program with the coefficients δc = Σ_items coef · δfield
    (no local part, same kind as c); terms without items skip it.  Twice the accumulators of
    ``apply_rows`` would not fit in the vector registers, so the chunk is done in two halves
    of its vectors (the row program is read twice, nothing is computed twice).
    """
    cdef Py_ssize_t h = CTWA_NV // 2, o = (CTWA_NV // 2) * CTWA_VW
    if h == 0:
        rows_tan_block(T, a0, D, R, X, dX, kb, dkb, fld, dfld, hre, him, CTWA_NV)
        return
    rows_tan_block(T, a0, D, R, X, dX, kb, dkb, fld, dfld, hre, him, h)
    rows_tan_block(T, a0, D, R, X + o, dX + o, kb + o, dkb + o, fld + o, dfld + o, hre, him,
                   CTWA_NV - h)


cdef inline void rk_update(int st, Py_ssize_t n, double* yn, double* ys, const double* y0,
                           const double* src, const double* kb, double dt) noexcept nogil:
    """RK4 bookkeeping of stage st (0..3) on n doubles of one cluster, k = kb = f(src).

    With ys_1 = y0 + dt/2 k1 and ys_3 = y0 + dt k3, the classic update
    y0 + dt/6 k1 + dt/3 k2 + dt/3 k3 + dt/6 k4 equals (y0 + ys_1)/3 + dt/3 k2 + ys_3/3 + dt/6 k4,
    so stages 0 and 2 leave the accumulator yn alone and a step makes 12 instead of 16 passes
    over the state arrays (the large-N case is limited by cache bandwidth):

    * st 0 (src = y0):   ys = y0 + dt/2 k1
    * st 1 (src = ys_1): yn = (y0 + ys_1)/3 + dt/3 k2;  ys = y0 + dt/2 k2
    * st 2 (src = ys_2): ys = y0 + dt k3
    * st 3 (src = ys_3): yn = yn + ys_3/3 + dt/6 k4, the new y
    """
    cdef Py_ssize_t i, iv
    cdef vd k, a
    cdef vd third = VSPLAT(1.0 / 3.0)
    cdef vd half = VSPLAT(0.5 * dt)
    if st == 0:
        for iv in range(n // CTWA_VW):
            i = iv * CTWA_VW
            VSTORE(ys + i, VLOAD(y0 + i) + half * VLOAD(kb + i))
    elif st == 1:
        for iv in range(n // CTWA_VW):
            i = iv * CTWA_VW
            k = VLOAD(kb + i)
            a = VLOAD(y0 + i)
            VSTORE(yn + i, (a + VLOAD(src + i)) * third + VSPLAT(dt / 3.0) * k)
            VSTORE(ys + i, a + half * k)
    elif st == 2:
        for iv in range(n // CTWA_VW):
            i = iv * CTWA_VW
            VSTORE(ys + i, VLOAD(y0 + i) + VSPLAT(dt) * VLOAD(kb + i))
    else:
        for iv in range(n // CTWA_VW):
            i = iv * CTWA_VW
            VSTORE(yn + i, VLOAD(yn + i) + VLOAD(src + i) * third
                   + VSPLAT(dt / 6.0) * VLOAD(kb + i))


# ------------------------------------------------------------------------------------------
# Weyl symbols
# ------------------------------------------------------------------------------------------
cdef inline void pair_q(const ExpTab* T, Py_ssize_t g, Py_ssize_t R, const double* w,
                        const double* X, double* qb) noexcept nogil:
    """qb[p] = Q = Σ_r w_r conj(ψ_r[b]) ψ_r[b^m] for the pairs p of group g ([np, 2, SW];
    R = 1: unit weight, w_0 is applied by ``group_items``; m = 0: only Re Q = |ψ_b|²)."""
    cdef Py_ssize_t m = T.g_mask[g], npair = T.g_np[g], pp = T.g_pp[g]
    cdef Py_ssize_t p, b, bm, r, v
    cdef const double* xb
    cdef const double* xm
    cdef double* q
    cdef vd qr[MAXNV]
    cdef vd qi[MAXNV]
    cdef vd br, bi, mr, mi, ww
    for p in range(npair):
        b = T.pr_b[pp + p]
        bm = b ^ m
        q = qb + p * 2 * CTWA_SW
        if R == 1:                       # unit weight folded into ``scale``
            xb = X + b * 2 * CTWA_SW
            xm = X + bm * 2 * CTWA_SW
            for v in range(CTWA_NV):
                br = VLOAD(xb + v * CTWA_VW)
                bi = VLOAD(xb + CTWA_SW + v * CTWA_VW)
                if m == 0:
                    qr[v] = br * br + bi * bi
                else:
                    mr = VLOAD(xm + v * CTWA_VW)
                    mi = VLOAD(xm + CTWA_SW + v * CTWA_VW)
                    qr[v] = br * mr + bi * mi
                    qi[v] = br * mi - bi * mr
        else:
            for v in range(CTWA_NV):
                qr[v] = VSPLAT(0.0)
                qi[v] = VSPLAT(0.0)
            for r in range(R):
                xb = X + (b * R + r) * 2 * CTWA_SW
                xm = X + (bm * R + r) * 2 * CTWA_SW
                ww = VSPLAT(w[r])
                for v in range(CTWA_NV):
                    br = VLOAD(xb + v * CTWA_VW)
                    bi = VLOAD(xb + CTWA_SW + v * CTWA_VW)
                    if m == 0:
                        qr[v] = qr[v] + ww * (br * br + bi * bi)
                    else:
                        mr = VLOAD(xm + v * CTWA_VW)
                        mi = VLOAD(xm + CTWA_SW + v * CTWA_VW)
                        qr[v] = qr[v] + ww * (br * mr + bi * mi)
                        qi[v] = qi[v] + ww * (br * mi - bi * mr)
        for v in range(CTWA_NV):
            VSTORE(q + v * CTWA_VW, qr[v])
        if m != 0:
            for v in range(CTWA_NV):
                VSTORE(q + CTWA_SW + v * CTWA_VW, qi[v])


cdef inline void pair_dq(const ExpTab* T, Py_ssize_t g, Py_ssize_t R, const double* w,
                         const double* X, const double* dX, double* qb) noexcept nogil:
    """Tangent of ``pair_q``: δQ = Σ_r w_r [conj(ψ_r[b]) δψ_r[b^m] + conj(δψ_r[b]) ψ_r[b^m]]
    (m = 0: Re δQ = 2 Re conj(ψ_b) δψ_b), so that the items of ``group_items`` give
    δ(O)_W = Σ_r w_r 2 Re ψ_r† O δψ_r (same weight convention as ``pair_q``)."""
    cdef Py_ssize_t m = T.g_mask[g], npair = T.g_np[g], pp = T.g_pp[g]
    cdef Py_ssize_t p, b, bm, r, v, ob, om
    cdef double* q
    cdef vd qr[MAXNV]
    cdef vd qi[MAXNV]
    cdef vd br, bi, mr, mi, dbr, dbi, dmr, dmi, tr, ti, ww
    cdef vd two = VSPLAT(2.0)
    for p in range(npair):
        b = T.pr_b[pp + p]
        bm = b ^ m
        q = qb + p * 2 * CTWA_SW
        for v in range(CTWA_NV):
            qr[v] = VSPLAT(0.0)
            qi[v] = VSPLAT(0.0)
        for r in range(R):
            ob = (b * R + r) * 2 * CTWA_SW
            om = (bm * R + r) * 2 * CTWA_SW
            ww = VSPLAT(w[r] if R > 1 else 1.0)
            for v in range(CTWA_NV):
                br = VLOAD(X + ob + v * CTWA_VW)
                bi = VLOAD(X + ob + CTWA_SW + v * CTWA_VW)
                dbr = VLOAD(dX + ob + v * CTWA_VW)
                dbi = VLOAD(dX + ob + CTWA_SW + v * CTWA_VW)
                if m == 0:
                    tr = two * (br * dbr + bi * dbi)
                    if R == 1:
                        qr[v] = tr
                    else:
                        qr[v] = qr[v] + ww * tr
                else:
                    mr = VLOAD(X + om + v * CTWA_VW)
                    mi = VLOAD(X + om + CTWA_SW + v * CTWA_VW)
                    dmr = VLOAD(dX + om + v * CTWA_VW)
                    dmi = VLOAD(dX + om + CTWA_SW + v * CTWA_VW)
                    tr = br * dmr + bi * dmi + dbr * mr + dbi * mi
                    ti = br * dmi - bi * dmr + dbr * mi - dbi * mr
                    if R == 1:
                        qr[v] = tr
                        qi[v] = ti
                    else:
                        qr[v] = qr[v] + ww * tr
                        qi[v] = qi[v] + ww * ti
        for v in range(CTWA_NV):
            VSTORE(q + v * CTWA_VW, qr[v])
        if m != 0:
            for v in range(CTWA_NV):
                VSTORE(q + CTWA_SW + v * CTWA_VW, qi[v])


cdef inline void group_items(const ExpTab* T, Py_ssize_t g, double scale, const double* qb,
                             double* E) noexcept nogil:
    """E[op] = scale · Σ_items Σ_pairs ec Q_part for the entries of group g (Q: qb).

    Every entry belongs to exactly one group: its first item stores, later ones add.
    """
    cdef Py_ssize_t npair = T.g_np[g]
    cdef Py_ssize_t p, it, v, part, cp
    cdef const double* q
    cdef double* e
    cdef vd acc[MAXNV]
    for it in range(T.g_it[g], T.g_it[g + 1]):
        part = T.it_part[it] * CTWA_SW
        cp = T.it_cp[it]
        for v in range(CTWA_NV):
            acc[v] = VSPLAT(0.0)
        for p in range(npair):
            q = qb + p * 2 * CTWA_SW + part
            for v in range(CTWA_NV):
                acc[v] = acc[v] + VSPLAT(T.it_ec[cp + p]) * VLOAD(q + v * CTWA_VW)
        e = E + T.it_op[it] * CTWA_SW
        if T.it_first[it]:
            for v in range(CTWA_NV):
                VSTORE(e + v * CTWA_VW, VSPLAT(scale) * acc[v])
        else:
            for v in range(CTWA_NV):
                VSTORE(e + v * CTWA_VW, VLOAD(e + v * CTWA_VW) + VSPLAT(scale) * acc[v])


cdef inline void expect_group(const ExpTab* T, Py_ssize_t g, Py_ssize_t R, const double* w,
                              const double* X, double* E, double* qb) noexcept nogil:
    """E[op] = Σ_items Σ_pairs ec Q_part,  Q = Σ_r w_r conj(ψ_r[b]) ψ_r[b^m]  (qb: [np, 2, SW])."""
    pair_q(T, g, R, w, X, qb)
    group_items(T, g, w[0] if R == 1 else 1.0, qb, E)


cdef inline void dexpect_group(const ExpTab* T, Py_ssize_t g, Py_ssize_t R, const double* w,
                               const double* X, const double* dX, double* dE,
                               double* qb) noexcept nogil:
    """Tangents δE[op] = Σ_r w_r 2 Re ψ_r† O δψ_r of the entries of group g."""
    pair_dq(T, g, R, w, X, dX, qb)
    group_items(T, g, w[0] if R == 1 else 1.0, qb, dE)


cdef inline void cluster_fields(const Plan* P, Py_ssize_t c, const double* Jf, const double* E,
                                double* fld) noexcept nogil:
    """Mean fields of the coupling operators of cluster c: fld[q] = Σ J_k f_k(t) E[partner]
    (with δE: the tangent fields δfield, the same linear map)."""
    cdef Py_ssize_t q, i, v, q0 = P.c_fo[c]
    cdef vd acc[MAXNV]
    cdef const double* e
    for q in range(q0, P.c_fo[c + 1]):
        for v in range(CTWA_NV):
            acc[v] = VSPLAT(0.0)
        for i in range(P.fo_ptr[q], P.fo_ptr[q + 1]):
            e = E + P.fo_src[i] * CTWA_SW
            for v in range(CTWA_NV):
                acc[v] = acc[v] + VSPLAT(Jf[P.fo_k[i]]) * VLOAD(e + v * CTWA_VW)
        for v in range(CTWA_NV):
            VSTORE(fld + (q - q0) * CTWA_SW + v * CTWA_VW, acc[v])


cdef inline void expect_all(const Plan* P, const ExpTab* T, const int64_t* c_g, const double* y,
                            const double* dy, double* E, double* dE, double* qb) noexcept nogil:
    """Weyl symbols of all entries of T (every entry is written) from the state y, and their
    tangents dE from dy unless dy is NULL."""
    cdef Py_ssize_t c, g, off
    for c in range(P.C):
        off = P.c_off[c] * P.R * 2 * CTWA_SW
        for g in range(c_g[c], c_g[c + 1]):
            expect_group(T, g, P.R, P.w, y + off, E, qb)
            if dy != NULL:
                dexpect_group(T, g, P.R, P.w, y + off, dy + off, dE, qb)


cdef inline void _finite_cols(double* out, const double* acc, Py_ssize_t ns,
                              int64_t* first) noexcept nogil:
    cdef Py_ssize_t s
    for s in range(ns):
        out[s] = acc[s]
        if not isfinite(acc[s]) and s < first[0]:
            first[0] = s


cdef inline void _finite_state(const double* y, Py_ssize_t n, Py_ssize_t ns,
                               int64_t* first) noexcept nogil:
    cdef Py_ssize_t i, s
    for i in range(n):
        for s in range(ns):
            if not isfinite(y[i * CTWA_SW + s]) and s < first[0]:
                first[0] = s


cdef inline int observe(const Plan* P, const double* y, const double* dy, double* Eo,
                        double* dEo, double* qb, double* scr, Py_ssize_t oi, Py_ssize_t s0,
                        Py_ssize_t ns, int64_t* bad_s) noexcept nogil:
    """Columns at output oi from state y (and, with dy != NULL, their tangents
    δ(column) = Σ_t c_t Σ_f δE_f Π_{g≠f} E_g in rows K..2K-1); return 1 (and the first bad
    sample) if a column or the state is non-finite."""
    cdef Py_ssize_t k, t, f, s, nk = P.K if dy == NULL else 2 * P.K
    cdef double* acc = scr
    cdef double* prod = scr + CTWA_SW
    cdef double* dacc = scr + 2 * CTWA_SW
    cdef double* dprod = scr + 3 * CTWA_SW
    cdef const double* e
    cdef const double* de
    cdef int64_t first = CTWA_SW
    expect_all(P, &P.oex, P.c_go, y, dy, Eo, dEo, qb)
    for k in range(P.K):
        for s in range(CTWA_SW):
            acc[s] = 0.0
            dacc[s] = 0.0
        for t in range(P.col_ptr[k], P.col_ptr[k + 1]):
            for s in range(CTWA_SW):
                prod[s] = P.term_coef[t]
                dprod[s] = 0.0
            for f in range(P.term_ptr[t], P.term_ptr[t + 1]):
                e = Eo + P.fac[f] * CTWA_SW
                if dy != NULL:           # product rule, before prod takes the factor
                    de = dEo + P.fac[f] * CTWA_SW
                    for s in range(CTWA_SW):
                        dprod[s] = dprod[s] * e[s] + prod[s] * de[s]
                for s in range(CTWA_SW):
                    prod[s] *= e[s]
            for s in range(CTWA_SW):
                acc[s] += prod[s]
                dacc[s] += dprod[s]
        _finite_cols(P.cols + (oi * nk + k) * P.S + s0, acc, ns, &first)
        if dy != NULL:
            _finite_cols(P.cols + (oi * nk + P.K + k) * P.S + s0, dacc, ns, &first)
    _finite_state(y, P.A * P.R * 2, ns, &first)
    if dy != NULL:
        _finite_state(dy, P.A * P.R * 2, ns, &first)
    if first < CTWA_SW:
        bad_s[0] = first
        return 1
    return 0


# ------------------------------------------------------------------------------------------
# one chunk of CTWA_SW samples over all steps
# ------------------------------------------------------------------------------------------
cdef inline Py_ssize_t _rnd(Py_ssize_t n) noexcept nogil:
    """n doubles rounded up to a multiple of 64 bytes."""
    return ((n + 7) // 8) * 8


cdef inline void _copy_in(const Plan* P, const double* src, double* y, Py_ssize_t s0,
                          Py_ssize_t ns) noexcept nogil:
    """src[a, r, s0 + s, part] -> y[a, r, part, s]   (padding samples: zero)."""
    cdef Py_ssize_t a, r, s, i, q
    if ns < CTWA_SW:
        memset(y, 0, P.A * P.R * 2 * CTWA_SW * sizeof(double))
    for a in range(P.A):
        for r in range(P.R):
            i = (a * P.R + r) * 2 * CTWA_SW
            q = ((a * P.R + r) * P.S + s0) * 2
            for s in range(ns):
                y[i + s] = src[q + 2 * s]
                y[i + CTWA_SW + s] = src[q + 2 * s + 1]


cdef inline void _copy_out(const Plan* P, const double* y, double* dst, Py_ssize_t s0,
                           Py_ssize_t ns) noexcept nogil:
    cdef Py_ssize_t a, r, s, i, q
    for a in range(P.A):
        for r in range(P.R):
            i = (a * P.R + r) * 2 * CTWA_SW
            q = ((a * P.R + r) * P.S + s0) * 2
            for s in range(ns):
                dst[q + 2 * s] = y[i + s]
                dst[q + 2 * s + 1] = y[i + CTWA_SW + s]


cdef inline void gp_chunk(Plan* P, Py_ssize_t ch, double** ws_slot) noexcept nogil:
    """Integrate chunk ``ch`` (samples ch·CTWA_SW .. ch·CTWA_SW + CTWA_SW - 1) over all steps,
    with the tangent if ``P.tan`` (see ``chunk_impl``).

    ``ws_slot`` is the calling thread's work space: allocated on first use (64-byte aligned)
    and reused for its next chunks; the caller frees it.
    """
    # two calls with constant ``tan``: the compiler specializes ``chunk_impl`` for each, so
    # the trajectory-only path carries no tangent branches (measured: ~5% on heis64_c4)
    if P.tan:
        chunk_impl(P, ch, ws_slot, 1)
    else:
        chunk_impl(P, ch, ws_slot, 0)


cdef inline void chunk_impl(Plan* P, Py_ssize_t ch, double** ws_slot, bint tan) noexcept nogil:
    """Body of ``gp_chunk``.  With ``tan`` the tangent δψ is integrated alongside: every RK4
    stage evaluates the trajectory and the tangent right-hand sides at the same stage state
    (ψ_s, δψ_s), cluster by cluster (``apply_rows_tan``), the stage's Weyl symbols carry their
    tangents (``dexpect_group``) and the RK4 bookkeeping of δψ is that of ψ."""
    cdef Py_ssize_t S = P.S, A = P.A, R = P.R, G = P.G
    cdef Py_ssize_t s0 = ch * CTWA_SW
    cdef Py_ssize_t ns = S - s0 if S - s0 < CTWA_SW else CTWA_SW
    cdef Py_ssize_t blk = R * 2 * CTWA_SW          # doubles per amplitude
    cdef Py_ssize_t nst = A * blk
    cdef Py_ssize_t Tn = P.rows.T
    cdef Py_ssize_t nq = P.dex.maxnp if P.dex.maxnp > P.oex.maxnp else P.oex.maxnp
    # work space: y0 | yn | ys | kb | Ec | En | fld | Eo | qb | scr | hre | him | Jf
    #             [tangent: dy0 | dyn | dys | dkb | dEc | dEn | dfld | dEo]
    cdef Py_ssize_t o_kb = 3 * _rnd(nst)
    cdef Py_ssize_t o_E = o_kb + _rnd(P.Dmax * blk)
    cdef Py_ssize_t nE = _rnd(P.n_ops * CTWA_SW)
    cdef Py_ssize_t o_fld = o_E + 2 * nE
    cdef Py_ssize_t o_Eo = o_fld + _rnd(P.max_fo * CTWA_SW)
    cdef Py_ssize_t o_qb = o_Eo + _rnd(P.n_obs * CTWA_SW)
    cdef Py_ssize_t o_scr = o_qb + _rnd(nq * 2 * CTWA_SW)
    cdef Py_ssize_t o_h = o_scr + _rnd(4 * CTWA_SW)
    cdef Py_ssize_t o_Jf = o_h + 2 * _rnd(Tn)
    cdef Py_ssize_t o_tan = o_Jf + _rnd(P.n_cp)
    cdef Py_ssize_t size = o_tan + (o_qb if tan else 0)   # the tangent repeats y0 .. Eo
    P.bad_out[ch] = -1
    P.status[ch] = 0
    if ws_slot[0] == NULL:
        ws_slot[0] = ctwa_alloc(size)
        if ws_slot[0] == NULL:
            P.status[ch] = 1
            return
    cdef double* y0 = ws_slot[0]
    cdef double* yn = y0 + _rnd(nst)
    cdef double* ys = yn + _rnd(nst)
    cdef double* kb = y0 + o_kb
    cdef double* Ec = y0 + o_E
    cdef double* En = Ec + nE
    cdef double* fld = y0 + o_fld
    cdef double* Eo = y0 + o_Eo
    cdef double* qb = y0 + o_qb
    cdef double* scr = y0 + o_scr
    cdef double* hre = y0 + o_h
    cdef double* him = hre + _rnd(Tn)
    cdef double* Jf = y0 + o_Jf
    # tangent arrays (same layout as y0 .. Eo, shifted by o_tan; NULL without tangent)
    cdef double* dy0 = NULL
    cdef double* dyn = NULL
    cdef double* dys = NULL
    cdef double* dkb = NULL
    cdef double* dEc = NULL
    cdef double* dEn = NULL
    cdef double* dfld = NULL
    cdef double* dEo = NULL
    cdef const double* dsrc = NULL
    cdef double* dnxt = NULL
    if tan:
        dy0 = y0 + o_tan
        dyn = dy0 + _rnd(nst)
        dys = dyn + _rnd(nst)
        dkb = dy0 + o_kb
        dEc = dy0 + o_E
        dEn = dEc + nE
        dfld = dy0 + o_fld
        dEo = dy0 + o_Eo
    cdef const double* hcre = P.rows.t_hre
    cdef const double* hcim = P.rows.t_him
    cdef double* tmp
    cdef const double* src
    cdef double* nxt
    cdef Py_ssize_t n, st, j, c, g, i, k, off, D, gi, oi
    cdef double f
    cdef int joff[4]
    joff[0] = 0; joff[1] = 1; joff[2] = 1; joff[3] = 2
    if G > 0:
        hcre = hre
        hcim = him
    _copy_in(P, P.psi_in, y0, s0, ns)
    if tan:
        _copy_in(P, P.dpsi_in, dy0, s0, ns)
    expect_all(P, &P.dex, P.c_ge, y0, dy0, Ec, dEc, qb)
    if observe(P, y0, dy0, Eo, dEo, qb, scr, 0, s0, ns, &P.bad_s[ch]):
        P.bad_out[ch] = 0
    n = 0
    while n < P.n_steps and P.bad_out[ch] < 0:
        for st in range(4):
            j = 2 * n + joff[st]
            # local coefficients at the stage time
            if G > 0:
                memcpy(hre, P.rows.t_hre, Tn * sizeof(double))
                memcpy(him, P.rows.t_him, Tn * sizeof(double))
                for gi in range(G):
                    f = P.tf[gi * P.tf_stride + j]
                    for i in range(Tn):
                        hre[i] += f * P.rows.t_htre[gi * Tn + i]
                        him[i] += f * P.rows.t_htim[gi * Tn + i]
            # coupling strengths J_k f_k(t) at the stage time
            for k in range(P.n_cp):
                Jf[k] = P.cp_J[k]
                if P.cp_tf[k] >= 0:
                    Jf[k] = Jf[k] * P.tf[P.cp_tf[k] * P.tf_stride + j]
            src = y0 if st == 0 else ys
            nxt = ys if st < 3 else yn
            if tan:
                dsrc = dy0 if st == 0 else dys
                dnxt = dys if st < 3 else dyn
            for c in range(P.C):
                off = P.c_off[c] * blk
                D = P.c_D[c]
                cluster_fields(P, c, Jf, Ec, fld)      # from the symbols of this stage
                if tan:
                    cluster_fields(P, c, Jf, dEc, dfld)
                    apply_rows_tan(&P.rows, P.c_off[c], D, R, src + off, dsrc + off, kb, dkb,
                                   fld, dfld, hcre, hcim)
                    rk_update(st, D * blk, dyn + off, dys + off, dy0 + off, dsrc + off, dkb,
                              P.dt)
                else:
                    apply_rows(&P.rows, P.c_off[c], D, R, src + off, kb, fld, hcre, hcim)
                rk_update(st, D * blk, yn + off, ys + off, y0 + off, src + off, kb, P.dt)
                for g in range(P.c_ge[c], P.c_ge[c + 1]):
                    expect_group(&P.dex, g, R, P.w, nxt + off, En, qb)
                    if tan:
                        dexpect_group(&P.dex, g, R, P.w, nxt + off, dnxt + off, dEn, qb)
            tmp = Ec
            Ec = En
            En = tmp
            tmp = dEc
            dEc = dEn
            dEn = tmp
        tmp = y0
        y0 = yn
        yn = tmp
        tmp = dy0
        dy0 = dyn
        dyn = tmp
        n += 1
        if n % P.out_every == 0:
            oi = n // P.out_every
            if observe(P, y0, dy0, Eo, dEo, qb, scr, oi, s0, ns, &P.bad_s[ch]):
                P.bad_out[ch] = oi
    _copy_out(P, y0, P.psi_out, s0, ns)
    if tan:
        _copy_out(P, dy0, P.dpsi_out, s0, ns)
