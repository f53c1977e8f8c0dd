"""No import cycles in lumina_rt (lumina_rt/, plus kernels/ and export/, installed as lumina_rt.kernels and
lumina_rt.export).

The graph is read from the source with `ast`, so it counts every import: at module level, inside functions and
under `if TYPE_CHECKING:`, and modules named in string constants (`importlib.import_module("lumina_rt.x")`;
docstrings are not counted). `from pkg import sub`, where `sub` is a module, is an edge to `pkg.sub`, not to
`pkg/__init__.py`; `from pkg import name`, where `name` is not a module, is an edge to `pkg`. The implicit import
of a module's parent packages is not an edge (every module would otherwise "import" its package's __init__).
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {
    "lumina_rt": ROOT / "lumina_rt",
    "lumina_rt.kernels": ROOT / "kernels",
    "lumina_rt.export": ROOT / "export",
}

# Cycles still being removed (issue 24): a cycle passes while all its modules are in one of these sets. Must end
# empty.
ALLOWED: list[set[str]] = []


# Compiled extensions that setup.py builds from csrc/: modules even where the checkout has no built file.
EXTENSIONS = {"lumina_rt._C": ROOT / "csrc"}


def find_modules(package_dirs: dict[str, Path], extensions: dict[str, Path] | None = None) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file under the package folders (and the extensions)."""
    modules: dict[str, Path] = dict(extensions or {})
    for package, folder in package_dirs.items():
        # Compiled extensions (lumina_rt/_C.*.so) are modules too, with no imports to read.
        paths = [*folder.rglob("*.py"), *folder.rglob("*.so"), *folder.rglob("*.pyd")]
        for path in sorted(paths):
            parts = list(path.relative_to(folder).parts)
            parts[-1] = parts[-1].split(".")[0]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            # A name that a more specific root provides (a stray lumina_rt/kernels/ beside the top-level kernels/).
            if any(o.startswith(package + ".") and (name == o or name.startswith(o + ".")) for o in package_dirs):
                continue
            modules[name] = path
    return modules


