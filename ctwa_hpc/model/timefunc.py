r"""Time functions f(t) of Hamiltonian terms: a small expression language with bounded cost.

A term ``coef * f(t) * P`` of eq. (1) carries an optional scalar function of time, written in
the run file as a string such as ``"cos(omega*t)"`` with named parameters
(``params = {"omega": 2.0}``).  :class:`TimeFunction` parses the string into a syntax tree
itself and evaluates that tree with NumPy on float64 arrays of times; Python's ``eval`` is never
called.  Evaluation is vectorised: ``f(times)`` returns an array of the shape of ``times``.

The language
------------
=====================  ==================================================================
numbers                integer or decimal literals (``2``, ``0.5``, ``1e-3``), finite
names                  ``t`` (time), ``pi``, and the names of ``params``
operators              ``+  -  *  /  **`` and unary ``-``, ``+``; parentheses
functions              ``sin cos exp tanh sqrt abs`` and ``step(x)`` = 1 for x ≥ 0, else 0
=====================  ==================================================================

Everything else (strings, tuples, lists, ``and``/``or``, comparisons, conditional expressions,
attributes, subscripts, keyword arguments, calls of other names, ``//``, ``%``) is rejected with
a ``ValueError`` whose message starts with ``where`` (the config field, e.g.
``model.terms[2].f``) and says why.

Bounded cost
------------
* at most :data:`MAX_CHARS` characters, :data:`MAX_NODES` syntax-tree nodes and
  :data:`MAX_DEPTH` levels of nesting, checked before anything is evaluated;
* arithmetic is float64 (``9**9**9**9`` is ``inf`` after three multiplications' worth of work,
  never a huge Python integer), so one evaluation costs O(nodes × len(times)) and allocates at
  most one array per node;
* f(0) must be finite, or construction fails ("not finite"); :meth:`TimeFunction.check_grid`
  checks a whole time grid before a run starts.

A Python callable may be given instead of a string (API use); it is trusted as is.
"""
from __future__ import annotations

import ast
import keyword
import math

import numpy as np

MAX_CHARS = 1000
MAX_NODES = 512
MAX_DEPTH = 100


def _step(x):
    return np.where(x >= 0.0, 1.0, 0.0)


FUNCTIONS = {"sin": np.sin, "cos": np.cos, "exp": np.exp, "tanh": np.tanh, "sqrt": np.sqrt,
             "abs": np.abs, "step": _step}
CONSTANTS = {"pi": math.pi}
RESERVED = {"t"} | set(CONSTANTS) | set(FUNCTIONS)
_BINOPS = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide,
           ast.Pow: np.power}
_UNARY = {ast.USub: np.negative, ast.UAdd: np.positive}
_OP_NAMES = {ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@", ast.BitAnd: "&", ast.BitOr: "|",
             ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>", ast.Not: "not",
             ast.Invert: "~"}
_SYNTAX_NAMES = {ast.BoolOp: "'and'/'or'", ast.Compare: "a comparison",
                 ast.IfExp: "a conditional expression", ast.Tuple: "a tuple", ast.List: "a list",
                 ast.Set: "a set", ast.Dict: "a dict", ast.Attribute: "attribute access",
                 ast.Subscript: "a subscript", ast.Lambda: "a lambda",
                 ast.JoinedStr: "a string", ast.Starred: "a starred expression",
                 ast.NamedExpr: "an assignment expression", ast.ListComp: "a comprehension",
                 ast.GeneratorExp: "a comprehension", ast.SetComp: "a comprehension",
                 ast.DictComp: "a comprehension", ast.Await: "await", ast.Yield: "yield",
                 ast.YieldFrom: "yield", ast.Slice: "a slice"}
ALLOWED = ("numbers, t, pi, parameter names, + - * / **, unary -, parentheses and "
           + " ".join(FUNCTIONS))


def _show(expr, limit=60):
    """repr of an expression for messages, shortened to about ``limit`` characters."""
    return repr(expr) if len(expr) <= limit else repr(expr[:limit]) + f"... ({len(expr)} chars)"


