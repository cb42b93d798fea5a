"""The policy pi(o | q, E): one ReAct agent for learning rollouts and for inference.

The paper's rollouts are "a whole agent run (ReAct with tools) or a single completion". Both come from
this one agent, so E reaches the model identically in training and in production: rendered as
``[G3] text`` lines in the *system prompt* by :class:`PolicyMiddleware` (the reference code trains with E
in the user message and exports it into the system prompt). The middleware also resolves the model from
the run context (so the graph imports without keys), keeps only the domain's tools, caps model and tool
calls (the last allowed call gets no tools, so a run always ends with an answer), routes every call
through the ledger, and writes the final ``answer`` into the output state.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NotRequired

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.config import get_config
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore
from langgraph.types import Checkpointer

from tfgrpo.bounded import BoundedDict
from tfgrpo.context import Context, as_context
from tfgrpo.errors import ConfigError
from tfgrpo.evals.rewards import extract_final_answer
from tfgrpo.models.ledger import (
    BudgetExceeded,
    CallFailed,
    Ledger,
    as_provider_error,
    capped,
    current_ledger,
    reserve_tokens,
    with_cap,
)
from tfgrpo.models.spec import UnconfiguredModel, apply_configurable, resolve_spec
from tfgrpo.nodes._llm import learner_model, make_record, one_line, policy_model
from tfgrpo.nodes._prompts import prompt_text
from tfgrpo.runs.library_ref import library_file
from tfgrpo.state.library import INJECTION_HEADER, render_library
from tfgrpo.state.published import is_published, library_value, published_library
from tfgrpo.state.types import CallRecord

BASE_PROMPT = (
    "You are a careful problem solver. Think step by step, then give the final answer {answer_format}."
)
ANSWER_FORMATS = {"math": "in \\boxed{}", "default": "on a last line of the form 'Answer: <answer>'"}
TOOL_HINTS = {
    "math": "You can run Python 3 with the `python` tool to compute or check results (print what you "
    "need to see).",
    "search": "Use the search tools to find evidence before you answer; answer with a short phrase.",
}
DOMAIN_TOOLS: dict[str, frozenset[str]] = {
    "direct": frozenset(),
    "math": frozenset({"python"}),
    "search": frozenset({"search", "open_page", "web_search", "web_extract"}),
}
LIMIT_NOTE = "Tool budget used up: answer now with what you have."
EMPTY_NOTE = "Your last reply was empty: give your final answer now."


def policy_system_prompt(ctx: Context, experiences: str, *, with_tools: bool) -> str:
    fmt = ANSWER_FORMATS["math"] if ctx.reward == "math" else ANSWER_FORMATS["default"]
    parts = [prompt_text(ctx.prompts, "policy_system", BASE_PROMPT).format(answer_format=fmt)]
    if with_tools and ctx.domain in TOOL_HINTS:
        parts.append(TOOL_HINTS[ctx.domain])
    if experiences:
        parts.append(with_experience_header(ctx.prompts, experiences))
    return "\n\n".join(parts)


def with_experience_header(prompts: str, experiences: str) -> str:
    """E as rendered (:func:`render_library`), its header ("Experiences learned from earlier problems.
    ...") replaced by the ``experience_header`` prompt when ``--prompts`` overrides it."""
    header = prompt_text(prompts, "experience_header", INJECTION_HEADER)
    if header == INJECTION_HEADER or not experiences.startswith(INJECTION_HEADER):
        return experiences
    return header + experiences[len(INJECTION_HEADER) :]


class PolicyState(AgentState[Any]):
    experiences: NotRequired[str]  # rendered E; learning passes it, inference loads it from the context
    answer: NotRequired[str]  # the final answer, extracted from the last model message


_library_cache: BoundedDict[tuple[str, float], str] = BoundedDict(16)  # by file and time


def inference_experiences(ctx: Context, store: BaseStore | None) -> str:
    """E for inference: from a library file / run directory, a learn run's published E, or a store
    namespace."""
    if (
        ctx.library
        and not Path(ctx.library).exists()
        and store is not None
        and is_published(store, ctx.library)
    ):
        return render_library(published_library(store, ctx.library))  # a learn run's id (Studio, --db)
    if ctx.library:
        path = library_file(ctx.library)
        try:
            key = (str(path), path.stat().st_mtime)
        except OSError:
            raise ConfigError(
                f"{ctx.library}: no experience library there (library.json), nor a learn run of that id"
            ) from None
        if key not in _library_cache:
            try:
                library = library_value(json.loads(path.read_text(encoding="utf-8")), str(path))
                _library_cache[key] = render_library(library)
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}: not an experience library ({exc})") from None
        return _library_cache[key]
    if ctx.library_run:
        if store is None:
            raise ConfigError("library_run needs a LangGraph store (the server's, or --db)")
        return render_library(published_library(store, ctx.library_run))
    if ctx.library_namespace:
        if store is None:
            raise ConfigError("library_namespace needs a LangGraph store")
        item = store.get(tuple(ctx.library_namespace.split("/")), "library")
        if item is None:
            raise ConfigError(f"no library in store namespace {ctx.library_namespace!r}")
        return render_library(library_value(item.value, ctx.library_namespace))
    return ""


