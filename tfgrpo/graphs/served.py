"""The graphs of langgraph.json (``langgraph dev``, Studio, LangGraph Platform), each behind a factory
that checks the run's context first.

The API server drops context fields that are not in a graph's context schema before the graph sees them,
so a misspelled setting (``modle``) would be ignored without a word; it hands a graph factory the context
as the client sent it. Each factory refuses unknown fields (suggesting the field a near miss meant) and
values of the wrong type or out of range with one line naming the field (the CLI's and Python API's line
for the same value), then returns the compiled graph (built once).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langgraph.pregel import Pregel
from langgraph_sdk.runtime import ServerRuntime

from tfgrpo.graphs import evaluate as _evaluate
from tfgrpo.graphs import inference as _inference
from tfgrpo.graphs import learn as _learn
from tfgrpo.graphs import step as _step


def checked(graph: Pregel[Any, Any, Any, Any], runtime: ServerRuntime) -> Pregel[Any, Any, Any, Any]:
    """``graph``, once the run's context (when it runs) holds only fields of its schema, of their types."""
    execution = runtime.execution_runtime
    context = execution.context if execution is not None else None
    schema = graph.context_schema
    if isinstance(context, Mapping) and schema is not None:
        schema(**context)  # unknown names, types, bounds: one line naming the field
    return graph


def learn(runtime: ServerRuntime) -> Pregel[Any, Any, Any, Any]:
    return checked(_learn.graph, runtime)


def step(runtime: ServerRuntime) -> Pregel[Any, Any, Any, Any]:
    return checked(_step.graph, runtime)


def inference(runtime: ServerRuntime) -> Pregel[Any, Any, Any, Any]:
    return checked(_inference.graph, runtime)


def evaluate(runtime: ServerRuntime) -> Pregel[Any, Any, Any, Any]:
    return checked(_evaluate.graph, runtime)
