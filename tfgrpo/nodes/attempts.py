"""What the learner sees of an attempt: its reward and the reward's reason, the answer as the reward
read it, whether it finished or was cut off at the token limit, and its length.

The study of issue 19 showed a learner blind to why an attempt scored 0: ``finish_reason="length"``
was stored with every rollout and never shown, a cut-off reply's last fragment was presented as its
final answer, and a 15-line summary of a one-line reply was longer than the reply (and contradicted
it). So a group whose attempts are all short (no tool call, at most ``--whole-attempt-tokens``
tokens) is read whole by the extractor, with no summarize call; longer trajectories keep their
summaries, each under the same header. The contrast comes first: the distinct answers with their
counts and rewards, a lone success or lone failure named as such, then the first line where a better
and a worse attempt differ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from langgraph.store.base import BaseStore

from tfgrpo.evals.rewards import extract_final_answer
from tfgrpo.nodes._llm import memo_get_many, step_namespace
from tfgrpo.state.types import Group, Rollout

# how much of a differing line the evidence quotes (a line of a long solution can be a paragraph)
DIFF_LINE_CHARS = 300
# an answer as quoted in the evidence and the attempt headers
ANSWER_CHARS = 120
# with fewer attempts than this, "the only right one" is not worth naming (one of two is just a pair)
LONE_MIN_ATTEMPTS = 3

_ANSWER_LINE = re.compile(r"\\(?:boxed|fbox)\s*\{|answer\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class Attempt:
    """One usable attempt of a group, as the learner is shown it."""

    number: int  # 1-based, in the group's order
    reward: float
    reason: str  # the reward's own reason ("" when it gave none)
    response: str  # the final response
    answer: str  # the answer as the reward read it ('' for an empty reply)
    answer_line: bool  # False: no \boxed{} / "Answer:" line, the answer shown is the reply's last line
    cut_off: bool  # the last model call stopped at the token limit (finish_reason 'length')
    tokens: int  # output tokens of the whole attempt (estimated when the server gave no usage)
    tool_calls: int


def _messages_of(rollout: Rollout, kind: str) -> list[dict[str, Any]]:
    return [m.get("data", {}) for m in rollout.get("trajectory") or [] if m.get("type") == kind]


def attempt_of(number: int, reward: float, reason: str, rollout: Rollout) -> Attempt:
    """The learner's view of ``rollout``: the finish reason and token counts come from its stored model
    turns (``response_metadata`` / ``usage_metadata`` as LangChain records them)."""
    response = rollout.get("response") or ""
    turns = _messages_of(rollout, "ai")
    last = turns[-1] if turns else {}
    finish = (last.get("response_metadata") or {}).get("finish_reason")
    counted = [(m.get("usage_metadata") or {}).get("output_tokens") for m in turns]
    if turns and all(isinstance(n, int) for n in counted):
        tokens = sum(n for n in counted if isinstance(n, int))
    else:  # no usage reported (a user's agent, some servers): about 4 characters a token
        tokens = max(1, len(response) // 4) if response else 0
    return Attempt(
        number=number,
        reward=reward,
        reason=" ".join(reason.split()),
        response=response,
        answer=extract_final_answer(response),
        answer_line=bool(_ANSWER_LINE.search(response)),
        cut_off=finish == "length",
        tokens=tokens,
        tool_calls=sum(len(m.get("tool_calls") or []) for m in turns),
    )


def group_attempts(store: BaseStore, run_id: str, step: int, group: Group) -> list[Attempt]:
    """The usable attempts of ``group`` (a reward and a stored rollout), in g order, with the reward's
    reasons when the reward gave them (``reward_reasons``, parallel to ``keys``)."""
    usable = [key for key, value in zip(group["keys"], group["rewards"], strict=True) if value is not None]
    found = memo_get_many(store, step_namespace(run_id, step, "rollouts"), usable) if usable else {}
    reasons = list(group.get("reward_reasons") or [])
    out = []
    for g, (key, value) in enumerate(zip(group["keys"], group["rewards"], strict=True)):
        done = found.get(key)
        if value is None or done is None:
            continue
        reason = reasons[g] if g < len(reasons) and reasons[g] else ""
        out.append(attempt_of(g + 1, value, reason, done["rollout"]))
    return out


def read_whole(attempts: list[Attempt], limit: int) -> bool:
    """Whether the extractor reads these attempts whole (no summaries): all of at most ``limit`` tokens
    (``Context.whole_attempt_tokens``; 0: never) and without tools. A summary of a one- or two-line
    reply is longer than the reply, and a small summarizer's summaries contradicted the replies."""
    return bool(attempts) and limit > 0 and all(a.tool_calls == 0 and a.tokens <= limit for a in attempts)


def shown_answer(a: Attempt) -> str:
    """The answer as the reward read it, with what the learner must know to trust it."""
    if not a.response.strip():
        return "(empty reply)"
    quoted = repr(a.answer[:ANSWER_CHARS] + ("..." if len(a.answer) > ANSWER_CHARS else ""))
    if a.answer_line:
        return quoted
    return f"(no answer line; last line {quoted})"


def ending(a: Attempt) -> str:
    """How the attempt ended: finished or cut off, and its length."""
    tools = f", {a.tool_calls} tool call{'s' if a.tool_calls != 1 else ''}" if a.tool_calls else ""
    if a.cut_off:
        return f"CUT OFF at the token limit after {a.tokens} tokens{tools} (it never finished)"
    return f"finished, {a.tokens} tokens{tools}"


