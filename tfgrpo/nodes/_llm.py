"""Shared plumbing for the nodes: timed LLM calls, structured output with repair, and the result memo.

The memo makes every LLM result durable the moment it exists: a node stores its result in the LangGraph
store under a deterministic key before returning, and a re-executed node (after a crash) reads it back
instead of calling the model again. Checkpoint pending writes cover finished *branches*; the memo also
covers the window between a response and its checkpoint write, and the per-group calls inside ``extract``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import time
from typing import Any, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore, GetOp, Item
from langgraph.store.memory import InMemoryStore
from pydantic import BaseModel, ValidationError

from tfgrpo.bounded import BoundedDict
from tfgrpo.context import Context, as_context
from tfgrpo.errors import ProviderError, StopRequested
from tfgrpo.models.known_keys import known_keys
from tfgrpo.models.ledger import (
    CallFailed,
    capped,
    current_ledger,
    explain,
    make_record,
    reserve_tokens,
    role_of,
)
from tfgrpo.models.spec import ModelSettings, get_model, resolve_spec
from tfgrpo.state.library import Library, render_library
from tfgrpo.state.types import CallRecord

T = TypeVar("T", bound=BaseModel)

# Used only when a graph was compiled without a store (e.g. a bare ``compile()`` in a notebook).
_fallback_store = InMemoryStore()


def store_of(runtime: Runtime[Any]) -> BaseStore:
    return runtime.store if runtime.store is not None else _fallback_store


def step_namespace(run_id: str, step: int, kind: str) -> tuple[str, ...]:
    return ("tfgrpo", run_id or "default", f"step-{step:05d}", kind)


def publish_library_text(store: BaseStore, run_id: str, text: str) -> str:
    """Store E's rendering once per content and return its key: map payloads carry the key, not E,
    so the checkpointed fan-out does not copy E B x G times."""
    key = library_key(text)
    ns = ("tfgrpo", run_id or "default", "libraries")
    if store.get(ns, key) is None:
        store.put(ns, key, {"text": text}, index=False)
    return key


def library_key(text: str) -> str:
    """The key :func:`publish_library_text` stores ``text`` under: a router names it in its Sends
    without writing, once a node has published the text."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def library_text(library: Library | None) -> str:
    """E's rendering as a step's map branches read it ("" before there is any E)."""
    return render_library(library) if library else ""


# E's renderings read back by the map branches, by key: the key is a hash of the text, so an entry is
# never stale, and every branch after the first skips a store read. Bounded (two renderings per step).
_library_texts: BoundedDict[str, str] = BoundedDict(64)


def library_text_of(store: BaseStore, run_id: str, key: str) -> str:
    text = _library_texts.get(key)
    if text is None:
        item = store.get(("tfgrpo", run_id or "default", "libraries"), key)
        if item is None:
            raise LookupError(f"experience library {key} not found in the store")
        text = str(item.value["text"])
        if library_key(text) == key:  # (a hand-written store entry is not cached)
            _library_texts[key] = text
    return text


def derived_seed(*parts: object) -> int:
    """A reproducible sampling seed from ``parts`` (servers that honour ``seed`` replay a run): distinct
    per rollout / run, and equal where a comparison must be paired."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()
    return int(digest[:8], 16) % (2**31)


def stop_if_draining(runtime: Runtime[Any]) -> None:
    """Call before starting a map branch's LLM work (see :class:`tfgrpo.errors.StopRequested`)."""
    if runtime.drain_requested:
        raise StopRequested(f"stop requested ({runtime.drain_reason}): remaining branches not started")


def memo_get(store: BaseStore, namespace: tuple[str, ...], key: str) -> dict[str, Any] | None:
    if not known_keys.may_exist(store, namespace, key):  # a fresh run's branches skip the query
        return None
    item = store.get(namespace, key)
    return dict(item.value) if item is not None else None


def memo_put(store: BaseStore, namespace: tuple[str, ...], key: str, value: dict[str, Any]) -> None:
    known_keys.adding(store, namespace, key)
    store.put(namespace, key, value, index=False)


