"""One GRPO step as a graph: its shape, the no-signal shortcut, and the step report."""

from __future__ import annotations

import threading
from typing import Any

from langgraph.store.memory import InMemoryStore

from tests.helpers import Fake, Handler, question_of, role_of
from tfgrpo.context import Context
from tfgrpo.graphs.step import STEP_NODES, compile_step_graph
from tfgrpo.nodes._llm import step_namespace
from tfgrpo.state.library import Library
from tfgrpo.state.types import Query
from tfgrpo.testing.fake_openai import estimate_request_tokens
from tfgrpo.testing.responders import solve_arithmetic

BATCH: list[Query] = [
    {"id": "q1", "question": "Calculate 2 + 3.", "answer": "5"},
    {"id": "q2", "question": "Calculate 7 - 4.", "answer": "3"},
    {"id": "q3", "question": "Calculate 6 * 7.", "answer": "42"},
]

LIBRARY: Library = {
    "version": 4,
    "next_id": 6,
    "items": [
        {"id": "G2", "text": "Check signs.", "created_step": 0, "updated_step": 2, "sources": ["a"]},
        {
            "id": "G5",
            "text": "Multiply before adding.",
            "created_step": 3,
            "updated_step": 3,
            "sources": ["b"],
        },
    ],
}


def constant_policy(correct: bool) -> Handler:
    def policy(body: dict) -> dict:
        value = solve_arithmetic(question_of(body))
        return {"content": f"Answer: {value if correct else str(value) + '0'}"}

    return policy


def alternating_policy() -> Handler:
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def policy(body: dict) -> dict:
        question = question_of(body)
        with lock:
            n = seen.get(question, 0)
            seen[question] = n + 1
        value = solve_arithmetic(question)
        return {"content": f"Answer: {value if n % 2 == 0 else str(value) + '0'}"}

    return policy


def run_step(
    fake: Fake,
    state: dict[str, Any] | None = None,
    store: InMemoryStore | None = None,
    **settings: Any,
) -> dict[str, Any]:
    options: dict[str, Any] = {"reward": "exact_match", "group_size": 4, "batch_size": 3, **settings}
    ctx = Context(model=fake.spec, **options)
    state = {"batch": BATCH, "run_id": "run", **(state or {})}
    return compile_step_graph(store=store or InMemoryStore()).invoke(
        state, context=ctx, config={"recursion_limit": 500}
    )


# ------------------------------------------------------------------------------------- shape


def test_step_graph_has_exactly_the_six_paper_steps() -> None:
    nodes = set(compile_step_graph(store=InMemoryStore()).get_graph().nodes)
    # and share_library, which puts E's rendering in the store for the map branches (the edges:
    # test_graph_shapes.py)
    assert nodes - {"__start__", "__end__"} == {
        "share_library",
        "rollout",
        "reward",
        "variance_gate",
        "summarize",
        "extract",
        "update_library",
        # --candidates: the selection runs and the choice among candidate Es (nodes/candidates.py)
        "select",
        "choose_candidate",
    }
    assert set(STEP_NODES) == nodes - {"__start__", "__end__"}


# ------------------------------------------------------------------------- no-signal shortcut


def test_all_correct_batch_makes_no_learner_calls_and_keeps_library() -> None:
    fake = Fake(rollout=constant_policy(correct=True))
    out = run_step(fake, {"library": LIBRARY})
    assert fake.count("rollout") == 12
    assert fake.count("summarize") == fake.count("extract") == fake.count("update") == 0
    assert out["library"] == LIBRARY
    report = out["report"]
    assert report["groups_kept"] == 0 and report["groups_skipped"] == 3
    assert report["mean_reward"] == 1.0
    assert report["calls"] == 12
    assert report["library_version"] == 4 and report["library_size"] == 2
    assert report["operations_applied"] == 0


def test_all_wrong_batch_makes_no_learner_calls() -> None:
    fake = Fake(rollout=constant_policy(correct=False))
    out = run_step(fake)
    assert fake.count("summarize") == fake.count("extract") == fake.count("update") == 0
    assert out["library"]["items"] == []
    assert out["report"]["mean_reward"] == 0.0
    assert out["report"]["groups_kept"] == 0


def test_empty_batch_goes_straight_to_update_without_any_call() -> None:
    fake = Fake()
    out = run_step(fake, {"batch": [], "library": LIBRARY})
    assert fake.bodies() == []
    assert out["library"] == LIBRARY
    assert out["report"]["rollouts"] == 0 and out["report"]["calls"] == 0


def test_learning_step_calls_each_role_the_expected_number_of_times() -> None:
    fake = Fake(rollout=alternating_policy())
    out = run_step(fake, whole_attempt_tokens=0)  # every attempt summarized
    assert fake.count("rollout") == 12
    assert fake.count("summarize") == 12  # every rollout of every (kept) group
    assert fake.count("extract") == 3  # one per kept group
    assert fake.count("update") == 1  # one consolidation per batch
    assert out["report"]["groups_kept"] == 3
    assert len(out["library"]["items"]) >= 1


