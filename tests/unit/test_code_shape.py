"""Rules of the code's shape that review would otherwise have to catch: results travel with names, so
no function returns a tuple of more than 3 items (a frozen dataclass or a TypedDict instead); a store
namespace (``tuple[str, ...]``) is one value, not several."""

from __future__ import annotations

import ast
from pathlib import Path

import tfgrpo

PACKAGE = Path(tfgrpo.__file__).parent
MAX_ITEMS = 3


def wide_returns() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            ann = func.returns
            where = f"{path.relative_to(PACKAGE.parent)}:{func.lineno} {func.name}"
            if isinstance(ann, ast.Subscript) and getattr(ann.value, "id", "") == "tuple":
                items = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
                if any(isinstance(item, ast.Constant) and item.value is Ellipsis for item in items):
                    continue  # tuple[X, ...]: one value of any length
                if len(items) > MAX_ITEMS:
                    found.append(where)
                    continue
            # own returns only, not those of functions nested in it
            inner = [f for f in ast.walk(func) if f is not func and isinstance(f, ast.FunctionDef)]
            nested = {id(n) for f in inner for n in ast.walk(f)}
            returns = [n for n in ast.walk(func) if isinstance(n, ast.Return) and id(n) not in nested]
            if any(isinstance(r.value, ast.Tuple) and len(r.value.elts) > MAX_ITEMS for r in returns):
                found.append(where)
    return found


def test_no_function_returns_a_tuple_of_more_than_three_items() -> None:
    assert wide_returns() == []


def test_update_library_keeps_to_its_one_job() -> None:
    # issue 28: the gate (lesson_gate.py), the retry (retry_lesson.py) and the output budget
    # (consolidation_budget.py) live apart; what is left is the consolidation and its application
    lines = (PACKAGE / "nodes" / "update_library.py").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 350
