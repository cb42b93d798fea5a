"""Learning on the user's own agent: the policy of rollouts is an agent the user already has.

``--agent module:attr`` / ``--agent path/to/file.py:attr`` (or ``tfgrpo.learn(agent=...)``) names either

* a **factory** taking ``middleware=`` and returning a compiled ``create_agent`` graph: tfgrpo calls it
  once with ``middleware=[ExperienceMiddleware()]`` (the factory adds it to its own list), or
* a **compiled graph** (or a factory without that parameter) whose middleware already includes
  ``ExperienceMiddleware()``.

Either way E reaches the model through
:class:`tfgrpo.integrations.middleware.ExperienceMiddleware`, passed per run in
the ``tfgrpo_experiences`` state key, so training and production render it identically. The rollout's
trajectory is the agent's whole message list (tool calls and results included); its final answer is the
last AI message. Every model call of the agent goes through the run's ledger (budget, concurrency cap,
retries, records) and is memoized in the run's store (a resumed run pays for no finished call).
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.config import get_config
from langgraph.pregel import Pregel
from langgraph.store.base import BaseStore

from tfgrpo.bounded import BoundedDict
from tfgrpo.context import Context
from tfgrpo.errors import ConfigError
from tfgrpo.integrations.middleware import EXPERIENCES_KEY, HOOKS_KEY, ExperienceMiddleware, RolloutHooks
from tfgrpo.models.ledger import BudgetExceeded, current_ledger
from tfgrpo.state.types import CallRecord

OBJECT_PREFIX = "object:"  # agents handed over as Python objects (tfgrpo.learn(agent=...))

_objects: dict[str, Any] = {}
_prepared: BoundedDict[str, Pregel] = BoundedDict(32)  # a cache; _objects is the user's registry
_lock = threading.Lock()


def register_agent(agent: Any, name: str | None = None) -> str:
    """Make a Python agent object (graph or factory) usable as ``Context.agent``; returns its spec."""
    if name is None:
        qual = getattr(agent, "__qualname__", None) or getattr(agent, "name", None) or type(agent).__name__
        name = f"{getattr(agent, '__module__', '') or 'agent'}.{qual}"
    with _lock:
        _objects[name] = agent
        _prepared.pop(OBJECT_PREFIX + name, None)
    return OBJECT_PREFIX + name


def _import_file(spec: str, target: str) -> Any:
    path = Path(target)
    if not path.is_file():
        raise ConfigError(f"agent {spec!r}: {target}: file not found")
    name = "tfgrpo_user_agent_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"agent {spec!r}: {target} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"agent {spec!r}: importing {target} failed: {_one_line(exc)}") from None
    return module


def _import_module(spec: str, target: str) -> Any:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules of the working directory import
    try:
        return importlib.import_module(target)
    except Exception as exc:
        raise ConfigError(f"agent {spec!r}: cannot import {target}: {_one_line(exc)}") from None


def load_agent_object(spec: str) -> Any:
    """The object ``spec`` names: ``module:attr``, ``path/file.py:attr`` or a registered object."""
    if spec.startswith(OBJECT_PREFIX):
        with _lock:
            if spec[len(OBJECT_PREFIX) :] not in _objects:
                raise ConfigError(f"agent {spec!r}: no such agent object in this process")
            return _objects[spec[len(OBJECT_PREFIX) :]]
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise ConfigError(f"agent {spec!r}: expected module:attr or path/file.py:attr")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    module = _import_file(spec, target) if is_file else _import_module(spec, target)
    if not hasattr(module, attr):
        raise ConfigError(f"agent {spec!r}: {target} has no attribute {attr!r}")
    return getattr(module, attr)


def _takes_middleware(factory: Any) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "middleware" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def prepare_agent(spec: str) -> Pregel:
    """The compiled agent graph for ``spec`` (built once per process), checked to carry E."""
    with _lock:
        if spec in _prepared:
            return _prepared[spec]
    obj = load_agent_object(spec)
    if isinstance(obj, Pregel):
        graph: Any = obj
    elif callable(obj):
        try:
            graph = obj(middleware=[ExperienceMiddleware()]) if _takes_middleware(obj) else obj()
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"agent {spec!r}: the factory failed: {_one_line(exc)}") from None
        if not isinstance(graph, Pregel):
            raise ConfigError(
                f"agent {spec!r}: the factory returned {type(graph).__name__}, not a compiled agent graph"
            )
    else:
        raise ConfigError(f"agent {spec!r}: {type(obj).__name__} is neither a compiled graph nor a factory")
    if EXPERIENCES_KEY not in graph.channels:
        raise ConfigError(
            f"agent {spec!r}: the agent has no tfgrpo.ExperienceMiddleware: add "
            "middleware=[ExperienceMiddleware()] to its create_agent call, or make it a factory "
            "that takes middleware= and passes it on"
        )
    with _lock:
        _prepared[spec] = graph
    return graph


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300] if first else type(exc).__name__


def parent_callbacks() -> Any:
    """The callbacks of the node we run in, so a detached agent run nests under it in traces."""
    try:
        return get_config().get("callbacks")
    except RuntimeError:  # not inside a runnable
        return None


def run_user_agent(
    ctx: Context,
    question: str,
    experiences: str,
    seed: int,
    *,
    node: str = "rollout",
    memo: tuple[BaseStore, tuple[str, ...], str] | None = None,
) -> tuple[list[BaseMessage], str | None, list[CallRecord]]:
    """One run of the user's agent: (messages, error, ledger records), like ``run_policy``."""
    graph = prepare_agent(ctx.agent)
    records: list[CallRecord] = []
    store, namespace, prefix = memo if memo is not None else (None, (), "")
    hooks = RolloutHooks(
        ledger=current_ledger(ctx.max_concurrency),
        sink=records,
        node=node,
        seed=seed,
        max_tokens=ctx.max_tokens,
        store=store,
        namespace=namespace,
        prefix=prefix,
    )
    config: RunnableConfig = {
        # a thread of its own, in case the user's agent was compiled with a checkpointer
        "configurable": {HOOKS_KEY: hooks, "thread_id": f"tfgrpo-{uuid.uuid4().hex}"},
        "callbacks": parent_callbacks(),
        "run_name": f"{node}: {getattr(graph, 'name', None) or 'agent'}",
    }
    messages: list[BaseMessage] = [HumanMessage(question)]
    try:
        # detached from the calling graph (its checkpointer must not record the agent's turns)
        out = contextvars.Context().run(
            graph.invoke, {"messages": messages, EXPERIENCES_KEY: experiences}, config
        )
    except (BudgetExceeded, ConfigError):
        raise
    except Exception as exc:  # the agent run failed for good: the caller counts it
        return messages, _one_line(exc), records
    result = list(out["messages"]) if isinstance(out, dict) and "messages" in out else messages
    if any(isinstance(m, AIMessage) for m in result) and not records:
        raise ConfigError(
            f"agent {ctx.agent!r}: its model calls did not pass through tfgrpo.ExperienceMiddleware, so "
            "E, the budget and the ledger cannot apply (is it the agent's own middleware?)"
        )
    return result, None, records