def _docstring_nodes(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (not module names a program imports)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def import_graph(package_dirs: dict[str, Path], extensions: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """Module -> the package modules it imports (see the module docstring for what counts)."""
    modules = find_modules(package_dirs, extensions)
    roots = tuple(sorted({name.split(".")[0] for name in package_dirs}))
    name_re = re.compile(r"\b(?:" + "|".join(map(re.escape, roots)) + r")(?:\.\w+)+")

    def resolve(name: str) -> str | None:
        """The longest prefix of a dotted name that is a module of the package."""
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module, path in modules.items():
        if path.suffix != ".py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        docstrings = _docstring_nodes(tree)
        is_package = path.name == "__init__.py"
        targets: list[str | None] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets += [resolve(alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = module.split(".") if is_package else module.split(".")[:-1]
                    here = here[: len(here) - node.level + 1]
                    base = ".".join(here + ([base] if base else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else resolve(base))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                for name in name_re.findall(node.value):
                    target = resolve(name)
                    # "lumina_rt.build" (a logger) names no module; only a string that reaches below the root counts.
                    if target is not None and (target == name or target not in roots):
                        targets.append(target)
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:
        # Iterative Tarjan: (node, iterator over its successors).
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in graph:
                    continue
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def describe_cycle(graph: dict[str, set[str]], component: list[str]) -> str:
    """One cycle through the component's first module, as 'a -> b -> a', and the component's edges."""
    members = set(component)
    start = component[0]
    # Shortest path back to start (BFS), which exists in a strongly connected component.
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier and start not in previous:
        nxt = []
        for node in frontier:
            for succ in sorted(graph[node] & members):
                if succ not in previous:
                    previous[succ] = node
                    nxt.append(succ)
        frontier = nxt
    path = [start]
    node = previous[start]
    while node != start:
        path.append(node)
        node = previous[node]
    path.append(start)
    cycle = " -> ".join(reversed(path))
    edges = "\n".join(f"    {m} -> {', '.join(sorted(graph[m] & members))}" for m in component)
    return f"{cycle}\n{edges}"


def without(graph: dict[str, set[str]], edges: set[tuple[str, str]]) -> dict[str, set[str]]:
    return {module: {t for t in targets if (module, t) not in edges} for module, targets in graph.items()}


def test_no_import_cycles():
    graph = import_graph(PACKAGE_DIRS, EXTENSIONS)
    cycles = [c for c in find_cycles(graph) if not any(set(c) <= allowed for allowed in ALLOWED)]
    assert not cycles, "import cycles:\n" + "\n".join(describe_cycle(graph, c) for c in cycles)


def test_graph_reads_the_package():
    graph = import_graph(PACKAGE_DIRS, EXTENSIONS)
    assert "lumina_rt.kernels.cpu" in graph and "lumina_rt.export.build_engines" in graph
    assert "lumina_rt.errors" in graph["lumina_rt.kernels._common"]
    # `from lumina_rt import _C` is an edge to the extension (built or not), not to lumina_rt/__init__.
    assert "lumina_rt._C" in graph["lumina_rt.kernels.cpu"] and "lumina_rt" not in graph["lumina_rt.kernels.cpu"]


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_walker_finds_function_level_and_string_cycles(tmp_path):
    _write(
        tmp_path,
        {
            "lumina_rt/__init__.py": "",
            "lumina_rt/a.py": "from lumina_rt import b\n",
            "lumina_rt/b.py": "def f():\n    from .c import g\n",
            "lumina_rt/c.py": "import importlib\ndef g():\n    return importlib.import_module('lumina_rt.a')\n",
            "lumina_rt/d.py": '"""Docstring naming lumina_rt.a is no import."""\nimport logging\n'
            "log = logging.getLogger('lumina_rt.nothing')\n",
            "kernels/__init__.py": "",
            "kernels/k.py": "from lumina_rt.d import log\n",
        },
    )
    dirs = {"lumina_rt": tmp_path / "lumina_rt", "lumina_rt.kernels": tmp_path / "kernels"}
    graph = import_graph(dirs)
    assert graph["lumina_rt.a"] == {"lumina_rt.b"}
    assert graph["lumina_rt.b"] == {"lumina_rt.c"}
    assert graph["lumina_rt.c"] == {"lumina_rt.a"}
    assert graph["lumina_rt.d"] == set()
    assert graph["lumina_rt.kernels.k"] == {"lumina_rt.d"}
    cycles = find_cycles(graph)
    assert cycles == [["lumina_rt.a", "lumina_rt.b", "lumina_rt.c"]]
    assert "lumina_rt.a -> lumina_rt.b -> lumina_rt.c -> lumina_rt.a" in describe_cycle(graph, cycles[0])
    assert find_cycles(without(graph, {("lumina_rt.c", "lumina_rt.a")})) == []


def test_walker_submodule_import_is_not_a_package_edge(tmp_path):
    _write(
        tmp_path,
        {
            "lumina_rt/__init__.py": "",
            "lumina_rt/pkg/__init__.py": "from .sub import x\n",
            "lumina_rt/pkg/sub.py": "from lumina_rt.pkg import other\nx = 1\n",
            "lumina_rt/pkg/other.py": "",
            "lumina_rt/pkg/bad.py": "from lumina_rt.pkg import x\n",
            "lumina_rt/user.py": "import lumina_rt.pkg.bad\n",
        },
    )
    graph = import_graph({"lumina_rt": tmp_path / "lumina_rt"})
    assert graph["lumina_rt.pkg"] == {"lumina_rt.pkg.sub"}
    assert graph["lumina_rt.pkg.sub"] == {"lumina_rt.pkg.other"}
    assert graph["lumina_rt.pkg.bad"] == {"lumina_rt.pkg"}
    assert graph["lumina_rt.user"] == {"lumina_rt.pkg.bad"}
    assert find_cycles(graph) == []
    # pkg/__init__ importing bad, which takes a name from pkg/__init__: a cycle.
    (tmp_path / "lumina_rt/pkg/__init__.py").write_text("from .sub import x\nfrom . import bad\n")
    assert find_cycles(import_graph({"lumina_rt": tmp_path / "lumina_rt"})) == [["lumina_rt.pkg", "lumina_rt.pkg.bad"]]
