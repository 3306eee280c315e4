"""Validation of the observable specification of a run file (``[observables]``).

Pure checks on the user's input, shared by :class:`ctwa_hpc.method.observables.ObservableSet`:
site pairs, subsystems, custom Pauli strings and sums, the kick of the two-time outputs,
staggered signs, site positions and wave vectors.  Each returns the normalized value or
raises ``ValueError`` naming the offending field (``observables.<key>[k]``).
"""
from __future__ import annotations

import numpy as np

from ..model.pauli import parse_pauli_string

MAX_SUBSYSTEM = 4


def check_pair(p, k, n_sites):
    """``observables.pairs[k]``: (i, j) distinct site indices in 0..N−1."""
    if not (isinstance(p, (list, tuple)) and len(p) == 2
            and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in p)):
        raise ValueError(f"observables.pairs[{k}]: expected [i, j] site indices, got {p!r}")
    i, j = int(p[0]), int(p[1])
    if not (0 <= i < n_sites and 0 <= j < n_sites) or i == j:
        raise ValueError(f"observables.pairs[{k}]: sites must differ and lie in "
                         f"0..{n_sites - 1}, got {p!r}")
    return (i, j)


def check_subsystems(subs, n_sites):
    """``observables.subsystems``: tuples of distinct sites, all of one size ≤ MAX_SUBSYSTEM."""
    out = []
    for k, sub in enumerate(subs):
        where = f"observables.subsystems[{k}]"
        if not (isinstance(sub, (list, tuple)) and sub and all(
                isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in sub)):
            raise ValueError(f"{where}: expected a list of site indices, got {sub!r}")
        if len(set(sub)) != len(sub) or not all(0 <= x < n_sites for x in sub):
            raise ValueError(f"{where}: sites must be distinct and lie in 0..{n_sites - 1}")
        if len(sub) > MAX_SUBSYSTEM:
            raise ValueError(f"{where}: at most {MAX_SUBSYSTEM} sites per subsystem")
        out.append(tuple(int(x) for x in sub))
    if len({len(x) for x in out}) > 1:
        raise ValueError("observables.subsystems: all subsystems must have the same size")
    return out


def parse_custom(spec, k, n_sites, taken):
    """``observables.custom[k]`` → (name, terms, description).

    ``{name, ops}``: one Pauli string; ``{name, terms = [{coef, ops}, ...]}``: a sum.
    ``taken``: the output names already in use."""
    where = f"observables.custom[{k}]"
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"{where}: expected a table {{name = ..., ops = 'X0 Z1'}} or "
                         f"{{name = ..., terms = [{{coef = 1.0, ops = 'X0'}}, ...]}}")
    for key in spec:
        if key not in ("name", "ops", "terms"):
            raise ValueError(f"{where}.{key}: unknown key (known: name, ops, terms)")
    if ("ops" in spec) == ("terms" in spec):
        raise ValueError(f"{where}: give exactly one of 'ops' (a Pauli string) and 'terms' "
                         f"(a list of {{coef, ops}} tables)")
    if "ops" in spec:
        ops = parse_ops(spec["ops"], where + ".ops", n_sites)
        if not ops:
            raise ValueError(f"{where}.ops: the identity is not an observable")
        terms, desc = [(1.0, ops)], f"<{spec['ops']}>"
    else:
        terms = parse_terms(spec["terms"], where + ".terms", n_sites)
        desc = "sum coef*<P>: " + " + ".join(
            f"{c:g}*" + ("[" + " ".join(f"{lab}{i}" for i, lab in ops) + "]" if ops else "1")
            for c, ops in terms)
        if len(desc) > 200:
            desc = desc[:197] + "..."
    name = spec["name"]
    if not isinstance(name, str) or not name.isidentifier() or name in taken:
        raise ValueError(f"{where}.name: {name!r} must be a new identifier")
    return name, terms, desc


