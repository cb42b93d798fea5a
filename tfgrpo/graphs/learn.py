"""The learning loop: epochs x batches around the GRPO step, as one checkpointable graph.

    START -> start -> select_batch -> [the six step nodes] -> advance -> select_batch ... -> END
    between update_library and advance: prepare_validation, and with a validation set
    validate (map) -> validation_gate

The step's nodes are added flat (not as a subgraph) so that resume after a crash re-runs only the
unfinished branches of the interrupted fan-out. After every step ``advance`` publishes E in the store
under ``("tfgrpo", RUN_ID, "library")`` (:mod:`tfgrpo.state.published`).
"""

from __future__ import annotations

from typing import Any, cast

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import Checkpointer

from tfgrpo.context import Context, LearnContext
from tfgrpo.graphs.step import add_step
from tfgrpo.nodes.schedule import advance, finish, route_next, select_batch, start
from tfgrpo.nodes.validate import fan_out_validation, prepare_validation, validate, validation_gate
from tfgrpo.state.graph_state import LearnInput, LearnOutput, LearnState


def build_learn_graph(*, studio: bool = False) -> StateGraph[LearnState, Any, Any, Any]:
    """``studio``: the user-facing input and output schemas instead of the full state."""
    # Studio's form shows only the fields this graph uses; Context (the CLI's) has them all. The nodes
    # read either through as_context.
    schema: type[Any] = LearnContext if studio else Context
    builder = StateGraph(
        LearnState,
        context_schema=schema,
        input_schema=LearnInput if studio else LearnState,
        output_schema=LearnOutput if studio else LearnState,
    )
    builder.add_node("start", start)
    builder.add_node("select_batch", select_batch)
    builder.add_node("advance", advance)
    builder.add_edge(START, "start")
    # Studio: a last node puts the step history into the output; the CLI reads it from the store
    end = "finish" if studio else END
    if studio:
        builder.add_node("finish", finish)
        builder.add_edge("finish", END)
    builder.add_conditional_edges("start", route_next, {"select_batch": "select_batch", END: end})
    builder.add_node("validate", cast(Any, validate))  # a map worker: takes its Send payload, not the state
    builder.add_node("validation_gate", validation_gate)
    builder.add_node("prepare_validation", prepare_validation)
    add_step(builder, entry="select_batch", then="prepare_validation")
    builder.add_conditional_edges("prepare_validation", fan_out_validation, ["validate", "advance"])
    builder.add_edge("validate", "validation_gate")  # join
    builder.add_edge("validation_gate", "advance")
    builder.add_conditional_edges("advance", route_next, {"select_batch": "select_batch", END: end})
    return builder


def compile_learn_graph(
    checkpointer: Checkpointer = None, store: BaseStore | None = None, *, studio: bool = False
) -> CompiledStateGraph[LearnState, Any, Any, Any]:
    return build_learn_graph(studio=studio).compile(
        checkpointer=checkpointer, store=store, name="tfgrpo-learn"
    )


# For langgraph.json / Studio: no checkpointer compiled in (the server brings its own). Input: dataset,
# seed, run id; output: the run id, E and the per-step report (see tfgrpo.state.graph_state).
graph = compile_learn_graph(studio=True)
