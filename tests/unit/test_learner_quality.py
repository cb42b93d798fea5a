"""What the learner sends and what it accepts (issue 9), checked at tfgrpo's fake OpenAI-compatible server:
the whole trajectory reaches the summarizer, the learner's own token cap, a big consolidation that fits,
answer leaks rejected, E labelled as under review, malformed output counted with a precise reason."""

from __future__ import annotations

import json
import re
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.memory import InMemoryStore

from tests.helpers import Handler, role_of, system_of, tool_reply
from tfgrpo.context import Context
from tfgrpo.graphs.step import compile_step_graph
from tfgrpo.nodes import summarize
from tfgrpo.nodes.lesson_gate import leak_of
from tfgrpo.nodes.policy import run_policy
from tfgrpo.nodes.summarize import clip, trajectory_text
from tfgrpo.state.library import INJECTION_HEADER, REVIEW_HEADER, Library, render_library
from tfgrpo.state.types import Query
from tfgrpo.testing.fake_openai import FakeOpenAIServer, message_text
from tfgrpo.testing.responders import grpo_responder, solve_arithmetic

MARKER = re.compile(r"\[\.\.\. (\d+) characters omitted \.\.\.\]")

BATCH: list[Query] = [
    {"id": "q1", "question": "Calculate 2 + 3.", "answer": "5"},
    {"id": "q2", "question": "Calculate 7 - 4.", "answer": "3"},
]


def user_of(body: dict) -> str:
    return message_text([m for m in body["messages"] if m["role"] == "user"][-1]["content"])


def alternating(answer_text: Callable[[str, bool], str]) -> Handler:
    """Rollouts of each question alternate right / wrong (every group of even G has spread)."""
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def policy(body: dict) -> dict:
        question = user_of(body)
        with lock:
            n = seen.get(question, 0)
            seen[question] = n + 1
        return {"content": answer_text(question, n % 2 == 0)}

    return policy


def short_answer(question: str, right: bool) -> str:
    value = solve_arithmetic(question)
    return f"Step by step.\nAnswer: {value if right else f'{value}1'}"