# OpenAI schemas of the tools, for the budget's reservation: converting a tool is not free and the tools
# live as long as the process. The tool object is kept with its schema, so its id is never reused.
_schemas: BoundedDict[int, tuple[BaseTool, dict[str, Any]]] = BoundedDict(256)


def tool_schema(tool: BaseTool | dict[str, Any]) -> dict[str, Any]:
    if isinstance(tool, dict):
        return convert_to_openai_tool(tool)
    cached = _schemas.get(id(tool))
    if cached is None or cached[0] is not tool:
        cached = _schemas[id(tool)] = (tool, convert_to_openai_tool(tool))
    return cached[1]


CALLS_KEY = "tfgrpo_calls"  # configurable key: a list that collects the ledger records of the policy
LEDGER_KEY = "tfgrpo_ledger"  # configurable key: the ledger of the run a detached agent run belongs to
NODE_KEY = "tfgrpo_node"  # configurable key: the node those records are booked under (default rollout)


def _since_last_question(messages: list[Any]) -> list[Any]:
    for index in range(len(messages) - 1, -1, -1):
        if isinstance(messages[index], HumanMessage):
            return messages[index + 1 :]
    return messages


def _ai_message(response: ModelResponse) -> AIMessage | None:
    return next((m for m in response.result if isinstance(m, AIMessage)), None)


@dataclass
class _Prepared:
    request: ModelRequest[Context]
    spec: str
    ledger: Ledger
    reserve_in: int
    reserve_out: int
    sink: list[CallRecord] | None
    node: str


def _empty_with_tools_offered(p: _Prepared, response: ModelResponse) -> bool:
    """A reply with neither text nor a tool call to a request that offered tools would end the run
    without an answer (small models do this after a tool result)."""
    msg = _ai_message(response)
    return bool(p.request.tools) and msg is not None and not msg.tool_calls and not msg.text.strip()


