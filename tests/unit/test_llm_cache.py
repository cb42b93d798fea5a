"""The run's LLM-result cache: a response is stored as it arrives and an identical request of the run gets
it back; identical requests in flight are sent once; calls outside the run's ledger are not answered."""

from __future__ import annotations

import threading
import time

import pytest
from langchain_core.globals import get_llm_cache
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.store.memory import InMemoryStore

from tfgrpo.models.cache import NAMESPACE
from tfgrpo.models.ledger import Ledger, current_ledger, make_record, use_llm_cache
from tfgrpo.testing.scripted import ScriptedChatModel


def ask(model: ScriptedChatModel, text: str, **kwargs: object) -> AIMessage:
    out, _ = current_ledger().call(
        lambda: model.invoke([HumanMessage(text)], **kwargs), spec="scripted:m", reserve_in=10, reserve_out=10
    )
    assert isinstance(out, AIMessage)
    return out


def test_identical_request_is_answered_from_the_store_with_its_usage() -> None:
    calls: list[dict] = []

    def responder(request: dict) -> dict:
        calls.append(request)
        return {"content": f"answer {len(calls)}"}

    model = ScriptedChatModel(responder=responder)
    store = InMemoryStore()
    with use_llm_cache(store):
        first = ask(model, "2 + 2?", seed=7)
        assert len(store.search(NAMESPACE)) == 1  # stored before invoke returned
        again = ask(model, "2 + 2?", seed=7)
        other_seed = ask(model, "2 + 2?", seed=8)
    assert len(calls) == 2 and again.content == first.content == "answer 1"
    assert other_seed.content == "answer 2"  # another sampling seed is another request
    assert again.usage_metadata and first.usage_metadata
    assert again.usage_metadata["input_tokens"] == first.usage_metadata["input_tokens"]
    # the hit is booked apart: it paid nothing
    assert make_record("summarize", "scripted:m", True, 0.0, again).get("cached") == 1
    assert "cached" not in make_record("summarize", "scripted:m", True, 0.0, first)
    assert get_llm_cache() is None  # restored after the run


def test_failed_calls_are_not_stored() -> None:
    def responder(request: dict) -> dict:
        raise RuntimeError("server down")

    store = InMemoryStore()
    with use_llm_cache(store), pytest.raises(Exception, match="server down"):
        ask(ScriptedChatModel(responder=responder), "hi")
    assert store.search(NAMESPACE) == []


def test_identical_requests_in_flight_are_sent_once() -> None:
    calls: list[dict] = []

    def slow(request: dict) -> dict:
        calls.append(request)
        time.sleep(0.2)
        return {"content": "done"}

    model = ScriptedChatModel(responder=slow)
    replies: list[AIMessage] = []
    ledger = Ledger(max_concurrency=4)
    with use_llm_cache(InMemoryStore(), ledger=ledger):

        def branch() -> None:
            out, _ = ledger.call(
                lambda: model.invoke([HumanMessage("same")]), spec="s", reserve_in=1, reserve_out=1
            )
            replies.append(out)

        threads = [threading.Thread(target=branch) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(calls) == 1, f"{len(calls)} requests for one body in flight"
    assert [r.content for r in replies] == ["done"] * 4
    assert sum(bool(r.response_metadata.get("tfgrpo_cached")) for r in replies) == 3


def test_a_model_outside_the_runs_ledger_is_not_answered_by_the_run_cache() -> None:
    calls: list[dict] = []
    model = ScriptedChatModel(responder=lambda r: calls.append(r) or {"content": "x"})
    with use_llm_cache(InMemoryStore()):
        ask(model, "hello")
        model.invoke([HumanMessage("hello")])  # the user's own call, not through the run's ledger
    assert len(calls) == 2