def check_params(params, where="time function"):
    """Validated copy of a parameter table {name: finite float} (``ValueError`` naming where)."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ValueError(f"{where}: parameters must be a table of name = number, got "
                         f"{type(params).__name__}")
    out = {}
    for name, value in params.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"{where}: parameter name {name!r} is not an identifier")
        if name in RESERVED:
            raise ValueError(f"{where}: parameter name {name!r} clashes with a built-in name "
                             f"({', '.join(sorted(RESERVED))})")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{where}: parameter {name!r} must be a real number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:
            raise ValueError(f"{where}: parameter {name!r} = {value} is too large") from None
        if not math.isfinite(value):
            raise ValueError(f"{where}: parameter {name!r} = {value} is not finite")
        out[name] = value
    return out


class _Compiler:
    """Syntax tree → nested closures t ↦ float64 array, with node/depth limits."""

    def __init__(self, expr, where, params):
        self.expr, self.where, self.params = _show(expr), where, params
        self.nodes = 0

    def fail(self, reason):
        raise ValueError(f"{self.where}: {reason} in {self.expr}")

    def unsupported(self, what):
        raise ValueError(f"{self.where}: unsupported syntax in {self.expr}: {what} is not "
                         f"allowed (allowed: {ALLOWED})")

    def compile(self, node, depth=0):
        self.nodes += 1
        if self.nodes > MAX_NODES:
            self.fail(f"expression too large (more than {MAX_NODES} syntax nodes)")
        if depth > MAX_DEPTH:
            self.fail(f"expression nested too deeply (more than {MAX_DEPTH} levels)")
        d = depth + 1
        if isinstance(node, ast.Expression):
            return self.compile(node.body, d)
        if isinstance(node, ast.Constant):
            return self.constant(node.value)
        if isinstance(node, ast.Name):
            return self.name(node.id)
        if isinstance(node, ast.BinOp):
            op = _BINOPS.get(type(node.op))
            if op is None:
                self.unsupported(f"the operator {_OP_NAMES.get(type(node.op), '?')!r}")
            a, b = self.compile(node.left, d), self.compile(node.right, d)
            return lambda t: op(a(t), b(t))
        if isinstance(node, ast.UnaryOp):
            op = _UNARY.get(type(node.op))
            if op is None:
                self.unsupported(f"the operator {_OP_NAMES.get(type(node.op), '?')!r}")
            a = self.compile(node.operand, d)
            return lambda t: op(a(t))
        if isinstance(node, ast.Call):
            return self.call(node, d)
        self.unsupported(_SYNTAX_NAMES.get(type(node), type(node).__name__))

    def constant(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            what = "a string" if isinstance(value, (str, bytes)) else f"the constant {value!r}"
            self.unsupported(what)
        try:
            v = float(value)
        except OverflowError:
            self.fail(f"number {str(value)[:20]}... is too large")
        if not math.isfinite(v):
            self.fail(f"number {value!r} is not finite")
        return lambda t: v

    def name(self, name):
        if name == "t":
            return lambda t: t
        if name in CONSTANTS or name in self.params:
            v = CONSTANTS.get(name, self.params.get(name))
            return lambda t: v
        if name in FUNCTIONS:
            self.fail(f"function {name!r} used without an argument")
        known = ", ".join(["t", *CONSTANTS, *sorted(self.params)])
        self.fail(f"unknown name {name!r} (known: {known})")

    def call(self, node, d):
        fname = node.func.id if isinstance(node.func, ast.Name) else None
        if fname not in FUNCTIONS:
            shown = fname or ast.dump(node.func)[:30]
            raise ValueError(f"{self.where}: only {', '.join(FUNCTIONS)} may be called, not "
                             f"{shown!r}, in {self.expr}")
        if node.keywords or len(node.args) != 1 or isinstance(node.args[0], ast.Starred):
            self.fail(f"{fname}() takes exactly one positional argument")
        fn, a = FUNCTIONS[fname], self.compile(node.args[0], d)
        return lambda t: fn(a(t))


class TimeFunction:
    """A scalar function of time f(t) from a restricted expression such as ``"cos(2*t)"``.

    Parameters
    ----------
    expr : str or callable
        The expression (see the module docstring for the language), or a Python callable
        ``f(times) -> array`` (API use).
    where : str
        The config field the expression came from; starts every error message.
    params : dict, optional
        Named parameters, name → finite real number, e.g. ``{"omega": 2.0}``.  Names must be
        identifiers and must not clash with ``t``, ``pi`` or the function names.
    """

    def __init__(self, expr, where="time function", params=None):
        self.where = where
        self.params = check_params(params, where)
        if callable(expr):
            self.expr = getattr(expr, "__name__", "callable")
            self._fn = expr
        else:
            if not isinstance(expr, str) or not expr.strip():
                raise ValueError(f"{where}: expected an expression in t, got {repr(expr)[:80]}")
            if len(expr) > MAX_CHARS:
                raise ValueError(f"{where}: expression too long ({len(expr)} characters, at most "
                                 f"{MAX_CHARS})")
            self.expr = expr
            try:
                tree = ast.parse(expr.strip(), mode="eval")
            except SyntaxError as exc:
                raise ValueError(f"{where}: invalid expression {_show(expr)}: {exc.msg}") from None
            except (ValueError, RecursionError, MemoryError) as exc:
                raise ValueError(f"{where}: cannot parse {_show(expr)}: "
                                 f"{exc or type(exc).__name__}") from None
            n_nodes = sum(isinstance(n, ast.expr) for n in ast.walk(tree))  # iterative
            if n_nodes > MAX_NODES:
                raise ValueError(f"{where}: expression too large ({n_nodes} syntax nodes, at "
                                 f"most {MAX_NODES}) in {_show(expr)}")
            self._fn = _Compiler(expr, where, self.params).compile(tree)
        try:
            val = self(0.0)
        except (ArithmeticError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: cannot evaluate f(0) of {_show(self.expr)}: "
                             f"{exc}") from None
        if not np.all(np.isfinite(val)):
            raise ValueError(f"{where}: f(0) = {val} is not finite (expression "
                             f"{_show(self.expr)})")

    def __call__(self, t):
        t = np.asarray(t, dtype=np.float64)
        with np.errstate(all="ignore"):
            val = np.asarray(self._fn(t), dtype=np.float64)
        if val.shape != t.shape:
            val = np.array(np.broadcast_to(val, t.shape))
        return val

    def check_grid(self, times):
        """f on ``times``; ``ValueError`` naming ``where`` and the first bad time if not finite."""
        times = np.asarray(times, dtype=np.float64)
        val = self(times)
        bad = ~np.isfinite(val)
        if bad.any():
            k = int(np.flatnonzero(bad.ravel())[0])
            raise ValueError(f"{self.where}: f(t) = {val.ravel()[k]} at t = "
                             f"{times.ravel()[k]:g} is not finite on the time grid (expression "
                             f"{_show(self.expr)})")
        return val

    def __repr__(self):
        if self.params:
            return f"TimeFunction({self.expr!r}, params={self.params!r})"
        return f"TimeFunction({self.expr!r})"