class Roles:
    """A responder that answers per role (default: the demo's ``grpo_responder``)."""

    def __init__(self, **handlers: Handler) -> None:
        self.handlers = {"rollout": alternating(short_answer), **handlers}

    def __call__(self, body: dict) -> dict:
        handler = self.handlers.get(role_of(body))
        return handler(body) if handler is not None else grpo_responder(body)


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeOpenAIServer]]:
    servers: list[FakeOpenAIServer] = []

    def start(**handlers: Handler) -> FakeOpenAIServer:
        server = FakeOpenAIServer(Roles(**handlers)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def run_step(
    server: FakeOpenAIServer, *, batch: list[Query] = BATCH, library: Library | None = None, **settings: Any
) -> dict[str, Any]:
    options: dict[str, Any] = {"reward": "exact_match", "group_size": 2, "batch_size": len(batch), **settings}
    ctx = Context(model="openai:fake", base_url=server.base_url, **options)
    state: dict[str, Any] = {"batch": batch, "run_id": "run", "step": 0}
    if library is not None:
        state["library"] = library
    return compile_step_graph(store=InMemoryStore()).invoke(
        state, context=ctx, config={"recursion_limit": 500}
    )


def bodies(server: FakeOpenAIServer, role: str) -> list[dict]:
    return [b for b in server.requests if role_of(b) == role]


def library_of(*texts: str) -> Library:
    items = [
        {"id": f"G{i}", "text": t, "created_step": 0, "updated_step": 0, "sources": ["old"]}
        for i, t in enumerate(texts, 1)
    ]
    return {"version": 1, "next_id": len(texts) + 1, "items": items}  # type: ignore[typeddict-item]


# ----------------------------------------------------------------------------- 1. the whole attempt


def test_a_40000_character_rollout_reaches_the_summarizer_with_head_tail_and_marker(serve) -> None:
    first = "FIRST: I choose to substitute x = 2y because the system is symmetric."

    def long_answer(question: str, right: bool) -> str:
        value = solve_arithmetic(question)
        shown = value if right else f"{value}1"
        final = f"LAST: so the answer is {shown}.\nAnswer: {shown}"
        middle = "\n".join(f"middle line {i}: " + "x" * 60 for i in range(600))
        text = f"{first}\n{middle}\n{final}"
        return text[: len(first) + 1] + text[len(first) + 1 : 40000 - len(final) - 1] + "\n" + final

    server = serve(rollout=alternating(long_answer))
    run_step(server, batch=BATCH[:1])
    rollouts = [b for b in server.completed if role_of(b) == "rollout"]
    assert rollouts
    summaries = bodies(server, "summarize")
    assert len(summaries) == 2
    for body in summaries:
        user = user_of(body)
        assert first in user  # the opening, where the approach is chosen
        assert re.search(r"LAST: so the answer is 51?\.\nAnswer: 51?$", user)  # the end
        (omitted,) = MARKER.findall(user)
        shown = user.split(
            "(every model turn with its tool calls, every tool result, then the final response):\n"
        )
        assert len(shown) == 2
        attempt = shown[1]
        marker = MARKER.search(attempt)
        assert marker is not None
        # head + omitted + tail is exactly the response: nothing is lost silently
        assert len(attempt) - len(marker.group(0)) - 2 + int(omitted) == 40000


def test_a_short_rollout_reaches_the_summarizer_whole(serve) -> None:
    server = serve()
    run_step(server, batch=BATCH[:1], whole_attempt_tokens=0)
    assert bodies(server, "summarize")
    for body in bodies(server, "summarize"):
        assert "characters omitted" not in user_of(body)
        assert user_of(body).endswith(("Step by step.\nAnswer: 5", "Step by step.\nAnswer: 51"))


def test_the_text_beside_a_tool_call_and_the_call_reach_the_summarizer(serve) -> None:
    reasoning = "The constraint is symmetric, so I will compute the sum in Python instead of by hand."
    finals = iter(range(10**6))
    lock = threading.Lock()

    def agent(body: dict) -> dict:
        tool_results = [message_text(m["content"]) for m in body["messages"] if m["role"] == "tool"]
        question = user_of(body)
        if not tool_results:
            expr = question.removeprefix("Calculate ").rstrip(".")
            return {
                "content": reasoning,
                "tool_calls": [{"name": "python", "arguments": {"code": f"print({expr})"}}],
            }
        with lock:
            right = next(finals) % 2 == 0
        value = tool_results[-1].strip().splitlines()[0]
        return {"content": f"The tool printed {value}.\nAnswer: {value if right else value + '1'}"}

    server = serve(rollout=agent)
    run_step(server, batch=BATCH[:1], domain="math", group_size=4)
    summaries = bodies(server, "summarize")
    assert summaries, "no group was kept"
    for body in summaries:
        user = user_of(body)
        assert reasoning in user
        assert "-> TOOL CALL python(code=print(2 + 3))" in user
        assert re.search(r"TOOL RESULT \(python\):\n.*5", user)
        assert "FINAL RESPONSE:\nThe tool printed" in user


def test_trajectory_keeps_every_tool_call_when_it_must_be_cut() -> None:
    trajectory: list[dict[str, Any]] = [{"type": "human", "data": {"content": "q"}}]
    for i in range(40):
        trajectory.append(
            {
                "type": "ai",
                "data": {
                    "content": f"thought {i} " + "t" * 3000,
                    "tool_calls": [
                        {"name": "python", "args": {"code": f"print({i})\n" + "#" * 5000}, "id": str(i)}
                    ],
                },
            }
        )
        trajectory.append({"type": "tool", "data": {"content": f"out {i} " + "o" * 3000, "name": "python"}})
    trajectory.append({"type": "ai", "data": {"content": "final answer 42"}})
    text = trajectory_text(trajectory, "final answer 42", budget=60000)
    assert len(text) < 70000
    assert text.count("-> TOOL CALL python(code=print(") == 40
    assert all(f"thought {i} " in text and f"out {i} " in text for i in range(40))
    assert text.endswith("FINAL RESPONSE:\nfinal answer 42")
    assert MARKER.search(text)


def test_clip_is_exact_and_keeps_first_and_last_lines() -> None:
    text = "\n".join(f"line {i} " + "z" * 40 for i in range(1000))
    out = clip(text, 5000)
    head, omitted, tail = re.split(r"\n\[\.\.\. (\d+) characters omitted \.\.\.\]\n", out)
    assert len(head) + int(omitted) + len(tail) == len(text)
    assert text.startswith(head) and text.endswith(tail)
    assert out.startswith("line 0 ") and out.endswith("line 999 " + "z" * 40)
    assert clip("short", 5000) == "short"


# -------------------------------------------------------------------- 4. the learner's own token cap


def test_learner_calls_carry_learner_max_tokens_and_the_judge_its_own(serve) -> None:
    server = serve(judge=lambda body: {"content": "CORRECT" if "Answer" in user_of(body) else "INCORRECT"})
    run_step(server, batch=BATCH[:1], whole_attempt_tokens=0)
    for role in ("summarize", "extract", "update"):
        sent = bodies(server, role)
        assert sent, role
        assert {b.get("max_completion_tokens") for b in sent} == {4096}, role
        assert {b.get("max_tokens") for b in sent} == {4096}, role  # extra_body, for llama.cpp
    assert {b.get("max_completion_tokens") for b in bodies(server, "rollout")} == {1024}

    server = serve()
    out = run_step(
        server,
        batch=BATCH[:1],
        reward="judge",
        learner_max_tokens=777,
        judge_max_tokens=33,
        whole_attempt_tokens=0,
    )
    assert {b["max_completion_tokens"] for b in bodies(server, "judge")} == {33}
    assert {b["max_completion_tokens"] for b in bodies(server, "summarize")} == {777}
    assert out["report"]["calls"] > 0


def truncating(handler: Handler) -> Handler:
    """A server that stops writing at ``max_tokens`` (4 characters a token, as the fake counts them)."""

    def respond(body: dict) -> dict:
        reply = handler(body)
        limit = 4 * int(body.get("max_completion_tokens") or body.get("max_tokens") or 10**9)
        calls = reply.get("tool_calls") or []
        if calls:
            arguments = json.dumps(calls[0]["arguments"])
            if len(arguments) > limit:
                return tool_reply(calls[0]["name"], arguments[:limit])
        return reply

    return respond


FORTY: list[Query] = [
    {"id": f"p{i}", "question": f"Calculate {i} + 1.", "answer": str(i + 1)} for i in range(40)
]
WORDS = (
    "when a sum has many terms group them in pairs first then add the pair totals; adding left to "
    "right lost a carry"
)


def lesson(i: int) -> str:
    tag = "abcdefghijklmnopqrstuvwxyzabcdefghijklmn"[i] + "x" * (i % 5)
    return f"Lesson {tag}: {WORDS} in attempts of this kind ({i % 7} times)."


def forty_step(server: FakeOpenAIServer, **settings: Any) -> dict[str, Any]:
    return run_step(server, batch=FORTY, max_concurrency=8, **settings)


def consolidate_all(body: dict) -> dict:
    (request,) = [message_text(m["content"]) for m in body["messages"] if "Proposed operations" in str(m)]
    proposed = json.loads(request.split("(JSON, with the problem each came from):\n", 1)[1])
    ops = [
        {"op": op["op"], "content": op["content"], "reason": "kept as proposed", "sources": op["sources"]}
        for op in proposed
    ]
    return tool_reply("LibraryUpdate", {"operations": ops})


def extract_one(body: dict) -> dict:
    i = int(re.search(r"Calculate (\d+) \+ 1", user_of(body)).group(1))  # type: ignore[union-attr]
    return tool_reply(
        "ExtractedExperiences",
        {
            "analysis": "the right attempts grouped terms",
            "operations": [{"op": "ADD", "content": lesson(i), "reason": "r"}],
        },
    )


def test_a_consolidation_of_40_proposals_parses_with_the_default_settings(serve) -> None:
    server = serve(extract=extract_one, update=truncating(consolidate_all))
    out = forty_step(server)
    report = out["report"]
    assert report["operations_proposed"] == 40
    (update,) = bodies(server, "update")
    assert len(json.dumps(consolidate_all(update)["tool_calls"][0]["arguments"])) > 4 * 1024  # needs > 1024
    assert report["malformed"] == {}
    assert "update_library" not in report["dropped"]
    assert report["operations_final"] == 40 and report["operations_applied"] == 40
    assert len(out["library"]["items"]) == 40


def proposals_of(body: dict) -> list[dict]:
    (request,) = [message_text(m["content"]) for m in body["messages"] if "Proposed operations" in str(m)]
    return json.loads(request.split("(JSON, with the problem each came from):\n", 1)[1])


def test_a_consolidation_too_long_for_the_cap_is_split_into_chunks(serve) -> None:
    # 40 proposals need about 2,500 tokens of consolidation output; the cap is 1,024: one call would be
    # cut off and fall back to the raw proposals
    server = serve(extract=extract_one, update=truncating(consolidate_all))
    out = forty_step(server, learner_max_tokens=1024, structured_retries=1)
    report = out["report"]
    updates = bodies(server, "update")
    assert len(updates) >= 3
    for body in updates:  # each chunk's output fits the cap
        assert len(json.dumps(consolidate_all(body)["tool_calls"][0]["arguments"])) <= 4 * 1024
    # every proposal went to exactly one chunk, in order
    assert [op["content"] for body in updates for op in proposals_of(body)] == [lesson(i) for i in range(40)]
    assert report["malformed"] == {}
    assert "update_library" not in report["dropped"]
    assert report["operations_final"] == 40 and report["operations_applied"] == 40
    assert len(out["library"]["items"]) == 40 and out["library"]["version"] == 1
    # a later chunk is consolidated against E as the earlier ones left it (it can merge, not duplicate)
    first = proposals_of(updates[0])
    assert f"[G1] {first[0]['content']}" in user_of(updates[1])
    assert f"{len(first)} of 50 items used" in user_of(updates[1])


def test_a_consolidation_cut_off_by_the_cap_is_counted_as_malformed_with_the_reason(serve) -> None:
    def wordy(body: dict) -> dict:
        # a model that writes far longer reasons than the proposals had: longer than any estimate
        reply = consolidate_all(body)
        for op in reply["tool_calls"][0]["arguments"]["operations"]:
            op["reason"] = "kept because " * 60
        return reply

    server = serve(extract=extract_one, update=truncating(wordy))
    out = forty_step(server, learner_max_tokens=1024, structured_retries=1)
    report = out["report"]
    chunks = len(bodies(server, "update")) // 2  # each chunk tried twice
    assert chunks >= 3 and report["malformed"] == {"update_library": 2 * chunks}
    drops = [d for d in out["dropped"] if d["stage"] == "update_library"]
    assert len(drops) == chunks
    assert all("invalid JSON in the LibraryUpdate call arguments" in d["reason"] for d in drops)
    assert all("no tool call" not in d["reason"] for d in drops)
    unconsolidated = [
        int(re.search(r"applied (\d+) proposals unconsolidated", d["reason"]).group(1)) for d in drops
    ]  # type: ignore[union-attr]
    assert sum(unconsolidated) == 40


# ----------------------------------------------------------------------------------- 5. no answer leaks


def test_a_lesson_containing_a_batch_answer_is_rejected_and_counted(serve) -> None:
    batch: list[Query] = [
        {"id": "q1", "question": "Calculate 1200 + 34.", "answer": "1234"},
        {"id": "q2", "question": "Calculate 7 - 4.", "answer": "3"},
    ]

    def extract(body: dict) -> dict:
        if "1200 + 34" in user_of(body):
            content = "When adding a four-digit number, line up the digits; the result here is 1234."
        else:
            content = "When subtracting, check which operand is larger before borrowing."
        return tool_reply(
            "ExtractedExperiences", {"analysis": "a", "operations": [{"op": "ADD", "content": content}]}
        )

    # sent back once with the reason, the learner withdraws it
    server = serve(extract=extract, retry=lambda body: tool_reply("RevisedLesson", {"content": ""}))
    out = run_step(server, batch=batch)
    report = out["report"]
    assert [i["text"] for i in out["library"]["items"]] == [
        "When subtracting, check which operand is larger before borrowing."
    ]
    assert report["operations_rejected"] == 1
    (rejected,) = report["rejected"]
    # stopped by the lesson gate before the consolidation call ever saw it
    assert rejected["why"] == (
        "proposal: answer leak: contains the ground-truth answer of q1 ('1234') (retried once: no rewrite)"
    )
    assert report["lessons_rejected"] == report["lessons_retried"] == {"answer leak": 1}


def test_leak_check_answers_and_copied_questions() -> None:
    batch: list[Query] = [
        {
            "id": "a",
            "question": "Find the number of ordered pairs of positive integers whose sum is 30.",
            "answer": "29",
        },
        {"id": "b", "question": "Compute the value.", "answer": "\\dfrac{3}{7}"},
        {"id": "c", "question": "Who wrote it?", "answer": "Jane Austen"},
        {"id": "d", "question": "Is it prime?", "answer": "yes"},
        {"id": "e", "question": "How many?", "answer": "123"},
    ]
    assert leak_of("Write the result as \\frac{3}{7} in lowest terms.", batch) == (
        "contains the ground-truth answer of b ('\\\\dfrac{3}{7}')"
    )
    assert leak_of("Novels by jane  austen are romance.", batch) is not None
    assert leak_of("When counting, 29 cases is common.", batch) is None  # two characters: exempt
    assert leak_of("Answer yes only after checking divisors.", batch) is None  # yes/no: exempt
    assert leak_of("A 1234-digit number or 0.123 is not it.", batch) is None  # not inside a longer number
    assert leak_of("The count is 123 here.", batch) is not None
    copied = leak_of("To find the number of ordered pairs of positive integers, fix one.", batch)
    assert copied is not None and "copies 8+ consecutive words of the question of a" in copied
    assert leak_of("Ordered pairs of positive integers: fix one coordinate first.", batch) is None


# -------------------------------------------------------------------------------- 6. E under review


def test_learner_prompts_label_e_as_the_library_under_review(serve) -> None:
    library = library_of("When a sum has many terms, pair them first; left-to-right adding lost carries.")
    server = serve()
    run_step(server, library=library, whole_attempt_tokens=0)
    rollout_systems = {system_of(b) for b in bodies(server, "rollout")}
    assert all(render_library(library) in s for s in rollout_systems)
    for role in ("summarize", "extract", "update"):
        sent = bodies(server, role)
        assert sent, role
        for body in sent:
            text = user_of(body)
            assert REVIEW_HEADER in text and "[G1] When a sum has many terms" in text, role
            assert INJECTION_HEADER not in text and INJECTION_HEADER not in system_of(body), role
    (update,) = bodies(server, "update")
    assert "Capacity: 1 of 50 items used (49 left); about " in user_of(update)


# --------------------------------------------------------------------------- 7. malformed, precisely


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ('{"analysis": "x", "operations": [}', "invalid JSON in the ExtractedExperiences call arguments"),
        ({"operations": [{"op": "ADD", "content": "c"}]}, "missing field analysis"),
        ({"analysis": "a", "operations": [{"content": "c"}]}, "missing field operations.0.op"),
    ],
    ids=["invalid-json", "missing-analysis", "missing-op"],
)
def test_malformed_extract_output_is_counted_with_a_precise_reason(
    serve, arguments: Any, reason: str
) -> None:
    server = serve(extract=lambda body: tool_reply("ExtractedExperiences", arguments))
    out = run_step(server, batch=BATCH[:1], structured_retries=1)
    assert out["report"]["malformed"] == {"extract": 2}
    (drop,) = [d for d in out["dropped"] if d["stage"] == "extract"]
    assert reason in drop["reason"], drop["reason"]
    assert "no tool call" not in drop["reason"]


