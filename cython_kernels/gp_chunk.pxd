# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
r"""The chunk driver of the RK4 kernel: observables and the non-finite check, copies in and
out, and ``gp_chunk``, which integrates one (super-)chunk of samples over all steps from the
pieces of ``gp_core.pxd``.

``gp_chunk`` calls its body with constant ``tan`` and ``dense`` flags, so the compiler
specializes it and the sparse trajectory-only path carries no tangent or dense branches.
Dense coupling path (``Plan.n_dm > 0``): a *super-chunk* of ``nb`` chunks is integrated in
lockstep; at every RK4 stage the mean fields of the operators of the dense blocks are
computed for all its samples at once as matrix products F = Σ_m f_m(t) M_m E
(``dense_fields``), then the clusters are swept chunk by chunk as on the sparse path.
"""
from libc.stdint cimport int64_t
from libc.string cimport memset, memcpy
from libc.stdlib cimport free
from libc.math cimport isfinite

from gp_types cimport real, ctwa_alloc, ctwa_all_finite, CTWA_SW, CTWA_RPL, Plan
from gp_core cimport (apply_rows, apply_rows_tan, rk_update, rk_update_pf, expect_group,
                      dexpect_group, cluster_fields, dense_fields, expect_all)

cdef inline void _finite_cols(double* out, const double* acc, Py_ssize_t ns,
                              int64_t* first) noexcept nogil:
    cdef Py_ssize_t s
    for s in range(ns):
        out[s] = acc[s]
        if not isfinite(acc[s]) and s < first[0]:
            first[0] = s


cdef inline void _finite_state(const real* y, Py_ssize_t n, Py_ssize_t ns,
                               int64_t* first) noexcept nogil:
    cdef Py_ssize_t i, s
    if ctwa_all_finite(y, n * CTWA_SW):           # the usual case: one vector pass
        return
    for i in range(n):
        for s in range(ns):
            if not isfinite(y[i * CTWA_SW + s]) and s < first[0]:
                first[0] = s


cdef inline int observe(const Plan* P, const real* y, const real* dy, real* Eo,
                        real* dEo, real* qb, Py_ssize_t oi, Py_ssize_t s0,
                        Py_ssize_t ns, int64_t* bad_s) noexcept nogil:
    """Columns at output oi from state y (and, with dy != NULL, their tangents
    δ(column) = Σ_t c_t Σ_f δE_f Π_{g≠f} E_g in rows K..2K-1); return 1 (and the first bad
    sample) if a column or the state is non-finite.

    The Weyl symbols Eo are in the kernel's precision; the columns (products and sums of
    symbols over the terms of a column, e.g. the ~N² terms of an energy) are accumulated in
    double in both precisions."""
    cdef Py_ssize_t k, t, f, s, nk = P.K if dy == NULL else 2 * P.K
    cdef double acc[CTWA_SW]
    cdef double prod[CTWA_SW]
    cdef double dacc[CTWA_SW]
    cdef double dprod[CTWA_SW]
    cdef const real* e
    cdef const real* de
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
        _finite_cols(P.cols + (oi * nk + k) * P.S + s0, &acc[0], ns, &first)
        if dy != NULL:
            _finite_cols(P.cols + (oi * nk + P.K + k) * P.S + s0, &dacc[0], ns, &first)
    _finite_state(y, P.A * P.R * 2, ns, &first)
    if dy != NULL:
        _finite_state(dy, P.A * P.R * 2, ns, &first)
    if first < CTWA_SW:
        bad_s[0] = first
        return 1
    return 0


# ------------------------------------------------------------------------------------------
# one super-chunk of nb · CTWA_SW samples over all steps
# ------------------------------------------------------------------------------------------
cdef enum:
    PREFETCH_STATE_BYTES = 4 << 20


