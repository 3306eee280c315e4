# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Single-precision build of the RK4 kernel of ``gp_rk4`` with the build flags (see
``gp_core.pxd``); used by ``gp_rk4`` for ``precision="single"`` when no better variant
applies. ``CTWA_SINGLE`` must be defined before the cimport so that the kernel compiles in
float32 (twice the SIMD lanes of the double build)."""
cdef extern from *:
    """
    #define CTWA_SINGLE 1
    """

include "gp_variant.pxi"
