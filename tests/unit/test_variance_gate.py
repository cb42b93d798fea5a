"""The variance gate: which groups teach something, and where the router sends the step next."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langgraph.graph import END, START, StateGraph
from langgraph.store.memory import InMemoryStore
from langgraph.types import Send

from tfgrpo.context import Context
from tfgrpo.graphs.step import compile_step_graph
from tfgrpo.models.spec import register_provider
from tfgrpo.nodes.variance_gate import judge_group, route_after_gate
from tfgrpo.state.graph_state import StepState
from tfgrpo.state.types import Group, Query
from tfgrpo.testing.fake_openai import forced_tool_name, message_text
from tfgrpo.testing.responders import grpo_responder
from tfgrpo.testing.scripted import ScriptedChatModel


def group(rewards: list[float | None], query_id: str = "q1") -> Group:
    keys = [f"{query_id}#{g}" for g in range(len(rewards))]
    return {"query_id": query_id, "keys": keys, "rewards": rewards, "kept": False, "reason": "unjudged"}


# ------------------------------------------------------------------------------ judge_group


@pytest.mark.parametrize(
    "rewards",
    [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5], [0.5, 0.5, 0.5, 0.5]],
    ids=["all-0", "all-1", "two-halves", "four-halves"],
)
def test_equal_rewards_are_skipped(rewards: list[float | None]) -> None:
    judged = judge_group(group(rewards))
    assert judged["kept"] is False
    assert "spread" in judged["reason"]


@pytest.mark.parametrize(
    "rewards",
    [[0.5, 0.7], [0.0, 1.0], [1.0, 1.0, 0.0], [0.2, 0.2, 0.2, 0.9], [0.0, None, 1.0]],
)
def test_groups_with_reward_spread_are_kept(rewards: list[float | None]) -> None:
    judged = judge_group(group(rewards))
    assert judged["kept"] is True


def test_partial_rewards_all_equal_are_skipped_although_mean_is_strictly_between_0_and_1() -> None:
    # the reference's "0 < mean < 1" rule would keep this group; its advantage is zero
    rewards: list[float | None] = [0.5, 0.5]
    mean = sum(r for r in rewards if r is not None) / len(rewards)
    assert 0 < mean < 1
    assert judge_group(group(rewards))["kept"] is False


@pytest.mark.parametrize("rewards", [[1.0, None, None], [None, 0.0], [None, None, None, None], []])
def test_fewer_than_two_usable_rollouts_are_skipped(rewards: list[float | None]) -> None:
    judged = judge_group(group(rewards))
    assert judged["kept"] is False
    assert "usable" in judged["reason"]


def test_judge_group_keeps_the_rest_of_the_group() -> None:
    original = group([0.0, 1.0], query_id="abc")
    judged = judge_group(original)
    assert judged["query_id"] == "abc"
    assert judged["keys"] == original["keys"]
    assert judged["rewards"] == [0.0, 1.0]
    assert original["kept"] is False  # the input is not mutated


# ---------------------------------------------------------------- route_after_gate in a graph


def route_in_graph(groups: list[Group], batch: list[Query]) -> list[Send] | str:
    """Run ``route_after_gate`` inside a tiny graph (it needs a runtime) and return its result."""
    seen: dict[str, Any] = {}

    def probe(state: StepState) -> dict[str, Any]:
        seen["route"] = route_after_gate(state)
        return {}

    builder = StateGraph(StepState)
    builder.add_node("probe", probe)
    builder.add_edge(START, "probe")
    builder.add_edge("probe", END)
    builder.compile(store=InMemoryStore()).invoke({"groups": groups, "batch": batch, "run_id": "r"})
    return seen["route"]


BATCH: list[Query] = [
    {"id": "q1", "question": "Calculate 2 + 3.", "answer": "5"},
    {"id": "q2", "question": "Calculate 7 - 4.", "answer": "3"},
]


def test_route_goes_to_update_library_when_nothing_is_kept() -> None:
    groups = [judge_group(group([1.0, 1.0], "q1")), judge_group(group([0.0, None], "q2"))]
    assert route_in_graph(groups, BATCH) == "update_library"


def test_route_goes_to_update_library_when_there_are_no_groups() -> None:
    assert route_in_graph([], []) == "update_library"


def test_route_sends_one_summarize_per_usable_rollout_of_kept_groups() -> None:
    groups = [
        judge_group(group([1.0, None, 0.0], "q1")),  # kept, 2 usable
        judge_group(group([1.0, 1.0, 1.0], "q2")),  # skipped
    ]
    sends = route_in_graph(groups, BATCH)
    assert isinstance(sends, list)
    assert all(isinstance(s, Send) and s.node == "summarize" for s in sends)
    got = sorted((s.arg["key"], s.arg["g"], s.arg["reward"]) for s in sends)
    assert got == [("q1#0", 0, 1.0), ("q1#2", 2, 0.0)]
    assert all(s.arg["query"] == BATCH[0] for s in sends)


def test_each_summarize_branch_gets_its_rollouts_reward_reason() -> None:
    explained = {**group([1.0, 0.0], "q1"), "reward_reasons": ["read '5'", "read '6'; expected '5'"]}
    silent = group([0.0, 1.0], "q2")  # a reward that gives no reason (or a group from before reasons)
    sends = route_in_graph([judge_group(explained), judge_group(silent)], BATCH)
    assert isinstance(sends, list)
    got = sorted((s.arg["key"], s.arg["reward_reason"]) for s in sends)
    assert got == [("q1#0", "read '5'"), ("q1#1", "read '6'; expected '5'"), ("q2#0", ""), ("q2#1", "")]


# ------------------------------------------------------------- through the step graph (partial)

REWARD_SOURCE = """
import re

