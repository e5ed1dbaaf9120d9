"""The code keeps its shape. The layering holds: the run machinery, the data readers, the
steering library and the specs never import a layer above them (job packages, the CLI, results,
chat), not even lazily inside a function (read from the source with `ast`, so an import that
runs only on some path counts). Modules and functions stay within the size limits."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "chatspace"
FOUNDATION = {"chatspace", "chatspace.errors", "chatspace.names", "chatspace.specs",
              "chatspace.text"}
# what each lower layer may import from chatspace, besides itself
ALLOWED = {
    "chatspace.specs": FOUNDATION,
    "chatspace.steering": set(),  # stands alone: usable without the rest of chatspace
    "chatspace.runs": FOUNDATION,
    "chatspace.data": FOUNDATION | {"chatspace.runs"},
}


def modules(layer: str) -> list[Path]:
    path = PACKAGE.parent / Path(*layer.split("."))
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def chatspace_imports(path: Path, top: Path = PACKAGE.parent) -> set[str]:
    """Every chatspace module `path` (under `top`) imports, at any depth (inside functions,
    under TYPE_CHECKING)."""
    package = ".".join(path.relative_to(top).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the module's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            found.add(base)
    return {name for name in found if name == "chatspace" or name.startswith("chatspace.")}


def in_layer(name: str, layer: str) -> bool:
    return name == layer or name.startswith(layer + ".")


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_lower_layer_imports_nothing_above_it(layer):
    wrong = []
    for path in modules(layer):
        for name in sorted(chatspace_imports(path)):
            if not in_layer(name, layer) and not any(in_layer(name, ok) if ok != "chatspace"
                                                     else name == ok for ok in ALLOWED[layer]):
                wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_lazy_import(tmp_path):
    """An import inside a function is found (the check would catch `runs` importing a job)."""
    module = tmp_path / "chatspace" / "runs" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from ..jobs import KINDS\n    return KINDS\n")
    assert chatspace_imports(module, tmp_path) == {"chatspace.jobs"}


def test_modules_and_functions_stay_small():
    """No module over 400 lines, no function over 60 (the project's own size limits)."""
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
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
