"""The package's shape: no import cycles between its modules, and only the command line imports rich."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "vtempo"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_time_imports(tree: ast.Module) -> list[ast.stmt]:
    """Import statements that run when the module is imported: at module level (inside if/try blocks
    too), not inside functions and not under `if TYPE_CHECKING:`."""
    found, pending = [], list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            pending += node.orelse if _is_type_checking(node) else node.body + node.orelse
        elif isinstance(node, (ast.Try, ast.With, ast.ClassDef)):
            pending += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
    return found


def targets(node: ast.stmt, known: set[str]) -> set[str]:
    """The vtempo modules an import statement loads (`from vtempo.x import y` loads vtempo.x.y when y is
    a module, else vtempo.x)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    if node.level or not node.module or not node.module.startswith("vtempo"):
        return set()
    loaded = {node.module} if node.module in known else set()
    loaded |= {f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in known}
    return loaded


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = {t for node in import_time_imports(tree) for t in targets(node, set(known)) if t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    tree = ast.parse("import os\nfrom vtempo.x import y\nif TYPE_CHECKING:\n    from vtempo.z import w\n"
                     "def f():\n    from vtempo.q import r\n")
    loaded = [targets(node, {"vtempo.x", "vtempo.z", "vtempo.q"}) for node in import_time_imports(tree)]
    assert [t for t in loaded if t] == [{"vtempo.x"}]



def test_no_import_cycles_between_modules_at_import_time():
    graph = import_graph()
    assert "vtempo.inference.recognizer" in graph and graph["vtempo.evaluation.evaluate"]
    cycle = find_cycle(graph)
    assert cycle is None, " → ".join(cycle)


def test_no_import_cycles_counting_the_imports_inside_functions():
    """Nor through imports that run on first use: between modules, and between the package's parts
    (`vtempo.export` works from what `vtempo.inference` loads and imports nothing of it)."""
    known = modules()
    graph = {}
    for name, path in known.items():
        imports = [node for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                   if isinstance(node, (ast.Import, ast.ImportFrom))]
        graph[name] = {t for node in imports for t in targets(node, set(known)) if t != name}
    part = {name: ".".join(name.split(".")[:2]) for name in graph}
    parts: dict[str, set[str]] = {}
    for name, imported in graph.items():
        parts.setdefault(part[name], set()).update(part[t] for t in imported if part[t] != part[name])
    assert "vtempo.inference" in parts["vtempo.commands"]
    for shape in (graph, parts):
        cycle = find_cycle(shape)
        assert cycle is None, " → ".join(cycle)


def test_only_the_command_line_imports_rich():
    offenders = []
    for name, path in modules().items():
        if name.startswith("vtempo.commands") or name == "vtempo.cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):  # lazy imports count too
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "rich" for a in node.names):
                offenders.append(name)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "rich":
                offenders.append(name)
    assert not offenders, sorted(set(offenders))


def test_one_list_of_checkpoint_layouts():
    defined = [name for name, path in modules().items()
               for node in ast.parse(path.read_text(encoding="utf-8")).body
               if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "LAYOUTS" for t in node.targets)]
    assert defined == ["vtempo.weights.registry"]
