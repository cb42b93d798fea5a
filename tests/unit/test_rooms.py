"""The package's rooms (docs/ARCHITECTURE.md): lower rooms never import higher ones, and no module imports
itself back through another. Read from the source with ``ast``, lazy (function-level) imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import tfgrpo

PACKAGE = Path(tfgrpo.__file__).parent

# lowest first; a module may import its own room and any room of a lower rank
RANKS: dict[str, int] = {
    "errors": 0,
    "bounded": 0,
    "state": 1,
    "context": 2,
    "data": 3,
    "models": 4,
    "runs": 5,
    "tools": 5,
    "evals": 6,
    "integrations": 7,
    "nodes": 8,
    "graphs": 9,
    "testing": 9,
    "prompts": 10,
    "checks": 10,
    "api": 10,
    "learner": 11,
    "evaluator": 11,
    "python_api": 12,
    "cli": 13,
}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_names() -> set[str]:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        names.add(".".join(p for p in rel.parts if p != "__init__"))
    return names


def imports() -> dict[str, set[str]]:
    """Each module's tfgrpo imports; ``from tfgrpo.evals import rewards`` counts as the submodule."""
    modules = module_names()
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tfgrpo"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules or node.module == "tfgrpo" else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("tfgrpo.")}
        found[name] = targets - {name}
    return found


def test_every_room_has_a_rank_and_a_docstring() -> None:
    rooms = {room(m) for m in imports()} - {"__init__"}
    assert rooms <= set(RANKS), f"rooms without a rank: {rooms - set(RANKS)}"
    for sub in PACKAGE.iterdir():
        if (sub / "__init__.py").exists():
            assert ast.get_docstring(ast.parse((sub / "__init__.py").read_text())), sub.name


def test_at_most_twelve_modules_at_the_package_root() -> None:
    assert len(list(PACKAGE.glob("*.py"))) <= 12


def test_lower_rooms_never_import_higher_ones() -> None:
    upward = []
    for module, targets in imports().items():
        here = room(module)
        if here == "__init__":
            continue  # the package's lazy public names
        for target in targets:
            there = room(target)
            if there != here and RANKS[there] >= RANKS[here]:
                upward.append(f"{module} -> {target}")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_circle_between_modules() -> None:
    graph = imports()
    seen: dict[str, int] = {}  # 1 visiting, 2 done
    circles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if seen.get(nxt) == 1:
                circles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for start in sorted(graph):
        if start not in seen:
            visit(start, [start])
    assert not circles, "\n".join(circles)
