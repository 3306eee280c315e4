r"""Observables: specifications shared by CTWA, mean field and the exact reference.

Every observable is built from *columns*: per-sample scalars of the form
``Σ_t coef_t · P_t`` where each P_t is a global Pauli string.  The exact reference evaluates
⟨P_t⟩ directly; CTWA evaluates the Weyl symbol, which for a string that touches several clusters
is the product of the cluster-local symbols (operators on different clusters commute, so no
ordering issue arises; eqs. (7), (11), (33), (38), (48)):

.. math::  (P)_W = \prod_c (P|_c)_W, \qquad (O_c)_W = \sum_r w_r\, ψ_r^† O_c ψ_r .

Named observables (``observables.names`` in a run file):

==================  ===================================================================
``sz``, ``sx``, ``sy``  ⟨σ^a_i⟩ for every site, shape (N,)
``mz_staggered``    (1/N) Σ_i (−1)^i ⟨σ^z_i⟩ (site 0 counts +), eq. (42) normalized
``czz``             ⟨σ^z_i σ^z_j⟩ for the configured site pairs, shape (n_pairs,)
``czz_connected``   ⟨σ^z_i σ^z_j⟩ − ⟨σ^z_i⟩⟨σ^z_j⟩, eqs. (46)–(48); standard error by the
                    delta method from the cross moments of the three columns
``czz_map``         ⟨σ^z_0 σ^z_Δ⟩_c for every Δ = 1 … ⌊N/2⌋: the (time × distance) map of fig. 8
``energy``          the classical energy H_W (time-independent H only), conserved by CTWA
``entropy``         von Neumann entropy (bits, eq. (45)) of the reduced density matrix of each
                    subsystem in ``observables.subsystems``; ``renyi2`` = −log2 Tr ρ_A²;
                    ``rdm_min_eig`` = smallest eigenvalue of the estimated ρ_A
custom strings      ``{name = "x0x1", ops = "X0 X1"}``: ⟨P⟩ for any Pauli string
==================  ===================================================================
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .clusters import EntryTable

NAMES = ("sz", "sx", "sy", "mz_staggered", "czz", "czz_connected", "czz_map", "energy",
         "entropy", "renyi2", "rdm_min_eig")
RDM_NAMES = ("entropy", "renyi2", "rdm_min_eig")
MAX_SUBSYSTEM = 4


@dataclass
class Output:
    """How a named observable is formed from columns.

    kind ``direct``: value = column means, shape ``shape``; kind ``connected``: value =
    mean(p) − mean(x)·mean(y) for column triples (p, x, y).
    """

    name: str
    kind: str
    cols: np.ndarray  # direct: (n,), connected: (n, 3)
    description: str = ""
    labels: list = field(default_factory=list)


class ObservableSet:
    """The observables of a run, as columns of Pauli-string sums (one source of truth)."""

    def __init__(self, n_sites, names=("sz",), pairs=None, custom=(), hamiltonian=None,
                 subsystems=None, kick=None):
        self.n_sites = n_sites
        self.columns = []          # list of tuples ((coef, ops), ...)
        self._col_index = {}
        self.outputs = {}
        self.cross = []            # column index pairs whose cross moments are accumulated
        self._cross_index = {}
        if pairs is None:
            pairs = [(i, i + 1) for i in range(n_sites - 1)]
        self.pairs = [self._check_pair(p, k) for k, p in enumerate(pairs)]
        if subsystems is None:
            subsystems = [(i, i + 1) for i in range(n_sites - 1)] or [(0,)]
        self.subsystems = self._check_subsystems(subsystems)
        for name in names:
            self._add_named(name, hamiltonian)
        for k, c in enumerate(custom):
            self._add_custom(c, k)
        if not self.outputs:
            raise ValueError("observables.names: no observable requested")
        self.kick = None
        if kick is not None:
            self._add_two_time(kick)

    # -- building ---------------------------------------------------------------------------
    def _check_pair(self, p, k):
        if not (isinstance(p, (list, tuple)) and len(p) == 2
                and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in p)):
            raise ValueError(f"observables.pairs[{k}]: expected [i, j] site indices, got {p!r}")
        i, j = int(p[0]), int(p[1])
        if not (0 <= i < self.n_sites and 0 <= j < self.n_sites) or i == j:
            raise ValueError(f"observables.pairs[{k}]: sites must differ and lie in "
                             f"0..{self.n_sites - 1}, got {p!r}")
        return (i, j)

    def _check_subsystems(self, subs):
        out = []
        for k, sub in enumerate(subs):
            where = f"observables.subsystems[{k}]"
            if not (isinstance(sub, (list, tuple)) and sub and all(
                    isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in sub)):
                raise ValueError(f"{where}: expected a list of site indices, got {sub!r}")
            if len(set(sub)) != len(sub) or not all(0 <= x < self.n_sites for x in sub):
                raise ValueError(f"{where}: sites must be distinct and lie in 0..{self.n_sites - 1}")
            if len(sub) > MAX_SUBSYSTEM:
                raise ValueError(f"{where}: at most {MAX_SUBSYSTEM} sites per subsystem")
            out.append(tuple(int(x) for x in sub))
        if len({len(x) for x in out}) > 1:
            raise ValueError("observables.subsystems: all subsystems must have the same size")
        return out

    def rdm_columns(self, sub):
        """Columns of all non-identity Pauli strings on ``sub`` (4**k − 1, fixed order).

        ρ_A = 2^{-k} (I + Σ_P ⟨P⟩ P): with cluster Weyl symbols this is eq. (43) for a
        subsystem inside one cluster and eq. (44) for one spanning two clusters.  The identity
        coefficient is fixed to 1, which is the trace-corrected Schwinger-boson matrix
        ρ = bb† + (1 − b†b) I/D of paper_notes.md.
        """
        cols, strings = [], []
        for code in range(1, 4 ** len(sub)):
            ops = []
            for k, site in enumerate(sub):
                lab = "IXYZ"[(code >> (2 * k)) & 3]
                if lab != "I":
                    ops.append((site, lab))
            ops = tuple(sorted(ops))
            cols.append(self.column([(1.0, ops)]))
            strings.append(ops)
        return cols, strings

    def column(self, terms):
        """Index of the column Σ coef·P (terms: sequence of (coef, ops)); de-duplicated."""
        key = tuple((float(c), tuple(ops)) for c, ops in terms)
        if key not in self._col_index:
            self._col_index[key] = len(self.columns)
            self.columns.append(key)
        return self._col_index[key]

    def _cross_pair(self, i, j):
        key = (min(i, j), max(i, j))
        if key not in self._cross_index:
            self._cross_index[key] = len(self.cross)
            self.cross.append(key)
        return self._cross_index[key]

    def _add_named(self, name, hamiltonian):
        n = self.n_sites
        if name in ("sz", "sx", "sy"):
            lab = name[1].upper()
            cols = [self.column([(1.0, ((i, lab),))]) for i in range(n)]
            self.outputs[name] = Output(name, "direct", np.array(cols), f"<sigma^{lab.lower()}_i>",
                                        [f"site {i}" for i in range(n)])
        elif name == "mz_staggered":
            col = self.column([((-1.0) ** i / n, ((i, "Z"),)) for i in range(n)])
            self.outputs[name] = Output(name, "direct", np.array([col]),
                                        "(1/N) sum_i (-1)^i <sigma^z_i>, site 0 counts +")
        elif name == "czz":
            cols = [self.column([(1.0, ((i, "Z"), (j, "Z")))]) for i, j in self.pairs]
            self.outputs[name] = Output(name, "direct", np.array(cols), "<sigma^z_i sigma^z_j>",
                                        [f"{i},{j}" for i, j in self.pairs])
        elif name in ("czz_connected", "czz_map"):
            pairs = self.pairs if name == "czz_connected" else \
                [(0, d) for d in range(1, n // 2 + 1)]
            trip = []
            for i, j in pairs:
                p = self.column([(1.0, ((min(i, j), "Z"), (max(i, j), "Z")))])
                x = self.column([(1.0, ((i, "Z"),))])
                y = self.column([(1.0, ((j, "Z"),))])
                for a, b in ((p, x), (p, y), (x, y)):
                    self._cross_pair(a, b)
                trip.append((p, x, y))
            self.outputs[name] = Output(name, "connected", np.array(trip, dtype=np.int64),
                                        "<sz_i sz_j> - <sz_i><sz_j>",
                                        [f"{i},{j}" for i, j in pairs])
        elif name == "energy":
            if hamiltonian is None:
                raise ValueError("observables.names: 'energy' needs the Hamiltonian")
            if hamiltonian.time_dependent:
                raise ValueError("observables.names: 'energy' is only defined for a "
                                 "time-independent Hamiltonian")
            col = self.column([(t.coef, t.ops) for t in hamiltonian.terms])
            self.outputs[name] = Output(name, "direct", np.array([col]), "classical energy H_W")
        elif name in RDM_NAMES:
            rows = []
            for sub in self.subsystems:
                cols, _ = self.rdm_columns(sub)
                for i in range(len(cols)):
                    for j in range(i, len(cols)):
                        self._cross_pair(cols[i], cols[j])
                rows.append(cols)
            desc = {"entropy": "von Neumann entropy of rho_A in bits, eq. (45)",
                    "renyi2": "Renyi-2 entropy -log2 Tr rho_A^2",
                    "rdm_min_eig": "smallest eigenvalue of the estimated rho_A"}[name]
            self.outputs[name] = Output(name, name, np.array(rows, dtype=np.int64), desc,
                                        [",".join(map(str, sub)) for sub in self.subsystems])
        else:
            raise ValueError(f"observables.names: unknown observable {name!r} "
                             f"(known: {list(NAMES)} or a custom string)")

    def _add_custom(self, spec, k):
        from .pauli import parse_pauli_string
        where = f"observables.custom[{k}]"
        if not isinstance(spec, dict) or set(spec) - {"name", "ops"} or "name" not in spec \
                or "ops" not in spec:
            raise ValueError(f"{where}: expected a table {{name = ..., ops = 'X0 Z1'}}")
        ops = parse_pauli_string(spec["ops"], where + ".ops")
        if not ops:
            raise ValueError(f"{where}.ops: the identity is not an observable")
        for s, _ in ops:
            if not 0 <= s < self.n_sites:
                raise ValueError(f"{where}.ops: site {s} outside 0..{self.n_sites - 1}")
        name = spec["name"]
        if not isinstance(name, str) or not name.isidentifier() or name in self.outputs:
            raise ValueError(f"{where}.name: {name!r} must be a new identifier")
        col = self.column([(1.0, ops)])
        self.outputs[name] = Output(name, "direct", np.array([col]), f"<{spec['ops']}>")

    def _add_two_time(self, kick):
        """Two-time outputs for every direct output Q, with O = ``kick`` at t = 0:

        ``<Q>_anticomm`` = ⟨{O(0), Q(t)}⟩ → 2 O_W(0) Q_W(t) (eq. (21)), and
        ``<Q>_response`` = i⟨[O(0), Q(t)]⟩ = d Q_W(t)/dε after the kick e^{−iεO} at t = 0
        (eqs. (12), (22)), from the tangent equations.  They occupy the statistics columns
        K..2K−1 and 2K..3K−1 after the K ordinary columns.
        """
        from .pauli import parse_pauli_string
        ops = parse_pauli_string(kick, "observables.kick")
        if not ops:
            raise ValueError("observables.kick: the identity generates no dynamics")
        for s, _ in ops:
            if not 0 <= s < self.n_sites:
                raise ValueError(f"observables.kick: site {s} outside 0..{self.n_sites - 1}")
        self.kick = ops
        K = self.n_columns
        for name, out in list(self.outputs.items()):
            if out.kind != "direct":
                continue
            for k, (suffix, desc) in enumerate(
                    (("anticomm", "<{O(0), Q(t)}> with O = " + kick),
                     ("response", "i<[O(0), Q(t)]> with O = " + kick)), start=1):
                self.outputs[f"{name}_{suffix}"] = Output(f"{name}_{suffix}", "direct",
                                                          out.cols + k * K, desc, out.labels)

    @property
    def n_columns(self):
        """Number of Pauli-string columns evaluated on trajectories (kernel columns)."""
        return len(self.columns)

    @property
    def n_stat_columns(self):
        """Columns accumulated in the moments: K, or 3K with two-time outputs."""
        return self.n_columns * (3 if self.kick is not None else 1)

    # -- compilation for CTWA -----------------------------------------------------------------
    def compile(self, partition):
        """Plain arrays for the kernels: see :class:`ObservablePlan`."""
        ops = EntryTable(partition)
        col_ptr, term_coef, term_ptr, fac = [0], [], [0], []
        for col in self.columns:
            for coef, string in col:
                for c, bl in partition.split_string(string).items():
                    fac.append(ops.add_string(c, bl))
                term_coef.append(coef)
                term_ptr.append(len(fac))
            col_ptr.append(len(term_coef))
        return ObservablePlan(ops.freeze(), np.array(col_ptr, np.int64),
                              np.array(term_coef, float), np.array(term_ptr, np.int64),
                              np.array(fac, np.int64))


@dataclass
class ObservablePlan:
    """Compiled columns: column k = Σ_{t in col_ptr[k]:col_ptr[k+1]} term_coef[t] ·
    Π_{f in term_ptr[t]:term_ptr[t+1]} E[fac[f]], with E[e] the Weyl symbol of ``ops`` entry e."""

    ops: EntryTable
    col_ptr: np.ndarray
    term_coef: np.ndarray
    term_ptr: np.ndarray
    fac: np.ndarray

    @property
    def n_columns(self):
        return len(self.col_ptr) - 1

    def columns_from_expectations(self, E):
        """Columns (K, S) from entry expectations E (n_entries, S)."""
        prod = np.ones((len(self.term_coef), E.shape[1]))
        for t in range(len(self.term_coef)):
            for f in range(self.term_ptr[t], self.term_ptr[t + 1]):
                prod[t] *= E[self.fac[f]]
        prod *= self.term_coef[:, None]
        out = np.zeros((self.n_columns, E.shape[1]))
        np.add.at(out, np.repeat(np.arange(self.n_columns), np.diff(self.col_ptr)), prod)
        return out