@pytest.mark.parametrize("k", [1, 3])
def test_extract_schema_caps_the_operations_at_k_for_a_constraining_server(serve, k: int) -> None:
    # llama.cpp samples under a grammar built from this schema: without maxItems the 0.5B model kept
    # adding near-identical ADDs until max_tokens cut its JSON, and the group was dropped.
    server = serve()
    run_step(server, batch=BATCH[:1], experiences_per_group=k)
    (body,) = bodies(server, "extract")
    (tool,) = body["tools"]
    assert tool["function"]["name"] == "ExtractedExperiences"
    operations = tool["function"]["parameters"]["properties"]["operations"]
    assert (operations["minItems"], operations["maxItems"]) == (1, k)
    assert list(tool["function"]["parameters"]["properties"])[0] == "analysis"  # still reasons first


def test_a_text_reply_is_reported_as_no_tool_call(serve) -> None:
    server = serve(extract=lambda body: {"content": "I would rather chat."})
    out = run_step(server, batch=BATCH[:1], structured_retries=0)
    (drop,) = [d for d in out["dropped"] if d["stage"] == "extract"]
    assert "no tool call" in drop["reason"] and "I would rather chat." in drop["reason"]
    assert out["report"]["malformed"] == {"extract": 1}


# ------------------------------------------------------------------------------------ 3. top_p


