# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Single-precision AVX-512 build of the RK4 kernel of ``gp_rk4`` (see ``gp_types.pxd``,
``gp_core.pxd``, ``gp_chunk.pxd``); imported by ``gp_rk4`` only on CPUs with AVX-512. The
define and the pragma must precede the cimport so that the kernel compiles in float32 (16
lanes) for the AVX-512 target."""
cdef extern from *:
    """
    #define CTWA_SINGLE 1
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    #pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx512cd,avx2,fma")
    #endif
    """

include "gp_variant.pxi"
