# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Single-precision build of the RK4 kernel of ``gp_rk4`` with the build flags (see
``gp_core.pxd``); used by ``gp_rk4`` for ``precision="single"`` when no better variant
applies. ``CTWA_SINGLE`` must be defined before the cimport so that the kernel compiles in
float32 (twice the SIMD lanes of the double build)."""
cdef extern from *:
    """
    #define CTWA_SINGLE 1
    """

from cpython.pycapsule cimport PyCapsule_New

from gp_types cimport Plan, CTWA_SW, CTWA_VW, CTWA_LEVEL, CTWA_RB
from gp_chunk cimport gp_chunk


cdef void _chunk(Plan* P, Py_ssize_t ch, void** ws) noexcept nogil:
    gp_chunk(P, ch, ws)


def build_info():
    """(level, vector width, chunk width, bytes per real) this module was compiled for."""
    return CTWA_LEVEL, CTWA_VW, CTWA_SW, CTWA_RB


def kernel():
    """Capsule ``ctwa_gp_chunk`` holding ``void (*)(Plan*, Py_ssize_t, void**)``."""
    return PyCapsule_New(<void*>_chunk, b"ctwa_gp_chunk", NULL)
