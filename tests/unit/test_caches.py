"""Every module-level cache is bounded: a long-lived process (the LangGraph server, a notebook) must not
grow with the number of runs, models or server threads. A container a function fills at run time is a
:class:`~tfgrpo.bounded.BoundedDict`, or bounds itself, or is a registry of what the user handed over."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import tfgrpo
from tfgrpo.bounded import BoundedDict

PACKAGE = Path(tfgrpo.__file__).parent
# module.name -> why it may hold more than a bound
NOT_BOUNDED_HERE = {
    "tfgrpo.data._cache": "evicts its oldest entry past _CACHE_MAX itself",
    "tfgrpo.data._rg_loaded": "evicts its oldest entry past _CACHE_MAX itself",
    "tfgrpo.tools.corpus._CACHE": "evicts its oldest entry past _CACHE_SIZE itself",
    "tfgrpo.models.cache._installed": "at most one entry, while runs are going",
    "tfgrpo.models.spec._providers": "registry: provider prefixes the user registers",
    "tfgrpo.models.spec._instances": "registry: model objects the user handed over, named by spec",
    "tfgrpo.integrations.user_agent._objects": "registry: agent objects the user handed over, named by spec",
    "tfgrpo.models.local_server._shared": "one server process per embedded model (a handful)",
    "tfgrpo.evals.math_verify_pool._stats": "fixed keys (counters)",
}
GROWING_CALLS = {"setdefault", "append", "add", "update", "extend", "insert"}


def filled_at_run_time() -> list[str]:
    """``module.name`` of every module-level container that a function writes an entry into."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {
            target.id
            for node in tree.body
            if isinstance(node, (ast.Assign, ast.AnnAssign))
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name)
        }
        written = set()
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                stored = isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)
                if stored and isinstance(node.value, ast.Name):
                    written.add(node.value.id)
                grown = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                if grown and node.func.attr in GROWING_CALLS and isinstance(node.func.value, ast.Name):
                    written.add(node.func.value.id)
        found += [f"{module}.{name}" for name in sorted(top & written)]
    return found


@pytest.mark.parametrize("where", filled_at_run_time())
def test_a_module_level_cache_is_bounded(where: str) -> None:
    module, name = where.rsplit(".", 1)
    value = getattr(importlib.import_module(module), name)
    if not isinstance(value, (dict, list, set)):
        return  # a name rebound at run time, not a container kept in the module
    assert isinstance(value, BoundedDict) or where in NOT_BOUNDED_HERE, f"{where} has no bound"


def test_the_server_threads_ledgers_are_among_the_bounded_caches() -> None:
    # the one that gained an entry per server thread
    assert "tfgrpo.models.ledger._threads" in filled_at_run_time()


def test_a_bounded_dict_forgets_the_least_recently_used_entry() -> None:
    cache: BoundedDict[str, int] = BoundedDict(2)
    cache["a"], cache["b"] = 1, 2
    assert cache.get("a") == 1  # a use: "b" is now the oldest
    cache["c"] = 3
    assert list(cache) == ["a", "c"]
    assert cache.setdefault("d", 4) == 4 and list(cache) == ["c", "d"]
    with pytest.raises(ValueError):
        BoundedDict(0)