def memo_get_many(
    store: BaseStore, namespace: tuple[str, ...], keys: list[str]
) -> dict[str, dict[str, Any] | None]:
    """Several results of one namespace in one store operation (one lock, one query)."""
    items = store.batch([GetOp(namespace, key) for key in keys])
    return {
        key: dict(item.value) if isinstance(item, Item) else None
        for key, item in zip(keys, items, strict=True)
    }


def context_of(runtime: Runtime[Any]) -> Context:
    """The full :class:`Context` from a graph's context (a Context, a graph's own schema, a dict)."""
    return as_context(runtime.context)


def policy_model(ctx: Context, *, with_tools: bool = False) -> tuple[BaseChatModel, str]:
    """The policy's model; its answers follow ``ctx.answer_grammar`` unless tools are offered (a grammar
    for answers would forbid the calls)."""
    settings = ModelSettings(
        spec=resolve_spec(ctx.model),
        base_url=ctx.base_url,
        temperature=ctx.temperature,
        max_tokens=ctx.max_tokens,
        timeout=ctx.request_timeout,
        top_p=ctx.top_p,
        grammar="" if with_tools else ctx.answer_grammar,
    )
    return get_model(settings), settings.spec


def learner_model(ctx: Context) -> tuple[BaseChatModel, str]:
    spec = resolve_spec(ctx.learner_model or ctx.model)
    settings = ModelSettings(
        spec=spec,
        base_url=ctx.base_url,
        temperature=ctx.learner_temperature,
        max_tokens=ctx.learner_max_tokens,  # its own cap: a consolidation of a big batch is long
        timeout=ctx.request_timeout,
    )
    return get_model(settings), spec


def completion_cap(ctx: Context, node: str) -> int:
    """The ``max_tokens`` of the model a node calls: the learner and the judge have their own."""
    role = role_of(node)
    if role == "learner":
        return ctx.learner_max_tokens
    if role == "judge":
        return ctx.judge_max_tokens
    return ctx.max_tokens


def one_line(exc: BaseException | str) -> str:
    if isinstance(exc, ProviderError) and exc.cause is not None:
        exc = exc.cause  # named by the provider's exception type, as in the CLI's messages
    if isinstance(exc, BaseException) and (sentence := explain(exc)) is not None:
        return f"{type(exc).__name__}: {sentence}"[:300]
    text = str(exc) if not isinstance(exc, str) else exc
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    name = type(exc).__name__ if isinstance(exc, BaseException) else "error"
    return f"{name}: {first}"[:300]


def call_text(
    ctx: Context, model: BaseChatModel, spec: str, node: str, messages: list[BaseMessage], **kwargs: Any
) -> tuple[AIMessage | None, CallRecord, str | None]:
    """One plain completion through the ledger (cap, budget, retries).

    Model errors that survive the retries come back as (None, record, error); ``BudgetExceeded``
    propagates so the run stops resumably.
    """
    ledger = current_ledger(ctx.max_concurrency)
    started = time.time()
    try:
        msg, retries = ledger.call(
            lambda: model.invoke(messages, **capped(kwargs)),
            spec=spec,
            reserve_in=reserve_tokens(messages),
            reserve_out=completion_cap(ctx, node),
        )
    except CallFailed as failed:
        return None, make_record(node, spec, False, started, None, failed.retries), one_line(failed.cause)
    assert isinstance(msg, AIMessage)
    return msg, make_record(node, spec, True, started, msg, retries), None


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def tolerant_parse(schema: type[T], raw: AIMessage | None) -> T | None:
    """Second chance for output the strict parser refused: tool-call args, invalid tool calls, or JSON
    embedded in text (code fences, prose around it)."""
    if raw is None:
        return None
    candidates: list[Any] = [tc.get("args") for tc in raw.tool_calls]
    candidates += [tc.get("args") for tc in raw.invalid_tool_calls]
    content = raw.content if isinstance(raw.content, str) else json.dumps(raw.content)
    candidates.append(content)
    for cand in candidates:
        data: Any = cand
        if isinstance(cand, str):
            match = _JSON_OBJECT.search(cand)
            if not match:
                continue
            try:
                data = json.loads(match.group(0))
            except json.JSONDecodeError:
                continue
        if isinstance(data, dict):
            try:
                return schema.model_validate(data)
            except ValidationError:
                # a model sometimes wraps the payload one level deep: {"ToolName": {...}}
                inner = [v for v in data.values() if isinstance(v, dict)]
                if len(inner) == 1:
                    try:
                        return schema.model_validate(inner[0])
                    except ValidationError:
                        continue
    return None


