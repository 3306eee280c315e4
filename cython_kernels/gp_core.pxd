# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
r"""The pieces of the RK4 kernel of ``gp_rk4`` as ``cdef inline`` functions: right-hand-side
row programs, RK4 bookkeeping, Weyl symbols and mean fields (sparse programs and the dense
matrix products).  Types and structs: ``gp_types.pxd``; the chunk driver that assembles
them: ``gp_chunk.pxd``; the algorithm and the data layout: the docstring of ``gp_rk4.pyx``.

In single precision (``CTWA_SINGLE``) the state, the coefficient tables, the Weyl symbols
and the mean fields are float32; the observable columns are accumulated in double
(``gp_chunk.observe``) and averaged over samples in double by the caller.

The tangent (Jacobian–vector product) δψ shares the pieces of the trajectory (row
coefficients ``row_coef``, complex multiply–add ``row_mac``, ``rk_update``, mean fields
``cluster_fields``/``dense_fields``, Weyl-symbol items ``group_items``); only the linearized
pair products (``pair_dq``) and the fused row pass (``apply_rows_tan``: c·ψ, c·δψ and δc·ψ
from one read of the row program, in two halves of the chunk's vectors so that its
accumulators stay in registers) are specific to it (linear response, paper eqs. (12),
(22)–(23)).
"""
from libc.stdint cimport int64_t

from gp_types cimport (real, vd, VLOAD, VSTORE, VSPLAT, ctwa_dense_tile,
                       ctwa_prefetch_lines, ctwa_pf_r, ctwa_pf_w, CTWA_VW,
                       CTWA_NV, CTWA_SW, CTWA_RPL, CTWA_MR, CTWA_KC, CTWA_MC, MAXNV, RowTab,
                       ExpTab, Plan)

# ------------------------------------------------------------------------------------------
# right-hand side: row programs
# ------------------------------------------------------------------------------------------
cdef inline void row_coef(const RowTab* T, Py_ssize_t t, const real* fld, real h_r,
                          real h_i, vd* cr, vd* ci, Py_ssize_t nv) noexcept nogil:
    """Coefficient of term t: c = h + Σ_items coef · fld[op] (items before t_im add to Re c);
    nv vectors of samples."""
    cdef Py_ssize_t it, v, im = T.t_im[t], i1 = T.t_it[t + 1]
    cdef real co
    cdef const real* fp
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


cdef inline void row_mac(int64_t kind, const vd* cr, const vd* ci, const real* xs,
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


cdef inline void row_store(real* kp, const vd* ar, const vd* ai, Py_ssize_t nv) noexcept nogil:
    """k = -i a."""
    cdef Py_ssize_t v
    for v in range(nv):
        VSTORE(kp + v * CTWA_VW, ai[v])
        VSTORE(kp + CTWA_SW + v * CTWA_VW, -ar[v])


cdef inline void apply_rows(const RowTab* T, Py_ssize_t a0, Py_ssize_t D, Py_ssize_t R,
                            const real* X, real* kb, const real* fld,
                            const real* hre, const real* him) noexcept nogil:
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
                                const real* X, const real* dX, real* kb, real* dkb,
                                const real* fld, const real* dfld,
                                const real* hre, const real* him,
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
                                const real* X, const real* dX, real* kb, real* dkb,
                                const real* fld, const real* dfld,
                                const real* hre, const real* him) noexcept nogil:
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