def test_top_p_reaches_the_server_only_when_set(serve) -> None:
    server = serve()
    ctx = Context(model="openai:fake", base_url=server.base_url, top_p=0.95, temperature=0.3)
    run_policy(ctx, "Calculate 2 + 3.", "", seed=1)
    (body,) = server.requests
    assert body["top_p"] == 0.95 and body["temperature"] == 0.3
    run_policy(Context(model="openai:fake", base_url=server.base_url), "Calculate 2 + 3.", "", seed=1)
    assert "top_p" not in server.requests[-1]


def test_a_reply_cut_off_at_max_tokens_says_so() -> None:
    from langchain_core.messages import AIMessage

    from tfgrpo.nodes._llm import malformed_reason
    from tfgrpo.nodes.update_library import LibraryUpdate

    cut = AIMessage(
        content="",
        invalid_tool_calls=[
            {"name": "LibraryUpdate", "args": '{"operations": [{"op"', "id": "1", "error": None}
        ],
        response_metadata={"finish_reason": "length"},
    )
    reason = malformed_reason(LibraryUpdate, cut, None, 1024)
    assert reason.startswith("cut off at max_tokens=1024 (finish_reason 'length')")
    assert "--learner-max-tokens" in reason


# ------------------------------------------------------------------------ contrastive evidence for extract


