"""Initial product states and mixed states given as distributions over product states.

A site state is a Bloch direction (θ, φ): ``|n> = cos(θ/2)|↑> + e^{iφ} sin(θ/2)|↓>``, prepared
from |↑> by the SU(2) rotation of :func:`ctwa_hpc.model.pauli.single_site_unitary`.  A cluster's
product state is ``U_c |0>`` with ``U_c = ⊗_k u_k``; the Wigner functions of
:mod:`ctwa_hpc.method.sampling` are sampled for |0> and rotated by U_c (paper, section V C).

Sites flagged ``random`` are drawn uniformly on the Bloch sphere, independently for every Monte
Carlo sample (the infinite-temperature bath of fig. 5, bottom): the state is then the mixture
ρ = ∫ dΩ |n_Ω><n_Ω| = I/2 on those sites.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from .pauli import apply_site_unitaries, single_site_unitary

NAMED = ("up", "down", "neel", "x", "y", "pattern", "angles", "bath")
_PATTERN = {"u": (0.0, 0.0), "d": (np.pi, 0.0), "+": (np.pi / 2, 0.0), "-": (np.pi / 2, np.pi),
            "r": (np.nan, np.nan)}


@dataclass(frozen=True)
class ProductState:
    """Per-site Bloch angles; sites with ``random[i]`` are drawn per sample (mixed state)."""

    theta: np.ndarray
    phi: np.ndarray
    random: np.ndarray
    name: str = "product"

    @property
    def n_sites(self):
        return len(self.theta)

    @property
    def is_pure(self):
        return not bool(np.any(self.random))

    def draw_angles(self, rng):
        """Angles of one sample: fixed sites as given, random sites uniform on the sphere."""
        th, ph = self.theta.copy(), self.phi.copy()
        k = int(np.count_nonzero(self.random))
        if k:
            u = rng.random((2, k))
            th[self.random] = np.arccos(1.0 - 2.0 * u[0])
            ph[self.random] = 2.0 * np.pi * u[1]
        return th, ph

    def sz_sector(self):
        """Number of down spins if every site is along ±z (pure), else None."""
        if not self.is_pure:
            return None
        up = np.isclose(np.mod(self.theta, 2 * np.pi), 0.0)
        down = np.isclose(np.mod(self.theta, 2 * np.pi), np.pi)
        if np.all(up | down):
            return int(np.count_nonzero(down))
        return None


def _angle_pair(entry, where):
    """One [theta, phi] entry as two floats; ValueError naming ``where`` otherwise."""
    want = f"{where}: expected [theta, phi], two finite numbers (radians)"
    if isinstance(entry, np.ndarray):
        entry = entry.tolist()
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
        raise ValueError(f"{want}, got {entry!r}")
    out = []
    for x in entry:
        if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
            raise ValueError(f"{want}, got {entry!r}")
        try:
            v = float(x)
        except OverflowError:
            raise ValueError(f"{want}, got a number too large in {where}") from None
        if not np.isfinite(v):
            raise ValueError(f"{want}, got {entry!r}")
        out.append(v)
    return out


def from_angles(angles, name="angles", where="state.angles"):
    if isinstance(angles, np.ndarray):
        angles = angles.tolist()
    if not isinstance(angles, (list, tuple)) or not angles:
        raise ValueError(f"{where}: expected a list of [theta, phi] pairs, one per site, got "
                         f"{angles!r}")
    arr = np.array([_angle_pair(e, f"{where}[{k}]") for k, e in enumerate(angles)], dtype=float)
    return ProductState(arr[:, 0].copy(), arr[:, 1].copy(), np.zeros(len(arr), bool), name)


def from_pattern(pattern, where="state.pattern"):
    """Characters per site: u (up), d (down), + (+x), - (-x), r (random on the Bloch sphere)."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"{where}: expected a string of u/d/+/-/r characters")
    bad = sorted(set(pattern) - set(_PATTERN))
    if bad:
        raise ValueError(f"{where}: unknown character(s) {bad} (use u, d, +, -, r)")
    ang = np.array([_PATTERN[c] for c in pattern], dtype=float)
    rnd = np.isnan(ang[:, 0])
    ang[rnd] = 0.0
    return ProductState(ang[:, 0], ang[:, 1], rnd, f"pattern:{pattern}")


def make_state(kind, n_sites, pattern=None, angles=None, flipped=(), polarized=(0,), signs=None):
    """Build a named initial state.

    kind: ``up``, ``down``, ``neel`` (sites with staggered sign +1 up, −1 down; ``signs``
    defaults to (−1)^i, i.e. site 0 up; on a lattice it is the bipartition), ``x`` (+x),
    ``y`` (+y), ``pattern``,
    ``angles``, ``bath`` (sites in ``polarized`` up, the others uniformly random).
    ``flipped`` lists sites whose spin is reversed afterwards (θ → π - θ, φ → φ + π).
    """
    if kind not in NAMED:
        raise ValueError(f"state.kind: unknown state {kind!r} (known: {list(NAMED)})")
    n = n_sites
    if kind == "pattern":
        st = from_pattern(pattern)
    elif kind == "angles":
        st = from_angles(angles)
    elif kind == "bath":
        rnd = np.ones(n, bool)
        for s in polarized:
            if not (isinstance(s, (int, np.integer)) and 0 <= s < n):
                raise ValueError(f"state.polarized: site {s!r} outside 0..{n - 1}")
            rnd[s] = False
        st = ProductState(np.zeros(n), np.zeros(n), rnd, "bath")
    else:
        theta = {"up": np.zeros(n), "down": np.full(n, np.pi),
                 "neel": _neel_theta(n, signs),
                 "x": np.full(n, np.pi / 2), "y": np.full(n, np.pi / 2)}[kind]
        phi = np.full(n, np.pi / 2) if kind == "y" else np.zeros(n)
        st = ProductState(theta, phi, np.zeros(n, bool), kind)
    if st.n_sites != n:
        raise ValueError(f"state: the state has {st.n_sites} sites but the model has {n}")
    if flipped:
        th, ph = st.theta.copy(), st.phi.copy()
        for s in flipped:
            if not (isinstance(s, (int, np.integer)) and 0 <= s < n):
                raise ValueError(f"state.flipped: site {s!r} outside 0..{n - 1}")
            th[s], ph[s] = np.pi - th[s], ph[s] + np.pi
        st = ProductState(th, ph, st.random, st.name + f"+flip{list(flipped)}")
    return st


def _neel_theta(n, signs):
    if signs is None:
        return np.where(np.arange(n) % 2 == 0, 0.0, np.pi)
    signs = np.asarray(signs, dtype=float)
    if signs.shape != (n,) or not np.all(np.abs(signs) == 1.0):
        raise ValueError(f"state.kind: 'neel' needs one staggered sign ±1 per site ({n})")
    return np.where(signs > 0, 0.0, np.pi)


def product_vector(theta, phi):
    """Full 2**N state vector of a product state (exact reference; bit i = site i)."""
    n = len(theta)
    v = np.zeros(1 << n, dtype=complex)
    v[0] = 1.0
    return apply_site_unitaries(v, [single_site_unitary(t, p) for t, p in zip(theta, phi)])
