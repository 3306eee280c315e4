# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
r"""Shifted moment sums of one block of per-sample columns, in one pass (``nogil``).

The compiled twin of the NumPy path of :meth:`ctwa_hpc.method.stats.Moments.add` (proven equal by
``tests/test_streaming.py``).  For columns x[t, k, s] (samples innermost, C-contiguous) and
the row's shift c[t, k]:

.. math::  s_1[t,k] \mathrel{+}= \sum_s (x - c), \quad s_2[t,k] \mathrel{+}= \sum_s (x - c)^2,
           \quad s_x[t,p] \mathrel{+}= \sum_s (x_{a_p} - c_{a_p})(x_{b_p} - c_{b_p}).

Each value is read once (the NumPy path makes a shifted copy and reads it twice more), which
matters for outputs with thousands of columns (``renyi2_pairs``: 3N + 9N(N−1)/2 columns at
every output time).
"""
import numpy as np


def accumulate(const double[:, :, ::1] cols, const double[:, ::1] shift, double[:, ::1] s1,
               double[:, ::1] s2, const long long[:, ::1] cross, double[:, ::1] sx):
    """Add the shifted sums of ``cols`` (n_t, K, S) into s1, s2 (n_t, K) and sx (n_t, P)."""
    cdef Py_ssize_t T = cols.shape[0], K = cols.shape[1], S = cols.shape[2]
    cdef Py_ssize_t P = cross.shape[0]
    cdef Py_ssize_t t, k, s, p, a, b
    cdef double c, x, y, acc1, acc2, ca, cb
    if shift.shape[0] != T or shift.shape[1] != K or s1.shape[0] != T or s1.shape[1] != K \
            or s2.shape[0] != T or s2.shape[1] != K:
        raise ValueError("accumulate: shift, s1 and s2 must be (n_t, K) like cols")
    if P and (sx.shape[0] != T or sx.shape[1] != P):
        raise ValueError("accumulate: sx must be (n_t, P)")
    for p in range(P):
        if not (0 <= cross[p, 0] < K and 0 <= cross[p, 1] < K):
            raise ValueError("accumulate: a cross product names a column outside 0..K-1")
    with nogil:
        for t in range(T):
            for k in range(K):
                c = shift[t, k]
                acc1 = 0.0
                acc2 = 0.0
                for s in range(S):
                    x = cols[t, k, s] - c
                    acc1 = acc1 + x
                    acc2 = acc2 + x * x
                s1[t, k] += acc1
                s2[t, k] += acc2
            for p in range(P):
                a = cross[p, 0]
                b = cross[p, 1]
                ca = shift[t, a]
                cb = shift[t, b]
                acc1 = 0.0
                for s in range(S):
                    x = cols[t, a, s] - ca
                    y = cols[t, b, s] - cb
                    acc1 = acc1 + x * y
                sx[t, p] += acc1