def test_extract_receives_the_groups_contrastive_evidence(serve) -> None:
    right = "Add the two numbers.\n2 + 3 = 5\nAnswer: 5"
    responses = [right, right, "Add the two numbers.\n2 + 3 = 6\nAnswer: 6", "It is seven.\nAnswer: 7"]
    lock = threading.Lock()

    def policy(body: dict) -> dict:
        with lock:
            return {"content": responses.pop()}

    server = serve(rollout=policy)
    run_step(server, batch=BATCH[:1], group_size=4)
    (extract,) = bodies(server, "extract")
    sent = user_of(extract)
    # each distinct final answer, with how many attempts gave it and its reward
    assert "Answers of the 4 attempts as the reward read them (ground truth: 5):" in sent
    assert "- '5': 2 attempts, reward 1\n" in sent
    assert "- '6': 1 attempt, reward 0\n" in sent and "- '7': 1 attempt, reward 0" in sent
    # the first line where a right and a wrong attempt differ
    diff = re.search(
        r"First line where a better and a worse attempt differ \(attempt \d, reward 1, vs attempt "
        r"\d, reward 0; line (\d) of their responses\):\n  better: (.*)\n  worse:  (.*)\n",
        sent,
    )
    assert diff is not None, sent
    assert (diff.group(1), diff.group(2)) in {("2", "2 + 3 = 5"), ("1", "Add the two numbers.")}
    assert diff.group(3) in {"2 + 3 = 6", "It is seven."}
    # the two identical right attempts are shown once, with their count; the others once each
    headers = re.findall(r"^--- (.*) ---$", sent, re.M)
    assert len(headers) == 3
    assert sum(bool(re.match(r"Attempts \d, \d: 2 identical: reward 1;", h)) for h in headers) == 1
    # the evidence comes before the attempts
    assert sent.index("Answers of the 4 attempts") < sent.index("The attempts, whole")