def parse_ops(text, where, n_sites):
    """A Pauli string with every site in 0..N−1 (sorted ((site, label), ...))."""
    ops = parse_pauli_string(text, where)
    for s, _ in ops:
        if not 0 <= s < n_sites:
            raise ValueError(f"{where}: site {s} outside 0..{n_sites - 1}")
    return ops


def parse_terms(terms, where, n_sites):
    """Validated [(coef, ops)] of a sum (equal strings merged, first-appearance order)."""
    if not isinstance(terms, (list, tuple)) or not terms:
        raise ValueError(f"{where}: expected a non-empty list of {{coef, ops}} tables")
    merged = {}
    for j, t in enumerate(terms):
        w = f"{where}[{j}]"
        if not isinstance(t, dict) or "ops" not in t:
            raise ValueError(f"{w}: expected a table {{coef = 1.0, ops = 'X0'}}, got {t!r}")
        for key in t:
            if key not in ("coef", "ops"):
                raise ValueError(f"{w}.{key}: unknown key (known: coef, ops)")
        c = t.get("coef", 1.0)
        if isinstance(c, bool) or not isinstance(c, (int, float, np.integer, np.floating)) \
                or not np.isfinite(c):
            raise ValueError(f"{w}.coef: expected a finite real number, got {c!r}")
        ops = parse_ops(t["ops"], w + ".ops", n_sites)
        merged[ops] = merged.get(ops, 0.0) + float(c)
    if all(not ops for ops in merged):
        raise ValueError(f"{where}: only identity terms: a constant is not an observable")
    return [(c, ops) for ops, c in merged.items()]


def parse_kick(kick, n_sites):
    """``observables.kick``: a non-identity Pauli string on sites 0..N−1."""
    ops = parse_pauli_string(kick, "observables.kick")
    if not ops:
        raise ValueError("observables.kick: the identity generates no dynamics")
    for s, _ in ops:
        if not 0 <= s < n_sites:
            raise ValueError(f"observables.kick: site {s} outside 0..{n_sites - 1}")
    return ops


def check_signs(signs, n):
    """(N,) float array of ±1: the staggered sign per site (default (−1)^i)."""
    if signs is None:
        return (-1.0) ** np.arange(n)
    try:
        s = np.asarray(signs, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"observables.signs: expected {n} signs ±1, got {signs!r}") from None
    if s.shape != (n,) or not np.all(np.abs(s) == 1.0):
        raise ValueError(f"observables.signs: expected {n} signs ±1, got shape {s.shape} "
                         f"with values {np.unique(s)[:6].tolist()}")
    return s


def check_positions(positions, n):
    """(N, d) finite float positions (default: the chain r_i = i, d = 1)."""
    if positions is None:
        return np.arange(n, dtype=float)[:, None]
    try:
        r = np.asarray(positions, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"observables.positions: expected an ({n}, d) array of floats") from None
    if r.ndim == 1:
        r = r[:, None]
    if r.ndim != 2 or r.shape[0] != n or r.shape[1] < 1 or not np.all(np.isfinite(r)):
        raise ValueError(f"observables.positions: expected a finite ({n}, d) array, got shape "
                         f"{r.shape}")
    return r


def check_qs(qs, d):
    """List of (d,) float wave vectors; a bare number is a q of a d = 1 geometry."""
    if qs is None:
        return []
    if not isinstance(qs, (list, tuple, np.ndarray)):
        raise ValueError(f"observables.q: expected a list of wave vectors, got {qs!r}")
    out = []
    for k, q in enumerate(qs):
        where = f"observables.q[{k}]"
        if isinstance(q, (int, float, np.integer, np.floating)) and not isinstance(q, bool):
            q = [q]
        if not isinstance(q, (list, tuple, np.ndarray)) or any(
                isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating))
                for x in q):
            raise ValueError(f"{where}: expected a list of {d} numbers, got {q!r}")
        v = np.asarray(q, dtype=float)
        if v.shape != (d,) or not np.all(np.isfinite(v)):
            raise ValueError(f"{where}: expected {d} finite numbers (the dimension of the site "
                             f"positions), got {q!r}")
        out.append(v)
    return out