class PolicyMiddleware(AgentMiddleware[PolicyState, Context]):
    state_schema = PolicyState

    def _prepare(self, request: ModelRequest[Context], *, answer_now: bool = False) -> _Prepared:
        """Everything before the call: model, E, tools allowed now, prompt, seed (blocking I/O inside).
        ``answer_now``: the call that follows an empty reply, without tools."""
        configurable = get_config().get("configurable") or {}
        # honour Context fields in configurable; the graph does not police keys that servers add
        ctx = apply_configurable(as_context(request.runtime.context), configurable, strict=False)
        given = request.state.get("experiences")
        experiences = str(given) if given is not None else inference_experiences(ctx, request.runtime.store)
        turn = _since_last_question(request.messages)
        model_calls = sum(isinstance(m, AIMessage) for m in turn)
        tool_calls = sum(isinstance(m, ToolMessage) for m in turn)
        allowed = DOMAIN_TOOLS.get(ctx.domain, frozenset())
        tools = [t for t in request.tools if getattr(t, "name", None) in allowed]
        if model_calls + 1 >= ctx.max_model_calls or tool_calls >= ctx.max_tool_calls or answer_now:
            tools = []  # the last allowed call must answer
        model, spec = policy_model(ctx, with_tools=bool(tools))
        prompt = policy_system_prompt(ctx, experiences, with_tools=bool(tools))
        if answer_now:
            prompt += "\n\n" + EMPTY_NOTE
        elif not tools and (model_calls or tool_calls):
            prompt += "\n\n" + LIMIT_NOTE
        settings = dict(request.model_settings)
        if configurable.get("tfgrpo_seed") is not None:
            settings["seed"] = configurable["tfgrpo_seed"]
        schemas = [tool_schema(t) for t in tools]
        return _Prepared(
            request=request.override(
                model=model, system_message=SystemMessage(prompt), tools=tools, model_settings=settings
            ),
            spec=spec,
            ledger=configurable.get(LEDGER_KEY) or current_ledger(ctx.max_concurrency),
            reserve_in=reserve_tokens([SystemMessage(prompt), *request.messages], schemas),
            reserve_out=ctx.max_tokens,
            sink=configurable.get(CALLS_KEY),
            node=configurable.get(NODE_KEY) or "rollout",
        )

    @staticmethod
    def _record(p: _Prepared, started: float, response: ModelResponse | None, retries: int) -> None:
        if p.sink is not None:
            msg = _ai_message(response) if response is not None else None
            p.sink.append(make_record(p.node, p.spec, response is not None, started, msg, retries))

    def wrap_model_call(
        self, request: ModelRequest[Context], handler: Callable[[ModelRequest[Context]], ModelResponse]
    ) -> ModelResponse:
        p = self._prepare(request)
        response = self._call(p, handler)
        if _empty_with_tools_offered(p, response):  # one more call, without tools, must answer
            response = self._call(self._prepare(request, answer_now=True), handler)
        return response

    def _call(self, p: _Prepared, handler: Callable[[ModelRequest[Context]], ModelResponse]) -> ModelResponse:
        started = time.time()
        try:
            response, retries = p.ledger.call(
                lambda: handler(with_cap(p.request)),
                spec=p.spec,
                reserve_in=p.reserve_in,
                reserve_out=p.reserve_out,
                message_of=_ai_message,
            )
        except CallFailed as failed:
            self._record(p, started, None, failed.retries)
            raise as_provider_error(failed.cause) from None
        self._record(p, started, response, retries)
        return response

    async def awrap_model_call(
        self,
        request: ModelRequest[Context],
        handler: Callable[[ModelRequest[Context]], Awaitable[ModelResponse]],
    ) -> ModelResponse:
        # file and TLS setup stay off the event loop
        p = await asyncio.to_thread(self._prepare, request)
        response = await self._acall(p, handler)
        if _empty_with_tools_offered(p, response):  # one more call, without tools, must answer
            again = await asyncio.to_thread(self._prepare, request, answer_now=True)
            response = await self._acall(again, handler)
        return response

    async def _acall(
        self, p: _Prepared, handler: Callable[[ModelRequest[Context]], Awaitable[ModelResponse]]
    ) -> ModelResponse:
        started = time.time()
        try:
            response, retries = await p.ledger.acall(
                lambda: handler(with_cap(p.request)),
                spec=p.spec,
                reserve_in=p.reserve_in,
                reserve_out=p.reserve_out,
                message_of=_ai_message,
            )
        except CallFailed as failed:
            self._record(p, started, None, failed.retries)
            raise as_provider_error(failed.cause) from None
        self._record(p, started, response, retries)
        return response

    def after_agent(self, state: PolicyState, runtime: Runtime[Context]) -> dict[str, Any] | None:
        last = next((m for m in reversed(state["messages"]) if isinstance(m, AIMessage)), None)
        text = last.content if last is not None and isinstance(last.content, str) else ""
        return {"answer": extract_final_answer(text)}


def build_policy_agent(
    tools: Sequence[BaseTool] | None = None,
    *,
    checkpointer: Checkpointer = None,
    name: str = "tfgrpo-inference",
) -> CompiledStateGraph[Any, Context, Any, Any]:
    """The policy as a ``create_agent`` ReAct graph; the model comes from the context at call time."""
    from tfgrpo.tools.lazy import all_tools

    return create_agent(
        UnconfiguredModel(),
        tools=list(all_tools() if tools is None else tools),
        middleware=[PolicyMiddleware()],
        context_schema=Context,
        checkpointer=checkpointer,
        name=name,
    )


AGENT_NAME = "policy"


@lru_cache(maxsize=1)
def rollout_agent() -> CompiledStateGraph[Any, Context, Any, Any]:
    """The agent as run inside a learning rollout. It inherits the run's checkpointer (a subgraph compiled
    with ``checkpointer=False`` fails inside a ``durability="sync"`` parent in langgraph 1.2.22); its
    per-turn checkpoints are pruned with the rest once the step moves on."""
    return build_policy_agent(checkpointer=None, name=AGENT_NAME)


