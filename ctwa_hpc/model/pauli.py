"""Pauli strings on n qubits as a bit-flip mask plus a phase vector.

Conventions (used everywhere in ctwa-hpc)
-----------------------------------------
* Operators are Pauli matrices σ (not S = σ/2) and ħ = 1, as in the CTWA paper.
* Local basis of a set of n sites (a cluster, or the whole chain for the exact reference),
  eq. (14) of the paper: basis index ``b`` has bit ``k`` equal to 1 when the k-th site of the
  set points down.  ``|0> = |↑↑…↑>``, ``|1> = |↓↑…↑>``, ..., ``|D-1> = |↓↓…↓>``, D = 2**n.
* ``σz|↑> = +|↑>``, ``σx|↑> = |↓>``, ``σy|↑> = i|↓>``, ``σy|↓> = -i|↑>``.

A Pauli string P acts as ``(P ψ)[b] = d[b] ψ[b XOR m]`` where ``m`` is the flip mask
(bits of the sites carrying X or Y) and ``d`` is a length-D phase vector.  Applying a sum of
strings that share a mask costs O(D): this is the representation the compiled cluster
problem (eq. (5)) and the kernels use.
"""
from __future__ import annotations

import numpy as np

PAULI_LABELS = ("I", "X", "Y", "Z")

_SINGLE = {
    "I": np.eye(2, dtype=complex),
    "X": np.array([[0, 1], [1, 0]], dtype=complex),
    "Y": np.array([[0, -1j], [1j, 0]], dtype=complex),
    "Z": np.array([[1, 0], [0, -1]], dtype=complex),
}


def normalize_label(label, where="pauli label"):
    """Return the upper-case Pauli label, or raise ``ValueError`` naming ``where``."""
    if not isinstance(label, str) or label.upper() not in PAULI_LABELS:
        raise ValueError(f"{where}: unknown Pauli label {label!r} (expected one of I, X, Y, Z)")
    return label.upper()


