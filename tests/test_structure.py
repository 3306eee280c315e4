"""The package in rooms: the import graph (module-level and function-level imports, read from
the AST) has no cycle, every room imports only the rooms before it, MPI and HDF5 are each
imported by one module, few imports sit inside functions, and modules stay small."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "ctwa_hpc")

# the rooms in the order of the method: a module may import its own room and earlier ones
ORDER = ["tools", "model", "config", "method", "exact", "output", "driver", "extras", "bench",
         "api", "cli", "__main__", "__init__"]


def _modules():
    out = {}
    for d, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[rel[:-9] if rel.endswith(".__init__") else rel] = path
    return out


def _room(mod):
    parts = mod.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def _imports(mods):
    """{module: [(target module, inside a function)]} of the package's own imports."""
    edges = {}
    for m, path in mods.items():
        tree = ast.parse(open(path, encoding="utf-8").read())
        is_pkg = path.endswith("__init__.py")
        inner = set()
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner.update(id(c) for c in ast.walk(n) if c is not n)
        found = []
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom):
                if n.level:
                    base = m.split(".") if is_pkg else m.split(".")[:-1]
                    base = base[:len(base) - (n.level - 1)]
                    mod = ".".join(base + ([n.module] if n.module else []))
                else:
                    mod = n.module or ""
                targets = [f"{mod}.{a.name}" for a in n.names] + [mod]
            elif isinstance(n, ast.Import):
                targets = [a.name for a in n.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m and t.startswith("ctwa_hpc"):
                    found.append((t, id(n) in inner))
                    break
        edges[m] = found
    return edges


@pytest.fixture(scope="module")
def graph():
    mods = _modules()
    return mods, _imports(mods)


def test_no_import_cycle(graph):
    mods, edges = graph
    adj = {m: {t for t, _ in edges[m] if not m.startswith(t + ".")} for m in mods}
    state = {}

    def visit(v, stack):
        state[v] = 1
        for w in adj[v]:
            if state.get(w) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [v, w]))
            if w not in state:
                visit(w, stack + [v])
        state[v] = 2

    for m in sorted(mods):
        if m not in state:
            visit(m, [])


def test_rooms_import_only_earlier_rooms(graph):
    mods, edges = graph
    bad = []
    for m, targets in edges.items():
        rm = ORDER.index(_room(m))
        for t, _ in targets:
            if m.startswith(t + "."):
                continue                      # a subpackage's own __init__
            if ORDER.index(_room(t)) > rm:
                bad.append(f"{m} imports {t}")
    # one exception by design: the memory probe of `make bench-mpi` runs the CLI in-process
    bad = [b for b in bad if not b.startswith("ctwa_hpc.bench.rankprobe imports ctwa_hpc.cli")]
    assert not bad, bad


def test_few_imports_inside_functions(graph):
    _, edges = graph
    flat = [inner for targets in edges.values() for _, inner in targets]
    assert sum(flat) / len(flat) <= 0.20, f"{sum(flat)} of {len(flat)} inside functions"


def test_mpi_and_hdf5_each_in_one_module():
    users = {"mpi4py": set(), "h5py": set()}
    for m, path in _modules().items():
        for n in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else \
                [n.module or ""] if isinstance(n, ast.ImportFrom) and not n.level else []
            for name in names:
                top = name.split(".")[0]
                if top in users:
                    users[top].add(m)
    assert users == {"mpi4py": {"ctwa_hpc.tools.parallel"}, "h5py": {"ctwa_hpc.tools.h5"}}


def test_small_modules_and_few_top_level_modules():
    mods = _modules()
    sizes = {m: sum(1 for _ in open(p, encoding="utf-8")) for m, p in mods.items()}
    assert max(sizes.values()) <= 450, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    flat = [m for m, p in mods.items() if m.count(".") == 1 and not p.endswith("__init__.py")]
    assert len(flat) <= 10, flat
    rooms = {m.split(".")[1] for m, p in mods.items() if p.endswith("__init__.py") and
             m.count(".") == 1}
    assert rooms >= {"tools", "model", "method", "exact", "output", "driver", "extras", "bench"}
    for room in rooms:
        doc = ast.get_docstring(ast.parse(open(mods[f"ctwa_hpc.{room}"],
                                               encoding="utf-8").read()))
        assert doc and "import" in doc.lower(), f"ctwa_hpc.{room}: say what the room may import"
