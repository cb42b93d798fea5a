"""The step's nodes, driven through the step graph with scripted models: failures, prompts, parsing."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from langgraph.store.memory import InMemoryStore

from tests import helpers
from tests.helpers import Handler, extract_reply, question_of, tool_reply
from tfgrpo.context import Context
from tfgrpo.graphs.step import compile_step_graph
from tfgrpo.state.library import (
    INJECTION_HEADER,
    Library,
    empty_library,
    render_library,
    render_library_for_review,
)
from tfgrpo.state.types import Query
from tfgrpo.testing.fake_openai import message_text
from tfgrpo.testing.responders import grpo_responder, solve_arithmetic

BATCH: list[Query] = [
    {"id": "q1", "question": "Calculate 2 + 3.", "answer": "5"},
    {"id": "q2", "question": "Calculate 7 - 4.", "answer": "3"},
]


def alternating_policy() -> Handler:
    """Rollouts of each question alternate right / wrong, so every group of even G has spread."""
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def policy(body: dict) -> dict:
        question = question_of(body)
        with lock:
            n = seen.get(question, 0)
            seen[question] = n + 1
        value = solve_arithmetic(question)
        answer = value if n % 2 == 0 else f"{value}1"
        return {"content": f"Step by step.\nAnswer: {answer}"}

    return policy


class Fake(helpers.Fake):
    """The shared fake provider; rollouts alternate right / wrong unless a test says otherwise."""

    def __init__(self, **handlers: Handler) -> None:
        super().__init__(**{"rollout": alternating_policy(), **handlers})


def run_step(
    fake: Fake, *, batch: list[Query] = BATCH, library: Library | None = None, **settings: Any
) -> dict[str, Any]:
    step = settings.pop("step", 0)
    options: dict[str, Any] = {"reward": "exact_match", "group_size": 2, "batch_size": len(batch), **settings}
    ctx = Context(model=fake.spec, **options)
    state: dict[str, Any] = {"batch": batch, "run_id": "run", "step": step}
    if library is not None:
        state["library"] = library
    return compile_step_graph(store=InMemoryStore()).invoke(
        state, context=ctx, config={"recursion_limit": 500}
    )


def seeded_library() -> Library:
    return {
        "version": 2,
        "next_id": 3,
        "items": [
            {
                "id": "G1",
                "text": "Write down every intermediate result.",
                "created_step": 0,
                "updated_step": 0,
                "sources": ["old"],
            },
            {
                "id": "G2",
                "text": "Check the sign of the answer.",
                "created_step": 1,
                "updated_step": 1,
                "sources": ["old"],
            },
        ],
    }


# ------------------------------------------------------------------------------------- rollout


def test_failing_rollout_is_recorded_and_the_step_completes() -> None:
    policy = alternating_policy()

    def flaky(body: dict) -> dict:
        if "7 - 4" in question_of(body):
            raise RuntimeError("server exploded")
        return policy(body)

    fake = Fake(rollout=flaky)
    out = run_step(fake)
    report = out["report"]
    assert report["rollouts"] == 4
    assert report["rollouts_failed"] == 2
    assert report["dropped"].get("rollout") == 2
    failed = [r for r in out["rollouts"] if not r["ok"]]
    assert sorted(r["key"] for r in failed) == ["q2#0", "q2#1"]
    assert all("server exploded" in (r.get("error") or "") for r in failed)
    groups = {g["query_id"]: g for g in out["groups"]}
    assert groups["q2"]["rewards"] == [None, None]
    assert groups["q2"]["kept"] is False
    assert groups["q1"]["kept"] is True  # the healthy query still learns
    assert report["groups_kept"] == 1
    assert report["library_size"] == len(out["library"]["items"]) >= 1


def test_one_failed_rollout_in_a_group_of_three_leaves_the_rest_usable() -> None:
    lock = threading.Lock()
    calls = {"n": 0}

    def one_fails(body: dict) -> dict:
        with lock:
            calls["n"] += 1
            n = calls["n"]
        if n == 1:
            raise RuntimeError("400 bad request")
        question = question_of(body)
        value = solve_arithmetic(question)
        return {"content": f"Answer: {value if n % 2 == 0 else 999}"}

    fake = Fake(rollout=one_fails)
    out = run_step(fake, batch=BATCH[:1], group_size=3, whole_attempt_tokens=0)
    (grp,) = out["groups"]
    assert sum(r is None for r in grp["rewards"]) == 1
    assert sorted(r for r in grp["rewards"] if r is not None) == [0.0, 1.0]
    assert grp["kept"] is True
    assert out["report"]["rollouts_failed"] == 1
    assert fake.count("summarize") == 2  # only the usable rollouts are summarized


def test_rollout_system_prompt_contains_the_rendered_library() -> None:
    fake = Fake()
    library = seeded_library()
    run_step(fake, library=library)
    rollouts = fake.bodies("rollout")
    assert len(rollouts) == 4
    rendered = render_library(library)
    for body in rollouts:
        system = [m for m in body["messages"] if m["role"] == "system"]
        assert len(system) == 1
        assert rendered in message_text(system[0]["content"])
        user = message_text([m for m in body["messages"] if m["role"] == "user"][0]["content"])
        assert INJECTION_HEADER not in user and "[G1]" not in user


def test_rollout_system_prompt_has_no_library_block_when_library_is_empty() -> None:
    fake = Fake()
    run_step(fake, library=empty_library())
    for body in fake.bodies("rollout"):
        system = message_text([m for m in body["messages"] if m["role"] == "system"][0]["content"])
        assert INJECTION_HEADER not in system


def test_each_rollout_of_a_group_gets_a_distinct_seed() -> None:
    fake = Fake()
    run_step(fake, group_size=3)
    seeds = [b.get("seed") for b in fake.bodies("rollout")]
    assert len(seeds) == 6 and None not in seeds
    assert len(set(seeds)) == 6


def test_reward_that_raises_is_dropped_not_fatal(tmp_path) -> None:
    reward_file = tmp_path / "bad_reward.py"
    reward_file.write_text(
        "def score(response, answer):\n"
        "    if '999' in response:\n"
        "        raise ValueError('cannot judge')\n"
        "    return 1.0 if answer in response else 0.0\n"
    )

    def policy(body: dict) -> dict:
        return {"content": "Answer: 999" if "2 + 3" in question_of(body) else "Answer: 3"}

    fake = Fake(rollout=policy)
    out = run_step(fake, reward=f"{reward_file}:score")
    groups = {g["query_id"]: g for g in out["groups"]}
    assert groups["q1"]["rewards"] == [None, None]
    assert groups["q2"]["rewards"] == [1.0, 1.0]
    assert out["report"]["dropped"].get("reward") == 2
    assert out["report"]["rollouts_failed"] == 0


def test_reward_reasons_are_kept_beside_their_rollouts_and_bad_values_are_dropped(tmp_path) -> None:
    reward_file = tmp_path / "why_reward.py"
    reward_file.write_text(
        "def score(response, answer):\n"
        "    if '999' in response:\n"
        "        return (0.5, None)  # a reason that is not text\n"
        "    got = response.split()[-1]\n"
        "    if got == answer:\n"
        "        return (1.0, 'read ' + got)\n"
        "    return (0.0, 'read ' + got + '; expected ' + answer)\n"
    )

    def policy(body: dict) -> dict:
        return {"content": "Answer: 999" if "2 + 3" in question_of(body) else "Answer: 3"}

    fake = Fake(rollout=policy)
    out = run_step(fake, reward=f"{reward_file}:score")
    groups = {g["query_id"]: g for g in out["groups"]}
    assert groups["q1"]["rewards"] == [None, None]
    assert groups["q1"]["reward_reasons"] == ["", ""]
    assert groups["q2"]["rewards"] == [1.0, 1.0]
    assert groups["q2"]["reward_reasons"] == ["read 3", "read 3"]
    assert out["report"]["dropped"].get("reward") == 2
    bad = [d["reason"] for d in out["dropped"] if d["stage"] == "reward"]
    assert all("why_reward.py:score" in r and "(0.5, None)" in r and "\n" not in r for r in bad), bad


NO_MAJORITY = "no answer was given by more attempts than any other (no majority)"


@pytest.mark.parametrize(
    ("reward", "reasons"),
    [
        ("exact_match", ["read '5'; expected '5': the same answer",
                         "read '51'; expected '5': a different answer"]),
        ("judge", ["read '5'; expected '5': the judge said CORRECT",
                   "read '51'; expected '5': the judge said INCORRECT"]),
        ("majority", [f"read '5'; {NO_MAJORITY}", f"read '51'; {NO_MAJORITY}"]),
    ],
)  # fmt: skip
def test_builtin_rewards_explain_every_rollout(reward: str, reasons: list[str]) -> None:
    out = run_step(Fake(), batch=BATCH[:1], reward=reward)
    (group,) = out["groups"]
    assert sorted(group["reward_reasons"]) == reasons


def test_failed_summary_is_dropped_and_a_group_left_with_one_summary_is_not_extracted() -> None:
    def summarize(body: dict) -> dict:
        user = question_of(body)
        if "2 + 3" in user and "Reward of this attempt: 0" in user:
            raise RuntimeError("summarizer refused")
        return grpo_responder(body)

    fake = Fake(summarize=summarize)
    out = run_step(fake, whole_attempt_tokens=0)  # every attempt summarized
    report = out["report"]
    assert fake.count("summarize") == 4
    assert report["dropped"].get("summarize") == 1
    assert report["dropped"].get("extract") == 1  # q1 has a single usable summary left
    assert fake.count("extract") == 1  # only q2 is compared
    assert [p["query_id"] for p in out["proposals"]] == ["q2"]
    assert sum(1 for s in out["summaries"] if not s["ok"]) == 1


def test_summarizer_sees_ground_truth_reward_and_response() -> None:
    fake = Fake()
    run_step(fake, batch=BATCH[:1], whole_attempt_tokens=0)
    prompts = sorted(question_of(b) for b in fake.bodies("summarize"))
    assert len(prompts) == 2
    assert all("Ground-truth answer: 5" in p for p in prompts)
    assert "Reward of this attempt: 0" in prompts[0] and "Answer: 51" in prompts[0]
    assert "Reward of this attempt: 1" in prompts[1] and "Answer: 5" in prompts[1]


# ------------------------------------------------------------------------------------- extract


@pytest.mark.parametrize("retries", [0, 2])
def test_extract_invalid_json_arguments_are_retried_then_dropped(retries: int) -> None:
    fake = Fake(extract=lambda body: tool_reply("ExtractedExperiences", '{"analysis": "x", "operations": [}'))
    out = run_step(fake, structured_retries=retries)
    report = out["report"]
    assert report["groups_kept"] == 2
    assert fake.count("extract") == 2 * (retries + 1)
    assert report["dropped"].get("extract") == 2
    assert out.get("proposals", []) == []
    assert fake.count("update") == 0
    assert out["library"] == empty_library()
    assert report["operations_applied"] == 0


def test_extract_missing_required_fields_are_retried_then_dropped() -> None:
    fake = Fake(extract=lambda body: tool_reply("ExtractedExperiences", {"operations": [{"op": "ADD"}]}))
    out = run_step(fake, batch=BATCH[:1], structured_retries=1)
    assert fake.count("extract") == 2
    assert out["report"]["dropped"].get("extract") == 1
    assert out["library"]["items"] == []


def test_extract_retry_can_recover() -> None:
    lock = threading.Lock()
    attempts = {"n": 0}

    def second_time_lucky(body: dict) -> dict:
        with lock:
            attempts["n"] += 1
            first = attempts["n"] == 1
        if first:
            return {"content": "Sorry, I will not use tools."}
        return tool_reply(
            "ExtractedExperiences",
            {
                "analysis": "a",
                "operations": [
                    {
                        "op": "ADD",
                        "content": "Recovered lesson: when a sum mixes signs, add the terms in order.",
                    }
                ],
            },
        )

    fake = Fake(extract=second_time_lucky)
    out = run_step(fake, batch=BATCH[:1], structured_retries=2)
    assert fake.count("extract") == 2
    retry_prompt = message_text(fake.bodies("extract")[1]["messages"][-1]["content"])
    assert "could not be used" in retry_prompt
    assert "extract" not in out["report"]["dropped"]
    assert [i["text"] for i in out["library"]["items"]] == [
        "Recovered lesson: when a sum mixes signs, add the terms in order."
    ]


REPAIRABLE_PAYLOAD = {
    "analysis": "right ones checked",
    "operations": [
        {
            "op": "ADD",
            "content": "Parsed from a sloppy reply: when a sum mixes signs, add the terms in order.",
        }
    ],
}


@pytest.mark.parametrize(
    "reply",
    [
        {"content": "Here you go:\n```json\n" + json.dumps(REPAIRABLE_PAYLOAD) + "\n```\nHope it helps."},
        {"content": json.dumps({"ExtractedExperiences": REPAIRABLE_PAYLOAD})},
        tool_reply("ExtractedExperiences", "```json\n" + json.dumps(REPAIRABLE_PAYLOAD) + "\n```"),
    ],
    ids=["json-in-prose", "wrapped-in-tool-name", "fenced-tool-arguments"],
)
def test_extract_repairable_output_is_parsed_without_retry(reply: dict) -> None:
    fake = Fake(
        extract=lambda body: reply, update=lambda body: tool_reply("LibraryUpdate", {"operations": []})
    )
    out = run_step(fake, batch=BATCH[:1])
    assert fake.count("extract") == 1
    assert "extract" not in out["report"]["dropped"]
    assert (
        out["proposals"][0]["operations"][0]["content"]
        == "Parsed from a sloppy reply: when a sum mixes signs, add the terms in order."
    )
    assert out["report"]["operations_proposed"] == 1
    # the consolidation kept none: the lesson is kept as proposed, and the report shows it
    assert out["report"]["lessons_kept"] == 1 and out["report"]["operations_final"] == 1


def test_extract_operations_beyond_k_are_cut_and_counted() -> None:
    ops = [{"op": "NONE"}] + [
        {"op": "ADD", "content": f"Lesson number {i}: when a sum mixes signs, add the terms in order."}
        for i in range(4)
    ]
    fake = Fake(extract=extract_reply(ops))
    out = run_step(fake, batch=BATCH[:1], experiences_per_group=2)
    (proposal,) = out["proposals"]
    assert [op["content"] for op in proposal["operations"]] == [
        f"Lesson number {i}: when a sum mixes signs, add the terms in order." for i in range(2)
    ]
    assert out["report"]["operations_proposed"] == 2
    assert out["report"]["dropped"].get("extract") == 1
    (cut,) = [d for d in out["dropped"] if d["stage"] == "extract"]
    assert cut["item"] == "q1" and "2 operation(s)" in cut["reason"]
    assert len(out["library"]["items"]) == 2


def test_extract_proposals_carry_the_query_as_source() -> None:
    fake = Fake(
        extract=extract_reply(
            [{"op": "ADD", "content": "General lesson: when a sum mixes signs, add the terms in order."}]
        )
    )
    out = run_step(fake, batch=BATCH[:1])
    assert out["proposals"][0]["operations"][0]["sources"] == ["q1"]
    assert out["library"]["items"][0]["sources"] == ["q1"]


# ------------------------------------------------------------------------------ update_library


def test_update_of_unknown_id_from_consolidation_is_rejected_with_reason() -> None:
    def consolidate(body: dict) -> dict:
        return tool_reply(
            "LibraryUpdate",
            {
                "operations": [
                    {
                        "op": "UPDATE",
                        "id": "G9",
                        "content": "Ghost lesson: when a sum mixes signs, add the terms in order.",
                        "reason": "r",
                    },
                    {
                        "op": "ADD",
                        "content": "Real new lesson: when a sum mixes signs, add the terms in order.",
                        "reason": "r",
                    },
                ]
            },
        )

    fake = Fake(update=consolidate)
    out = run_step(fake, library=seeded_library())
    report = out["report"]
    assert fake.count("update") == 1
    assert len(report["rejected"]) == 1
    rejected = report["rejected"][0]
    assert rejected["operation"]["id"] == "G9"
    assert "G9" in rejected["why"] and "unknown" in rejected["why"]
    assert report["operations_rejected"] == 1
    assert [i["id"] for i in out["library"]["items"]] == ["G1", "G2", "G3"]
    assert all(
        i["text"] != "Ghost lesson: when a sum mixes signs, add the terms in order."
        for i in out["library"]["items"]
    )
    assert [op["id"] for op in report["applied"]] == ["G3"]


def test_consolidated_delete_update_conflicts_resolve_by_the_rules() -> None:
    def consolidate(body: dict) -> dict:
        return tool_reply(
            "LibraryUpdate",
            {
                "operations": [
                    {
                        "op": "UPDATE",
                        "id": "G1",
                        "content": "Rewritten G1: when a sum mixes signs, add the terms in order.",
                    },
                    {"op": "DELETE", "id": "G1"},
                    {
                        "op": "UPDATE",
                        "id": "G2",
                        "content": "First rewrite of G2: when a sum mixes signs, add the terms in order.",
                    },
                    {
                        "op": "UPDATE",
                        "id": "G2",
                        "content": "Final rewrite of G2: when a sum mixes signs, add the terms in order.",
                    },
                    {"op": "NONE", "reason": "nothing else"},
                ]
            },
        )

    fake = Fake(update=consolidate)
    out = run_step(fake, library=seeded_library(), step=4)
    items = out["library"]["items"]
    assert [i["id"] for i in items] == ["G2"]
    assert items[0]["text"] == "Final rewrite of G2: when a sum mixes signs, add the terms in order."
    assert items[0]["updated_step"] == 4 and items[0]["created_step"] == 1
    assert set(items[0]["sources"]) == {"old", "q1", "q2"}
    report = out["report"]
    assert report["operations_applied"] == 2
    assert report["operations_rejected"] == 2
    assert sorted(r["operation"]["content"] for r in report["rejected"]) == [
        "First rewrite of G2: when a sum mixes signs, add the terms in order.",
        "Rewritten G1: when a sum mixes signs, add the terms in order.",
    ]
    assert out["library"]["next_id"] == 3


def test_full_library_rejects_adds_from_a_step() -> None:
    fake = Fake(
        extract=extract_reply(
            [{"op": "ADD", "content": "One more lesson: when a sum mixes signs, add the terms in order."}]
        )
    )
    out = run_step(fake, batch=BATCH[:1], library=seeded_library(), max_library_items=2)
    assert [i["id"] for i in out["library"]["items"]] == ["G1", "G2"]
    (rejected,) = out["report"]["rejected"]
    assert "full" in rejected["why"]
    assert out["library"]["version"] == 2


def test_consolidation_unparseable_applies_raw_proposals() -> None:
    proposals = {
        "Calculate 2 + 3.": "Add numbers from left to right.",
        "Calculate 7 - 4.": "Subtract the smaller number from the larger one carefully.",
    }

    def extract(body: dict) -> dict:
        text = next(lesson for q, lesson in proposals.items() if q in question_of(body))
        return tool_reply(
            "ExtractedExperiences", {"analysis": "a", "operations": [{"op": "ADD", "content": text}]}
        )

    fake = Fake(extract=extract, update=lambda body: {"content": "no idea what you want"})
    out = run_step(fake, structured_retries=1)
    report = out["report"]
    assert fake.count("update") == 2
    assert report["dropped"].get("update_library") == 1
    assert sorted(i["text"] for i in out["library"]["items"]) == sorted(proposals.values())
    by_text = {i["text"]: i for i in out["library"]["items"]}
    assert by_text[proposals["Calculate 2 + 3."]]["sources"] == ["q1"]
    assert report["operations_applied"] == 2


def test_no_proposals_means_no_consolidation_call() -> None:
    fake = Fake(extract=extract_reply([{"op": "NONE", "reason": "nothing to learn"}]))
    out = run_step(fake, library=seeded_library())
    assert fake.count("extract") == 2
    assert fake.count("update") == 0
    assert out["library"] == seeded_library()
    assert out["report"]["operations_proposed"] == 0
    assert out["report"]["library_version"] == 2


def test_consolidation_sees_current_library_and_all_proposals() -> None:
    fake = Fake()
    run_step(fake, library=seeded_library())
    (body,) = fake.bodies("update")
    user = question_of(body)
    assert render_library_for_review(seeded_library()) in user  # E as the library under review
    assert INJECTION_HEADER not in user
    proposed = json.loads(user.split("(JSON, with the problem each came from):\n", 1)[1])
    assert sorted({s for op in proposed for s in op["sources"]}) == ["q1", "q2"]


def test_consolidation_sources_restricted_to_batch_queries() -> None:
    def consolidate(body: dict) -> dict:
        return tool_reply(
            "LibraryUpdate",
            {
                "operations": [
                    {
                        "op": "ADD",
                        "content": "Merged lesson: when a sum mixes signs, add the terms in order.",
                        "sources": ["q1", "made-up"],
                    }
                ]
            },
        )

    fake = Fake(update=consolidate)
    out = run_step(fake)
    merged, kept = out["library"]["items"]
    assert merged["sources"] == ["q1"]
    # q2's lesson, which the consolidation left out, is kept as proposed, with its own source
    assert kept["sources"] == ["q2"] and out["report"]["lessons_kept"] == 1
