"""The package's shape (issue 15): no import circle among its modules, no test oracle or system-name branch in
the library, parameter defaults owned by the configuration."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "aesample"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Every import of every module (top level, inside functions, under TYPE_CHECKING), package-internal only."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle as a list of modules, or []."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_the_graph_sees_function_level_imports():
    graph = _import_graph()
    assert "aesample.loopstages" in graph["aesample.driver"]  # imported inside LoopDriver._run
    assert "aesample.runlayout" in graph["aesample.loopstages"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_circle():
    assert _cycle(_import_graph()) == []


def test_loop_stages_take_the_layout_not_the_driver():
    for name in ("loopstages", "report", "runlayout"):
        assert "aesample.driver" not in _import_graph()[f"aesample.{name}"], name


def test_no_system_name_branches_in_the_stages():
    text = (PACKAGE / "loopstages.py").read_text()
    for needle in ('startswith("alanine-dipeptide")', 'startswith("chignolin")', "chignolin_cln025"):
        assert needle not in text, needle
