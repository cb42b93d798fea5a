"""The evaluation graph: k runs of the inference agent per question, with and without E.

    START -> prepare -> attempt (map over arm x question x k) -> score -> END

Every attempt is a ``Send`` branch, so a killed evaluation resumed on the same thread re-runs only the
unfinished ones (and the store memo covers the window before a branch's checkpoint write). ``score``
puts Mean@k, Pass@k and the paired bootstrap CI into the output; the CLI (:mod:`tfgrpo.evaluator`) also
writes them to files. The module's ``graph`` (langgraph.json) takes :class:`EvalInput` and returns
:class:`EvalOutput`; the CLI compiles the full-state graph.
"""

from __future__ import annotations

from typing import Any, cast

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import Checkpointer

from tfgrpo.context import Context, EvalContext
from tfgrpo.nodes.attempt import attempt, fan_out_attempts, prepare
from tfgrpo.nodes.score import score, score_or_fail
from tfgrpo.state.graph_state import EvalInput, EvalOutput, EvalState


def build_eval_graph(*, studio: bool = False) -> StateGraph[EvalState, Any, Any, Any]:
    """``studio``: the user-facing input and output schemas instead of the full state."""
    # Studio's form shows only the fields this graph uses; Context (the CLI's) has them all. The nodes
    # read either through as_context.
    schema: type[Any] = EvalContext if studio else Context
    builder = StateGraph(
        EvalState,
        context_schema=schema,
        input_schema=EvalInput if studio else EvalState,
        output_schema=EvalOutput if studio else EvalState,
    )
    builder.add_node("prepare", prepare)
    builder.add_node("attempt", cast(Any, attempt))  # a map worker: takes its Send payload
    builder.add_node("score", score_or_fail if studio else score)
    builder.add_edge(START, "prepare")
    builder.add_conditional_edges("prepare", fan_out_attempts, ["attempt"])
    builder.add_edge("attempt", "score")  # join: scores once every run is done
    builder.add_edge("score", END)
    return builder


def compile_eval_graph(
    checkpointer: Checkpointer = None, store: BaseStore | None = None, *, studio: bool = False
) -> CompiledStateGraph[EvalState, Any, Any, Any]:
    return build_eval_graph(studio=studio).compile(checkpointer=checkpointer, store=store, name="tfgrpo-eval")


# For langgraph.json / Studio: no checkpointer compiled in (the server brings its own).
graph = compile_eval_graph(studio=True)
