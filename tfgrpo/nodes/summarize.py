"""Step 4 of Training-Free GRPO: **summarize**. One learner call per usable rollout of a kept group.

The summary says, step by step, what the trajectory did, which experiences it used, and where it erred
or detoured, given the ground truth and its reward. It is stored (not kept in state) for ``extract``.
"""

from __future__ import annotations

import json
from typing import Any

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
from tfgrpo.nodes.rollout import load_rollout
from tfgrpo.state.types import Dropped, Query, SummaryRef, usage_of

SYSTEM_PROMPT = (
    "You SUMMARIZE one attempt at a problem for a team that learns from its attempts. "
    "Write a short step-by-step summary of what the attempt did: the approach, which of the listed "
    "experiences (by id) it used or ignored, the key intermediate results, and, comparing with the "
    "ground truth, exactly where it went wrong or took a detour. Plain text, at most 12 lines."
)

USER_TEMPLATE = """Problem:
{question}

Ground-truth answer: {answer}
Reward of this attempt: {reward:g} (1 = fully correct, 0 = wrong)

{library}

The attempt (final response):
{response}"""

MAX_TRAJECTORY_CHARS = 12000
# shown instead of the ground truth when learning without one (the ``majority`` reward)
NO_GROUND_TRUTH = "not given (the reward is agreement with the most frequent answer of the group)"


class SummarizeTask(TypedDict):
    run_id: str
    step: int
    query: Query
    key: str
    g: int
    reward: float
    library_key: str


def trajectory_text(rollout_trajectory: list[dict[str, Any]], response: str) -> str:
    """The rollout as the summarizer sees it: tool calls and results when there were any."""
    steps = [
        m for m in rollout_trajectory if m.get("type") in ("ai", "tool") and m is not rollout_trajectory[-1]
    ]
    if not steps:
        return response[-MAX_TRAJECTORY_CHARS:]
    lines = []
    for m in steps:
        data = m.get("data", {})
        calls = data.get("tool_calls") or []
        if calls:
            lines.append("TOOL CALLS: " + json.dumps([{c["name"]: c["args"]} for c in calls])[:2000])
        elif data.get("content"):
            lines.append(f"{m['type'].upper()}: {str(data['content'])[:2000]}")
    lines.append(f"FINAL: {response}")
    return "\n".join(lines)[-MAX_TRAJECTORY_CHARS:]


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
        model, spec = learner_model(ctx)
        messages = [
            SystemMessage(SYSTEM_PROMPT),
            HumanMessage(
                USER_TEMPLATE.format(
                    question=task["query"]["question"],
                    answer=task["query"]["answer"] or NO_GROUND_TRUTH,
                    reward=task["reward"],
                    library=library_text_of(store, task["run_id"], task["library_key"])
                    or "(no experiences yet)",
                    response=trajectory or "(empty)",
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
