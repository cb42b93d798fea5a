"""Every LLM result of a run, persisted the moment it arrives: a kill costs only the calls in flight.

The node memo (:mod:`tfgrpo.nodes._llm`) and the checkpoint's pending writes keep finished *nodes*; a
node that makes several calls (an agent run: model, tool, model, ...; a reward with a judge; the
per-group calls of extract) loses the calls it had already made when it is killed, and pays for them
again when it re-runs. This cache closes that window: it is a LangChain LLM cache (``BaseCache``) backed
by the run's LangGraph store, so LangChain writes each response to it right after the HTTP response is
parsed, before any other processing, in one store transaction. A re-executed node sends the same
requests again (the same prompts and sampling seeds) and gets the stored responses back for free.

The key is LangChain's own: the serialized prompt and the model's settings (model, endpoint,
temperature, max tokens, bound tools, seed, ...). Failed calls are never stored. The CLI turns it on
for the duration of a run with :func:`use_llm_cache`; a library user who wants it sets it the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from langchain_core.caches import BaseCache
from langchain_core.globals import get_llm_cache, set_llm_cache
from langchain_core.messages import message_to_dict, messages_from_dict
from langchain_core.outputs import ChatGeneration, Generation
from langgraph.store.base import BaseStore

from tfgrpo.models.known_keys import known_keys

NAMESPACE = ("tfgrpo-llm-results",)


def cache_key(prompt: str, llm_string: str) -> str:
    return hashlib.sha256(f"{llm_string}\x00{prompt}".encode()).hexdigest()


class StoreLLMCache(BaseCache):
    """A LangChain LLM cache in a LangGraph store (one put per response: one SQLite transaction)."""

    def __init__(self, store: BaseStore, namespace: tuple[str, ...] = NAMESPACE) -> None:
        self.store = store
        self.namespace = namespace

    def lookup(self, prompt: str, llm_string: str) -> Sequence[Generation] | None:
        key = cache_key(prompt, llm_string)
        if not known_keys.may_exist(self.store, self.namespace, key):  # a fresh run: no query per call
            return None
        item = self.store.get(self.namespace, key)
        if item is None:
            return None
        return [_generation(g) for g in item.value["generations"]]

    def update(self, prompt: str, llm_string: str, return_val: Sequence[Generation]) -> None:
        value: dict[str, Any] = {"generations": [_plain(g) for g in return_val]}
        key = cache_key(prompt, llm_string)
        known_keys.adding(self.store, self.namespace, key)
        self.store.put(self.namespace, key, value, index=False)

    def clear(self, **kwargs: Any) -> None:
        while items := self.store.search(self.namespace, limit=500):
            for item in items:
                self.store.delete(self.namespace, item.key)


def _plain(gen: Generation) -> dict[str, Any]:
    """A generation as plain JSON (messages in LangChain's message-dict form, no class loading)."""
    if isinstance(gen, ChatGeneration):
        return {"message": message_to_dict(gen.message), "info": gen.generation_info}
    return {"text": gen.text, "info": gen.generation_info}


def _generation(value: dict[str, Any]) -> Generation:
    if "message" in value:
        return ChatGeneration(
            message=messages_from_dict([value["message"]])[0], generation_info=value["info"]
        )
    return Generation(text=value["text"], generation_info=value["info"])


@contextmanager
def use_llm_cache(store: BaseStore, run_id: str = "") -> Iterator[StoreLLMCache]:
    """Persist every LLM response of this process in ``store`` for the ``with`` block (process-wide:
    LangChain chat models without a cache of their own use the global one). ``run_id`` keeps the runs
    of a shared database apart: a run never answers its calls with another run's responses."""
    previous = get_llm_cache()
    cache = StoreLLMCache(store, NAMESPACE + (run_id,) if run_id else NAMESPACE)
    set_llm_cache(cache)
    try:
        yield cache
    finally:
        set_llm_cache(previous)