def reason_text(a: Attempt) -> str:
    return a.reason or "(the reward gave no reason)"


def header(numbers: list[int], a: Attempt) -> str:
    """The line above an attempt (or above identical attempts): everything the reward saw in it."""
    if len(numbers) == 1:
        who = f"Attempt {numbers[0]}"
    else:
        who = f"Attempts {', '.join(map(str, numbers))}: {len(numbers)} identical"
    return (
        f"--- {who}: reward {a.reward:g}; answer read: {shown_answer(a)}; {ending(a)}; "
        f"the reward's reason: {reason_text(a)} ---"
    )


def _lines(response: str) -> list[str]:
    return [line.strip() for line in response.splitlines() if line.strip()]


def _shown_reward(values: list[float]) -> str:
    distinct = sorted(set(values))
    return (
        f"reward {distinct[0]:g}"
        if len(distinct) == 1
        else "rewards " + ", ".join(f"{v:g}" for v in distinct)
    )


def _answer_key(a: Attempt) -> str:
    if not a.response.strip():
        return "(empty reply)"
    return shown_answer(a) + (" [cut off]" if a.cut_off else "")


def lone_attempt(attempts: list[Attempt]) -> str:
    """'Attempt 3 is the lone success ...' when one attempt alone holds the best (or the worst) reward."""
    if len(attempts) < LONE_MIN_ATTEMPTS:
        return ""
    best, worst = max(a.reward for a in attempts), min(a.reward for a in attempts)
    if best == worst:
        return ""
    tops = [a for a in attempts if a.reward == best]
    bottoms = [a for a in attempts if a.reward == worst]
    others = len(attempts) - 1
    if len(tops) == 1:
        what = "success" if best >= 1 else "best attempt"
        return (
            f"Attempt {tops[0].number} is the lone {what} (reward {best:g}): what did it do that the "
            f"other {others} did not?"
        )
    if len(bottoms) == 1:
        what = "failure" if worst <= 0 else "worst attempt"
        return (
            f"Attempt {bottoms[0].number} is the lone {what} (reward {worst:g}): what did it do that the "
            f"other {others} did not?"
        )
    return ""


def group_evidence(answer: str, attempts: list[Attempt]) -> str:
    """The contrast a learner needs first: the ground truth, each distinct answer as the reward read it
    with how many attempts gave it and its reward, how many were cut off, a lone success or failure,
    and the first line where a best and a worst attempt's responses differ."""
    by_answer: dict[str, list[float]] = {}
    for a in attempts:
        by_answer.setdefault(_answer_key(a), []).append(a.reward)
    out = [f"Answers of the {len(attempts)} attempts as the reward read them (ground truth: {answer}):"]
    for final, values in sorted(by_answer.items(), key=lambda kv: (-max(kv[1]), -len(kv[1]))):
        n = len(values)
        out.append(f"- {final}: {n} attempt{'s' if n > 1 else ''}, {_shown_reward(values)}")
    cut = [a for a in attempts if a.cut_off]
    if cut:
        cut_rewards = _shown_reward([a.reward for a in cut])
        out.append(
            f"{len(cut)} of the {len(attempts)} attempts were cut off at the token limit ({cut_rewards})."
        )
    lone = lone_attempt(attempts)
    if lone:
        out.append(lone)
    best = max(attempts, key=lambda a: a.reward)
    worst = min(attempts, key=lambda a: a.reward)
    right, wrong = _lines(best.response), _lines(worst.response)
    if best.reward > worst.reward and right != wrong:
        pairs = enumerate(zip(right, wrong, strict=False))
        i = next((i for i, (a, b) in pairs if a != b), min(len(right), len(wrong)))
        shown_right = right[i][:DIFF_LINE_CHARS] if i < len(right) else "(ends here)"
        shown_wrong = wrong[i][:DIFF_LINE_CHARS] if i < len(wrong) else "(ends here)"
        out.append(
            f"First line where a better and a worse attempt differ (attempt {best.number}, reward "
            f"{best.reward:g}, vs attempt {worst.number}, reward {worst.reward:g}; line {i + 1} of their "
            f"responses):\n  better: {shown_right}\n  worse:  {shown_wrong}"
        )
    return "\n".join(out)


def attempts_text(attempts: list[Attempt], summaries: dict[int, str] | None) -> str:
    """The attempts under their headers: whole (``summaries`` None) or summarized (attempt number ->
    summary). Identical attempts (same reward, same response) are shown once with their numbers."""
    same: dict[str, list[Attempt]] = {}
    for a in attempts:
        same.setdefault(f"{a.reward}\0{a.cut_off}\0{' '.join(a.response.split())}", []).append(a)
    if summaries is None:
        title = "The attempts, whole (each under its reward, the answer read, how it ended, the reason):"
    else:
        title = "The attempts, summarized (each under its reward, the answer read, how it ended, the reason):"
    parts = [title]
    for group in same.values():
        first = group[0]
        body = (first.response.strip() or "(empty)") if summaries is None else summaries[first.number]
        parts.append(f"{header([a.number for a in group], first)}\n{body}")
    return "\n\n".join(parts)
