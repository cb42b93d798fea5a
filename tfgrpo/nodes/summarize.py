"""Step 4 of Training-Free GRPO: **summarize**. One learner call per usable rollout of a kept group
whose attempts are not short enough to be read whole by ``extract`` (``nodes/attempts.py``).

The summary starts with its diagnosis (right or wrong, and the kind of error: "wrong form or unit", "no
answer line" and "ran out of length" among them), with the reward's reason, the answer as the reward
read it and how the attempt ended (finished, or cut off at the token limit, and its length) in view.
Then it says, step by step, what the trajectory did, which experiences it used, and where and *why*
it erred or detoured, given the ground truth and its reward. The summarizer sees the whole trajectory:
every model turn with the text written beside its tool calls, every call and result; a trajectory too
long for the prompt keeps its head (where the approach is chosen) and its tail (where the answer is
reached) around an explicit ``[... N characters omitted ...]`` marker, never the tail alone. The summary
is stored (not kept in state) for ``extract``.
"""

from __future__ import annotations

import json
from typing import Any, NotRequired

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime
from typing_extensions import TypedDict

from tfgrpo.context import Context
from tfgrpo.nodes._llm import (
    call_text,
    context_of,
    learner_model,
    library_text_of,
    memo_get,
    memo_put,
    step_namespace,
    stop_if_draining,
    store_of,
)
from tfgrpo.nodes._prompts import prompt_text
from tfgrpo.nodes.attempts import attempt_of, ending, reason_text, shown_answer
from tfgrpo.nodes.rollout import load_rollout
from tfgrpo.state.library import review_text
from tfgrpo.state.types import Dropped, Query, Rollout, SummaryRef, usage_of

_EMPTY: Rollout = {"query_id": "", "g": 0, "step": 0, "response": "", "trajectory": []}

SYSTEM_PROMPT = (
    "You SUMMARIZE one attempt at a problem for a team that learns from its own attempts. Start with "
    "the diagnosis, on one line: right or wrong compared with the ground truth and, if wrong, the kind "
    "of error: wrong approach, misread condition, missed case, slip in algebra or arithmetic, misuse of "
    "a tool, wrong form or unit, no answer line, ran out of length (cut off at the token limit before "
    "the answer). Read the reward's reason and how the attempt ended: they say what the reward saw. "
    "Then a step-by-step summary of what the attempt did: the approach it chose and why, each tool call "
    "that mattered and what it showed, the key intermediate results, and which of the listed "
    "experiences (by id) it applied, ignored or was misled by. If the attempt is wrong, name the step "
    "where it went wrong and WHY (the wrong assumption, the misread condition, the missed case) and "
    "what would have avoided it. If it is correct, name the decision that made it work and any detour "
    "that wasted effort. A part marked [... N characters omitted ...] was cut for length: do not guess "
    "what it said. Plain text, at most 15 lines."
)

USER_TEMPLATE = """Problem:
{question}

Ground-truth answer: {answer}
Reward of this attempt: {reward:g} (1 = fully correct, 0 = wrong)
The reward's reason: {reward_reason}
The answer as the reward read it: {answer_read}
How the attempt ended: {ending}

{library}

The attempt (every model turn with its tool calls, every tool result, then the final response):
{trajectory}"""

# How much of a trajectory the summarizer sees (~8k tokens): a whole long solution fits; beyond it the
# head (where the approach is chosen) and the tail (where the answer is reached) are kept.
MAX_TRAJECTORY_CHARS = 32000
ARGUMENT_CHARS = 600  # per tool-call argument: a long program keeps its head and tail
MIN_PIECE_CHARS = 300  # no text is cut below this, even in a trajectory with very many turns
# shown instead of the ground truth when learning without one (the ``majority`` reward)
NO_GROUND_TRUTH = "not given (the reward is agreement with the most frequent answer of the group)"


class SummarizeTask(TypedDict):
    run_id: str
    step: int
    query: Query
    key: str
    g: int
    reward: float
    reward_reason: NotRequired[str]  # why the reward gave it ('' when it gave no reason)
    library_key: str


def omission(n: int) -> str:
    return f"[... {n} characters omitted ...]"