def score(response, answer):
    match = re.search(r"Score: ([0-9.]+)", response)
    return float(match.group(1)) if match else 0.0
"""


def scored_policy(scores: dict[str, list[float]]) -> Callable[[dict], dict]:
    """Rollouts of question Q answer ``Score: s`` with s cycling through ``scores[Q]``."""
    counters = {q: itertools.cycle(values) for q, values in scores.items()}
    lock = threading.Lock()

    def responder(body: dict) -> dict:
        if forced_tool_name(body) is not None:
            return grpo_responder(body)
        system = " ".join(message_text(m.get("content")) for m in body["messages"] if m["role"] == "system")
        if "SUMMARIZE" in system:
            return grpo_responder(body)
        question = message_text(body["messages"][-1]["content"])
        with lock:
            value = next(counters[question])
        return {"content": f"Thinking.\nScore: {value}"}

    return responder


def run_partial(tmp_path: Path, scores: dict[str, list[float]]) -> tuple[dict, list[ScriptedChatModel]]:
    reward_file = tmp_path / "score_reward.py"
    reward_file.write_text(REWARD_SOURCE)
    prefix = "vg" + uuid.uuid4().hex[:8]
    built: list[ScriptedChatModel] = []
    responder = scored_policy(scores)

    def factory(name: str, settings: object) -> ScriptedChatModel:
        model = ScriptedChatModel(responder=responder)
        built.append(model)
        return model

    register_provider(prefix, factory)
    batch = [{"id": f"q{i}", "question": q, "answer": "x"} for i, q in enumerate(scores)]
    ctx = Context(
        model=f"{prefix}:m",
        reward=f"{reward_file}:score",
        group_size=2,
        batch_size=len(batch),
        whole_attempt_tokens=0,  # every attempt summarized
    )
    out = compile_step_graph(store=InMemoryStore()).invoke(
        {"batch": batch, "run_id": "r"}, context=ctx, config={"recursion_limit": 500}
    )
    return out, built


def summarize_calls(models: list[ScriptedChatModel]) -> int:
    return sum(
        1
        for m in models
        for body in m.calls
        if any(
            "SUMMARIZE" in message_text(x.get("content")) for x in body["messages"] if x["role"] == "system"
        )
    )


def test_step_keeps_partial_rewards_with_spread_and_skips_equal_partial_rewards(tmp_path: Path) -> None:
    out, models = run_partial(tmp_path, {"Spread question": [0.5, 0.7], "Flat question": [0.5, 0.5]})
    by_query = {g["query_id"]: g for g in out["groups"]}
    assert sorted(by_query["q0"]["rewards"]) == [0.5, 0.7]
    assert by_query["q0"]["kept"] is True
    assert by_query["q1"]["rewards"] == [0.5, 0.5]
    assert by_query["q1"]["kept"] is False
    assert out["report"]["groups_kept"] == 1
    assert out["report"]["groups_skipped"] == 1
    assert summarize_calls(models) == 2  # the two rollouts of the kept group only


def test_step_with_only_equal_partial_rewards_makes_no_learner_call(tmp_path: Path) -> None:
    out, models = run_partial(tmp_path, {"Flat question": [0.5], "Other flat": [0.25]})
    assert out["report"]["groups_kept"] == 0
    assert out["report"]["calls"] == 4  # the 2 x 2 rollouts, nothing else
    assert sum(m.call_count for m in models) == 4
    assert summarize_calls(models) == 0
    assert out["library"]["items"] == []
