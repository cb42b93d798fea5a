"""Every LLM result of a run, persisted the moment it arrives: a kill costs only the calls in flight.

The node memo (:mod:`tfgrpo.nodes._llm`) and the checkpoint's pending writes keep finished *nodes*; a
node that makes several calls (an agent run: model, tool, model, ...; a reward with a judge; the
per-group calls of extract) loses the calls it had already made when it is killed, and pays for them
again when it re-runs. This cache closes that window: it is a LangChain LLM cache (``BaseCache``) backed
by the run's LangGraph store, so LangChain writes each response to it right after the HTTP response is
parsed, before any other processing, in one store transaction. A re-executed node sends the same
requests again (the same prompts and sampling seeds) and gets the stored responses back for free.

The key is LangChain's own: the serialized prompt and the model's settings (model, endpoint,
temperature, max tokens, bound tools, seed, ...). Failed calls are never stored.

The cache belongs to a run, not to the process: it answers only the calls the run's ledger makes
(:meth:`tfgrpo.models.ledger.Ledger.call` opens a :class:`CallScope` around each attempt). LangChain
looks caches up process-wide, so a dispatcher is installed as LangChain's global cache while any run is
going; a call outside a run's scope (a user's own model, another thread) goes to whatever cache was
there before (usually none). Within a run, a request identical to one in flight waits for that one
and shares its response (single flight): a request is paid once however many branches ask it. Each
stored entry keeps what the server was paid for it (its usage), so a run's paid total is exact after
kills and resumes (:func:`paid_usage`).
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from langchain_core.caches import BaseCache
from langchain_core.globals import get_llm_cache, set_llm_cache
from langchain_core.messages import AIMessage, message_to_dict, messages_from_dict
from langchain_core.outputs import ChatGeneration, Generation
from langgraph.store.base import BaseStore

from tfgrpo.models.known_keys import known_keys

NAMESPACE = ("tfgrpo-llm-results",)
CACHED_FLAG = "tfgrpo_cached"  # in response_metadata of a reply answered without a request


def cache_key(prompt: str, llm_string: str) -> str:
    return hashlib.sha256(f"{llm_string}\x00{prompt}".encode()).hexdigest()


class StoreLLMCache(BaseCache):
    """A LangChain LLM cache in a LangGraph store (one put per response: one SQLite transaction), with
    single flight: a miss makes its asker the owner of the key until its response is stored or it fails;
    other askers of the key wait for it."""

    def __init__(self, store: BaseStore, namespace: tuple[str, ...] = NAMESPACE) -> None:
        self.store = store
        self.namespace = namespace
        self.session = uuid.uuid4().hex  # this process's part of the run
        self._flights: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def _stored(self, key: str) -> Sequence[Generation] | None:
        if not known_keys.may_exist(self.store, self.namespace, key):  # a fresh run: no query per call
            return None
        item = self.store.get(self.namespace, key)
        if item is None:
            return None
        return [_generation(g, cached=True) for g in item.value["generations"]]

    def lookup(self, prompt: str, llm_string: str) -> Sequence[Generation] | None:
        """A plain lookup (no single flight: nobody would release the key of a call that fails)."""
        return self._stored(cache_key(prompt, llm_string))

    def lookup_in(self, scope: CallScope, prompt: str, llm_string: str) -> Sequence[Generation] | None:
        key = cache_key(prompt, llm_string)
        while True:
            with self._lock:
                flight = self._flights.get(key)
                if flight is None:
                    hit = self._stored(key)
                    if hit is not None:
                        scope.hit = True
                        return hit
                    self._flights[key] = threading.Event()
                    scope.owned.append(key)
                    return None
            flight.wait()  # the owner stores its response (then it is a hit) or fails (then we own it)

    def release(self, keys: list[str]) -> None:
        """The owner of ``keys`` is done (stored or failed): wake their waiters."""
        with self._lock:
            for key in keys:
                flight = self._flights.pop(key, None)
                if flight is not None:
                    flight.set()

    def update(self, prompt: str, llm_string: str, return_val: Sequence[Generation]) -> None:
        self.update_in(None, prompt, llm_string, return_val)

    def update_in(
        self, scope: CallScope | None, prompt: str, llm_string: str, return_val: Sequence[Generation]
    ) -> None:
        value: dict[str, Any] = {"generations": [_plain(g) for g in return_val], "session": self.session}
        usage = next(
            (
                g.message.usage_metadata
                for g in return_val
                if isinstance(g, ChatGeneration) and isinstance(g.message, AIMessage)
            ),
            None,
        )
        if usage:  # what the server was paid for this response
            value["paid"] = {
                "spec": scope.spec if scope is not None else "",
                "input_tokens": int(usage.get("input_tokens", 0) or 0),
                "output_tokens": int(usage.get("output_tokens", 0) or 0),
            }
        key = cache_key(prompt, llm_string)
        known_keys.adding(self.store, self.namespace, key)
        self.store.put(self.namespace, key, value, index=False)
        self.release([key])

    def book_abandoned(self, spec: str, input_tokens: int, output_tokens: int) -> None:
        """An attempt the client gave up on, at its reservation: the provider may have answered and billed
        it. Kept beside the responses (under a key no request has) so that a run's paid total counts it."""
        value = {
            "session": self.session,
            "paid": {
                "spec": spec,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "timed_out": True,
            },
        }
        self.store.put(self.namespace, f"timed-out-{uuid.uuid4().hex}", value, index=False)

    def clear(self, **kwargs: Any) -> None:
        while items := self.store.search(self.namespace, limit=500):
            for item in items:
                self.store.delete(self.namespace, item.key)


