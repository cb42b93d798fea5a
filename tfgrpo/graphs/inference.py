"""The inference graph: a ReAct agent (``langchain.agents.create_agent``) with E in its system prompt.

The same agent is the policy of learning rollouts (:mod:`tfgrpo.nodes.policy`). Settings come from the
run context (:class:`tfgrpo.context.Context`): ``model``, ``domain`` (direct | math | search),
``library`` (a library.json or run directory), ``library_run`` (the run id of a learn run: its E as
published in the store) or ``library_namespace`` (a store namespace), and the caps on model and tool
calls. Without tools it is a single completion (the paper's "direct prompting").

``build_inference_graph`` is the agent itself (its state in and out: embed it in an app). The module's
``graph`` (langgraph.json, Studio) wraps it with a user-facing form: input a ``question`` or
``messages``; output the final ``answer`` and the whole message trajectory.
"""

from __future__ import annotations

from typing import Annotated, Any, NotRequired

from langchain_core.messages import AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import Checkpointer
from pydantic import Field
from typing_extensions import TypedDict

from tfgrpo.context import InferenceContext
from tfgrpo.errors import ConfigError
from tfgrpo.nodes.policy import build_policy_agent

build_inference_graph = build_policy_agent


class InferenceInput(TypedDict):
    """A question (plain text), or a conversation whose last message is the user's question."""

    question: NotRequired[Annotated[str, Field(description="The question, as plain text.")]]
    messages: NotRequired[
        # the reducer stays last: LangGraph reads it from the annotation's last item
        Annotated[
            list[AnyMessage],
            Field(description="Or a conversation whose last message is the user's question."),
            add_messages,
        ]
    ]


class InferenceOutput(TypedDict):
    """The final answer and the trajectory (every model message and tool call)."""

    answer: NotRequired[str]
    messages: NotRequired[Annotated[list[AnyMessage], add_messages]]


class InferenceState(InferenceInput, InferenceOutput):
    pass


def ask(state: InferenceState) -> dict[str, Any]:
    """Turn ``question`` into the user message the agent answers."""
    question = (state.get("question") or "").strip()
    if question:
        return {"messages": [HumanMessage(question)]}
    if not state.get("messages"):
        raise ConfigError("give a 'question' or 'messages' to answer")
    return {}


def build_studio_inference_graph(
    checkpointer: Checkpointer = None, store: BaseStore | None = None
) -> CompiledStateGraph[InferenceState, Any, Any, Any]:
    # Studio's form shows only the fields this graph uses; the nodes read it through as_context
    schema: type[Any] = InferenceContext
    builder = StateGraph(
        InferenceState,
        context_schema=schema,
        input_schema=InferenceInput,
        output_schema=InferenceOutput,
    )
    builder.add_node("ask", ask)
    builder.add_node("agent", build_inference_graph())
    builder.add_edge(START, "ask")
    builder.add_edge("ask", "agent")
    builder.add_edge("agent", END)
    return builder.compile(checkpointer=checkpointer, store=store, name="tfgrpo-inference")


# For langgraph.json / Studio: no checkpointer compiled in (the server brings its own).
graph = build_studio_inference_graph()
