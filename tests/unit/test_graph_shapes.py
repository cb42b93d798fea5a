"""The graphs' shapes, and their routers. Each graph's Mermaid drawing (the CLI's and Studio's versions
of the step, learn and evaluate graphs, Studio's inference graph) is compared to a snapshot under
``tests/unit/graphs/``, so a changed node or edge shows in review. After a deliberate change,
regenerate the snapshots and review their diff:

    TFGRPO_UPDATE_SNAPSHOTS=1 python -m pytest tests/unit/test_graph_shapes.py

Routers only route: they name the branches to run, and write neither state nor store (the node before
a map puts E's rendering in the store; the router names its key)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import Op, PutOp, Result
from langgraph.store.memory import InMemoryStore
from langgraph.types import Send

from tests.unit.test_nodes import BATCH, seeded_library
from tfgrpo.context import Context
from tfgrpo.graphs import evaluate, inference, learn, step
from tfgrpo.nodes.attempt import fan_out_attempts
from tfgrpo.nodes.candidates import route_after_update
from tfgrpo.nodes.rollout import fan_out_rollouts
from tfgrpo.nodes.schedule import route_next
from tfgrpo.nodes.validate import fan_out_validation
from tfgrpo.nodes.variance_gate import judge_group, route_after_gate
from tfgrpo.state.graph_state import EvalState, LearnState
from tfgrpo.state.library import empty_library

SNAPSHOTS = Path(__file__).parent / "graphs"
UPDATE = "TFGRPO_UPDATE_SNAPSHOTS"
GRAPHS: dict[str, Callable[[], Any]] = {
    "step": lambda: step.compile_step_graph(),
    "step-studio": lambda: step.graph,
    "learn": lambda: learn.compile_learn_graph(),
    "learn-studio": lambda: learn.graph,
    "evaluate": lambda: evaluate.compile_eval_graph(),
    "evaluate-studio": lambda: evaluate.graph,
    "inference-studio": lambda: inference.graph,
}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_the_graphs_shape_is_its_snapshot(name: str) -> None:
    drawn = GRAPHS[name]().get_graph().draw_mermaid()
    path = SNAPSHOTS / f"{name}.mmd"
    if os.environ.get(UPDATE):
        path.write_text(drawn)
    assert path.exists(), f"no snapshot {path}: write it with {UPDATE}=1 python -m pytest {__file__}"
    assert drawn == path.read_text(), (
        f"the {name} graph's shape changed; if that is meant, regenerate the snapshot with "
        f"{UPDATE}=1 python -m pytest tests/unit/test_graph_shapes.py and review its diff"
    )


# ------------------------------------------------------------------------------ routers only route


class RecordingStore(InMemoryStore):
    """An in-memory store that remembers every write."""

    def __init__(self) -> None:
        super().__init__()
        self.puts: list[PutOp] = []

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        self.puts += [op for op in ops if isinstance(op, PutOp)]
        return super().batch(ops)


def route_in_graph(
    router: Callable[[Any], Any], schema: type, state: dict[str, Any], ctx: Context
) -> tuple[Any, list]:
    """Run ``router`` on ``state`` inside a graph of ``schema`` (with a runtime, a store and ``ctx``): its
    result and the store writes it made."""
    store = RecordingStore()
    seen: dict[str, Any] = {}

    def probe(state: Any) -> dict[str, Any]:
        store.puts.clear()
        seen["route"] = router(state)
        seen["puts"] = list(store.puts)
        return {}

    builder = StateGraph(schema, context_schema=Context)
    builder.add_node("probe", probe)
    builder.add_edge(START, "probe")
    builder.add_edge("probe", END)
    builder.compile(store=store).invoke(state, context=ctx)
    return seen["route"], seen["puts"]


def kept_group() -> dict[str, Any]:
    return judge_group({"query_id": "q1", "keys": ["q1#0", "q1#1"], "rewards": [0.0, 1.0], "kept": False})


def validation_set(tmp_path: Path) -> str:
    path = tmp_path / "validation.jsonl"
    path.write_text(json.dumps({"id": "v1", "question": "Calculate 1 + 1.", "answer": "2"}) + "\n")
    return str(path)


ROUTERS = {
    # router: (state schema, state, settings, where it routes to)
    "fan_out_rollouts": (
        LearnState,
        {"batch": BATCH, "library": seeded_library()},
        {"group_size": 2},
        "rollout",
    ),
    "route_after_gate": (
        LearnState,
        {"batch": BATCH, "library": seeded_library(), "groups": [kept_group()]},
        {},
        "summarize",
    ),
    "fan_out_validation": (
        LearnState,
        {"library_before": empty_library(), "library": seeded_library()},
        {"validation": "VALIDATION"},
        "validate",
    ),
    "route_next": (LearnState, {"done": False}, {}, "select_batch"),
    "route_after_update": (
        LearnState,
        {
            "batch": BATCH,
            "groups": [kept_group()],
            "candidates": [
                {"candidate": 0, "library_key": "k", "changed": True, "duplicate_of": None, "lessons": []}
            ],
        },
        {"candidates": 2},
        "select",
    ),
    "fan_out_attempts": (
        EvalState,
        {"questions": BATCH, "arms": ["library"], "library_key": "k"},
        {},
        "attempt",
    ),
}
ROUTER_FUNCTIONS = {
    f.__name__: f
    for f in (
        fan_out_rollouts,
        route_after_gate,
        fan_out_validation,
        route_next,
        fan_out_attempts,
        route_after_update,
    )
}


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_a_router_writes_nothing_to_the_store(name: str, tmp_path: Path) -> None:
    schema, state, settings, target = ROUTERS[name]
    settings = {k: validation_set(tmp_path) if v == "VALIDATION" else v for k, v in settings.items()}
    route, puts = route_in_graph(
        ROUTER_FUNCTIONS[name], schema, {"run_id": "r", **state}, Context(**settings)
    )
    sent = {s.node for s in route} if isinstance(route, list) else {route}
    assert sent == {target} and all(isinstance(s, Send) for s in route if isinstance(route, list))
    assert puts == []


def test_every_router_of_the_graphs_is_checked_above() -> None:
    # a new conditional edge joins ROUTERS, so that it too is shown to write nothing
    builders = (step.build_step_graph(), learn.build_learn_graph(), evaluate.build_eval_graph())
    routers = {
        branch.path.func
        for builder in builders
        for branches in builder.branches.values()
        for branch in branches.values()
    }
    assert {f.__name__ for f in routers} == set(ROUTERS)
    assert all(ROUTER_FUNCTIONS[f.__name__] is f for f in routers)