cdef inline void rk_update_pf(int st, Py_ssize_t n, real* yn, real* ys, const real* y0,
                              const real* src, const real* kb, double dt,
                              Py_ssize_t npf) noexcept nogil:
    """``rk_update``, prefetching (into L2) the first ``npf`` reals of the arrays that the same
    stage reads and writes for the next cluster (they follow this one's ``n`` reals): the
    dense path's state does not fit in cache, and one cluster's slice of an array is too short
    for the hardware prefetcher to ramp up; ``npf = 0``: no prefetch (``rk_update``)."""
    cdef Py_ssize_t i, iv
    cdef vd k, a
    cdef vd third = VSPLAT(1.0 / 3.0)
    cdef vd half = VSPLAT(0.5 * dt)
    if st == 0:
        for iv in range(n // CTWA_VW):
            i = iv * CTWA_VW
            if i < npf and i % CTWA_RPL == 0:
                ctwa_pf_r(y0 + n + i)
                ctwa_pf_w(ys + n + i)
            VSTORE(ys + i, VLOAD(y0 + i) + half * VLOAD(kb + i))
    elif st == 1:
        for iv in range(n // CTWA_VW):
            i = iv * CTWA_VW
            if i < npf and i % CTWA_RPL == 0:
                ctwa_pf_r(y0 + n + i)
                ctwa_pf_w(ys + n + i)
                ctwa_pf_w(yn + n + i)
            k = VLOAD(kb + i)
            a = VLOAD(y0 + i)
            VSTORE(yn + i, a + (VLOAD(src + i) - a) * third + VSPLAT(dt / 3.0) * k)
            VSTORE(ys + i, a + half * k)
    elif st == 2:
        for iv in range(n // CTWA_VW):
            i = iv * CTWA_VW
            if i < npf and i % CTWA_RPL == 0:
                ctwa_pf_r(y0 + n + i)
                ctwa_pf_w(ys + n + i)
            VSTORE(ys + i, VLOAD(y0 + i) + VSPLAT(dt) * VLOAD(kb + i))
    else:
        for iv in range(n // CTWA_VW):
            i = iv * CTWA_VW
            if i < npf and i % CTWA_RPL == 0:
                ctwa_pf_r(y0 + n + i)
                ctwa_pf_w(ys + n + i)
                ctwa_pf_w(yn + n + i)
            VSTORE(yn + i, VLOAD(yn + i) + (VLOAD(src + i) - VLOAD(y0 + i)) * third
                   + VSPLAT(dt / 6.0) * VLOAD(kb + i))


cdef inline void rk_update(int st, Py_ssize_t n, real* yn, real* ys, const real* y0,
                           const real* src, const real* kb, double dt) noexcept nogil:
    """RK4 bookkeeping of stage st (0..3) on n reals of one cluster, k = kb = f(src).

    With ys_1 = y0 + dt/2 k1 and ys_3 = y0 + dt k3, the classic update
    y0 + dt/6 k1 + dt/3 k2 + dt/3 k3 + dt/6 k4 equals
    y0 + (ys_1 − y0)/3 + dt/3 k2 + (ys_3 − y0)/3 + dt/6 k4, so stages 0 and 2 leave the
    accumulator yn alone and a step makes 13 instead of 16 passes over the state arrays (the
    large-N case is limited by cache bandwidth):

    * st 0 (src = y0):   ys = y0 + dt/2 k1
    * st 1 (src = ys_1): yn = y0 + (ys_1 − y0)/3 + dt/3 k2;  ys = y0 + dt/2 k2
    * st 2 (src = ys_2): ys = y0 + dt k3
    * st 3 (src = ys_3): yn = yn + (ys_3 − y0)/3 + dt/6 k4, the new y

    The factor 1/3 multiplies only the small increments ys − y0: in float32, 1/3 rounds up by
    3e-8, and the form (y0 + ys_1)/3 + ys_3/3 scaled the whole state by that, a norm drift of
    ~1e-7 per step; here the bias is ~dt·|k|/|y| smaller (measured in
    ``tests/test_kernels_dense.py``).
    """
    rk_update_pf(st, n, yn, ys, y0, src, kb, dt, 0)   # npf = 0 folds the prefetch away


# ------------------------------------------------------------------------------------------
# Weyl symbols
# ------------------------------------------------------------------------------------------
cdef inline void pair_q(const ExpTab* T, Py_ssize_t g, Py_ssize_t R, const real* w,
                        const real* X, real* qb) noexcept nogil:
    """qb[p] = Q = Σ_r w_r conj(ψ_r[b]) ψ_r[b^m] for the pairs p of group g ([np, 2, SW];
    R = 1: unit weight, w_0 is applied by ``group_items``; m = 0: only Re Q = |ψ_b|²)."""
    cdef Py_ssize_t m = T.g_mask[g], npair = T.g_np[g], pp = T.g_pp[g]
    cdef Py_ssize_t p, b, bm, r, v
    cdef const real* xb
    cdef const real* xm
    cdef real* q
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


cdef inline void pair_dq(const ExpTab* T, Py_ssize_t g, Py_ssize_t R, const real* w,
                         const real* X, const real* dX, real* qb) noexcept nogil:
    """Tangent of ``pair_q``: δQ = Σ_r w_r [conj(ψ_r[b]) δψ_r[b^m] + conj(δψ_r[b]) ψ_r[b^m]]
    (m = 0: Re δQ = 2 Re conj(ψ_b) δψ_b), so that the items of ``group_items`` give
    δ(O)_W = Σ_r w_r 2 Re ψ_r† O δψ_r (same weight convention as ``pair_q``)."""
    cdef Py_ssize_t m = T.g_mask[g], npair = T.g_np[g], pp = T.g_pp[g]
    cdef Py_ssize_t p, b, bm, r, v, ob, om
    cdef real* q
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


cdef inline void group_items(const ExpTab* T, Py_ssize_t g, real scale, const real* qb,
                             real* E) noexcept nogil:
    """E[op] = scale · Σ_items Σ_pairs ec Q_part for the entries of group g (Q: qb).

    Every entry belongs to exactly one group: its first item stores, later ones add.
    """
    cdef Py_ssize_t npair = T.g_np[g]
    cdef Py_ssize_t p, it, v, part, cp
    cdef const real* q
    cdef real* e
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


cdef inline void expect_group(const ExpTab* T, Py_ssize_t g, Py_ssize_t R, const real* w,
                              const real* X, real* E, real* qb) noexcept nogil:
    """E[op] = Σ_items Σ_pairs ec Q_part,  Q = Σ_r w_r conj(ψ_r[b]) ψ_r[b^m]  (qb: [np, 2, SW])."""
    pair_q(T, g, R, w, X, qb)
    group_items(T, g, w[0] if R == 1 else 1.0, qb, E)


cdef inline void dexpect_group(const ExpTab* T, Py_ssize_t g, Py_ssize_t R, const real* w,
                               const real* X, const real* dX, real* dE,
                               real* qb) noexcept nogil:
    """Tangents δE[op] = Σ_r w_r 2 Re ψ_r† O δψ_r of the entries of group g."""
    pair_dq(T, g, R, w, X, dX, qb)
    group_items(T, g, w[0] if R == 1 else 1.0, qb, dE)


cdef inline void cluster_fields(const Plan* P, Py_ssize_t c, const real* Jf, const real* E,
                                real* fld) noexcept nogil:
    """Mean fields of the coupling operators of cluster c: fld[q] = Σ J_k f_k(t) E[partner]
    (with δE: the tangent fields δfield, the same linear map).

    On the dense path an operator of a dense block has the single partner "its row of F"
    (rows ``n_ops ..`` of the same buffer, written by ``dense_fields``) with the coupling
    slot ``Jf[n_cp] = 1``, so this one program serves both paths."""
    cdef Py_ssize_t q, i, v, q0 = P.c_fo[c]
    cdef vd acc[MAXNV]
    cdef const real* e
    for q in range(q0, P.c_fo[c + 1]):
        for v in range(CTWA_NV):
            acc[v] = VSPLAT(0.0)
        for i in range(P.fo_ptr[q], P.fo_ptr[q + 1]):
            e = E + P.fo_src[i] * CTWA_SW
            for v in range(CTWA_NV):
                acc[v] = acc[v] + VSPLAT(Jf[P.fo_k[i]]) * VLOAD(e + v * CTWA_VW)
        for v in range(CTWA_NV):
            VSTORE(fld + (q - q0) * CTWA_SW + v * CTWA_VW, acc[v])


cdef inline void dense_fields(const Plan* P, real* E, Py_ssize_t nbe, Py_ssize_t j) noexcept nogil:
    """Fields of the dense blocks for the first ``nbe`` sub-chunks of a super-chunk, as
    matrix products: F_blk = Σ_m f_m(t_j) M_m E_blk for the matrices m of each block.

    ``E`` holds the sub-chunks one after the other, ``[nb][n_rows][SW]``: rows ``0 .. n_ops``
    are the Weyl symbols, the F rows follow (``dm_f0``).  ``M_m`` is cut into panels of
    ``CTWA_MR`` rows (zero padding rows), the panels into groups of ``CTWA_MC`` and the columns
    into slices of ``CTWA_KC``, and packed in the order of use: group, slice, panel, column,
    row, so that a (group, slice) tile of M (≤ 192 KB in double) is one sequential stream
    from memory and then stays in L2 while the chunks of the super-chunk pass; one chunk's
    slice of E (32 KB with AVX-512) stays in L1 while all panels of the group pass;
    ``ctwa_dense_tile`` keeps a CTWA_MR × SW tile of F in registers.  Every sample's sums run
    in the same order whatever the batch, the thread or ``nb``.

    While a tile is in use, the next one (it follows in dM) is prefetched into L2, spread
    over the tile's panel calls, so that M streams from memory at an even rate instead of
    stalling the first chunk's pass over every tile (measured with cycle counters, N = 1024:
    the product alone ~1.4× faster); in the first group of panels the next slice of E is
    prefetched as well (E was last written by the previous sweep and is no longer in L2).
    """
    cdef Py_ssize_t m, ic0, ic1, jc, kc, b, ip, n, npan, es = P.n_rows * CTWA_SW
    cdef Py_ssize_t nsz, nl, npf, q, lo, cnt, en0, enl = 0, enp = 0
    cdef int first
    cdef real alpha
    cdef const real* Mp
    cdef const real* Mt
    cdef const real* Mn
    cdef real* Eb
    for m in range(P.n_dm):
        alpha = 1.0 if P.dm_tf[m] < 0 else P.tf[P.dm_tf[m] * P.tf_stride + j]
        n = P.dm_n[m]
        npan = P.dm_npan[m]
        Mp = P.dM + P.dm_off[m]
        ic0 = 0
        while ic0 < npan:
            ic1 = ic0 + CTWA_MC if ic0 + CTWA_MC < npan else npan
            jc = 0
            while jc < n:
                kc = n - jc if n - jc < CTWA_KC else CTWA_KC
                first = 1 if (P.dm_first[m] and jc == 0) else 0
                Mt = Mp + (ic0 * n + jc * (ic1 - ic0)) * CTWA_MR     # the (group, slice) tile
                # the next tile follows this one in dM (packed in the order of use): its size
                Mn = Mt + (ic1 - ic0) * kc * CTWA_MR
                if jc + CTWA_KC < n:
                    nsz = (ic1 - ic0) * (n - jc - CTWA_KC if n - jc - CTWA_KC < CTWA_KC
                                         else CTWA_KC)
                elif ic1 < npan:
                    nsz = ((npan - ic1) if npan - ic1 < CTWA_MC else CTWA_MC) * (
                        n if n < CTWA_KC else CTWA_KC)
                elif m + 1 < P.n_dm:
                    nsz = (P.dm_npan[m + 1] if P.dm_npan[m + 1] < CTWA_MC else CTWA_MC) * (
                        P.dm_n[m + 1] if P.dm_n[m + 1] < CTWA_KC else CTWA_KC)
                else:
                    nsz = 0
                nl = (nsz * CTWA_MR + CTWA_RPL - 1) // CTWA_RPL        # its cache lines
                npf = (nl + nbe * (ic1 - ic0) - 1) // (nbe * (ic1 - ic0))   # per panel call
                # first group: the E slice of the next tile (other groups find it in L2)
                en0 = -1
                if ic0 == 0:
                    if jc + CTWA_KC < n:
                        en0 = P.dm_r0[m] + jc + CTWA_KC
                        enl = (n - jc - CTWA_KC if n - jc - CTWA_KC < CTWA_KC else CTWA_KC)
                    elif m + 1 < P.n_dm and P.dm_r0[m + 1] != P.dm_r0[m]:
                        en0 = P.dm_r0[m + 1]
                        enl = P.dm_n[m + 1] if P.dm_n[m + 1] < CTWA_KC else CTWA_KC
                    if en0 >= 0:
                        enl = (enl * CTWA_SW + CTWA_RPL - 1) // CTWA_RPL    # lines per chunk
                        enp = (enl + (ic1 - ic0) - 1) // (ic1 - ic0)         # per panel call
                q = 0
                for b in range(nbe):
                    Eb = E + b * es
                    for ip in range(ic0, ic1):
                        if en0 >= 0:
                            lo = (ip - ic0) * enp
                            cnt = 0 if lo >= enl else (enp if enl - lo > enp else enl - lo)
                            ctwa_prefetch_lines(<const char*>(Eb + en0 * CTWA_SW + lo * CTWA_RPL),
                                                cnt)
                        lo = q * npf
                        cnt = 0 if lo >= nl else (npf if nl - lo > npf else nl - lo)
                        ctwa_dense_tile(Mt + (ip - ic0) * kc * CTWA_MR,
                                        Eb + (P.dm_r0[m] + jc) * CTWA_SW, kc,
                                        Eb + (P.dm_f0[m] + ip * CTWA_MR) * CTWA_SW, alpha, first,
                                        <const char*>(Mn + lo * CTWA_RPL), cnt)
                        q += 1
                jc += CTWA_KC
            ic0 = ic1


cdef inline void expect_all(const Plan* P, const ExpTab* T, const int64_t* c_g, const real* y,
                            const real* dy, real* E, real* dE, real* qb) noexcept nogil:
    """Weyl symbols of all entries of T (every entry is written) from the state y, and their
    tangents dE from dy unless dy is NULL."""
    cdef Py_ssize_t c, g, off
    for c in range(P.C):
        off = P.c_off[c] * P.R * 2 * CTWA_SW
        for g in range(c_g[c], c_g[c + 1]):
            expect_group(T, g, P.R, P.w, y + off, E, qb)
            if dy != NULL:
                dexpect_group(T, g, P.R, P.w, y + off, dy + off, dE, qb)
