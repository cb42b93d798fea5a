"""``ExperienceMiddleware``: add a learned experience library E to *your own* ``create_agent`` agent.

    from langchain.agents import create_agent
    from tfgrpo import ExperienceMiddleware

    agent = create_agent(model, tools, system_prompt="You are ...",
                         middleware=[ExperienceMiddleware(library="runs/x")])

Before every model call the middleware appends E, rendered exactly as in training (``[G3] text`` lines
under a short header, after a blank line), to the agent's own system prompt. Model, tools, prompt and the
other middleware stay the user's. E comes from a ``library.json`` / run directory (re-read when the file
changes), a ``Library`` dict, the run id of a learn run (``run="dapo-s0", db=URL``: from that database;
without a database, from the agent's store, as a LangGraph server publishes it; either way re-read when
the run publishes a new step, and before its first step the agent answers without E, warned once), or a
LangGraph store namespace (read from the agent's store on every call, so an update there takes
effect at once). Files and store items may hold E itself or E as published (``{"step", "library"}``).

Learning on the user's agent uses the same middleware: a learning rollout passes E in the state key
``tfgrpo_experiences`` (which wins over the configured library) and its bookkeeping in the configurable
key ``tfgrpo_rollout``; the middleware then routes each model call through the run's ledger (budget,
concurrency cap, retries, per-call records) and memoizes each response in the run's store so that a
resumed run pays for no finished call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse
from langchain_core.messages import (
    AIMessage,
    SystemMessage,
    convert_to_openai_messages,
    message_to_dict,
    messages_from_dict,
)
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.config import get_config
from langgraph.store.base import BaseStore

from tfgrpo.errors import ConfigError, TfgrpoWarning
from tfgrpo.models.ledger import CallFailed, Ledger, make_record, reserve_tokens, with_cap
from tfgrpo.runs.backends import check_run_id, database_url
from tfgrpo.runs.library_ref import PublishedLibrary, library_file
from tfgrpo.runs.pglock import redacted
from tfgrpo.state.library import Library, render_library
from tfgrpo.state.published import LATEST, library_namespace, library_value
from tfgrpo.state.types import CallRecord

__all__ = ["EXPERIENCES_KEY", "ExperienceMiddleware", "ExperienceState", "append_experiences"]

EXPERIENCES_KEY = "tfgrpo_experiences"  # state key: rendered E for this run (learning passes it)
HOOKS_KEY = "tfgrpo_rollout"  # configurable key: the learning run's bookkeeping (RolloutHooks)


class ExperienceState(AgentState[Any]):
    tfgrpo_experiences: NotRequired[str]


def append_experiences(system: SystemMessage | None, experiences: str) -> SystemMessage | None:
    """The user's system message with E appended after a blank line (E alone when there is none)."""
    if not experiences:
        return system
    if system is None:
        return SystemMessage(experiences)
    if isinstance(system.content, str):
        text = f"{system.content}\n\n{experiences}" if system.content else experiences
        return SystemMessage(text, additional_kwargs=system.additional_kwargs)
    blocks = [*system.content, {"type": "text", "text": f"\n\n{experiences}"}]
    return SystemMessage(blocks, additional_kwargs=system.additional_kwargs)


def _render_checked(value: Any, where: str) -> str:
    library = library_value(value, where)  # E itself, or as published: {"step", "library"}
    try:
        return render_library(library)
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{where}: not an experience library ({exc})") from None