cdef inline Py_ssize_t _rnd(Py_ssize_t n) noexcept nogil:
    """n reals rounded up to a multiple of 64 bytes."""
    return ((n + CTWA_RPL - 1) // CTWA_RPL) * CTWA_RPL


cdef inline void _copy_in(const Plan* P, const double* src, real* y, Py_ssize_t s0,
                          Py_ssize_t ns) noexcept nogil:
    """src[a, r, s0 + s, part] -> y[a, r, part, s]   (padding samples: zero)."""
    cdef Py_ssize_t a, r, s, i, q
    if ns < CTWA_SW:
        memset(y, 0, P.A * P.R * 2 * CTWA_SW * sizeof(real))
    for a in range(P.A):
        for r in range(P.R):
            i = (a * P.R + r) * 2 * CTWA_SW
            q = ((a * P.R + r) * P.S + s0) * 2
            for s in range(ns):
                y[i + s] = <real>src[q + 2 * s]
                y[i + CTWA_SW + s] = <real>src[q + 2 * s + 1]


cdef inline void _copy_out(const Plan* P, const real* y, double* dst, Py_ssize_t s0,
                           Py_ssize_t ns) noexcept nogil:
    cdef Py_ssize_t a, r, s, i, q
    for a in range(P.A):
        for r in range(P.R):
            i = (a * P.R + r) * 2 * CTWA_SW
            q = ((a * P.R + r) * P.S + s0) * 2
            for s in range(ns):
                dst[q + 2 * s] = y[i + s]
                dst[q + 2 * s + 1] = y[i + CTWA_SW + s]


cdef inline void gp_chunk(Plan* P, Py_ssize_t ch, void** ws_slot) noexcept nogil:
    """Integrate super-chunk ``ch`` (samples ch·nb·CTWA_SW .. (ch+1)·nb·CTWA_SW - 1; nb = 1 on
    the sparse path) over all steps, with the tangent if ``P.tan`` (see ``chunk_impl``).

    ``ws_slot`` is the calling thread's work space: allocated on first use (64-byte aligned)
    and reused for its next super-chunks and, kept by the caller, for later calls.
    """
    # calls with constant flags: the compiler specializes ``chunk_impl`` for each, so the
    # trajectory-only path carries no tangent branches (measured: ~5% on heis64_c4) and the
    # sparse path no dense ones
    if P.n_dm > 0:
        if P.tan:
            chunk_impl(P, ch, ws_slot, 1, 1)
        else:
            chunk_impl(P, ch, ws_slot, 0, 1)
    elif P.tan:
        chunk_impl(P, ch, ws_slot, 1, 0)
    else:
        chunk_impl(P, ch, ws_slot, 0, 0)


cdef inline void chunk_impl(Plan* P, Py_ssize_t ch, void** ws_slot, bint tan,
                            bint dense) noexcept nogil:
    """Body of ``gp_chunk``.  With ``tan`` the tangent δψ is integrated alongside: every RK4
    stage evaluates the trajectory and the tangent right-hand sides at the same stage state
    (ψ_s, δψ_s), cluster by cluster (``apply_rows_tan``), the stage's Weyl symbols carry their
    tangents (``dexpect_group``) and the RK4 bookkeeping of δψ is that of ψ.

    With ``dense`` every stage first computes the dense-block fields of all chunks of the
    super-chunk (``dense_fields``, and of the tangent fields); the sweep over the clusters
    is then done chunk by chunk, each chunk with its own slice of the state and of the
    symbol buffers.  A chunk without samples (the tail of the last super-chunk) is skipped.
    """
    cdef Py_ssize_t S = P.S, A = P.A, R = P.R, G = P.G, nb = P.nb
    cdef Py_ssize_t s0 = ch * nb * CTWA_SW
    cdef Py_ssize_t nbe = (S - s0 + CTWA_SW - 1) // CTWA_SW   # chunks with samples
    cdef Py_ssize_t blk = R * 2 * CTWA_SW          # reals per amplitude
    cdef Py_ssize_t nst = _rnd(A * blk)            # reals of one chunk's state
    cdef Py_ssize_t Tn = P.rows.T
    cdef Py_ssize_t nq = P.dex.maxnp if P.dex.maxnp > P.oex.maxnp else P.oex.maxnp
    cdef Py_ssize_t es = P.n_rows * CTWA_SW        # reals of one chunk's symbol buffer
    # work space: y0 | yn | ys (nb chunks each) | kb | Ec | En (nb chunks each) | fld | Eo |
    #             qb | hre | him | Jf   [tangent: dy0 | dyn | dys | dkb | dEc | dEn | dfld | dEo]
    cdef Py_ssize_t o_kb = 3 * nb * nst
    cdef Py_ssize_t o_E = o_kb + _rnd(P.Dmax * blk)
    cdef Py_ssize_t nE = _rnd(nb * es)
    cdef Py_ssize_t o_fld = o_E + 2 * nE
    cdef Py_ssize_t o_Eo = o_fld + _rnd(P.max_fo * CTWA_SW)
    cdef Py_ssize_t o_qb = o_Eo + _rnd(P.n_obs * CTWA_SW)
    cdef Py_ssize_t o_h = o_qb + _rnd(nq * 2 * CTWA_SW)
    cdef Py_ssize_t o_Jf = o_h + 2 * _rnd(Tn)
    cdef Py_ssize_t o_tan = o_Jf + _rnd(P.n_cp + 1)
    cdef Py_ssize_t size = o_tan + (o_qb if tan else 0)   # the tangent repeats y0 .. Eo
    # state arrays of the super-chunk well beyond L2 (dense path): the sweep prefetches the
    # next cluster's slice of them (measured: sweep ~10 % faster at N = 1024 (12 MB, clusters
    # of 4) and 6 MB (clusters of 1); slower at N = 256 (3 MB), where it is off)
    cdef bint big = 3 * nb * nst * <Py_ssize_t>sizeof(real) > PREFETCH_STATE_BYTES
    if nbe > nb:
        nbe = nb
    P.bad_out[ch] = -1
    P.status[ch] = 0
    # the slot may hold a work space of an earlier call (``gp_rk4._run`` keeps one per thread):
    # its first 64 bytes hold its size in bytes; a smaller one is replaced.  Nothing is read
    # before it is written in this call, so a reused work space needs no zeroing.
    if ws_slot[0] != NULL and (<Py_ssize_t*>ws_slot[0])[0] < size * <Py_ssize_t>sizeof(real):
        free(ws_slot[0])
        ws_slot[0] = NULL
    if ws_slot[0] == NULL:
        ws_slot[0] = <void*>ctwa_alloc(size + CTWA_RPL)
        if ws_slot[0] == NULL:
            P.status[ch] = 1
            return
        (<Py_ssize_t*>ws_slot[0])[0] = size * <Py_ssize_t>sizeof(real)
    cdef real* y0 = <real*>ws_slot[0] + CTWA_RPL
    cdef real* yn = y0 + nb * nst
    cdef real* ys = yn + nb * nst
    cdef real* kb = y0 + o_kb
    cdef real* Ec = y0 + o_E
    cdef real* En = Ec + nE
    cdef real* fld = y0 + o_fld
    cdef real* Eo = y0 + o_Eo
    cdef real* qb = y0 + o_qb
    cdef real* hre = y0 + o_h
    cdef real* him = hre + _rnd(Tn)
    cdef real* Jf = y0 + o_Jf
    # tangent arrays (same layout as y0 .. Eo, shifted by o_tan; NULL without tangent)
    cdef real* dy0 = NULL
    cdef real* dyn = NULL
    cdef real* dys = NULL
    cdef real* dkb = NULL
    cdef real* dEc = NULL
    cdef real* dEn = NULL
    cdef real* dfld = NULL
    cdef real* dEo = NULL
    cdef const real* dsrc = NULL
    cdef real* dnxt = NULL
    cdef const real* dyb = NULL
    if tan:
        dy0 = y0 + o_tan
        dyn = dy0 + nb * nst
        dys = dyn + nb * nst
        dkb = dy0 + o_kb
        dEc = dy0 + o_E
        dEn = dEc + nE
        dfld = dy0 + o_fld
        dEo = dy0 + o_Eo
    cdef const real* hcre = P.rows.t_hre
    cdef const real* hcim = P.rows.t_him
    cdef real* tmp
    cdef const real* src
    cdef real* nxt
    cdef Py_ssize_t n, st, j, c, g, i, k, off, D, gi, oi, b, yb, eb, nsb
    cdef double f
    cdef int joff[4]
    joff[0] = 0; joff[1] = 1; joff[2] = 1; joff[3] = 2
    if G > 0:
        hcre = hre
        hcim = him
    Jf[P.n_cp] = 1.0                               # unit slot of the F rows (dense path)
    for b in range(nbe):
        yb = b * nst
        eb = b * es
        nsb = S - s0 - b * CTWA_SW
        if nsb > CTWA_SW:
            nsb = CTWA_SW
        _copy_in(P, P.psi_in, y0 + yb, s0 + b * CTWA_SW, nsb)
        if tan:
            _copy_in(P, P.dpsi_in, dy0 + yb, s0 + b * CTWA_SW, nsb)
            dyb = dy0 + yb
        expect_all(P, &P.dex, P.c_ge, y0 + yb, dyb, Ec + eb, (dEc + eb) if tan else NULL, qb)
        if P.bad_out[ch] < 0 and observe(P, y0 + yb, dyb, Eo, dEo, qb, 0, s0 + b * CTWA_SW,
                                         nsb, &P.bad_s[ch]):
            P.bad_out[ch] = 0
            P.bad_s[ch] += b * CTWA_SW
    n = 0
    while n < P.n_steps and P.bad_out[ch] < 0:
        for st in range(4):
            j = 2 * n + joff[st]
            # local coefficients at the stage time
            if G > 0:
                memcpy(hre, P.rows.t_hre, Tn * sizeof(real))
                memcpy(him, P.rows.t_him, Tn * sizeof(real))
                for gi in range(G):
                    f = P.tf[gi * P.tf_stride + j]
                    for i in range(Tn):
                        hre[i] += f * P.rows.t_htre[gi * Tn + i]
                        him[i] += f * P.rows.t_htim[gi * Tn + i]
            # coupling strengths J_k f_k(t) at the stage time (once if all are static)
            if G > 0 or (n == 0 and st == 0):
                for k in range(P.n_cp):
                    if P.cp_tf[k] >= 0:
                        Jf[k] = P.cp_J[k] * P.tf[P.cp_tf[k] * P.tf_stride + j]
                    else:
                        Jf[k] = P.cp_J[k]
            if dense:                                  # F rows of all chunks, from this stage
                dense_fields(P, Ec, nbe, j)
                if tan:
                    dense_fields(P, dEc, nbe, j)
            for b in range(nbe):
                yb = b * nst
                eb = b * es
                src = (y0 if st == 0 else ys) + yb
                nxt = (ys if st < 3 else yn) + yb
                if tan:
                    dsrc = (dy0 if st == 0 else dys) + yb
                    dnxt = (dys if st < 3 else dyn) + yb
                for c in range(P.C):
                    off = P.c_off[c] * blk
                    D = P.c_D[c]
                    cluster_fields(P, c, Jf, Ec + eb, fld)      # from the symbols of this stage
                    if tan:
                        cluster_fields(P, c, Jf, dEc + eb, dfld)
                        apply_rows_tan(&P.rows, P.c_off[c], D, R, src + off, dsrc + off, kb, dkb,
                                       fld, dfld, hcre, hcim)
                        rk_update(st, D * blk, dyn + yb + off, dys + yb + off, dy0 + yb + off,
                                  dsrc + off, dkb, P.dt)
                    else:
                        apply_rows(&P.rows, P.c_off[c], D, R, src + off, kb, fld, hcre, hcim)
                    if dense and not tan and big:  # the state is not in cache: prefetch c + 1
                        rk_update_pf(st, D * blk, yn + yb + off, ys + yb + off, y0 + yb + off,
                                     src + off, kb, P.dt,
                                     (P.c_D[c + 1] * blk if P.c_D[c + 1] < D else D * blk)
                                     if c + 1 < P.C else 0)
                    else:
                        rk_update(st, D * blk, yn + yb + off, ys + yb + off, y0 + yb + off,
                                  src + off, kb, P.dt)
                    for g in range(P.c_ge[c], P.c_ge[c + 1]):
                        expect_group(&P.dex, g, R, P.w, nxt + off, En + eb, qb)
                        if tan:
                            dexpect_group(&P.dex, g, R, P.w, nxt + off, dnxt + off, dEn + eb, qb)
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
            for b in range(nbe):
                yb = b * nst
                nsb = S - s0 - b * CTWA_SW
                if nsb > CTWA_SW:
                    nsb = CTWA_SW
                if observe(P, y0 + yb, (dy0 + yb) if tan else NULL, Eo, dEo, qb, oi,
                           s0 + b * CTWA_SW, nsb, &P.bad_s[ch]):
                    P.bad_out[ch] = oi
                    P.bad_s[ch] += b * CTWA_SW
                    break
    for b in range(nbe):
        nsb = S - s0 - b * CTWA_SW
        if nsb > CTWA_SW:
            nsb = CTWA_SW
        _copy_out(P, y0 + b * nst, P.psi_out, s0 + b * CTWA_SW, nsb)
        if tan:
            _copy_out(P, dy0 + b * nst, P.dpsi_out, s0 + b * CTWA_SW, nsb)
