"""The package's architecture: imports flow one way, and the chapter loads no launcher."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "d2lbn"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The d2lbn modules that ``path`` imports anywhere in it (module level or in a function)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.startswith("d2lbn"):
                # `from . import train` names a module; `from .train import History` a name in one
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                          for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("d2lbn")}
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_no_import_cycle():
    edges = graph()
    # Packages' __init__ re-export their modules, and d2lbn/__init__ the chapter's core:
    # an edge into a package means its __init__ only
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join(trail + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    edges = {"d2lbn.a": {"d2lbn.b"}, "d2lbn.b": {"d2lbn.a"}}
    monkeypatch.setattr(sys.modules[__name__], "graph", lambda: edges)
    with pytest.raises(pytest.fail.Exception, match="d2lbn.a -> d2lbn.b -> d2lbn.a"):
        test_no_import_cycle()


@pytest.mark.parametrize("chapter, lower", [
    ("d2lbn.functional", set()),
    ("d2lbn.layers", {"d2lbn.functional"}),
    ("d2lbn.train", set()),
])
def test_the_chapter_imports_only_what_lies_below_it(chapter, lower):
    assert imports(PACKAGE.joinpath(*chapter.split(".")[1:]).with_suffix(".py")) <= lower


@pytest.mark.parametrize("module", ["d2lbn.train", "d2lbn.analysis.activations"])
def test_importing_the_chapter_loads_no_launcher(module):
    code = (f"import sys, {module}; print([m for m in ('cloudpickle', 'd2lbn.scale.dist', "
            "'d2lbn.lab.parallel') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "[]"