def test_an_extract_prompt_override_without_evidence_still_gets_it(serve, tmp_path) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "extract_user.txt").write_text("Problem: {question}\nTruth: {answer}\n{library}\n{attempts}\n")
    server = serve()
    run_step(server, batch=BATCH[:1], prompts=str(prompts))
    (extract,) = bodies(server, "extract")
    sent = user_of(extract)
    assert sent.startswith("Problem: Calculate 2 + 3.\nTruth: 5\n")
    assert "Answers of the 2 attempts as the reward read them (ground truth: 5):" in sent


# --------------------------------------------- what the learner sees of an attempt; contrast first (issue 27)


def scripted(*replies: dict) -> Handler:
    """Rollouts answered in order from ``replies`` (one group at a time: batch of one question)."""
    queue = list(replies)
    lock = threading.Lock()

    def policy(body: dict) -> dict:
        with lock:
            return queue.pop(0)

    return policy


RIGHT = {"content": "2 + 3 = 5\nAnswer: 5"}
CUT = {"content": "First I add two and three, which is", "finish_reason": "length"}
WRONG_FORM = {"content": "2 + 3 = 5\nAnswer: five"}


def reward_file(tmp_path: Path, body: str) -> str:
    """A user's reward ``file.py:score`` whose function body is ``body`` (it may return (score, reason))."""
    path = tmp_path / "my_reward.py"
    path.write_text("def score(response, answer):\n" + textwrap.indent(textwrap.dedent(body), "    "))
    return f"{path}:score"