@dataclass
class CallScope:
    """One attempt of one ledger call: which run cache answers it, and what happened in it."""

    cache: StoreLLMCache | None
    spec: str = ""
    max_tokens: int | None = None  # the budget's cap on this call's completion, if below the model's
    hit: bool = False
    owned: list[str] = field(default_factory=list)

    def close(self) -> None:
        if self.cache is not None and self.owned:
            self.cache.release(self.owned)
            self.owned = []


_scope: ContextVar[CallScope | None] = ContextVar("tfgrpo_call_scope", default=None)


def current_scope() -> CallScope | None:
    return _scope.get()


def enter_scope(scope: CallScope) -> Any:
    return _scope.set(scope)


def exit_scope(scope: CallScope, token: Any) -> None:
    _scope.reset(token)
    scope.close()


class _RunCaches(BaseCache):
    """LangChain's global cache while runs are going: the calling run's cache inside a ledger call,
    else the cache that was installed before (a user's own, or none)."""

    def __init__(self, previous: BaseCache | None) -> None:
        self.previous = previous

    def lookup(self, prompt: str, llm_string: str) -> Sequence[Generation] | None:
        scope = _scope.get()
        if scope is not None and scope.cache is not None:
            return scope.cache.lookup_in(scope, prompt, llm_string)
        return self.previous.lookup(prompt, llm_string) if self.previous is not None else None

    def update(self, prompt: str, llm_string: str, return_val: Sequence[Generation]) -> None:
        scope = _scope.get()
        if scope is not None and scope.cache is not None:
            scope.cache.update_in(scope, prompt, llm_string, return_val)
        elif self.previous is not None:
            self.previous.update(prompt, llm_string, return_val)

    def clear(self, **kwargs: Any) -> None:
        if self.previous is not None:
            self.previous.clear(**kwargs)


_install_lock = threading.Lock()
_installed: list[_RunCaches] = []  # [the dispatcher] while at least one run is going
_runs = 0


def install() -> None:
    """Make the dispatcher LangChain's global cache (counted: the last run to finish restores it)."""
    global _runs
    with _install_lock:
        if _runs == 0 or not _installed or get_llm_cache() is not _installed[0]:
            _installed[:] = [_RunCaches(get_llm_cache())]
            set_llm_cache(_installed[0])
        _runs += 1


def uninstall() -> None:
    global _runs
    with _install_lock:
        _runs -= 1
        if _runs == 0 and _installed:
            if get_llm_cache() is _installed[0]:
                set_llm_cache(_installed[0].previous)
            _installed.clear()


def paid_usage(store: BaseStore, run_id: str = "") -> Iterator[dict[str, Any]]:
    """What the server was paid for each response of a run (``spec``, input and output tokens), and each
    attempt the client gave up on (``timed_out``: booked at its reservation, possibly billed)."""
    namespace = NAMESPACE + (run_id,) if run_id else NAMESPACE
    offset = 0
    while True:
        items = store.search(namespace, limit=500, offset=offset)
        for item in items:
            paid = item.value.get("paid")
            if isinstance(paid, dict):
                yield paid
        if len(items) < 500:
            return
        offset += 500


def _plain(gen: Generation) -> dict[str, Any]:
    """A generation as plain JSON (messages in LangChain's message-dict form, no class loading)."""
    if isinstance(gen, ChatGeneration):
        return {"message": message_to_dict(gen.message), "info": gen.generation_info}
    return {"text": gen.text, "info": gen.generation_info}


def _generation(value: dict[str, Any], *, cached: bool = False) -> Generation:
    if "message" in value:
        message = messages_from_dict([value["message"]])[0]
        if cached and isinstance(message, AIMessage):  # the ledger books it apart: no request was paid
            message.response_metadata = {**message.response_metadata, CACHED_FLAG: True}
        return ChatGeneration(message=message, generation_info=value["info"])
    return Generation(text=value["text"], generation_info=value["info"])
