"""Independent dense Pauli matrices for the tests (not taken from ctwa_hpc), basis (|↑>, |↓>)."""
import numpy as np

SIG = {
    "I": np.eye(2, dtype=complex),
    "X": np.array([[0, 1], [1, 0]], dtype=complex),
    "Y": np.array([[0, -1j], [1j, 0]], dtype=complex),
    "Z": np.array([[1, 0], [0, -1]], dtype=complex),
}


def kron_string(labels):
    """Dense matrix of ``labels[k]`` on bit k; bit 0 is the least significant (last factor)."""
    mat = np.ones((1, 1), dtype=complex)
    for lab in reversed(labels):
        mat = np.kron(mat, SIG[lab])
    return mat
