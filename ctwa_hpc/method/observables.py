r"""Observables: specifications shared by CTWA, mean field and the exact reference.

Every observable is built from *columns*: per-sample scalars of the form
``Σ_t coef_t · P_t`` where each P_t is a global Pauli string.  The exact reference evaluates
⟨P_t⟩ directly; CTWA evaluates the Weyl symbol, which for a string that touches several clusters
is the product of the cluster-local symbols (operators on different clusters commute, so no
ordering issue arises; eqs. (7), (11), (33), (38), (48)):

.. math::  (P)_W = \prod_c (P|_c)_W, \qquad (O_c)_W = \sum_r w_r\, ψ_r^† O_c ψ_r .

Named observables (``observables.names`` in a run file); s_i is the staggered sign of site i
(``signs``, default (−1)^i, site 0 counts +; on a lattice the runner passes the bipartition):

==================  ===================================================================
``sz``, ``sx``, ``sy``  ⟨σ^a_i⟩ for every site, shape (N,)
``mz_staggered``    (1/N) Σ_i s_i ⟨σ^z_i⟩, eq. (42) normalized
``sx_total`` …      ``sx_total``, ``sy_total``, ``sz_total``: Σ_i ⟨σ^a_i⟩, one column each
``sx_staggered`` …  ``sx_staggered``, ``sy_staggered``, ``sz_staggered``: (1/N) Σ_i s_i ⟨σ^a_i⟩
                    (``sz_staggered`` is ``mz_staggered`` under a uniform name)
``szz_q``           S^{zz}(q) = (1/N) Σ_{i,j} cos(q·(r_i − r_j)) ⟨σ^z_i σ^z_j⟩ for every q in
                    ``qs`` (positions r_i, default r_i = i); the i = j terms give 1 each, so
                    one column 1 + (2/N) Σ_{i<j} cos(q·r_ij) Z_i Z_j per q, shape (n_q,)
``squeezing``       Wineland parameter ξ² = N min_{n⊥⟨S⟩} Var(n·S) / |⟨S⟩|², S = Σ_i σ_i/2
                    (ξ² = 1 for a coherent spin state, < 1 squeezed); delta-method stderr
``renyi2_pairs``    −log2 Tr ρ_ij² averaged over all N(N−1)/2 pairs i < j, with
                    Tr ρ_ij² = (1 + Σ_P ⟨P⟩²)/4 (PRB 110, 054204; Monte Carlo: ⟨P⟩² → its
                    unbiased estimate); stderr: delta method, variance from 16 sample groups
                    (:mod:`ctwa_hpc.method.stats`)
``czz``             ⟨σ^z_i σ^z_j⟩ for the configured site pairs, shape (n_pairs,)
``czz_connected``   ⟨σ^z_i σ^z_j⟩ − ⟨σ^z_i⟩⟨σ^z_j⟩, eqs. (46)–(48); standard error by the
                    delta method from the cross moments of the three columns
``czz_map``         ⟨σ^z_0 σ^z_Δ⟩_c for every Δ = 1 … ⌊N/2⌋: the (time × distance) map of fig. 8
``energy``          the classical energy H_W (time-independent H only), conserved by CTWA
``entropy``         von Neumann entropy (bits, eq. (45)) of the reduced density matrix of each
                    subsystem in ``observables.subsystems``; ``renyi2`` = −log2 Tr ρ_A²;
                    ``rdm_min_eig`` = smallest eigenvalue of the estimated ρ_A
custom strings      ``{name = "x0x1", ops = "X0 X1"}``: ⟨P⟩ for any Pauli string, or a sum
                    ``{name = "j56", terms = [{coef = 1.0, ops = "X5 Y6"}, {coef = -1.0,
                    ops = "Y5 X6"}]}``: Σ coef·⟨P⟩ as one column (its stderr includes all
                    correlations between the terms); ``ops = "I0"`` in a term is a constant
==================  ===================================================================

Columns may contain the identity string ``()`` (a constant: its Weyl symbol is exactly 1).
Sums over all pairs (``szz_q``, ``squeezing``) have O(N²) terms per column.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .clusters import EntryTable
from .moments import grouped_columns
from .obsspec import (check_pair, check_positions, check_qs, check_signs, check_subsystems,
                      parse_custom, parse_kick)

NAMES = ("sz", "sx", "sy", "mz_staggered", "czz", "czz_connected", "czz_map", "energy",
         "entropy", "renyi2", "rdm_min_eig", "sx_total", "sy_total", "sz_total", "sx_staggered",
         "sy_staggered", "sz_staggered", "szz_q", "squeezing", "renyi2_pairs")
RDM_NAMES = ("entropy", "renyi2", "rdm_min_eig")


@dataclass
class Output:
    """How a named observable is formed from columns.

    kind ``direct``: value = column means, shape ``shape``; kind ``connected``: value =
    mean(p) − mean(x)·mean(y) for column triples (p, x, y); kinds ``entropy``, ``renyi2``,
    ``rdm_min_eig``: one row of 4**k − 1 Pauli columns per subsystem; ``squeezing``: one row
    [Σσx, Σσy, Σσz, Gxx, Gyy, Gzz, Gxy, Gxz, Gyz] (G of :meth:`ObservableSet._add_squeezing`),
    ``params["n_sites"]`` = N; ``renyi2_pairs``: one row of 15 Pauli columns per pair, value =
    their average (shape (1,)).  Formed by :mod:`ctwa_hpc.method.stats`.
    """

    name: str
    kind: str
    cols: np.ndarray  # direct: (n,), connected: (n, 3), rdm kinds: (n, 4**k - 1), ...
    description: str = ""
    labels: list = field(default_factory=list)
    params: dict = field(default_factory=dict)

    @property
    def components(self):
        """The shape of one time of this output, from its definition (never from data): one
        value per column, triple or subsystem row; (1,) for ``squeezing`` and
        ``renyi2_pairs``."""
        if self.kind in ("squeezing", "renyi2_pairs"):
            return (1,)
        return (len(self.cols),)


class ObservableSet:
    """The observables of a run, as columns of Pauli-string sums (one source of truth)."""

    def __init__(self, n_sites, names=("sz",), pairs=None, custom=(), hamiltonian=None,
                 subsystems=None, kick=None, signs=None, positions=None, qs=None):
        """``signs``: (N,) staggered sign ±1 per site (default (−1)^i); ``positions``: (N, d)
        site positions for ``szz_q`` (default: the chain r_i = i, d = 1); ``qs``: list of
        wave vectors, each a list of d floats (a number when d = 1)."""
        self.n_sites = n_sites
        self.signs = check_signs(signs, n_sites)
        self.positions = check_positions(positions, n_sites)
        self.qs = check_qs(qs, self.positions.shape[1])
        self.columns = []          # list of tuples ((coef, ops), ...)
        self._col_index = {}
        self.outputs = {}
        self.cross = []            # column index pairs whose cross moments are accumulated
        self._cross_index = {}
        if pairs is None:
            pairs = [(i, i + 1) for i in range(n_sites - 1)]
        self.pairs = [check_pair(p, k, n_sites) for k, p in enumerate(pairs)]
        if subsystems is None:
            subsystems = [(i, i + 1) for i in range(n_sites - 1)] or [(0,)]
        self.subsystems = check_subsystems(subsystems, n_sites)
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
            col = self.column([(float(self.signs[i]) / n, ((i, "Z"),)) for i in range(n)])
            self.outputs[name] = Output(name, "direct", np.array([col]),
                                        "(1/N) sum_i s_i <sigma^z_i>, s_i the staggered sign")
        elif name in ("sx_total", "sy_total", "sz_total"):
            lab = name[1].upper()
            col = self.column([(1.0, ((i, lab),)) for i in range(n)])
            self.outputs[name] = Output(name, "direct", np.array([col]),
                                        f"sum_i <sigma^{lab.lower()}_i>")
        elif name in ("sx_staggered", "sy_staggered", "sz_staggered"):
            lab = name[1].upper()
            col = self.column([(float(self.signs[i]) / n, ((i, lab),)) for i in range(n)])
            self.outputs[name] = Output(name, "direct", np.array([col]),
                                        f"(1/N) sum_i s_i <sigma^{lab.lower()}_i>, s_i the "
                                        "staggered sign")
        elif name == "szz_q":
            self._add_structure_factor()
        elif name == "squeezing":
            self._add_squeezing()
        elif name == "renyi2_pairs":
            self._add_renyi2_pairs()
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
        """``{name, ops}``: one Pauli string; ``{name, terms = [{coef, ops}, ...]}``: a sum
        (validated by :func:`ctwa_hpc.method.obsspec.parse_custom`)."""
        name, terms, desc = parse_custom(spec, k, self.n_sites, self.outputs)
        self.outputs[name] = Output(name, "direct", np.array([self.column(terms)]), desc)

    def _add_structure_factor(self):
        r"""``szz_q``: one column per q, :math:`1 + (2/N)\sum_{i<j}\cos(q·(r_i − r_j)) Z_iZ_j`.

        With periodic boundaries q should be commensurate with the box (then the minimum
        image does not matter, cos(q·Δr) is periodic)."""
        if not self.qs:
            raise ValueError("observables.q: 'szz_q' needs at least one wave vector, e.g. "
                             "q = [[3.14159]] (a list of d floats per q)")
        n = self.n_sites
        iu, ju = np.triu_indices(n, 1)
        cols, labels = [], []
        for q in self.qs:
            phase = (self.positions[iu] - self.positions[ju]) @ q
            coef = 2.0 * np.cos(phase) / n
            terms = [(1.0, ())] + [(float(c), ((int(i), "Z"), (int(j), "Z")))
                                   for c, i, j in zip(coef, iu, ju)]
            cols.append(self.column(terms))
            labels.append("q=(" + ", ".join(f"{x:.6g}" for x in q) + ")")
        self.outputs["szz_q"] = Output(
            "szz_q", "direct", np.array(cols),
            "S^zz(q) = (1/N) sum_ij cos(q.(r_i - r_j)) <sigma^z_i sigma^z_j>", labels)

    def _add_squeezing(self):
        r"""``squeezing``: columns of the first and second moments of Σ = Σ_i σ_i = 2S.

        T_a = Σ_i σ^a_i and the symmetrised G_ab = ⟨{T_a, T_b}⟩/2 = N δ_ab +
        Σ_{i≠j} σ^a_i σ^b_j (σ^a_iσ^b_i + σ^b_iσ^a_i = 2δ_ab), i.e. G_aa = N + 2Σ_{i<j} σ^a_iσ^a_j
        and G_ab = Σ_{i<j}(σ^a_iσ^b_j + σ^b_iσ^a_j) for a ≠ b.  ξ² is invariant under S → 2S,
        so :func:`ctwa_hpc.method.stats.squeezing_function` uses these directly.  All 36 cross
        moments of the 9 columns are accumulated (delta-method stderr)."""
        n = self.n_sites
        iu, ju = np.triu_indices(n, 1)
        pairs = list(zip(iu.tolist(), ju.tolist()))
        row = [self.column([(1.0, ((i, a),)) for i in range(n)]) for a in "XYZ"]
        for a in "XYZ":
            row.append(self.column([(float(n), ())] + [(2.0, ((i, a), (j, a))) for i, j in pairs]))
        for a, b in (("X", "Y"), ("X", "Z"), ("Y", "Z")):
            terms = []
            for i, j in pairs:
                terms += [(1.0, ((i, a), (j, b))), (1.0, ((i, b), (j, a)))]
            row.append(self.column(terms))
        for x in range(len(row)):
            for y in range(x + 1, len(row)):
                if row[x] != row[y]:
                    self._cross_pair(row[x], row[y])
        self.outputs["squeezing"] = Output(
            "squeezing", "squeezing", np.array([row], dtype=np.int64),
            "Wineland xi^2 = N min_{n perp <S>} Var(n.S) / |<S>|^2, S = sum_i sigma_i/2 "
            "(coherent state: 1); stderr by the delta method", params={"n_sites": n})

    def _add_renyi2_pairs(self):
        """``renyi2_pairs``: 15 Pauli columns per pair i < j (3N + 9·N(N−1)/2 columns, shared
        single-site columns), no cross moments: their sums are also kept per sample group
        (:mod:`ctwa_hpc.method.moments`), from which stats forms the stderr."""
        n = self.n_sites
        if n < 2:
            raise ValueError("observables.names: 'renyi2_pairs' needs at least 2 sites")
        rows = [self.rdm_columns((i, j))[0] for i in range(n) for j in range(i + 1, n)]
        self.outputs["renyi2_pairs"] = Output(
            "renyi2_pairs", "renyi2_pairs", np.array(rows, dtype=np.int64),
            f"mean over all {n * (n - 1) // 2} pairs of -log2 Tr rho_ij^2, Tr rho^2 = "
            "(1 + sum_P <P>^2)/4 (Monte Carlo: <P>^2 -> m_P^2 - se_P^2, unbiased); stderr "
            "within a realization: delta method, the variance of the linearized estimator "
            "from 16 interleaved sample groups; over R >= 2 realizations: their spread")

    def _add_two_time(self, kick):
        """Two-time outputs for every direct output Q, with O = ``kick`` at t = 0:

        ``<Q>_anticomm`` = ⟨{O(0), Q(t)}⟩ → 2 O_W(0) Q_W(t) (eq. (21)), and
        ``<Q>_response`` = i⟨[O(0), Q(t)]⟩ = d Q_W(t)/dε after the kick e^{−iεO} at t = 0
        (eqs. (12), (22)), from the tangent equations.  They occupy the statistics columns
        K..2K−1 and 2K..3K−1 after the K ordinary columns.
        """
        self.kick = parse_kick(kick, self.n_sites)
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
    def n_grouped(self):
        """Columns whose sums are also kept per sample group (``renyi2_pairs``)."""
        g = grouped_columns(self.outputs)
        return 0 if g is None else len(g)

    @property
    def n_stat_columns(self):
        """Columns accumulated in the moments: K, or 3K with two-time outputs."""
        return self.n_columns * (3 if self.kick is not None else 1)

    # -- compilation for CTWA -----------------------------------------------------------------
    def compile(self, partition):
        """Plain arrays for the kernels: see :class:`ObservablePlan`."""
        ops = EntryTable(partition)
        col_ptr, term_coef, term_ptr, fac = [0], [], [0], []
        entry = {}                 # (cluster, local string) -> entry: O(N²)-term sums repeat
        for col in self.columns:
            for coef, string in col:
                for c, bl in partition.split_string(string).items():
                    e = entry.get((c, bl))
                    if e is None:
                        e = entry[(c, bl)] = ops.add_string(c, bl)
                    fac.append(e)
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

