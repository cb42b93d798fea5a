"""Every prompt is declared once (:data:`tfgrpo.nodes._prompts.PROMPTS`: name, role, kind, where its
default lives, its placeholders), and the nodes read exactly those defaults; the operations on E are
spelled in one ``Literal``."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tfgrpo.context import Context
from tfgrpo.nodes._prompts import PROMPTS, check_template, placeholders_of
from tfgrpo.nodes.extract import ALL_OPS, ProposedOperation
from tfgrpo.prompts import default_prompts, rendered_prompts
from tfgrpo.state.library import OP_NAMES

NODES = Path(__file__).resolve().parents[2] / "tfgrpo" / "nodes"


def prompt_reads() -> Iterator[tuple[str, str, str]]:
    """``(file, prompt name, "module:ATTRIBUTE" of the default it passes)`` for every
    ``prompt_text(..., "NAME", DEFAULT)`` call in the nodes."""
    for path in sorted(NODES.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names: dict[str, str] = {}  # local name -> "module:ATTRIBUTE" or "module" (a module alias)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    local = alias.asname or alias.name
                    is_module = node.module == "tfgrpo.nodes"
                    names[local] = (
                        f"tfgrpo.nodes.{alias.name}" if is_module else f"{node.module}:{alias.name}"
                    )
        own = f"tfgrpo.nodes.{path.stem}"
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and getattr(call.func, "id", "") == "prompt_text"):
                continue
            name, default = call.args[1], call.args[2]
            if not isinstance(name, ast.Constant):
                continue
            if isinstance(default, ast.Name):
                ref = names.get(default.id, f"{own}:{default.id}")
            else:
                assert isinstance(default, ast.Attribute) and isinstance(default.value, ast.Name)
                ref = f"{names[default.value.id]}:{default.attr}"
            yield path.name, name.value, ref


def test_the_nodes_read_every_declared_prompt_with_its_declared_default() -> None:
    reads = list(prompt_reads())
    assert {name for _, name, _ in reads} == set(PROMPTS)
    wrong = [(file, name, ref) for file, name, ref in reads if ref != PROMPTS[name].default]
    assert wrong == []


def test_each_declaration_is_consistent_with_its_default_text() -> None:
    defaults = default_prompts()
    assert list(defaults) == list(PROMPTS)
    for name, spec in PROMPTS.items():
        assert spec.name == name
        assert spec.kind == ("user" if name.endswith("_user") else "system")
        assert spec.role == ("policy" if name == "experience_header" else name.split("_")[0])
        check_template(name, defaults[name], name)
        assert placeholders_of(defaults[name], name) <= spec.placeholders


def test_the_listing_shows_each_prompts_declared_role_and_kind() -> None:
    shown = {p.name: (p.role, p.kind) for p in rendered_prompts(Context())}
    assert shown == {name: (spec.role, spec.kind) for name, spec in PROMPTS.items()}


def test_the_operations_are_spelled_once() -> None:
    assert OP_NAMES == ("ADD", "UPDATE", "DELETE", "NONE")
    assert ALL_OPS == OP_NAMES
    schema = ProposedOperation.model_json_schema()
    assert tuple(schema["properties"]["op"]["enum"]) == OP_NAMES
