r"""Spin-1/2 Hamiltonians as coupling lists, eq. (1) of the CTWA paper.

.. math::  \hat H = \sum_{ij} J^{ij}_{ab}(t)\, \hat\sigma^{(i)}_a \hat\sigma^{(j)}_b
                  + \sum_j B^j_a(t)\, \hat\sigma^{(j)}_a

A :class:`Hamiltonian` is a list of :class:`Term` objects: a real coefficient times a Pauli
string (on one, two or more sites, any range), optionally multiplied by a time function f(t),
plus optional :class:`CouplingBlock` arrays of one- and two-body terms built from coupling
matrices, :meth:`Hamiltonian.from_couplings` (H = Σ_{i<j} Σ_{ab} J^{ab}_{ij} σ^a_i σ^b_j +
Σ_i h^a_i σ^a_i, "couplings as data"; no Python loop per pair).  The same object feeds the
CTWA compiler (:mod:`ctwa_hpc.method.clusters`), mean field and the exact reference
(:mod:`ctwa_hpc.exact.statevector`): there is one source of truth for the model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .pauli import normalize_label, parse_pauli_string
from .timefunc import TimeFunction  # noqa: F401 (re-exported)
from .couplings import family_tfuncs, normalize_couplings, normalize_pairs
from .geometry.pairs import PairCouplings
from .pauli import dense_string


@dataclass(frozen=True)
class Term:
    """``coef * f(t) * Π_k σ^{(site_k)}_{label_k}``.

    ``ops`` is a sorted tuple of (site, label) with distinct sites and no identities.
    ``tfunc`` is ``None`` for a static term.
    """

    coef: float
    ops: tuple
    tfunc: TimeFunction | None = None

    @property
    def sites(self):
        return tuple(s for s, _ in self.ops)

    def label(self):
        s = " ".join(f"{lab}{site}" for site, lab in self.ops)
        return f"{self.coef:+g} {s}" + (f" * f(t)={self.tfunc.expr}" if self.tfunc else "")


LABELS = "XYZ"
"""Label codes of the vectorised storage: 0 = X, 1 = Y, 2 = Z."""


@dataclass(frozen=True, eq=False)
class CouplingBlock:
    r"""One- and two-body terms stored as arrays (struct of arrays), built by
    :meth:`Hamiltonian.add_couplings`.

    .. math::  \sum_k c_k f_{g_k}(t)\, σ^{a_k}_{i_k} σ^{b_k}_{j_k}
               + \sum_k c'_k f_{g'_k}(t)\, σ^{a'_k}_{i'_k}

    Pair term k: ``pair_coef[k] · f · σ^a_i σ^b_j`` with i = ``pair_i[k]`` < j = ``pair_j[k]``,
    a = ``LABELS[pair_a[k]]``, b = ``LABELS[pair_b[k]]``; site term k:
    ``site_coef[k] · f · σ^a_i`` with i = ``site_i[k]``, a = ``LABELS[site_a[k]]``.
    ``f = tfuncs[tf]`` for ``tf ≥ 0`` and ``f = 1`` for ``tf = -1`` (``pair_tf``, ``site_tf``).
    Only non-zero coefficients are stored; ``families`` lists the J/h keys ("xx", "xy", "z", ...)
    that contributed, in storage order.
    """

    n_sites: int
    pair_i: np.ndarray
    pair_j: np.ndarray
    pair_a: np.ndarray
    pair_b: np.ndarray
    pair_coef: np.ndarray
    pair_tf: np.ndarray
    site_i: np.ndarray
    site_a: np.ndarray
    site_coef: np.ndarray
    site_tf: np.ndarray
    tfuncs: tuple = ()
    families: tuple = ()

    @classmethod
    def from_arrays(cls, n_sites, J, h, family_tf):
        """Block from validated dicts ``J`` {"ab": (N, N)} and ``h`` {"a": (N,)} (see
        :func:`ctwa_hpc.model.couplings.normalize_couplings`); ``family_tf`` maps a family key to its
        TimeFunction.  Mixed families read the upper triangle only (entry (i, j), i < j, is the
        coefficient of σ^a_i σ^b_j)."""
        iu, ju = np.triu_indices(n_sites, 1)
        return cls._build(n_sites, ((key, iu, ju, M[iu, ju]) for key, M in J.items()), h,
                          family_tf)

    @classmethod
    def from_pairs(cls, n_sites, pairs, h, family_tf):
        """Block from validated coupling lists (a
        :class:`~ctwa_hpc.model.geometry.pairs.PairCouplings`, families in canonical order),
        identical to :meth:`from_arrays` of the same couplings given as (N, N) arrays."""
        return cls._build(n_sites, ((key, pairs.i, pairs.j, v) for key, v in pairs.items()), h,
                          family_tf)

    @classmethod
    def _build(cls, n_sites, families, h, family_tf):
        """``families``: (key, i, j, values) with i < j in (i, j) order; zeros are dropped."""
        tfuncs, fams = [], []
        cols = {k: [] for k in ("i", "j", "a", "b", "c", "g", "si", "sa", "sc", "sg")}

        def tf_index(key):
            f = family_tf.get(key)
            if f is None:
                return -1
            for g, known in enumerate(tfuncs):
                if known is f:
                    return g
            tfuncs.append(f)
            return len(tfuncs) - 1

        for key, iu, ju, v in families:
            nz = np.flatnonzero(v)
            if len(nz) == 0:
                continue
            g = tf_index(key)
            fams.append(key)
            cols["i"].append(iu[nz])
            cols["j"].append(ju[nz])
            cols["a"].append(np.full(len(nz), LABELS.index(key[0].upper()), np.int8))
            cols["b"].append(np.full(len(nz), LABELS.index(key[1].upper()), np.int8))
            cols["c"].append(v[nz])
            cols["g"].append(np.full(len(nz), g, np.int32))
        for key, v in h.items():
            nz = np.flatnonzero(v)
            if len(nz) == 0:
                continue
            g = tf_index(key)
            fams.append(key)
            cols["si"].append(nz.astype(np.int64))
            cols["sa"].append(np.full(len(nz), LABELS.index(key.upper()), np.int8))
            cols["sc"].append(v[nz])
            cols["sg"].append(np.full(len(nz), g, np.int32))

        def cat(name, dtype):
            parts = cols[name]
            return np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros(0), dtype)

        return cls(int(n_sites), cat("i", np.int64), cat("j", np.int64), cat("a", np.int8),
                   cat("b", np.int8), cat("c", float), cat("g", np.int32), cat("si", np.int64),
                   cat("sa", np.int8), cat("sc", float), cat("sg", np.int32), tuple(tfuncs),
                   tuple(fams))

    @property
    def n_pairs(self):
        return len(self.pair_coef)

    @property
    def n_terms(self):
        return len(self.pair_coef) + len(self.site_coef)

    def terms(self):
        """The block as :class:`Term` objects: pair terms, then site terms, in storage order."""
        tf = list(self.tfuncs) + [None]          # tf = -1 picks None
        lab = LABELS
        out = [Term(c, ((i, lab[a]), (j, lab[b])), tf[g]) for i, j, a, b, c, g in zip(
            self.pair_i.tolist(), self.pair_j.tolist(), self.pair_a.tolist(),
            self.pair_b.tolist(), self.pair_coef.tolist(), self.pair_tf.tolist())]
        out += [Term(c, ((i, lab[a]),), tf[g]) for i, a, c, g in zip(
            self.site_i.tolist(), self.site_a.tolist(), self.site_coef.tolist(),
            self.site_tf.tolist())]
        return out


class Hamiltonian:
    """A spin-1/2 Hamiltonian on ``n_sites`` sites (eq. 1): Pauli-string terms plus coupling blocks.

    Two stores, one model (their sum):

    * ``explicit_terms``: a list of :class:`Term`, built with :meth:`add`
      (``H.add(0.5, "Z0 Z1")`` or ``H.add(1.0, [(0, 'x')])``) or a builder of
      :mod:`ctwa_hpc.model.models`; any support, any range;
    * ``blocks``: :class:`CouplingBlock` arrays of one- and two-body terms, built with
      :meth:`from_couplings` / :meth:`add_couplings` from coupling matrices (N = 1024
      all-to-all, 1.6 × 10⁶ terms, in well under a second).

    ``H.terms`` lists every term of both stores (blocks materialised on first use and cached:
    meant for small N and old consumers; the compiler, :meth:`conserves_sz`,
    :meth:`time_functions` and :meth:`summary` read the arrays directly).
    """

    def __init__(self, n_sites, terms=None, name="custom", info=None):
        if not isinstance(n_sites, (int, np.integer)) or isinstance(n_sites, bool) \
                or n_sites < 1:
            raise ValueError(f"model.n_sites: expected a positive integer, got {n_sites!r}")
        self.n_sites = int(n_sites)
        self.explicit_terms = terms if terms is not None else []
        self.blocks = []
        self.name = name
        self.info = info if info is not None else {}
        self._all_terms = None

    def __repr__(self):
        return f"Hamiltonian({self.summary()})"

    @property
    def terms(self):
        """Every term (explicit terms first, then the blocks' terms in storage order)."""
        if not self.blocks:
            return self.explicit_terms
        if self._all_terms is None or self._all_terms[0] != len(self.explicit_terms):
            mat = list(self.explicit_terms)
            for b in self.blocks:
                mat += b.terms()
            self._all_terms = (len(self.explicit_terms), mat)
        return self._all_terms[1]

    @property
    def n_terms(self):
        return len(self.explicit_terms) + sum(b.n_terms for b in self.blocks)

    def add(self, coef, ops, tfunc=None, where="model.terms"):
        """Append ``coef * ops`` (ops: string ``"X0 Z1"`` or list of (site, label))."""
        if isinstance(coef, bool) or not isinstance(coef, (int, float, np.floating, np.integer)):
            raise ValueError(f"{where}: coefficient must be a real number, got {coef!r}")
        coef = float(coef)
        if not math.isfinite(coef):
            raise ValueError(f"{where}: coefficient {coef} is not finite")
        if isinstance(ops, str):
            parsed = parse_pauli_string(ops, where)
        else:
            d = {}
            for site, lab in ops:
                if isinstance(site, bool) or not isinstance(site, (int, np.integer)):
                    raise ValueError(f"{where}: site {site!r} is not an integer")
                lab = normalize_label(lab, where)
                if site in d:
                    raise ValueError(f"{where}: site {site} appears twice")
                if lab != "I":
                    d[int(site)] = lab
            parsed = tuple(sorted(d.items()))
        if not parsed:
            raise ValueError(f"{where}: a term must act on at least one site (identity terms "
                             "only shift the energy)")
        for site, _ in parsed:
            if not 0 <= site < self.n_sites:
                raise ValueError(f"{where}: site {site} outside 0..{self.n_sites - 1}")
        if tfunc is not None and not isinstance(tfunc, TimeFunction):
            tfunc = TimeFunction(tfunc, where + ".f")
        if coef != 0.0:
            self.explicit_terms.append(Term(coef, parsed, tfunc))
        return self

    # -- couplings as data -----------------------------------------------------------------
    @classmethod
    def from_couplings(cls, J, h=None, *, tfuncs=None, name="couplings", info=None, where=""):
        r"""H = Σ_{i<j} Σ_{ab} J^{ab}_{ij} σ^a_i σ^b_j + Σ_i h^a_i σ^a_i from arrays (vectorised).

        Parameters
        ----------
        J : dict of (N, N) arrays keyed "xx", "yy", "zz", "xy", "xz", "yz", "yx", "zx", "zy"
            (or "J_xx", ...).  xx/yy/zz must be symmetric; every matrix has a zero diagonal.
            Only the upper triangle is used: entry (i, j), i < j, is the coefficient of
            σ^a_i σ^b_j (for "yx" that is σ^y_i σ^x_j).  The lower triangle of a mixed key must
            be zero or mirror the upper one.  May be empty when ``h`` is given.
        h : dict of (N,) arrays keyed "x", "y", "z" (or "h_x", ...), optional
        tfuncs : dict, optional — family key ("xx", "J_xy", "z", "h_x", ...) → TimeFunction or
            expression; that family's terms are multiplied by f(t)
        name, info : as for the constructor
        where : prefix of error messages (e.g. "model.file (x.npz)"); errors name the array,
            e.g. "J_xx: not symmetric (max |J - J^T| = 0.1 at (0, 2))"
        """
        if isinstance(J, PairCouplings):
            return cls(J.n_sites, name=name, info=info).add_couplings(J, h, tfuncs=tfuncs,
                                                                      where=where)
        Jn, hn, n, _ = normalize_couplings(J, h, where=where)
        return cls(n, name=name, info=info).add_couplings(Jn, hn, tfuncs=tfuncs, where=where)

    def add_couplings(self, J=None, h=None, *, tfuncs=None, where=""):
        """Add a vectorised block of couplings/fields (arguments as :meth:`from_couplings`;
        ``J`` may also be a :class:`~ctwa_hpc.model.geometry.pairs.PairCouplings`: coupling
        lists, never an (N, N) array, the same terms as the dense form)."""
        if isinstance(J, PairCouplings):
            pairs = normalize_pairs(J, n_sites=self.n_sites, where=where)
            hn = normalize_couplings(None, h, n_sites=self.n_sites, where=where)[1] if h else {}
            ftf = family_tfuncs(tfuncs, pairs.values, hn, where=where)
            block = CouplingBlock.from_pairs(self.n_sites, pairs, hn, ftf)
        else:
            Jn, hn, _, _ = normalize_couplings(J, h, n_sites=self.n_sites, where=where)
            ftf = family_tfuncs(tfuncs, Jn, hn, where=where)
            block = CouplingBlock.from_arrays(self.n_sites, Jn, hn, ftf)
        if block.n_terms:
            self.blocks.append(block)
            self._all_terms = None
        return self

    # -- properties ------------------------------------------------------------------------
    @property
    def time_dependent(self):
        return any(t.tfunc is not None for t in self.explicit_terms) or \
            any(len(b.tfuncs) for b in self.blocks)

    def time_functions(self):
        """Distinct time functions (by identity): explicit terms in first-use order, then blocks."""
        out, seen = [], set()
        fs = [t.tfunc for t in self.explicit_terms if t.tfunc is not None]
        for b in self.blocks:
            fs += list(b.tfuncs)
        for f in fs:
            if id(f) not in seen:
                seen.add(id(f))
                out.append(f)
        return out

    def conserves_sz(self):
        r"""True if every group of terms on the same support commutes with total σz.

        Terms are grouped by (support, time function), which is exact for sums of local terms
        with linearly independent time functions (equal expressions with equal parameters
        count as one function).  One- and two-site terms (explicit and blocks) are checked on
        their summed coefficients, vectorised: with σ^± = (σ^x ± iσ^y)/2 a pair's
        Σ_ab J^{ab} σ^a_i σ^b_j has the σ^+_iσ^+_j coefficient J^xx − J^yy − i(J^xy + J^yx) and
        σ^±_i σ^z_j, σ^z_i σ^±_j parts from J^xz, J^yz, J^zx, J^zy, so it conserves Sz iff
        J^xx = J^yy, J^xy = −J^yx and J^xz = J^yz = J^zx = J^zy = 0; a field iff h^x = h^y = 0.
        Longer strings: each group's local matrix against the local Σσz.
        """
        tfs = self.time_functions()
        gid, keys = {}, {}
        for f in tfs:
            gid[id(f)] = keys.setdefault(_tf_group_key(f), len(keys))
        G1 = len(keys) + 1
        si, sa, sc, sg = [], [], [], []
        pi, pj, pab, pc, pg = [], [], [], [], []
        groups = {}
        for t in self.explicit_terms:
            g = gid[id(t.tfunc)] if t.tfunc is not None else -1
            if len(t.ops) == 1:
                si.append(t.ops[0][0]), sa.append(LABELS.index(t.ops[0][1]))
                sc.append(t.coef), sg.append(g)
            elif len(t.ops) == 2:
                (i, a), (j, b) = t.ops
                pi.append(i), pj.append(j), pab.append(3 * LABELS.index(a) + LABELS.index(b))
                pc.append(t.coef), pg.append(g)
            else:
                groups.setdefault((t.sites, g), []).append(t)
        si, sa, sc, sg = [np.asarray(x) for x in (si, sa, sc, sg)]
        pi, pj, pab, pc, pg = [np.asarray(x) for x in (pi, pj, pab, pc, pg)]
        for b in self.blocks:
            gmap = np.array([gid[id(f)] for f in b.tfuncs] + [-1], dtype=np.int64)
            si, sa = np.concatenate([si, b.site_i]), np.concatenate([sa, b.site_a])
            sc, sg = np.concatenate([sc, b.site_coef]), np.concatenate([sg, gmap[b.site_tf]])
            pi, pj = np.concatenate([pi, b.pair_i]), np.concatenate([pj, b.pair_j])
            pab = np.concatenate([pab, 3 * b.pair_a.astype(np.int64) + b.pair_b])
            pc, pg = np.concatenate([pc, b.pair_coef]), np.concatenate([pg, gmap[b.pair_tf]])
        scale = max([1.0] + [float(np.abs(x).max()) for x in (sc, pc) if len(x)])
        tol = 1e-12 * scale
        if len(sc):   # fields: Σ h^x and Σ h^y per (site, function) must vanish
            key = (si.astype(np.int64) * G1 + sg.astype(np.int64) + 1) * 3 + sa.astype(np.int64)
            _, inv = np.unique(key, return_inverse=True)
            tot = np.bincount(inv, weights=sc)
            lab = np.zeros(len(tot), np.int64)
            lab[inv] = sa
            if np.any(np.abs(tot[lab != 2]) > tol):
                return False
        if len(pc):
            key = (pi.astype(np.int64) * self.n_sites + pj.astype(np.int64)) * G1 \
                + pg.astype(np.int64) + 1
            u, inv = np.unique(key, return_inverse=True)
            acc = np.bincount(inv * 9 + pab.astype(np.int64), weights=pc,
                              minlength=9 * len(u)).reshape(-1, 3, 3)
            viol = np.concatenate([np.abs(acc[:, 0, 0] - acc[:, 1, 1]),
                                   np.abs(acc[:, 0, 1] + acc[:, 1, 0]),
                                   np.abs(acc[:, 0:2, 2]).ravel(), np.abs(acc[:, 2, 0:2]).ravel()])
            if np.any(viol > tol):
                return False
        for (sites, _), terms in groups.items():
            n = len(sites)
            loc = {s: k for k, s in enumerate(sites)}
            hm = sum(t.coef * dense_string([(loc[s], lab) for s, lab in t.ops], n) for t in terms)
            sz = sum(dense_string([(k, "Z")], n) for k in range(n))
            if np.abs(hm @ sz - sz @ hm).max() > 1e-12:
                return False
        return True

    def one_site_fields(self, every=False):
        """{component: (N,)}: the full coefficient of σ^a_i, Σ of every one-site term
        (explicit terms and blocks; a time-dependent term counts with its amplitude), for
        each component "x", "y", "z" that has one-site terms (``every``: all three)."""
        n = self.n_sites
        out = {}
        for t in self.explicit_terms:
            if len(t.ops) == 1:
                (i, lab), = t.ops
                a = lab.lower()
                if a not in out:
                    out[a] = np.zeros(n)
                out[a][i] += t.coef
        for b in self.blocks:
            for code in np.unique(b.site_a).tolist():
                sel = b.site_a == code
                np.add.at(out.setdefault(LABELS[code].lower(), np.zeros(n)), b.site_i[sel],
                          b.site_coef[sel])
        return {a: out.get(a, np.zeros(n)) for a in "xyz" if every or a in out}

    def pair_strength(self):
        """(N, N) symmetric sqrt(Σ coef²) over the two-site terms of every pair (explicit terms
        and blocks, each term squared on its own); vectorised, for clustering by coupling."""
        n = self.n_sites
        s2 = np.zeros(n * n)
        for t in self.explicit_terms:
            if len(t.ops) == 2:
                s2[t.ops[0][0] * n + t.ops[1][0]] += t.coef ** 2
        for b in self.blocks:
            s2 += np.bincount(b.pair_i * n + b.pair_j, weights=b.pair_coef ** 2, minlength=n * n)
        s2 = s2.reshape(n, n)
        return np.sqrt(s2 + s2.T)

    def pair_strength_lists(self):
        """(i, j, S) with i < j sorted by (i, j): the nonzero entries of the upper triangle of
        :meth:`pair_strength` (the same numbers, summed in the same order), without an (N, N)
        array."""
        n = self.n_sites
        keys, weights = [], []
        for t in self.explicit_terms:
            if len(t.ops) == 2:
                keys.append(t.ops[0][0] * n + t.ops[1][0])
                weights.append(t.coef ** 2)
        parts = [(np.asarray(keys, np.int64), np.asarray(weights, float), True)]
        parts += [(b.pair_i * n + b.pair_j, b.pair_coef ** 2, False) for b in self.blocks]
        uk = np.unique(np.concatenate([k for k, _, _ in parts]))
        s2 = np.zeros(len(uk))
        for k, w, sequential in parts:
            pos = np.searchsorted(uk, k)
            if sequential:                   # one term after the other, as pair_strength
                for p, x in zip(pos.tolist(), w.tolist()):
                    s2[p] += x
            else:
                s2 += np.bincount(pos, weights=w, minlength=len(uk))
        return uk // n, uk % n, np.sqrt(s2)

    def summary(self):
        arr = sum(b.n_terms for b in self.blocks)
        return f"{self.name}: {self.n_sites} sites, {self.n_terms} terms" + \
            (f" ({arr} as coupling arrays)" if arr else "") + \
            (" (time dependent)" if self.time_dependent else "")


def _tf_group_key(f):
    """Functions with the same expression and parameters are one function; callables (and
    anything without a readable expression) are told apart by identity."""
    expr = getattr(f, "expr", None)
    if isinstance(expr, str) and not expr.isidentifier() and not expr.startswith("<"):
        params = getattr(f, "params", None) or {}
        return ("expr", expr, tuple(sorted((str(k), float(v)) for k, v in dict(params).items())))
    return ("id", id(f))
