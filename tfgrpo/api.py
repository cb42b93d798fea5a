"""Public API for using a learned experience library inside an existing LangChain / LangGraph app.

    from tfgrpo.api import experienced_agent, load_library

    agent = experienced_agent("runs/dapo", model="openai:gpt-4o-mini", domain="math")
    agent.invoke("What is 17 * 23?")["answer"]          # sync
    await agent.ainvoke("...")                           # async
    for chunk in agent.stream("...", stream_mode="updates"): ...
    chain = prompt | agent | (lambda out: out["answer"])  # LCEL
    tool = agent.as_answer_tool("math_expert", "Solves math problems")  # inside another agent

The agent is the inference graph (a ``create_agent`` ReAct graph, E in its system prompt) with its run
context bound, so it behaves like any Runnable.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field

from tfgrpo.context import Context
from tfgrpo.errors import ConfigError
from tfgrpo.models.spec import apply_configurable, as_spec
from tfgrpo.state.library import Library, render_library

__all__ = ["ExperiencedAgent", "experienced_agent", "load_library", "render_library"]


def load_library(path: str | Path, *, db: str | None = None) -> Library:
    """A library from ``library.json`` or a run directory or, when no such path exists, the run id of a
    learn run in ``db`` (default ``$TFGRPO_DATABASE_URL``): see :mod:`tfgrpo.runs.library_ref`."""
    from tfgrpo.runs.library_ref import load_named_library

    return load_named_library(path, db=db)


def _as_input(value: Any) -> Any:
    if isinstance(value, str):
        return {"messages": [HumanMessage(value)]}
    return value


class _Question(BaseModel):
    question: str = Field(description="The question to answer, self-contained.")


class ExperiencedAgent(Runnable[Any, dict[str, Any]]):
    """The inference graph with its context bound. Input: a question string or ``{"messages": [...]}``;
    output: the agent state, whose ``answer`` holds the final answer."""

    def __init__(self, context: Context) -> None:
        from tfgrpo.graphs.inference import build_inference_graph

        self.context = context
        self.graph = build_inference_graph()

    def _resolve(self, config: RunnableConfig | None, context: Any) -> tuple[RunnableConfig, Context]:
        """The call's config and context: ``context=`` (a Context, or a dict of settings) and Context
        fields in ``configurable`` override the bound settings; a near-miss key is refused."""
        ctx = self.context
        if isinstance(context, Context):
            ctx = context
        elif isinstance(context, dict):
            ctx = _with_settings(ctx, context)
        elif context is not None:
            raise ConfigError(f"context must be a tfgrpo Context or a dict, not {type(context).__name__}")
        ctx = apply_configurable(ctx, dict((config or {}).get("configurable") or {}))
        merged: RunnableConfig = dict(config or {})  # type: ignore[assignment]
        merged.setdefault("recursion_limit", 4 * ctx.max_model_calls + 8)
        return merged, ctx

    def invoke(
        self, input: Any, config: RunnableConfig | None = None, *, context: Any = None, **kwargs: Any
    ) -> dict[str, Any]:
        cfg, ctx = self._resolve(config, context)
        return dict(self.graph.invoke(_as_input(input), cfg, context=ctx, **kwargs))

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, *, context: Any = None, **kwargs: Any
    ) -> dict[str, Any]:
        cfg, ctx = self._resolve(config, context)
        return dict(await self.graph.ainvoke(_as_input(input), cfg, context=ctx, **kwargs))

    def stream(
        self, input: Any, config: RunnableConfig | None = None, *, context: Any = None, **kwargs: Any
    ) -> Iterator[Any]:
        cfg, ctx = self._resolve(config, context)
        yield from self.graph.stream(_as_input(input), cfg, context=ctx, **kwargs)

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, *, context: Any = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        cfg, ctx = self._resolve(config, context)
        async for chunk in self.graph.astream(_as_input(input), cfg, context=ctx, **kwargs):
            yield chunk

    def with_settings(self, **settings: Any) -> ExperiencedAgent:
        return ExperiencedAgent(_with_settings(self.context, settings))

    def as_answer_tool(self, name: str, description: str) -> BaseTool:
        """A tool (``question -> answer``) for another agent: the experienced agent as a specialist."""

        def answer(question: str) -> str:
            return str(self.invoke(question).get("answer", ""))

        async def aanswer(question: str) -> str:
            return str((await self.ainvoke(question)).get("answer", ""))

        return StructuredTool.from_function(
            func=answer, coroutine=aanswer, name=name, description=description, args_schema=_Question
        )


def experienced_agent(library: str | Path | None = None, **settings: Any) -> ExperiencedAgent:
    """The inference agent with E from ``library`` (a library.json or run directory, the run id of a learn
    run in ``$TFGRPO_DATABASE_URL``, or None for no E).

    ``settings`` are :class:`tfgrpo.context.Context` fields: ``model``, ``base_url``, ``domain``
    (direct | math | search), ``corpus``, ``temperature``, ``max_model_calls``, ...
    """
    if settings.get("prompts"):
        from tfgrpo.nodes._prompts import validate_prompts

        validate_prompts(settings["prompts"])  # a bad prompt override fails here, before any call
    if library is not None:
        loaded = load_library(library)  # fail early, with a clear message
        if not Path(library).exists():  # a learn run's id in the database: its E, saved for the agent
            library = _saved_library(str(library), loaded)
        settings["library"] = str(library)
    settings.setdefault("temperature", 0.0)
    return ExperiencedAgent(_with_settings(Context(), settings))


def _saved_library(run_id: str, library: Library) -> Path:
    folder = Path(tempfile.gettempdir()) / "tfgrpo-published" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "library.json").write_text(json.dumps(library, indent=2, ensure_ascii=False), encoding="utf-8")
    return folder


def _with_settings(ctx: Context, settings: dict[str, Any]) -> Context:
    """``ctx`` with ``settings`` (Context fields; models as spec strings or chat-model objects)."""
    known = set(asdict(Context()))
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown agent setting(s): {', '.join(unknown)}")
    values = dict(settings)
    for name in ("model", "learner_model", "judge_model"):
        if name in values:
            values[name] = as_spec(values[name])
    return replace(ctx, **values)
