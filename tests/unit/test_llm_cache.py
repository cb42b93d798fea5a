"""The run's LLM-result cache: a response is stored as it arrives and an identical request gets it back."""

from __future__ import annotations

import pytest
from langchain_core.globals import get_llm_cache
from langchain_core.messages import HumanMessage
from langgraph.store.memory import InMemoryStore

from tfgrpo.models.cache import NAMESPACE, use_llm_cache
from tfgrpo.testing.scripted import ScriptedChatModel


def test_identical_request_is_answered_from_the_store_with_its_usage() -> None:
    calls: list[dict] = []

    def responder(request: dict) -> dict:
        calls.append(request)
        return {"content": f"answer {len(calls)}"}

    model = ScriptedChatModel(responder=responder)
    store = InMemoryStore()
    with use_llm_cache(store):
        first = model.invoke([HumanMessage("2 + 2?")], seed=7)
        assert len(store.search(NAMESPACE)) == 1  # stored before invoke returned
        again = model.invoke([HumanMessage("2 + 2?")], seed=7)
        other_seed = model.invoke([HumanMessage("2 + 2?")], seed=8)
    assert len(calls) == 2 and again.content == first.content == "answer 1"
    assert other_seed.content == "answer 2"  # another sampling seed is another request
    assert again.usage_metadata and first.usage_metadata
    assert again.usage_metadata["input_tokens"] == first.usage_metadata["input_tokens"]
    assert get_llm_cache() is None  # restored after the run


def test_failed_calls_are_not_stored() -> None:
    def responder(request: dict) -> dict:
        raise RuntimeError("server down")

    store = InMemoryStore()
    with use_llm_cache(store), pytest.raises(RuntimeError):
        ScriptedChatModel(responder=responder).invoke([HumanMessage("hi")])
    assert store.search(NAMESPACE) == []