def _validation_summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"missing field {where}" if err["type"] == "missing" else f"{where}: {err['msg']}")
    more = f" (+{exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return "; ".join(parts) + more


def malformed_reason(schema: type[BaseModel], raw: AIMessage | None, parsing_error: Any, cap: int) -> str:
    """What was wrong with a structured reply, precisely: cut off, invalid JSON, which field, or no call."""
    if raw is None:
        return "no reply message"
    finish = (raw.response_metadata or {}).get("finish_reason")
    if finish == "length":
        return f"cut off at max_tokens={cap} (finish_reason 'length'); raise --learner-max-tokens"
    if raw.invalid_tool_calls:
        bad = raw.invalid_tool_calls[0]
        args = str(bad.get("args") or "")
        detail = f": {bad['error']}" if bad.get("error") else ""
        return f"invalid JSON in the {bad.get('name') or 'tool'} call arguments{detail} ({args[:60]!r}...)"
    for call in raw.tool_calls:
        try:
            schema.model_validate(call.get("args"))
        except ValidationError as exc:
            return f"{call.get('name')} call does not match the schema: {_validation_summary(exc)}"
    if parsing_error:
        return one_line(parsing_error)
    content = raw.content if isinstance(raw.content, str) else json.dumps(raw.content)
    return f"no tool call, and the text reply holds no {schema.__name__} JSON ({content[:60]!r})"


# ``with_structured_output`` converts the schema to a tool (pydantic's JSON schema, then OpenAI's format)
# each time it is called: tens of ms of CPU, more than the call's own HTTP work. Built once per model,
# schema and method instead; the model is kept with its runnable, so its id is never reused.
_structured: BoundedDict[tuple[int, type[BaseModel], str], tuple[BaseChatModel, Runnable[Any, Any]]] = (
    BoundedDict(256)
)


def structured_runnable(model: BaseChatModel, schema: type[BaseModel], method: str) -> Runnable[Any, Any]:
    """What sends a structured request, built once: its ``invoke`` returns the raw ``AIMessage`` or
    ``with_structured_output``'s ``{"raw", "parsed", "parsing_error"}`` (see :func:`_raw_and_parsed`).

    For langchain-openai's models with ``function_calling`` it is the model with the schema bound as the
    forced tool -- the very request ``with_structured_output`` sends (same tool, ``tool_choice``,
    ``parallel_tool_calls``, so the same result-cache key) without its ``include_raw`` machinery, which
    starts a thread pool of two threads on every call and converts the schema again on every call (for
    trace metadata: handed the converted tool here). The reply is parsed by :func:`tolerant_parse`,
    which validates the tool call's arguments as ``PydanticToolsParser`` did."""
    key = (id(model), schema, method)
    hit = _structured.get(key)
    if hit is None or hit[0] is not model:
        runnable: Runnable[Any, Any]
        if method == "function_calling" and _is_chat_openai(model):
            tool = convert_to_openai_tool(schema)
            kwargs: dict[str, Any] = {
                "tool_choice": tool["function"]["name"],
                "parallel_tool_calls": False,
                "strict": None,
                "ls_structured_output_format": {"kwargs": {"method": method, "strict": None}, "schema": tool},
            }
            kwargs = model._filter_disabled_params(**kwargs)  # type: ignore[attr-defined]
            runnable = model.bind_tools([tool], **kwargs)
        else:
            runnable = model.with_structured_output(schema, method=method, include_raw=True)
        hit = _structured[key] = (model, runnable)
    return hit[1]