# ------------------------------------------------------------------------------------- report


def test_report_is_consistent_with_what_happened() -> None:
    fake = Fake(rollout=alternating_policy())
    state = {"library": LIBRARY, "step": 7, "epoch": 2, "batch_index": 1}
    out = run_step(fake, state, whole_attempt_tokens=0)  # every attempt summarized
    report = out["report"]
    bodies = fake.bodies()
    assert (report["step"], report["epoch"], report["batch_index"]) == (7, 2, 1)
    assert report["queries"] == 3
    assert report["rollouts"] == 12 and report["rollouts_failed"] == 0
    assert report["groups_kept"] + report["groups_skipped"] == 3
    retried = sum(report["lessons_retried"].values())  # proposals the gate sent back once
    assert report["calls"] == len(bodies) == 12 + 12 + 3 + retried + 1
    assert fake.count("retry") == retried
    assert report["input_tokens"] == sum(estimate_request_tokens(b) for b in bodies) > 0
    assert report["output_tokens"] > 0
    rewards = [r for g in out["groups"] for r in g["rewards"]]
    assert report["mean_reward"] == round(sum(rewards) / len(rewards), 4) == 0.5
    assert report["operations_applied"] == len(report["applied"])
    assert report["operations_rejected"] == len(report["rejected"])
    assert report["operations_proposed"] == sum(len(p["operations"]) for p in out["proposals"])
    assert report["library_size"] == len(out["library"]["items"])
    assert report["library_version"] == out["library"]["version"] == LIBRARY["version"] + 1
    assert report["dropped"] == {}
    assert report["seconds"] >= 0


def lesson_for(problem: str) -> str:
    words = problem.translate(str.maketrans("0123456789", "abcdefghij"))
    return f"When a problem reads like {words}, work through it step by step."


def add_one_lesson_per_problem(body: dict) -> dict:
    problem = question_of(body).split("\n")[1]
    # one distinct lesson per problem, without its numbers (the lesson gate rejects those as problem-specific)
    operations = [{"op": "ADD", "content": lesson_for(problem)}]
    return {
        "tool_calls": [
            {"name": "ExtractedExperiences", "arguments": {"analysis": "a", "operations": operations}}
        ]
    }


def test_new_ids_continue_from_next_id_of_the_given_library() -> None:
    fake = Fake(rollout=alternating_policy(), extract=add_one_lesson_per_problem)
    out = run_step(fake, {"library": LIBRARY})
    items = out["library"]["items"]
    assert items[:2] == LIBRARY["items"]
    assert [item["id"] for item in items[2:]] == ["G6", "G7", "G8"]
    assert sorted(item["text"] for item in items[2:]) == sorted(lesson_for(q["question"]) for q in BATCH)
    assert out["library"]["next_id"] == 9


def test_trajectories_are_in_the_store_not_in_state() -> None:
    store = InMemoryStore()
    fake = Fake(rollout=alternating_policy())
    out = run_step(fake, {"run_id": "traj", "step": 3}, store=store)
    for ref in out["rollouts"]:
        assert set(ref) <= {"key", "query_id", "g", "ok", "error"}
        item = store.get(step_namespace("traj", 3, "rollouts"), ref["key"])
        assert item is not None
        stored = item.value["rollout"]
        assert stored["query_id"] == ref["query_id"] and stored["g"] == ref["g"]
        assert stored["response"].startswith("Answer:")
        assert [m["type"] for m in stored["trajectory"]] == ["human", "ai"]  # the agent's messages


def test_learner_model_is_used_for_learning_roles_and_policy_for_rollouts() -> None:
    policy, learner = Fake(rollout=alternating_policy()), Fake()
    options: dict[str, Any] = {
        "reward": "exact_match",
        "group_size": 2,
        "batch_size": 3,
        "whole_attempt_tokens": 0,
    }
    ctx = Context(model=policy.spec, learner_model=learner.spec, **options)
    compile_step_graph(store=InMemoryStore()).invoke(
        {"batch": BATCH, "run_id": "r"}, context=ctx, config={"recursion_limit": 500}
    )
    assert {role_of(b) for b in policy.bodies()} == {"rollout"}
    # (retry: a proposal the lesson gate rejected, sent back once)
    assert {role_of(b) for b in learner.bodies()} - {"retry"} == {"summarize", "extract", "update"}


def test_context_given_as_plain_dict_works_like_studio() -> None:
    fake = Fake(rollout=constant_policy(correct=True))
    ctx = {"model": fake.spec, "reward": "exact_match", "group_size": 3, "batch_size": 3}
    out = compile_step_graph(store=InMemoryStore()).invoke(
        {"batch": BATCH, "run_id": "r"}, context=ctx, config={"recursion_limit": 500}
    )
    assert out["report"]["rollouts"] == 9
    assert fake.count("rollout") == 9
