"""The evaluation graph: k runs of the inference agent per question, with and without E.

    START -> prepare -> attempt (map over arm x question x k) -> END

Every attempt is a ``Send`` branch, so a killed evaluation resumed on the same thread re-runs only the
unfinished ones (and the store memo covers the window before a branch's checkpoint write). Metrics
(Mean@k, Pass@k, the paired bootstrap) are computed from the results by :mod:`tfgrpo.evaluator`.
"""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import Checkpointer

from tfgrpo.context import Context
from tfgrpo.nodes.attempt import attempt, fan_out_attempts, prepare
from tfgrpo.state.graph_state import EvalState


def build_eval_graph() -> StateGraph[EvalState, Context, EvalState, EvalState]:
    builder = StateGraph(EvalState, context_schema=Context)
    builder.add_node("prepare", prepare)
    builder.add_node("attempt", attempt)  # type: ignore[call-overload]
    builder.add_edge(START, "prepare")
    builder.add_conditional_edges("prepare", fan_out_attempts, ["attempt"])
    builder.add_edge("attempt", END)
    return builder


def compile_eval_graph(
    checkpointer: Checkpointer = None, store: BaseStore | None = None
) -> CompiledStateGraph[EvalState, Context, EvalState, EvalState]:
    return build_eval_graph().compile(checkpointer=checkpointer, store=store, name="tfgrpo-eval")


# For langgraph.json / Studio: no checkpointer compiled in (the server brings its own).
graph = compile_eval_graph()
