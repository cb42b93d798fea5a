"""Lazy chat-model construction from a spec string (``openai:NAME`` or any ``init_chat_model`` provider).

Nothing here runs at import: ``ChatOpenAI`` refuses to construct without a key, so models are built on
first use and cached per settings. Tests register extra providers (e.g. ``scripted``) with
:func:`register_provider`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from langchain_core.language_models import BaseChatModel

from tfgrpo.bounded import BoundedDict
from tfgrpo.context import Context
from tfgrpo.errors import ConfigError


@dataclass(frozen=True)
class ModelSettings:
    spec: str
    base_url: str = ""
    temperature: float = 0.7
    max_tokens: int = 1024
    timeout: float = 120.0
    top_p: float | None = None  # None: not sent (the server's default)
    grammar: str = ""  # GBNF text sent as llama.cpp's `grammar` request field; "" = none


ProviderFactory = Callable[[str, ModelSettings], BaseChatModel]

# With no model configured, tfgrpo uses Qwen2.5-Coder-0.5B-Instruct served locally by llama.cpp
# (tfgrpo.models.local_server.EMBEDDED_MODELS lists the local:NAME models).
DEFAULT_MODEL = "local:qwen2.5-coder-0.5b-instruct"


def resolve_spec(spec: str) -> str:
    return spec or DEFAULT_MODEL


_providers: dict[str, ProviderFactory] = {}
_cache: BoundedDict[ModelSettings, BaseChatModel] = BoundedDict(64)
_lock = threading.Lock()


def register_provider(prefix: str, factory: ProviderFactory) -> None:
    """Make ``prefix:NAME`` specs resolve through ``factory(NAME, settings)``."""
    with _lock:
        _providers[prefix] = factory
        for key in [k for k in _cache if k.spec.startswith(prefix + ":")]:
            del _cache[key]


def _sampling(settings: ModelSettings) -> dict[str, Any]:
    return {} if settings.top_p is None else {"top_p": settings.top_p}


def _grammar(settings: ModelSettings) -> dict[str, Any]:
    return {"grammar": settings.grammar} if settings.grammar else {}


def _openai(name: str, settings: ModelSettings) -> BaseChatModel:
    from langchain_openai import ChatOpenAI

    key = os.environ.get("OPENAI_API_KEY", "")
    if not key:
        if not settings.base_url:
            raise ConfigError(
                f"model {settings.spec!r} needs OPENAI_API_KEY, or --base-url for a local server"
            )
        key = "not-needed"  # local OpenAI-compatible servers ignore the key
    kwargs: dict[str, Any] = _sampling(settings)
    if settings.base_url:
        # llama.cpp and some other servers ignore max_completion_tokens: also send max_tokens
        kwargs["extra_body"] = {"max_tokens": settings.max_tokens, **_grammar(settings)}
    elif settings.grammar:
        raise ConfigError(f"model {settings.spec!r}: a grammar needs a llama.cpp server (--base-url)")
    return ChatOpenAI(
        model=name,
        base_url=settings.base_url or None,
        api_key=key,  # type: ignore[arg-type]
        temperature=settings.temperature,
        max_completion_tokens=settings.max_tokens,
        timeout=settings.timeout,
        max_retries=0,  # tfgrpo's ledger retries transient errors itself (and counts them)
        **kwargs,
    )


def _local(name: str, settings: ModelSettings) -> BaseChatModel:
    """The embedded model: tfgrpo starts llama.cpp's OpenAI-compatible server itself (once per process,
    stopped at exit) and talks to it through langchain-openai like to any hosted model."""
    from tfgrpo.models.chat_format import local_chat_model
    from tfgrpo.models.local_server import get_local_server, require_runtime

    require_runtime(name)  # one-line error with the install command when the runtime or weights are missing
    server = get_local_server(name)
    return local_chat_model(
        server.base_url,
        server.model_name,
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
        timeout=settings.timeout,
        grammar=settings.grammar,
        **_sampling(settings),
    )


def _init_chat_model(spec: str, settings: ModelSettings) -> BaseChatModel:
    from langchain.chat_models import init_chat_model

    if settings.grammar:
        raise ConfigError(f"model {spec!r}: a grammar needs a llama.cpp server (local:NAME or --base-url)")

    try:
        return init_chat_model(
            spec,
            temperature=settings.temperature,
            max_tokens=settings.max_tokens,
            timeout=settings.timeout,
            **_sampling(settings),
        )
    except ImportError as exc:
        raise ConfigError(f"model {spec!r}: provider package missing ({exc})") from None
    except ValueError as exc:
        if "infer model provider" in str(exc) or "Unsupported model_provider" in str(exc):
            raise ConfigError(
                f"model {spec!r}: unknown provider: use openai:NAME (with --base-url for any "
                "OpenAI-compatible server) or PROVIDER:NAME of a LangChain provider package you installed"
            ) from None
        raise ConfigError(f"model {spec!r}: {str(exc).splitlines()[0]}") from None


def _build(settings: ModelSettings) -> BaseChatModel:
    prefix, _, name = settings.spec.partition(":")
    with _lock:
        factory = _providers.get(prefix)
    if factory is not None:
        return factory(name, settings)
    if prefix == "openai" and name:
        return _openai(name, settings)
    if prefix == "local":
        return _local(name, settings)
    return _init_chat_model(settings.spec, settings)


_building: BoundedDict[ModelSettings, threading.Lock] = BoundedDict(256)


INSTANCE_PREFIX = "instance:"  # models handed over as objects (tfgrpo.learn(model=ChatOpenAI(...)))
_instances: dict[str, BaseChatModel] = {}


def register_model_object(model: BaseChatModel) -> str:
    """A spec (``instance:NAME``) for a chat-model object, usable wherever a model spec is. The object
    is used as it is: its own temperature, token cap and endpoint apply. The ledger prices it by NAME."""
    if not isinstance(model, BaseChatModel):
        raise ConfigError(
            f"expected a model spec string or a LangChain chat model, got {type(model).__name__}"
        )
    name = next(
        (
            v
            for v in (getattr(model, a, None) for a in ("model_name", "model", "model_id"))
            if isinstance(v, str)
        ),
        type(model).__name__,
    )
    with _lock:
        for key, known in _instances.items():
            if known is model:
                return INSTANCE_PREFIX + key
        key, n = name, 1
        while key in _instances:  # another object of the same model (e.g. another temperature)
            n += 1
            key = f"{name}@{n}"
        _instances[key] = model
    return INSTANCE_PREFIX + key


def as_spec(model: str | BaseChatModel | None) -> str:
    """A model given as a spec string or as an object, as a spec string ("" for None)."""
    if model is None:
        return ""
    return model if isinstance(model, str) else register_model_object(model)


def get_model(settings: ModelSettings) -> BaseChatModel:
    """The chat model for ``settings``, built once per distinct settings.

    The build (importing langchain-openai takes about a second; the embedded model starts a server) runs
    under a lock of its own settings only: other models, and every later call, never wait for it.
    """
    if not settings.spec:
        settings = replace(settings, spec=DEFAULT_MODEL)
    if settings.spec.startswith(INSTANCE_PREFIX):
        found = _instances.get(settings.spec[len(INSTANCE_PREFIX) :])
        if found is None:
            raise ConfigError(f"model {settings.spec!r}: no such model object in this process")
        return found
    with _lock:
        cached = _cache.get(settings)
        if cached is not None:
            return cached
        building = _building.setdefault(settings, threading.Lock())
    with building:
        with _lock:
            cached = _cache.get(settings)
        if cached is None:
            cached = _build(settings)
            with _lock:
                _cache[settings] = cached
        return cached


class UnconfiguredModel(BaseChatModel):
    """Placeholder for graphs built before a model is known (the policy middleware swaps in the model
    named by the run context, so ``langgraph.json`` graphs import without keys)."""

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        raise ConfigError("no model configured for this graph: set 'model' in the run context")

    @property
    def _llm_type(self) -> str:
        return "tfgrpo-unconfigured"

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


def apply_configurable(
    ctx: Context, configurable: dict[str, object] | None, *, strict: bool = True
) -> Context:
    """``ctx`` with the Context fields found in a Runnable's ``configurable`` honoured (``with_config(
    configurable={"model": ...})``). With ``strict``, a key that is a near miss of a field (``modle``) is
    refused loudly; other keys (``thread_id``, the caller's own) are left to their owners."""
    import difflib
    from dataclasses import fields, replace

    names = {f.name for f in fields(Context)}
    found = {k: v for k, v in (configurable or {}).items() if k in names}
    for key in configurable or {} if strict else {}:
        if key in names or key.startswith("__"):
            continue
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.8)
        if close:
            raise ConfigError(f"unknown configurable key {key!r} (did you mean {close[0]!r}?)")
    if not found:
        return ctx
    if "model" in found or "learner_model" in found or "judge_model" in found:
        for name in ("model", "learner_model", "judge_model"):
            if name in found:
                found[name] = as_spec(found[name])  # type: ignore[arg-type]
    return replace(ctx, **found)  # type: ignore[arg-type]
