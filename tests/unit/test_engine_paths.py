"""The engine's fast paths (issue 13) must not change what is sent or what a resumed run finds:
a direct-domain rollout makes the very request of the policy agent, and the "known absent" shortcut of
the memo and the result cache never hides an item that exists."""

from __future__ import annotations

import contextvars
from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.store.memory import InMemoryStore

from tfgrpo.context import Context
from tfgrpo.models.known_keys import KnownKeys
from tfgrpo.models.ledger import current_ledger, use_llm_cache
from tfgrpo.models.spec import register_provider
from tfgrpo.nodes._llm import memo_get, memo_put
from tfgrpo.nodes.policy import LEDGER_KEY, rollout_agent, run_policy
from tfgrpo.testing.scripted import ScriptedChatModel


def _provider(prefix: str) -> list[ScriptedChatModel]:
    models: list[ScriptedChatModel] = []

    def factory(name: str, settings: object) -> ScriptedChatModel:
        model = ScriptedChatModel(responder=lambda body: {"content": "2 + 2 = 4\n\\boxed{4}"})
        models.append(model)
        return model

    register_provider(prefix, factory)
    return models


def test_direct_rollout_sends_the_agents_request_and_shares_its_cache_entry() -> None:
    models = _provider("enginepaths")
    ctx = Context(model="enginepaths:m", domain="direct", reward="math")
    store = InMemoryStore()
    with use_llm_cache(store, "r1"):
        messages, error, records = run_policy(ctx, "What is 2 + 2?", "[G1] Add carefully.", 7)
        assert error is None and len(records) == 1 and records[0]["ok"]
        assert messages[-1].text.endswith("\\boxed{4}") and messages[-1].name == "policy"
        fast = models[0].calls[-1]
        # the agent path (what every rollout ran before): same question, E and seed
        # (the run's ledger goes with the detached agent, as run_policy passes it)
        config: Any = {"configurable": {"tfgrpo_seed": 7, "tfgrpo_calls": [], LEDGER_KEY: current_ledger()}}
        contextvars.Context().run(
            rollout_agent().invoke,
            {"messages": [HumanMessage("What is 2 + 2?")], "experiences": "[G1] Add carefully."},
            config,
            context=ctx,
        )
    assert models[0].call_count == 1, "the agent's request was answered from the direct path's cache entry"
    assert fast["seed"] == 7 and "tools" not in fast
    assert [m["role"] for m in fast["messages"]] == ["system", "user"]
    assert "[G1] Add carefully." in fast["messages"][0]["content"]


def test_known_keys_never_hide_an_existing_item() -> None:
    store = InMemoryStore()
    ns = ("tfgrpo", "run", "step-00000", "rollouts")
    store.put(ns, "q1#0", {"rollout": "kept from a killed run"})
    # a namespace that has items when first seen is asked every time (a resumed run)
    assert memo_get(store, ns, "q1#0") == {"rollout": "kept from a killed run"}
    assert memo_get(store, ns, "q1#1") is None
    store.put(ns, "q1#1", {"rollout": "written by someone else"})
    assert memo_get(store, ns, "q1#1") == {"rollout": "written by someone else"}

    fresh = ("tfgrpo", "run", "step-00001", "rollouts")
    assert memo_get(store, fresh, "q1#0") is None  # first look: empty
    memo_put(store, fresh, "q1#0", {"rollout": "new"})
    assert memo_get(store, fresh, "q1#0") == {"rollout": "new"}
    store.delete(fresh, "q1#0")  # (the evaluator deletes failed runs' memos to re-run them)
    assert memo_get(store, fresh, "q1#0") is None


def test_known_keys_answers_absent_without_a_query_only_for_a_namespace_seen_empty() -> None:
    queries: list[str] = []

    class CountingStore(InMemoryStore):
        def batch(self, ops: Any) -> Any:
            queries.extend(type(op).__name__ for op in ops)
            return super().batch(ops)

    keys, store, ns = KnownKeys(), CountingStore(), ("a", "b")
    assert not keys.may_exist(store, ns, "k1")
    assert queries == ["SearchOp"]
    assert not keys.may_exist(store, ns, "k2") and queries == ["SearchOp"]
    keys.adding(store, ns, "k2")
    assert keys.may_exist(store, ns, "k2")
    # a namespace written before it was ever looked at stays "unknown": always asked
    keys.adding(store, ("c",), "x")
    assert keys.may_exist(store, ("c",), "other")
    # another store (e.g. the next run directory's) starts afresh
    other = CountingStore()
    other.put(ns, "k1", {"v": 1})
    assert keys.may_exist(other, ns, "k1")


def test_structured_call_sends_with_structured_outputs_request_and_cache_key(fake_server: Any) -> None:
    """The bound-tool structured call of langchain-openai models is the request that
    ``with_structured_output(include_raw=True)`` sends: the server sees it once, the second asker is
    answered by the result cache, and the parse is the same."""
    from langchain_core.messages import SystemMessage
    from pydantic import BaseModel

    from tfgrpo.nodes._llm import call_structured, learner_model
    from tfgrpo.nodes.extract import ExtractedExperiences

    ctx = Context(model="openai:fake", base_url=fake_server.base_url)
    model, spec = learner_model(ctx)
    messages = [SystemMessage("Extract experiences: call ExtractedExperiences."), HumanMessage("q1")]
    with use_llm_cache(InMemoryStore()):
        parsed, records, error = call_structured(
            ctx, model, spec, "extract", ExtractedExperiences, messages, retries=0
        )
        assert error is None and isinstance(parsed, ExtractedExperiences) and records[0]["ok"]
        old = model.with_structured_output(ExtractedExperiences, method="function_calling", include_raw=True)
        out, _ = current_ledger().call(  # (the run's cache answers the calls of the run's ledger)
            lambda: old.invoke(messages),
            spec=spec,
            reserve_in=100,
            reserve_out=100,
            message_of=lambda o: None,
        )
    assert isinstance(out, dict) and isinstance(out["parsed"], BaseModel)
    assert out["parsed"] == parsed
    assert len(fake_server.requests) == 1, "with_structured_output's request has the same cache key"
    body = fake_server.requests[0]
    assert body["tool_choice"]["function"]["name"] == "ExtractedExperiences"
    assert body["parallel_tool_calls"] is False and len(body["tools"]) == 1
