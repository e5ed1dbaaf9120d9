"""The code keeps its shape. Every package has its place in one declared order, top to bottom,
and imports only from its own place or below it, not even lazily inside a function (read from
the source with `ast`, so an import that runs only on some path counts, and so does one made
only for type hints). No two modules import each other, directly or around a circle, at run
time (an import made only for type hints, under ``TYPE_CHECKING``, is not run and is allowed to
close a circle of annotations: `Run` names its `Kind` and the kind interface names `Run`).
Modules and functions stay within the size limits."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "chatspace"
# top to bottom: each imports only from its own place or below it
ORDER = [
    ["chatspace.__main__", "chatspace.cli"],
    ["chatspace.generation"],  # the original chatspace's API, over the steering library
    ["chatspace.chat"],
    ["chatspace.serve"],  # vLLM's OpenAI server with the steering middleware
    ["chatspace.kinds"],  # the kinds
    ["chatspace.results"],  # handed the kinds
    ["chatspace.models"],
    ["chatspace.experiments"],
    ["chatspace.data"],
    ["chatspace.runs"],  # the run machinery, handed a kind
    ["chatspace.specs"],
    ["chatspace.steering"],  # stands alone: usable without the rest of chatspace
    ["chatspace.names"],
    ["chatspace.text"],
    ["chatspace.errors"],
    ["chatspace"],  # the package itself: its version
]
STANDS_ALONE = {"chatspace.steering"}


def module_name(path: Path, top: Path = PACKAGE.parent) -> str:
    parts = path.relative_to(top).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name | ast.Attribute) and \
        (getattr(test, "id", None) or getattr(test, "attr", None)) == "TYPE_CHECKING"


def chatspace_imports(path: Path, top: Path = PACKAGE.parent,
                      type_hints: bool = True) -> set[str]:
    """Every chatspace module `path` (under `top`) imports, at any depth (inside functions;
    under TYPE_CHECKING too unless not `type_hints`)."""
    package = ".".join(path.relative_to(top).with_suffix("").parts[:-1])
    found = set()
    pending: list[ast.AST] = [ast.parse(path.read_text())]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the module's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            found.add(base)
        if type_hints or not _type_checking(node):
            pending.extend(ast.iter_child_nodes(node))
        else:
            pending.extend(node.orelse)
    return {name for name in found if name == "chatspace" or name.startswith("chatspace.")}


def in_layer(name: str, layer: str) -> bool:
    return name == layer or (layer != "chatspace" and name.startswith(layer + "."))


def place(name: str) -> int:
    """The index in ORDER of the most specific layer holding module `name`."""
    best = max((len(layer), i) for i, group in enumerate(ORDER) for layer in group
               if in_layer(name, layer))
    return best[1]


ALL_MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_place():
    declared = {layer.split(".")[1] for group in ORDER for layer in group if "." in layer}
    present = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in ALL_MODULES} - \
        {"__init__"}
    assert present <= declared, f"not in ORDER: {sorted(present - declared)}"


def test_a_layer_imports_only_its_own_place_or_below():
    wrong = []
    for path in ALL_MODULES:
        here = module_name(path)
        alone = [layer for layer in STANDS_ALONE if in_layer(here, layer)]
        for name in sorted(chatspace_imports(path)):
            if place(name) < place(here) or (alone and not in_layer(name, alone[0])):
                wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not wrong, "\n".join(wrong)


def _run_time_graph() -> dict[str, set[str]]:
    """Module -> the modules importing it runs. Importing a.b.c runs a and a.b first: their
    __init__ modules are edges too, except a module's own packages (a package's __init__
    importing its modules is not a circle with them)."""
    names = {module_name(p) for p in ALL_MODULES}
    graph = {}
    for path in ALL_MODULES:
        here = module_name(path)
        graph[here] = {prefix for name in chatspace_imports(path, type_hints=False)
                       for prefix in _prefixes(name) if prefix in names
                       and not (prefix == here or here.startswith(prefix + "."))}
    return graph


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import circles between modules (one path around each strongly connected set)."""
    found, seen = [], set()
    for start in sorted(graph):
        stack, on_path = [(start, iter(sorted(graph[start])))], [start]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_path.pop()
                continue
            if child == start and frozenset(on_path) not in seen:
                seen.add(frozenset(on_path))
                found.append([*on_path, start])
            elif child not in on_path and child > start:
                stack.append((child, iter(sorted(graph.get(child, ())))))
                on_path.append(child)
    return found


def test_no_two_modules_import_each_other_at_run_time():
    found = circles(_run_time_graph())
    assert not found, "\n".join(" -> ".join(c) for c in found[:10])


def test_the_checks_see_a_lazy_import_and_a_circle(tmp_path):
    """An import inside a function is found (the check would catch `runs` importing a kind),
    one under TYPE_CHECKING only when asked, and a circle of three is found."""
    module = tmp_path / "chatspace" / "runs" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                      "    from chatspace.cli import main\n"
                      "def f():\n    from ..kinds import KINDS\n    return KINDS\n")
    assert chatspace_imports(module, tmp_path) == {"chatspace.kinds", "chatspace.cli"}
    assert chatspace_imports(module, tmp_path, type_hints=False) == {"chatspace.kinds"}
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert place("chatspace.runs.x") > place("chatspace.kinds.embed")


def test_modules_and_functions_stay_small():
    """No module over 400 lines, no function over 60 (the project's own size limits)."""
    too_long = []
    for path in ALL_MODULES:
        source = path.read_text()
        where = path.relative_to(PACKAGE.parent)
        if source.count("\n") > 400:
            too_long.append(f"{where}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    too_long.append(f"{where}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)
