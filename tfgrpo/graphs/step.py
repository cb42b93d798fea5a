"""One Training-Free GRPO step as a LangGraph graph: the paper's six steps, wired and nothing else.

share_library -> rollout (map over batch x G) -> reward -> variance_gate -> summarize (map) -> extract
    -> update_library
variance_gate -> extract when every kept group's attempts are short (read whole, not summarized);
variance_gate -> update_library when no group is kept;
variance_gate -> rollout (more attempts) for groups whose rewards are all equal (--max-group-size);
update_library -> select (map) -> choose_candidate with --candidates above 1.
``share_library`` puts E's rendering in the store for the map branches: the routers that send them only
route (no store writes).
"""

from __future__ import annotations

import uuid
from typing import Any, cast

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import Checkpointer

from tfgrpo.context import Context, StepContext
from tfgrpo.nodes.candidates import CHOOSE, DONE, SELECT, choose_candidate, route_after_update, select
from tfgrpo.nodes.extract import extract
from tfgrpo.nodes.reward import reward
from tfgrpo.nodes.rollout import fan_out_rollouts, rollout, share_library
from tfgrpo.nodes.summarize import summarize
from tfgrpo.nodes.update_library import update_library
from tfgrpo.nodes.variance_gate import route_after_gate, variance_gate
from tfgrpo.state.graph_state import StepInput, StepOutput, StepState

STEP_NODES = (
    "share_library",
    "rollout",
    "reward",
    "variance_gate",
    "summarize",
    "extract",
    "update_library",
    SELECT,
    CHOOSE,
)


def add_step(builder: StateGraph[Any, Any, Any, Any], *, entry: str, then: str) -> None:
    """Add the step's nodes (the paper's six, ``share_library``, and the selection among candidates
    of ``--candidates``) to ``builder`` between ``entry`` and ``then``."""
    # map workers take their Send payload (RolloutTask / SummarizeTask), not the graph state
    builder.add_node("share_library", share_library)
    builder.add_node("rollout", cast(Any, rollout))
    builder.add_node("reward", reward)
    builder.add_node("variance_gate", variance_gate)
    builder.add_node("summarize", summarize)  # type: ignore[arg-type]
    builder.add_node("extract", extract)
    builder.add_node("update_library", update_library)

    builder.add_edge(entry, "share_library")
    builder.add_conditional_edges("share_library", fan_out_rollouts, ["rollout", "update_library"])
    builder.add_edge("rollout", "reward")  # join: runs once after every rollout branch
    builder.add_edge("reward", "variance_gate")
    # dynamic sampling loops back to rollout for the groups whose rewards are all equal
    builder.add_conditional_edges(
        "variance_gate", route_after_gate, ["rollout", "summarize", "extract", "update_library"]
    )
    builder.add_edge("summarize", "extract")  # join
    builder.add_edge("extract", "update_library")
    # --candidates N > 1: the candidate Es are scored (a map) and one is kept, or none
    builder.add_node(SELECT, cast(Any, select))
    builder.add_node(CHOOSE, choose_candidate)
    builder.add_conditional_edges(
        "update_library", route_after_update, {SELECT: SELECT, CHOOSE: CHOOSE, DONE: then}
    )
    builder.add_edge(SELECT, CHOOSE)  # join
    builder.add_edge(CHOOSE, then)


def begin(state: StepState) -> dict[str, Any]:
    """Studio: a step without a run id gets a fresh one, so its results are never another thread's."""
    return {} if state.get("run_id") else {"run_id": uuid.uuid4().hex}


def build_step_graph(*, studio: bool = False) -> StateGraph[StepState, Any, Any, Any]:
    """``studio``: the user-facing input (batch, E, run id) and output (E, the step's report)."""
    # Studio's form shows only the fields this graph uses; Context (the CLI's) has them all. The nodes
    # read either through as_context.
    schema: type[Any] = StepContext if studio else Context
    builder = StateGraph(
        StepState,
        context_schema=schema,
        input_schema=StepInput if studio else StepState,
        output_schema=StepOutput if studio else StepState,
    )
    entry = START
    if studio:
        builder.add_node("begin", begin)
        builder.add_edge(START, "begin")
        entry = "begin"
    add_step(builder, entry=entry, then=END)
    return builder


def compile_step_graph(
    checkpointer: Checkpointer = None, store: BaseStore | None = None, *, studio: bool = False
) -> CompiledStateGraph[StepState, Any, Any, Any]:
    return build_step_graph(studio=studio).compile(checkpointer=checkpointer, store=store, name="tfgrpo-step")


# For langgraph.json / Studio: no checkpointer compiled in (the server brings its own).
graph = compile_step_graph(studio=True)