def parse_pauli_string(text, where="pauli string"):
    """Parse ``"X0 Z3"`` (label followed by site index, blank separated) into ``((0,'X'),(3,'Z'))``.

    Sites must be distinct; identity factors are dropped.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: expected a non-empty string like 'X0 Z1', got {text!r}")
    ops = {}
    for tok in text.split():
        lab, num = tok[0], tok[1:]
        lab = normalize_label(lab, where)
        if not num.isdigit():
            raise ValueError(f"{where}: cannot read site index in {tok!r} (expected e.g. 'Z3')")
        site = int(num)
        if site in ops:
            raise ValueError(f"{where}: site {site} appears twice in {text!r}")
        if lab != "I":
            ops[site] = lab
    return tuple(sorted(ops.items()))


def string_action(bit_labels, n_bits, states=None):
    """Mask and phase vector of a Pauli string on ``n_bits`` qubits.

    Parameters
    ----------
    bit_labels : iterable of (bit, label)
        Pauli label per local bit (sites not listed carry the identity).
    n_bits : int
    states : int64 array, optional
        Basis indices at which to evaluate the phase (default: all 2**n_bits).

    Returns
    -------
    mask : int
        Flip mask: ``(P ψ)[b] = d[b] ψ[b ^ mask]``.
    d : ndarray, complex, shape (2**n_bits,) or ``states.shape``
    """
    mask = 0
    zmask = 0
    n_y = 0
    for bit, lab in bit_labels:
        lab = normalize_label(lab)
        if not 0 <= bit < n_bits:
            raise ValueError(f"bit {bit} outside a {n_bits}-qubit register")
        if lab in ("X", "Y"):
            mask |= 1 << bit
        if lab in ("Y", "Z"):
            zmask |= 1 << bit
        n_y += lab == "Y"
    b = np.arange(1 << n_bits, dtype=np.int64) if states is None else np.asarray(states, np.int64)
    src = b ^ mask
    # P|c> = i^{n_Y} (-1)^{popcount(c & zmask)} |c ^ mask>, evaluated at c = b ^ mask
    parity = popcount(src & zmask) & 1
    d = (1j ** n_y) * (1.0 - 2.0 * parity)
    return mask, np.asarray(d, dtype=complex)


def popcount(a):
    """Vectorized population count of non-negative int64 values."""
    a = np.asarray(a, dtype=np.int64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(a).astype(np.int64)
    count = np.zeros(a.shape, dtype=np.int64)
    x = a.copy()
    while np.any(x):
        count += x & 1
        x >>= 1
    return count


def dense_from_action(mask, d):
    """Dense matrix ``M[b, b ^ mask] = d[b]`` (for tests and small exact checks)."""
    dim = len(d)
    m = np.zeros((dim, dim), dtype=complex)
    b = np.arange(dim)
    m[b, b ^ mask] = d
    return m


def dense_string(bit_labels, n_bits):
    """Dense matrix of a Pauli string by Kronecker products (independent of the mask path).

    Bit 0 is the least significant bit of the basis index, so it is the last Kronecker factor.
    """
    labels = dict(bit_labels)
    mat = np.ones((1, 1), dtype=complex)
    for bit in reversed(range(n_bits)):
        mat = np.kron(mat, _SINGLE[normalize_label(labels.get(bit, "I"))])
    return mat


_SQRT_HALF = np.sqrt(0.5)
# cos and sin of k·π/4, k = 0..7 (exact where the value is 0 or ±1)
_COS_QUARTER = np.array([1.0, _SQRT_HALF, 0.0, -_SQRT_HALF, -1.0, -_SQRT_HALF, 0.0, _SQRT_HALF])
_SIN_QUARTER = np.roll(_COS_QUARTER, 2)


def _snapped_cos_sin(angle):
    """cos and sin of ``angle``, exact when it is a multiple of π/4 (to 1e-12 relative).

    Floating-point π is not π: cos(π/2) = 6e-17 would leave a tiny up component in a down
    spin, and mean field drifts off such unstable stationary states (a Néel state decays)."""
    q = angle / (np.pi / 4.0)
    k = np.rint(q)
    if abs(q - k) <= 1e-12 * max(1.0, abs(q)):
        i = int(k) % 8
        return _COS_QUARTER[i], _SIN_QUARTER[i]
    return np.cos(angle), np.sin(angle)


def single_site_unitary(theta, phi):
    """SU(2) rotation u with ``u|↑> = cos(θ/2)|↑> + e^{iφ} sin(θ/2)|↓>`` (Bloch angles θ, φ).

    θ/2 and φ that are multiples of π/4 (θ = 0, π/2, π, ...; φ = 0, π/2, π, ...) give exact
    matrix entries, e.g. ``u(π, 0)|↑> = |↓>`` with no 6e-17 remainder of |↑>."""
    c, s = _snapped_cos_sin(float(theta) / 2.0)
    ce, se = _snapped_cos_sin(float(phi))
    e = complex(ce, se)
    return np.array([[c, -np.conj(e) * s], [e * s, c]], dtype=complex)


def apply_site_unitaries(vec, unitaries):
    """Apply ``⊗_k u_k`` to vectors on n qubits.

    vec : ndarray, shape (2**n, ...) ; unitaries : sequence of n (2, 2) arrays or per-sample
    arrays of shape (2, 2, S) when ``vec`` has a trailing sample axis of length S.
    """
    n = len(unitaries)
    dim = vec.shape[0]
    if dim != 1 << n:
        raise ValueError("vector length does not match the number of site unitaries")
    rest = vec.shape[1:]
    # reshape so that axis j holds bit (n-1-j): C order puts the most significant bit first
    t = vec.reshape((2,) * n + rest)
    for k, u in enumerate(unitaries):
        axis = n - 1 - k
        t = np.moveaxis(t, axis, 0)
        if u.ndim == 2:
            t = np.tensordot(u, t, axes=([1], [0]))
        else:  # per-sample unitary, u[a, b, s]; sample axis is the last axis of t
            t = np.einsum("abs,b...s->a...s", u, t)
        t = np.moveaxis(t, 0, axis)
    return t.reshape(vec.shape)