def build_models(ctx: Context, *, learner: bool = False) -> None:
    """Build the run's models (and the policy agent where the domain has tools) before its graph starts:
    importing langchain-openai takes about a second, which the first fan-out would otherwise wait for
    inside its first branch -- and in a background thread it fought that fan-out's thread starts for the
    GIL. Errors are left for the run's own first call to report, in one line. The embedded model's server
    starts on demand (not here)."""
    with contextlib.suppress(Exception):
        if learner and not resolve_spec(ctx.learner_model or ctx.model).startswith("local:"):
            learner_model(ctx)
        if ctx.agent or resolve_spec(ctx.model).startswith("local:"):
            return  # (a user's agent brings its own model)
        policy_model(ctx)
        if DOMAIN_TOOLS.get(ctx.domain):
            rollout_agent()


def run_policy(
    ctx: Context,
    question: str,
    experiences: str,
    seed: int,
    *,
    node: str = "rollout",
    memo: tuple[BaseStore, tuple[str, ...], str] | None = None,
) -> tuple[list[BaseMessage], str | None, list[CallRecord]]:
    """One whole agent run for ``question`` with E rendered as ``experiences``.

    Returns (messages, error, ledger records booked under ``node``). The agent runs detached from the
    calling graph (an empty contextvars context): it keeps no checkpoints of its own turns, so a run's
    checkpoint database does not grow with the number of runs; the caller memoizes the result. Budget and
    configuration errors propagate (they must stop the run); any other failure comes back as a one-line
    error. With ``ctx.agent`` set, the policy is the user's own agent
    (:mod:`tfgrpo.integrations.user_agent`), whose
    every model call is also memoized under ``memo`` (store, namespace, key prefix).
    """
    from tfgrpo.integrations.user_agent import parent_callbacks, run_user_agent

    if ctx.agent:
        return run_user_agent(ctx, question, experiences, seed, node=node, memo=memo)
    messages: list[BaseMessage] = [HumanMessage(question)]
    records: list[CallRecord] = []
    if not DOMAIN_TOOLS.get(ctx.domain):
        return _single_completion(ctx, messages, experiences, seed, node, records, parent_callbacks())
    config: RunnableConfig = {
        "configurable": {
            "tfgrpo_seed": seed,
            CALLS_KEY: records,
            NODE_KEY: node,
            LEDGER_KEY: current_ledger(ctx.max_concurrency),  # the caller's run: the agent runs detached
        },
        "recursion_limit": 4 * ctx.max_model_calls + 8,
        "callbacks": parent_callbacks(),  # traces nest the run under the calling node
    }
    try:
        out = contextvars.Context().run(
            rollout_agent().invoke, {"messages": messages, "experiences": experiences}, config, context=ctx
        )
        return list(out["messages"]), None, records
    except (BudgetExceeded, ConfigError):
        raise
    except Exception as exc:  # the agent run failed for good: the caller counts it
        return messages, one_line(exc), records


def _single_completion(
    ctx: Context,
    messages: list[BaseMessage],
    experiences: str,
    seed: int,
    node: str,
    records: list[CallRecord],
    callbacks: Any,
) -> tuple[list[BaseMessage], str | None, list[CallRecord]]:
    """The agent's run where the domain allows no tool: one model call. The very request the agent makes
    (the middleware's system prompt, the seed, no tools; so the result cache answers it either way),
    without a ReAct graph per rollout: a nested graph cost more CPU than the HTTP call itself."""
    model, spec = policy_model(ctx)
    prompt = policy_system_prompt(ctx, experiences, with_tools=False)
    request = [SystemMessage(prompt), *messages]
    ledger = current_ledger(ctx.max_concurrency)
    config: RunnableConfig = {"callbacks": callbacks}  # traces nest the call under the calling node
    bound = model.bind(seed=seed)
    started = time.time()
    try:
        # detached like the agent run: no callbacks of the calling graph's stream
        reply, retries = contextvars.Context().run(
            ledger.call,
            lambda: bound.invoke(request, config, **capped()),
            spec=spec,
            reserve_in=reserve_tokens(request),
            reserve_out=ctx.max_tokens,
            message_of=lambda m: m if isinstance(m, AIMessage) else None,
        )
    except CallFailed as failed:
        records.append(make_record(node, spec, False, started, None, failed.retries))
        return messages, one_line(failed.cause), records
    assert isinstance(reply, AIMessage)
    reply.name = AGENT_NAME  # as the agent names its replies
    records.append(make_record(node, spec, True, started, reply, retries))
    return [*messages, reply], None, records


def final_text(messages: Sequence[BaseMessage]) -> str:
    """The final answer's text: the last AI message (content blocks joined, e.g. a user's Anthropic agent)."""
    last = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
    return last.text if last is not None else ""
