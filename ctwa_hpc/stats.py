r"""Monte Carlo moments and estimators (mean, standard error) for CTWA observables.

Per realization and output time, ranks accumulate plain sums over samples of every column x_k,
of x_k², and of the cross products x_i x_j needed by connected correlators.  Sums merge exactly
(MPI reduction, checkpoints, separate jobs), so nothing else about samples is kept.

Estimators
----------
* mean  m_k = Σx_k / n,  stderr = √(s_k²/n),  s_k² = (Σx_k² − n m_k²)/(n − 1).
* connected  C = m_p − m_x m_y with stderr from the delta method (influence function
  p − m_y x − m_x y):  Var = s_p² + m_y² s_x² + m_x² s_y² − 2 m_y c_px − 2 m_x c_py + 2 m_x m_y c_xy.
* disorder average over R realizations (equal samples each): mean of realization means; its
  stderr is the spread of realization means / √R (which contains the Monte Carlo noise) when
  R ≥ 2, the within-realization error otherwise.  ``stderr_within`` = √(Σ_r se_r²)/R is kept
  too.

With antithetic pairs, a pair average is one independent unit (n counts pairs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Moments:
    """Sums over samples for ``n_real`` realizations: count[r], s1/s2[r, t, k], sx[r, t, p]."""

    count: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    sx: np.ndarray
    cross: np.ndarray  # (P, 2) column index pairs

    @classmethod
    def zeros(cls, n_real, n_t, n_cols, cross):
        cross = np.asarray(cross, dtype=np.int64).reshape(-1, 2)
        return cls(np.zeros(n_real), np.zeros((n_real, n_t, n_cols)),
                   np.zeros((n_real, n_t, n_cols)), np.zeros((n_real, n_t, len(cross))), cross)

    def add(self, r, cols, antithetic=False):
        """Accumulate per-sample columns (n_t, K, S) into realization ``r``."""
        if antithetic:
            S = cols.shape[-1]
            if S % 2:
                raise ValueError("antithetic batches must hold whole pairs")
            cols = 0.5 * (cols[..., 0::2] + cols[..., 1::2])
        self.count[r] += cols.shape[-1]
        self.s1[r] += cols.sum(axis=-1)
        self.s2[r] += np.einsum("tks,tks->tk", cols, cols)
        if len(self.cross):
            a, b = self.cross[:, 0], self.cross[:, 1]
            self.sx[r] += np.einsum("tps,tps->tp", cols[:, a], cols[:, b])

    def merge(self, other):
        for name in ("count", "s1", "s2", "sx"):
            getattr(self, name)[...] += getattr(other, name)
        return self

    def arrays(self):
        return {"count": self.count, "s1": self.s1, "s2": self.s2, "sx": self.sx}


def _cov(n, s1i, s1j, sij):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 1, (sij - s1i * s1j / n) / np.maximum(n - 1, 1), np.nan)


def realization_estimates(outputs, mom):
    """Per-realization mean and stderr of every output: {name: (mean[R, t, ...], se[R, t, ...])}."""
    n = mom.count[:, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        m = mom.s1 / n
        var = _cov(n, mom.s1, mom.s1, mom.s2)
    var = np.maximum(var, 0.0)
    cross_index = {tuple(p): i for i, p in enumerate(mom.cross.tolist())}

    def cov(i, j):
        key = (min(i, j), max(i, j))
        return _cov(n[..., 0], mom.s1[..., i], mom.s1[..., j], mom.sx[..., cross_index[key]])

    res = {}
    for name, out in outputs.items():
        if out.kind == "direct":
            mean = m[..., out.cols]
            se = np.sqrt(var[..., out.cols] / n)
        elif out.kind in RDM_KINDS:
            mean = np.empty(m.shape[:2] + (len(out.cols),))
            se = np.empty_like(mean)
            for k, cols in enumerate(out.cols):
                C = np.empty(m.shape[:2] + (len(cols), len(cols)))
                for a, i in enumerate(cols):
                    for b, j in enumerate(cols):
                        C[..., a, b] = var[..., i] if i == j else cov(i, j)
                val, grad = rdm_function(out.kind, m[..., cols])
                mean[..., k] = val
                se[..., k] = np.sqrt(np.maximum(np.einsum("...a,...ab,...b->...", grad, C, grad),
                                                0.0) / n[..., 0])
        else:
            p, x, y = out.cols[:, 0], out.cols[:, 1], out.cols[:, 2]
            mp, mx, my = m[..., p], m[..., x], m[..., y]
            mean = mp - mx * my
            v = np.empty_like(mean)
            for k, (ip, ix, iy) in enumerate(out.cols):
                v[..., k] = (var[..., ip] + my[..., k] ** 2 * var[..., ix]
                             + mx[..., k] ** 2 * var[..., iy]
                             - 2 * my[..., k] * cov(ip, ix) - 2 * mx[..., k] * cov(ip, iy)
                             + 2 * mx[..., k] * my[..., k] * cov(ix, iy))
            se = np.sqrt(np.maximum(v, 0.0) / n)
        res[name] = (mean, se)
    return res


RDM_KINDS = ("entropy", "renyi2", "rdm_min_eig")


def pauli_basis(k):
    """The 4**k − 1 non-identity Pauli strings on k sites as dense matrices, in the column
    order of :meth:`ObservableSet.rdm_columns` (site j of the subsystem is bit j)."""
    from .pauli import dense_string
    mats = []
    for code in range(1, 4 ** k):
        bl = [(j, "IXYZ"[(code >> (2 * j)) & 3]) for j in range(k)]
        mats.append(dense_string([(b, lab) for b, lab in bl if lab != "I"], k))
    return np.array(mats)


def rdm_from_paulis(means):
    """ρ_A = 2^{-k}(I + Σ_P m_P P) from Pauli expectations (..., 4**k − 1)."""
    k = int(round(np.log(means.shape[-1] + 1) / np.log(4)))
    P = pauli_basis(k)
    D = 2 ** k
    return (np.eye(D) + np.einsum("...p,pab->...ab", means, P)) / D, P


def rdm_function(kind, means):
    """Entropy-type function of ρ_A and its gradient with respect to the Pauli means.

    Eigenvalues of the estimate can be slightly negative (finite samples): the von Neumann and
    Rényi entropies use eigenvalues clipped at 0 and renormalized to unit trace; the smallest
    raw eigenvalue is reported as ``rdm_min_eig``.  Gradients (delta-method errors):
    ∂S/∂m_P = −Tr[log2(ρ) P]/D, ∂S2/∂m_P = −2 Tr[ρ P]/(D ln2 Tr ρ²), ∂λ_min/∂m_P = ⟨v|P|v⟩/D.
    """
    rho, P = rdm_from_paulis(means)
    D = rho.shape[-1]
    lam, V = np.linalg.eigh(rho)
    if kind == "rdm_min_eig":
        v = V[..., :, 0]
        grad = np.einsum("...a,pab,...b->...p", v.conj(), P, v).real / D
        return lam[..., 0], grad
    lc = np.clip(lam, 0.0, None)
    lc = lc / lc.sum(axis=-1, keepdims=True)
    if kind == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(lc > 1e-14, np.log2(np.where(lc > 1e-14, lc, 1.0)), 0.0)
        val = -np.sum(lc * logs, axis=-1)
        logm = np.einsum("...ai,...i,...bi->...ab", V, logs, V.conj())
        grad = -np.einsum("...ab,pba->...p", logm, P).real / D
        return val, grad
    purity = np.sum(lc ** 2, axis=-1)
    val = -np.log2(purity)
    grad = -2.0 * np.einsum("...ab,pba->...p", rho, P).real / (D * np.log(2) * purity[..., None])
    return val, grad


def disorder_average(mean_r, se_r=None):
    """Average over realizations (axis 0): (mean, stderr, stderr_within)."""
    R = mean_r.shape[0]
    mean = mean_r.mean(axis=0)
    within = None if se_r is None else np.sqrt((se_r ** 2).sum(axis=0)) / R
    if R >= 2:
        se = mean_r.std(axis=0, ddof=1) / np.sqrt(R)
    else:
        se = within
    return mean, se, within


def exact_connected(outputs, cols):
    """Output values from exact column means cols[R, t, K] (no sampling error)."""
    res = {}
    for name, out in outputs.items():
        if out.kind == "direct":
            res[name] = cols[..., out.cols]
        elif out.kind in RDM_KINDS:
            res[name] = np.stack([rdm_function(out.kind, cols[..., c])[0] for c in out.cols],
                                 axis=-1)
        else:
            p, x, y = out.cols[:, 0], out.cols[:, 1], out.cols[:, 2]
            res[name] = cols[..., p] - cols[..., x] * cols[..., y]
    return res
