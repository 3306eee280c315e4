# The body shared by every build variant of the RK4 kernel (gp_rk4_avx2.pyx, gp_rk4_avx512.pyx,
# gp_rk4_f32.pyx, gp_rk4_avx2_f32.pyx, gp_rk4_avx512_f32.pyx): each variant sets its defines and
# target pragma first, then includes this file, so the same source compiles per ISA and precision.
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