def model_spec(model: Any) -> str:
    """The name the ledger books a user's model under (its price is looked up by this name)."""
    for attr in ("model_name", "model", "model_id"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(model).__name__


def _takes_seed(model: Any) -> bool:
    try:
        from langchain_openai.chat_models.base import BaseChatOpenAI
    except ImportError:  # pragma: no cover - langchain-openai is a dependency
        return False
    return isinstance(model, BaseChatOpenAI)


@dataclass
class RolloutHooks:
    """What a learning rollout hands the middleware (configurable ``tfgrpo_rollout``)."""

    ledger: Ledger
    sink: list[CallRecord]
    node: str = "rollout"
    seed: int | None = None
    max_tokens: int = 1024
    store: BaseStore | None = None  # memo of finished calls (resume pays for none of them)
    namespace: tuple[str, ...] = ()
    prefix: str = ""


def _hooks() -> RolloutHooks | None:
    try:
        configurable = get_config().get("configurable") or {}
    except RuntimeError:  # called outside a runnable context
        return None
    hooks = configurable.get(HOOKS_KEY)
    return hooks if isinstance(hooks, RolloutHooks) else None


def _ai_message(response: Any) -> AIMessage | None:
    result = getattr(response, "result", None) or []
    return next((m for m in result if isinstance(m, AIMessage)), None)


class ExperienceMiddleware(AgentMiddleware[ExperienceState, Any]):
    """Appends a learned experience library E to the agent's system prompt (see the module docstring).

    Args:
        library: a ``library.json`` file or run directory (re-read when it changes), or a ``Library``
            dict (as returned by ``tfgrpo.learn`` or ``tfgrpo.api.load_library``). None: no E of its
            own (a learning run passes E in the ``tfgrpo_experiences`` state key).
        run: instead of ``library``, the run id of a learn run (``tfgrpo learn --run-id``,
            ``tfgrpo.learn(run_id=...)``, or a Studio learn run's ``run_id``): its latest E as published.
        db: with ``run``, the database the run lives in (a SQLite file or ``postgresql://`` URL; default
            ``$TFGRPO_DATABASE_URL``). Neither given: the agent's store (a LangGraph server's). Either
            way E follows the run: re-read when it publishes a step; before its first step the agent
            answers without E (one warning).
        namespace: instead of ``library``, a LangGraph store namespace (``"a/b"`` or a tuple) holding
            the library under ``key``; read from the agent's store at every model call.
    """

    state_schema = ExperienceState

    def __init__(
        self,
        library: str | os.PathLike[str] | Library | None = None,
        *,
        run: str | None = None,
        db: str | None = None,
        namespace: str | Sequence[str] | None = None,
        key: str = "library",
    ) -> None:
        super().__init__()
        if sum(x is not None for x in (library, run, namespace)) > 1:
            raise ConfigError("ExperienceMiddleware: give one of library=, run= or namespace=")
        if db is not None and run is None:
            raise ConfigError("ExperienceMiddleware: db= names the database of a run: give run= too")
        self._path: Path | None = None
        self._static = ""
        self._cache: tuple[Any, str] | None = None
        self._namespace: tuple[str, ...] | None = None
        self._key = key
        self._missing = ""  # the one-line error when the store holds nothing there
        self._run = run or ""
        self._published: PublishedLibrary | None = None  # run= in a database: E as the run publishes it
        self._warned: set[str] = set()
        self._provenance: dict[str, Any] = {}  # who made E (library.json / published E), when recorded
        if isinstance(library, dict):
            self._static = _render_checked(library, "ExperienceMiddleware(library=...)")
        elif library is not None:
            self._path = library_file(library)
            self._from_file()  # fail now, with a clear message, not at the first question
        if run is not None:
            check_run_id(run)
            url = database_url(db)
            if url:  # opened now: a missing database fails here, not at the first question
                self._published = PublishedLibrary(url, run)
            else:  # the agent's store, as a LangGraph server's learn runs publish E
                namespace, self._key = library_namespace(run), LATEST
                self._missing = f"run {run!r}: no step has finished (nothing published in the agent's store)"
        if namespace is not None:
            parts = tuple(namespace.split("/")) if isinstance(namespace, str) else tuple(namespace)
            if not parts or not all(isinstance(p, str) and p for p in parts):
                raise ConfigError(f"ExperienceMiddleware: bad store namespace {namespace!r}")
            self._namespace = parts

    # -- where E comes from ---------------------------------------------------------------------------
    def _from_file(self) -> str:
        assert self._path is not None
        try:
            st = self._path.stat()
        except OSError:
            raise ConfigError(f"{self._path}: no experience library there (library.json)") from None
        stamp = (st.st_mtime_ns, st.st_size)
        if self._cache is None or self._cache[0] != stamp:
            try:
                data = json.loads(self._path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{self._path}: cannot read the experience library ({exc})") from None
            self._cache = (stamp, _render_checked(data, str(self._path)))
            found = data.get("provenance") if isinstance(data, dict) else None
            self._provenance = found if isinstance(found, dict) else {}
        return self._cache[1]

    def _store_of(self, request: ModelRequest[Any]) -> BaseStore:
        store = request.runtime.store if request.runtime is not None else None
        if store is None:
            raise ConfigError("ExperienceMiddleware(namespace=...) needs an agent with a store")
        return store

    def warn_once(self, message: str) -> None:
        """A :class:`TfgrpoWarning` the first time ``message`` comes up for this middleware."""
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, TfgrpoWarning, stacklevel=3)

    def _not_yet(self, where: str) -> str:
        """A run named before its first step: the agent answers without E (warned once)."""
        self.warn_once(
            f"run {self._run!r}: no step has finished (nothing published in {where}): answering without E "
            "until its first step"
        )
        return ""

    def _from_run(self) -> str:
        assert self._published is not None
        library = self._published.current()
        if library is None:
            return self._not_yet(redacted(self._published.db))
        self._provenance = self._published.provenance
        return _render_checked(library, f"run {self._run!r}")  # (cheap: a join of E's lines)

    def _render_item(self, item: Any) -> str:
        assert self._namespace is not None
        if item is None and self._run:
            return self._not_yet("the agent's store")
        if item is None:
            raise ConfigError(
                self._missing or f"no experience library in store namespace {'/'.join(self._namespace)!r}"
            )
        stamp = (item.updated_at, self._namespace)
        if self._cache is None or self._cache[0] != stamp:
            self._cache = (stamp, _render_checked(item.value, "/".join(self._namespace)))
        return self._cache[1]

    @staticmethod
    def _given(request: ModelRequest[Any]) -> str | None:
        given = request.state.get(EXPERIENCES_KEY) if isinstance(request.state, dict) else None
        return None if given is None else str(given)

    def experiences(self, request: ModelRequest[Any]) -> str:
        """Rendered E for this call: the learning run's (state key), else the configured library."""
        given = self._given(request)
        if given is not None:
            return given
        if self._path is not None:
            return self._from_file()
        if self._published is not None:
            return self._from_run()
        if self._namespace is not None:
            return self._render_item(self._store_of(request).get(self._namespace, self._key))
        return self._static

    async def aexperiences(self, request: ModelRequest[Any]) -> str:
        """:meth:`experiences` without blocking the event loop (async stores, file reads in a thread)."""
        given = self._given(request)
        if given is not None:
            return given
        if self._path is not None:
            return await asyncio.to_thread(self._from_file)
        if self._published is not None:
            return await asyncio.to_thread(self._from_run)
        if self._namespace is not None:
            return self._render_item(await self._store_of(request).aget(self._namespace, self._key))
        return self._static

    def _check_model(self, request: ModelRequest[Any]) -> None:
        """Warn once when E was learned with another policy model than the one this agent uses."""
        learned = str(self._provenance.get("policy_model") or "")
        if not learned:  # not recorded (older E, or learned on a user's agent with its own model)
            return
        used = model_spec(request.model)
        if used.split(":", 1)[-1] != learned.split(":", 1)[-1]:
            self.warn_once(
                f"this E was learned with {learned} (run {self._provenance.get('run_id')!r}); this agent's "
                f"model is {used}: lessons do not always transfer across models"
            )

    def _prepare(
        self, request: ModelRequest[Any], experiences: str
    ) -> tuple[ModelRequest[Any], RolloutHooks | None]:
        if experiences and _hooks() is None:  # a user's app (a learning rollout uses its own model)
            self._check_model(request)
        system = append_experiences(request.system_message, experiences)
        if system is not request.system_message:
            request = request.override(system_message=system)
        hooks = _hooks()
        if hooks is not None and hooks.seed is not None and _takes_seed(request.model):
            request = request.override(model_settings={**request.model_settings, "seed": hooks.seed})
        return request, hooks

    # -- learning: ledger and memo --------------------------------------------------------------------
    @staticmethod
    def _memo_key(request: ModelRequest[Any], hooks: RolloutHooks) -> str:
        msgs = ([request.system_message] if request.system_message else []) + list(request.messages)
        payload = {
            "messages": convert_to_openai_messages(msgs),  # no message ids: they differ per process
            "tools": sorted(str(getattr(t, "name", t)) for t in request.tools),
            "seed": hooks.seed,
        }
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
        return f"{hooks.prefix}/{digest[:24]}"

    @staticmethod
    def _recall(hooks: RolloutHooks, key: str) -> ModelResponse | None:
        if hooks.store is None:
            return None
        item = hooks.store.get(hooks.namespace, key)
        if item is None:
            return None
        record: CallRecord = item.value["record"]
        result = messages_from_dict([item.value["message"]])
        # paid before the interruption: booked once, here (the resumed ledger's spending already counts
        # it: it starts from what the server was paid, see tfgrpo.models.ledger.paid_totals)
        hooks.sink.append(record)
        return ModelResponse(result=result)

    @staticmethod
    def _remember(hooks: RolloutHooks, key: str, msg: AIMessage | None, record: CallRecord) -> None:
        hooks.sink.append(record)
        if hooks.store is not None and msg is not None:
            hooks.store.put(
                hooks.namespace, key, {"message": message_to_dict(msg), "record": record}, index=False
            )

    @staticmethod
    def _reservation(request: ModelRequest[Any], hooks: RolloutHooks) -> dict[str, Any]:
        spec = model_spec(request.model)
        ledger = hooks.ledger
        if ledger.budget_usd is not None and ledger.prices.rate(spec) is None:
            raise ConfigError(
                f"--budget-usd needs a price for your agent's model {spec!r}: pass --prices FILE "
                '({"MODEL": {"input": USD per 1M tokens, "output": USD per 1M tokens}})'
            )
        system = [request.system_message] if request.system_message else []
        schemas = [t if isinstance(t, dict) else convert_to_openai_tool(t) for t in request.tools]
        return {
            "spec": spec,
            "reserve_in": reserve_tokens([*system, *request.messages], schemas),
            "reserve_out": hooks.max_tokens,
        }

    # -- the hooks ------------------------------------------------------------------------------------
    def wrap_model_call(
        self, request: ModelRequest[Any], handler: Callable[[ModelRequest[Any]], ModelResponse]
    ) -> ModelResponse:
        request, hooks = self._prepare(request, self.experiences(request))
        if hooks is None:
            return handler(request)
        key = self._memo_key(request, hooks)
        recalled = self._recall(hooks, key)
        if recalled is not None:
            return recalled
        plan = self._reservation(request, hooks)
        started = time.time()
        try:
            response, retries = hooks.ledger.call(
                lambda: handler(with_cap(request)), message_of=_ai_message, **plan
            )
        except CallFailed as failed:
            hooks.sink.append(make_record(hooks.node, plan["spec"], False, started, None, failed.retries))
            raise failed.cause from None
        msg = _ai_message(response)
        self._remember(hooks, key, msg, make_record(hooks.node, plan["spec"], True, started, msg, retries))
        return response

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse]],
    ) -> ModelResponse:
        request, hooks = self._prepare(request, await self.aexperiences(request))
        if hooks is None:
            return await handler(request)
        key = self._memo_key(request, hooks)
        recalled = self._recall(hooks, key)
        if recalled is not None:
            return recalled
        plan = self._reservation(request, hooks)
        started = time.time()
        try:
            response, retries = await hooks.ledger.acall(
                lambda: handler(with_cap(request)), message_of=_ai_message, **plan
            )
        except CallFailed as failed:
            hooks.sink.append(make_record(hooks.node, plan["spec"], False, started, None, failed.retries))
            raise failed.cause from None
        msg = _ai_message(response)
        self._remember(hooks, key, msg, make_record(hooks.node, plan["spec"], True, started, msg, retries))
        return response