def _raw_and_parsed(out: Any) -> dict[str, Any]:
    """The structured runnable's output as ``{"raw", "parsed", "parsing_error"}``."""
    if isinstance(out, AIMessage):
        return {"raw": out, "parsed": None, "parsing_error": None}
    return out if isinstance(out, dict) else {"raw": None, "parsed": None, "parsing_error": None}


def _is_chat_openai(model: BaseChatModel) -> bool:
    """langchain-openai's models (the embedded model's too), by class name: this module does not import
    langchain-openai."""
    return any(cls.__name__ == "BaseChatOpenAI" for cls in type(model).__mro__)


@functools.lru_cache(maxsize=64)
def json_schema_of(schema: type[BaseModel]) -> dict[str, Any]:
    return schema.model_json_schema()


def call_structured(
    ctx: Context,
    model: BaseChatModel,
    spec: str,
    node: str,
    schema: type[T],
    messages: list[BaseMessage],
    *,
    retries: int,
    method: str = "function_calling",
    seed: int | None = None,
) -> tuple[T | None, list[CallRecord], str | None]:
    """Structured output through forced tool calls, a tolerant fallback parse and a bounded retry.

    Returns (parsed or None, one record per attempt, last error). The caller records failures. ``seed``:
    the request's sampling seed (a sampled candidate's, ``--candidates``); None sends none.
    """
    sampling = {"seed": seed} if seed is not None else None
    runnable = structured_runnable(model, schema, method)
    # with_structured_output's runnable drops invoke's keyword arguments: the seed goes on a copy of the
    # model (not kept in the module's cache: one per call), when the model has a seed setting
    bound = method == "function_calling" and _is_chat_openai(model)
    if seed is not None and not bound and "seed" in type(model).model_fields:
        seeded = model.model_copy(update={"seed": seed})
        runnable = seeded.with_structured_output(schema, method=method, include_raw=True)
    ledger = current_ledger(ctx.max_concurrency)
    records: list[CallRecord] = []
    error: str | None = None
    convo = list(messages)
    for attempt in range(retries + 1):
        started = time.time()
        try:
            out, n_retries = ledger.call(
                lambda c=convo: _raw_and_parsed(runnable.invoke(c, **capped(sampling))),  # type: ignore[misc]
                spec=spec,
                reserve_in=reserve_tokens(convo, json_schema_of(schema)),
                reserve_out=completion_cap(ctx, node),
                message_of=lambda o: o.get("raw") if isinstance(o, dict) else None,
            )
        except CallFailed as failed:
            records.append(make_record(node, spec, False, started, None, failed.retries))
            error = one_line(failed.cause)
            continue
        raw = out.get("raw") if isinstance(out, dict) else None
        parsed = out.get("parsed") if isinstance(out, dict) else None
        records.append(make_record(node, spec, True, started, raw, n_retries))
        if isinstance(parsed, schema):
            return parsed, records, None
        repaired = tolerant_parse(schema, raw if isinstance(raw, AIMessage) else None)
        if repaired is not None:
            return repaired, records, None
        perr = out.get("parsing_error") if isinstance(out, dict) else None
        error = f"malformed {schema.__name__}: " + malformed_reason(
            schema, raw if isinstance(raw, AIMessage) else None, perr, completion_cap(ctx, node)
        )
        records[-1]["malformed"] = 1
        # the retry's number is in its text: two attempts that failed alike would otherwise send the
        # same request, and the run's result cache would answer the retry with the same unusable reply
        convo = [
            *messages,
            HumanMessage(
                f"Your previous reply could not be used ({error}). Call the {schema.__name__} tool "
                f"with arguments that match its schema exactly. (Retry {attempt + 1} of {retries}.)"
            ),
        ]
    return None, records, error