def test_short_attempts_are_read_whole_by_the_extractor_and_not_summarized(serve) -> None:
    server = serve(rollout=scripted(RIGHT, CUT, WRONG_FORM, WRONG_FORM))
    out = run_step(server, batch=BATCH[:1], group_size=4)
    assert bodies(server, "summarize") == []  # no summarize call for one-line replies
    (extract,) = bodies(server, "extract")
    sent = user_of(extract)
    # the attempts themselves, each under what the reward saw
    assert "The attempts, whole" in sent and "summaries" not in sent
    assert re.search(r"--- Attempt \d: reward 1; answer read: '5'; finished, \d+ tokens; the reward's", sent)
    assert "2 + 3 = 5\nAnswer: 5" in sent
    assert re.search(r"--- Attempts \d, \d: 2 identical: reward 0; answer read: 'five'; finished", sent)
    assert out["report"]["groups_kept"] == 1 and out["report"]["operations_proposed"] >= 0


def test_the_cut_off_flag_and_the_lone_success_come_first(serve) -> None:
    server = serve(rollout=scripted(CUT, RIGHT, CUT, WRONG_FORM))
    run_step(server, batch=BATCH[:1], group_size=4)
    (extract,) = bodies(server, "extract")
    sent = user_of(extract)
    evidence = sent[: sent.index("The attempts, whole")]
    assert "Answers of the 4 attempts as the reward read them (ground truth: 5):" in evidence
    assert "- '5': 1 attempt, reward 1\n" in evidence
    # a cut-off reply's last fragment is not presented as its answer
    assert (
        "- (no answer line; last line 'First I add two and three, which is') [cut off]: 2 attempts"
        in evidence
    )
    assert "2 of the 4 attempts were cut off at the token limit (reward 0)." in evidence
    assert re.search(
        r"Attempt \d is the lone success \(reward 1\): what did it do that the other 3 did not\?", evidence
    )
    assert re.search(
        r"--- Attempts \d, \d: 2 identical: reward 0; .*; CUT OFF at the token limit after", sent
    )


def test_the_rewards_reason_reaches_the_extractors_request(serve, tmp_path) -> None:
    reward = reward_file(
        tmp_path,
        """
        last = response.strip().splitlines()[-1]
        return float(last == "Answer: " + answer), f"read {last!r}; expected {answer!r}"
        """,
    )
    server = serve(rollout=scripted(RIGHT, WRONG_FORM))
    run_step(server, batch=BATCH[:1], group_size=2, reward=reward)
    (extract,) = bodies(server, "extract")
    assert "the reward's reason: read 'Answer: five'; expected '5' ---" in user_of(extract)


def test_long_attempts_keep_summaries_with_the_reason_and_the_ending_in_view(serve, tmp_path) -> None:
    reward = reward_file(
        tmp_path, """return (1.0, "") if "Answer: 5" in response else (0.0, "no answer line")"""
    )
    server = serve(rollout=scripted(RIGHT, CUT))
    run_step(
        server, batch=BATCH[:1], group_size=2, whole_attempt_tokens=5, reward=reward
    )  # every reply here is "long"
    summaries = {
        user_of(b).split("Reward of this attempt: ")[1][0]: user_of(b) for b in bodies(server, "summarize")
    }
    assert set(summaries) == {"1", "0"}
    assert "The reward's reason: no answer line\n" in summaries["0"]
    assert "The answer as the reward read it: (no answer line; last line 'First I add" in summaries["0"]
    assert "How the attempt ended: CUT OFF at the token limit after " in summaries["0"]
    assert "The reward's reason: (the reward gave no reason)\n" in summaries["1"]
    assert "How the attempt ended: finished, " in summaries["1"]
    (extract,) = bodies(server, "extract")
    sent = user_of(extract)
    assert "The attempts, summarized" in sent
    assert "CUT OFF at the token limit" in sent and "the reward's reason: no answer line ---" in sent


def test_the_learner_is_asked_for_the_difference_and_told_the_gates_rules(serve) -> None:
    server = serve(rollout=scripted(RIGHT, WRONG_FORM))
    run_step(server, batch=BATCH[:1], group_size=2)
    (extract,) = bodies(server, "extract")
    system = system_of(extract)
    assert "THAT THE WORSE DID NOT" in system
    assert "A step that every attempt took is not the difference and not a lesson." in system
    assert "Every lesson is checked before it is stored, and rejected when it:" in system
    for kind in ("wrong form or unit", "no answer line", "ran out of length"):
        assert kind in summarize.SYSTEM_PROMPT