def clip(text: str, limit: int) -> str:
    """``text`` within about ``limit`` characters: its head and tail around an explicit omission marker,
    cut at line ends when one is near, so first and last lines stay whole."""
    if len(text) <= limit:
        return text
    half = max(1, limit // 2)
    head_end, tail_start = half, len(text) - (limit - half)
    snap = min(400, half // 2)  # how far a cut may move to land on a line end
    newline = text.rfind("\n", 0, head_end)
    if newline != -1 and newline > head_end - snap:
        head_end = newline
    newline = text.find("\n", tail_start)
    if newline != -1 and newline < tail_start + snap:
        tail_start = newline + 1
    # exact: head + the N omitted characters + tail is the original text
    return f"{text[:head_end]}\n{omission(tail_start - head_end)}\n{text[tail_start:]}"


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: keep the text parts
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content or "")


def argument_summary(args: Any) -> str:
    """``name=value`` pairs of a tool call, each value clipped (code keeps its head and tail)."""
    if not isinstance(args, dict):
        return clip(json.dumps(args, ensure_ascii=False), ARGUMENT_CHARS)
    parts = []
    for name, value in args.items():
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        parts.append(f"{name}={clip(shown, ARGUMENT_CHARS)}")
    return ", ".join(parts)


def _fit(pieces: list[tuple[str, bool]], budget: int) -> list[str]:
    """Clip the clippable pieces (model text, tool results, the final response) to one common length,
    the largest that keeps the whole within ``budget``; fixed pieces (tool calls) are kept as they are."""
    fixed = sum(len(text) for text, clippable in pieces if not clippable)
    free = [len(text) for text, clippable in pieces if clippable]
    if fixed + sum(free) <= budget:
        return [text for text, _ in pieces]
    low, high = MIN_PIECE_CHARS, max(free, default=MIN_PIECE_CHARS)
    marker = len(omission(10**6)) + 2
    while low < high:  # the largest per-piece cap that fits
        mid = (low + high + 1) // 2
        if fixed + sum(min(n, mid + marker) for n in free) <= budget:
            low = mid
        else:
            high = mid - 1
    return [clip(text, low) if clippable else text for text, clippable in pieces]


def trajectory_text(
    rollout_trajectory: list[dict[str, Any]], response: str, budget: int = MAX_TRAJECTORY_CHARS
) -> str:
    """The rollout as the summarizer sees it: every model turn with the text it wrote beside its tool
    calls, every tool call with its arguments, every tool result, then the final response. When it is
    longer than ``budget``, long texts keep their head and tail around ``[... N characters omitted ...]``;
    tool calls are never dropped."""
    turns = [m for m in rollout_trajectory if m.get("type") in ("ai", "tool")]
    if turns and turns[-1].get("type") == "ai" and not turns[-1].get("data", {}).get("tool_calls"):
        turns = turns[:-1]  # the final message is the response, shown last
    pieces: list[tuple[str, bool]] = []
    for number, m in enumerate(turns, 1):
        data = m.get("data", {})
        text = _content_text(data.get("content")).strip()
        if m["type"] == "ai":
            pieces.append((f"[{number}] MODEL:\n", False))
            if text:
                pieces.append((text + "\n", True))
            for call in data.get("tool_calls") or []:
                pieces.append(
                    (f"  -> TOOL CALL {call.get('name')}({argument_summary(call.get('args'))})\n", False)
                )
        else:
            pieces.append((f"[{number}] TOOL RESULT ({data.get('name') or 'tool'}):\n", False))
            pieces.append(((text or "(empty)") + "\n", True))
    if turns:
        pieces.append(("FINAL RESPONSE:\n", False))
    pieces.append((response, True))
    return "".join(_fit(pieces, budget)).strip()


def summarize(task: SummarizeTask, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = context_of(runtime)
    store = store_of(runtime)
    ns = step_namespace(task["run_id"], task["step"], "summaries")
    key = task["key"]
    done = memo_get(store, ns, key)
    if done is None:
        stop_if_draining(runtime)
        stored = load_rollout(runtime, task["run_id"], task["step"], key)
        response = stored["response"] if stored else ""
        trajectory = trajectory_text(stored["trajectory"], response) if stored else ""
        seen = attempt_of(task["g"] + 1, task["reward"], task.get("reward_reason") or "", stored or _EMPTY)
        model, spec = learner_model(ctx)
        user = prompt_text(ctx.prompts, "summarize_user", USER_TEMPLATE)
        messages = [
            SystemMessage(prompt_text(ctx.prompts, "summarize_system", SYSTEM_PROMPT)),
            HumanMessage(
                user.format(
                    question=task["query"]["question"],
                    answer=task["query"]["answer"] or NO_GROUND_TRUTH,
                    reward=task["reward"],
                    reward_reason=reason_text(seen),
                    answer_read=shown_answer(seen),
                    ending=ending(seen),
                    library=review_text(library_text_of(store, task["run_id"], task["library_key"])),
                    trajectory=trajectory or "(empty)",
                )
            ),
        ]
        msg, record, error = call_text(ctx, model, spec, "summarize", messages)
        text = msg.content if msg is not None and isinstance(msg.content, str) else ""
        if error is None and not text.strip():
            error = "empty summary"
        done = {"summary": text, "error": error, "calls": [record]}
        memo_put(store, ns, key, done)

    ok = not done.get("error")
    ref: SummaryRef = {"key": key, "query_id": task["query"]["id"], "g": task["g"], "ok": ok}
    update: dict[str, Any] = {"summaries": [ref], "usage": usage_of(done["calls"])}
    if not ok:
        drop: Dropped = {"stage": "summarize", "item": key, "reason": done["error"]}
        update["dropped"] = [drop]
    return update


def load_summary(runtime: Runtime[Any], run_id: str, step: int, key: str) -> str | None:
    found = memo_get(store_of(runtime), step_namespace(run_id, step, "summaries"), key)
    return found["summary"] if found and not found.get("error") else None
