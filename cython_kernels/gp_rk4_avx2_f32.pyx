# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Single-precision AVX2+FMA build of the RK4 kernel of ``gp_rk4`` (see ``gp_types.pxd``,
``gp_core.pxd``, ``gp_chunk.pxd``); imported by ``gp_rk4`` only on CPUs with AVX2+FMA. The
define and the pragma must precede the cimport so that the kernel compiles in float32 for the
AVX2+FMA target."""
cdef extern from *:
    """
    #define CTWA_SINGLE 1
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    #pragma GCC target("avx2,fma")
    #endif
    """

include "gp_variant.pxi"
