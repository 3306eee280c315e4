r"""Spin-1/2 Hamiltonians as coupling lists, eq. (1) of the CTWA paper.

.. math::  \hat H = \sum_{ij} J^{ij}_{ab}(t)\, \hat\sigma^{(i)}_a \hat\sigma^{(j)}_b
                  + \sum_j B^j_a(t)\, \hat\sigma^{(j)}_a

A :class:`Hamiltonian` is a list of :class:`Term` objects: a real coefficient times a Pauli
string (on one, two or more sites, any range), optionally multiplied by a time function f(t).
The same object feeds the CTWA compiler (:mod:`ctwa_hpc.clusters`), mean field and the exact
reference (:mod:`ctwa_hpc.exact`): there is one source of truth for the model.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field

import numpy as np

from .pauli import normalize_label, parse_pauli_string

_ALLOWED_FUNCS = {"sin": np.sin, "cos": np.cos, "exp": np.exp, "tanh": np.tanh,
                  "sqrt": np.sqrt, "abs": np.abs}
_ALLOWED_NAMES = {"t", "pi"}


class TimeFunction:
    """A scalar function of time f(t) from a restricted expression such as ``"cos(2*t)"``.

    Allowed: numbers, ``t``, ``pi``, ``+ - * / **``, and sin, cos, exp, tanh, sqrt, abs.
    Any other name is rejected at construction, so a bad config fails before work starts.
    A Python callable may be given instead of an expression (API use).
    """

    def __init__(self, expr, where="time function"):
        self.where = where
        if callable(expr):
            self.expr = getattr(expr, "__name__", "callable")
            self._fn = expr
        else:
            if not isinstance(expr, str) or not expr.strip():
                raise ValueError(f"{where}: expected an expression in t, got {expr!r}")
            self.expr = expr
            tree = ast.parse(expr, mode="eval")
            for node in ast.walk(tree):
                if isinstance(node, ast.Name) and node.id not in _ALLOWED_NAMES | set(_ALLOWED_FUNCS):
                    raise ValueError(f"{where}: unknown name {node.id!r} in {expr!r}")
                if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name)
                                                       and node.func.id in _ALLOWED_FUNCS):
                    raise ValueError(f"{where}: only sin, cos, exp, tanh, sqrt, abs may be called")
                if isinstance(node, (ast.Attribute, ast.Subscript, ast.Lambda, ast.Compare)):
                    raise ValueError(f"{where}: unsupported syntax in {expr!r}")
            code = compile(tree, "<time function>", "eval")
            env = {"__builtins__": {}, "pi": math.pi, **_ALLOWED_FUNCS}
            self._fn = lambda t: eval(code, env, {"t": t})  # noqa: S307 (AST whitelisted above)
        try:
            val = self(0.0)
        except (ArithmeticError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: cannot evaluate f(0) of {self.expr!r}: {exc}") from None
        if not np.all(np.isfinite(val)):
            raise ValueError(f"{where}: f(0) = {val} is not finite")

    def __call__(self, t):
        return np.asarray(self._fn(t), dtype=float)

    def __repr__(self):
        return f"TimeFunction({self.expr!r})"


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


@dataclass
class Hamiltonian:
    """A spin-1/2 Hamiltonian on ``n_sites`` sites as a list of Pauli-string terms (eq. 1).

    Build with :meth:`add` (``H.add(0.5, "Z0 Z1")`` or ``H.add(1.0, [(0, 'x')])``) or with a
    model builder in :mod:`ctwa_hpc.models`.
    """

    n_sites: int
    terms: list = field(default_factory=list)
    name: str = "custom"
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.n_sites, (int, np.integer)) or isinstance(self.n_sites, bool) \
                or self.n_sites < 1:
            raise ValueError(f"model.n_sites: expected a positive integer, got {self.n_sites!r}")
        self.n_sites = int(self.n_sites)

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
            self.terms.append(Term(coef, parsed, tfunc))
        return self

    @property
    def time_dependent(self):
        return any(t.tfunc is not None for t in self.terms)

    def time_functions(self):
        """Distinct time functions, in first-use order."""
        out = []
        for t in self.terms:
            if t.tfunc is not None and all(t.tfunc is not f for f in out):
                out.append(t.tfunc)
        return out

    def conserves_sz(self):
        """True if every group of terms on the same support commutes with total σz.

        Terms are grouped by (support, time function); each group's local matrix is checked
        against the local Σσz, which is exact for sums of local terms.
        """
        from .pauli import dense_string
        groups = {}
        for t in self.terms:
            key = (t.sites, t.tfunc.expr if t.tfunc is not None else None)
            groups.setdefault(key, []).append(t)
        for (sites, _), terms in groups.items():
            n = len(sites)
            loc = {s: k for k, s in enumerate(sites)}
            h = sum(t.coef * dense_string([(loc[s], lab) for s, lab in t.ops], n) for t in terms)
            sz = sum(dense_string([(k, "Z")], n) for k in range(n))
            if np.abs(h @ sz - sz @ h).max() > 1e-12:
                return False
        return True

    def summary(self):
        return f"{self.name}: {self.n_sites} sites, {len(self.terms)} terms" + \
            (" (time dependent)" if self.time_dependent else "")
