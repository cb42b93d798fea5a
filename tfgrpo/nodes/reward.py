"""Step 2 of Training-Free GRPO: **reward**. A scalar r in [0, 1] for every rollout of the batch.

The reward comes from the context: ``math`` (math-verify), ``exact_match``, ``f1``, ``rg`` (a
reasoning_gym task's own scorer), a user
``module:function``, or ``judge`` -- an LLM grading the answer against the ground truth as CORRECT or
INCORRECT ("grade a quiz", as the paper does for web tasks), with the judge model and memoized like every
other LLM result. A rollout that failed, or whose reward raised, gets ``None`` (unusable) and is counted
as dropped rather than silently shrinking its group.
"""

from __future__ import annotations

import re
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables.config import ContextThreadPoolExecutor
from langgraph.runtime import Runtime

from tfgrpo.context import Context
from tfgrpo.evals.rewards import (
    RewardFn,
    extract_final_answer,
    ground_truth_reward,
    majority_rewards,
    reward_function,
    score_row,
)
from tfgrpo.models.spec import ModelSettings, get_model, resolve_spec
from tfgrpo.nodes._llm import (
    call_text,
    context_of,
    memo_get,
    memo_get_many,
    memo_put,
    one_line,
    step_namespace,
    store_of,
)
from tfgrpo.nodes._prompts import prompt_text
from tfgrpo.nodes.policy import final_text, run_policy
from tfgrpo.nodes.rollout import rollout_key
from tfgrpo.state.graph_state import StepState
from tfgrpo.state.types import CallRecord, Dropped, Group, Query, Rollout, usage_of

JUDGE_SYSTEM = (
    "You are a teacher grading a quiz. You get a question, the true answer and a student's answer. "
    "Grade only factual correctness: the student's answer is CORRECT if it states the same thing as the "
    "true answer (wording, order, extra context and minor spelling do not matter) and contains no "
    "contradicting claim; otherwise it is INCORRECT. Reply with exactly one word: CORRECT or INCORRECT."
)
JUDGE_USER = "Question: {question}\nTrue answer: {answer}\nStudent answer: {response}\nGrade:"
_VERDICT = re.compile(r"\b(INCORRECT|CORRECT)\b")


def judge_grade(ctx: Context, query: Query, response: str) -> tuple[float | None, str | None, CallRecord]:
    """One judge call, not memoized: 1.0 for CORRECT, 0.0 for INCORRECT, None with an error otherwise."""
    spec = resolve_spec(ctx.judge_model or ctx.model)
    model = get_model(
        ModelSettings(
            spec=spec,
            base_url=ctx.base_url,
            temperature=ctx.judge_temperature,
            max_tokens=ctx.judge_max_tokens,
            timeout=ctx.request_timeout,
        )
    )
    answer = extract_final_answer(response) or response[-500:]
    user = prompt_text(ctx.prompts, "judge_user", JUDGE_USER)
    messages = [
        SystemMessage(prompt_text(ctx.prompts, "judge_system", JUDGE_SYSTEM)),
        HumanMessage(user.format(question=query["question"], answer=query["answer"], response=answer)),
    ]
    msg, record, error = call_text(ctx, model, spec, "judge", messages)
    value: float | None = None
    if msg is not None:
        verdict = _VERDICT.search(str(msg.content).upper())
        if verdict is None:
            error = f"judge verdict is neither CORRECT nor INCORRECT: {str(msg.content)[:80]!r}"
            record["malformed"] = 1
        else:
            value = 1.0 if verdict.group(1) == "CORRECT" else 0.0
    return value, error, record


def score_response(
    ctx: Context, reward_fn: RewardFn | None, query: Query, response: str
) -> tuple[float | None, str | None, list[CallRecord]]:
    """The reward of one response: ``reward_fn`` clipped to [0, 1], or the judge when it is None.
    A reward that raised gives (None, error) -- unusable and counted, never a silent 0."""
    if reward_fn is None:
        value, error, record = judge_grade(ctx, query, response)
        return value, error, [record]
    try:
        return min(1.0, max(0.0, float(score_row(reward_fn, response, query)))), None, []
    except Exception as exc:
        return None, one_line(exc), []


def judge_score(
    runtime: Runtime[Context], ctx: Context, state: StepState, query: Query, key: str, stored: Rollout
) -> tuple[float | None, str | None, list[CallRecord]]:
    """One judge call per rollout, memoized in the store."""
    store = store_of(runtime)
    ns = step_namespace(state.get("run_id", ""), state.get("step", 0), "judge")
    done = memo_get(store, ns, key)
    if done is None:
        value, error, record = judge_grade(ctx, query, stored["response"])
        done = {"value": value, "error": error, "calls": [record]}
        memo_put(store, ns, key, done)
    return done["value"], done["error"], done["calls"]


def majority_of_group(keys: list[str], stored: dict[str, Rollout]) -> list[float | None]:
    """No ground truth: agreement with the group's majority answer (the paper's self-judged ablation)."""
    return majority_rewards([stored[key]["response"] if key in stored else None for key in keys])[0]


def scored_run(
    ctx: Context, query: Query, experiences: str, seed: int, *, node: str
) -> tuple[list[BaseMessage], float | None, str | None, list[CallRecord]]:
    """One agent run with E, then its reward (evaluation and validation runs): (messages, reward or None,
    error, every ledger record, the judge's included)."""
    messages, error, calls = run_policy(ctx, query["question"], experiences, seed, node=node)
    value: float | None = None
    if error is None:
        value, error, judge_calls = score_response(
            ctx, ground_truth_reward(ctx.reward), query, final_text(messages)
        )
        calls = [*calls, *judge_calls]
    return messages, value, error, calls


def reward(state: StepState, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = context_of(runtime)
    reward_fn = reward_function(ctx.reward)
    refs = {ref["key"]: ref for ref in state.get("rollouts", [])}
    run_id, step = state.get("run_id", ""), state.get("step", 0)
    jobs = [(q, rollout_key(q["id"], g)) for q in state.get("batch", []) for g in range(ctx.group_size)]
    # every usable rollout of the batch in one store operation
    usable = [key for _, key in jobs if key in refs and refs[key]["ok"]]
    found = memo_get_many(store_of(runtime), step_namespace(run_id, step, "rollouts"), usable)
    stored = {key: done["rollout"] for key, done in found.items() if done is not None}

    def score(job: tuple[Query, str]) -> tuple[float | None, str | None, list[CallRecord]]:
        query, key = job
        if ctx.reward == "majority":
            return None, None, []  # scored per group below
        if key not in stored:
            return None, None, []  # a failed rollout, already counted as dropped by ``rollout``
        if reward_fn is None:
            return judge_score(runtime, ctx, state, query, key, stored[key])
        return score_response(ctx, reward_fn, query, stored[key]["response"])

    with ContextThreadPoolExecutor(max_workers=max(1, ctx.max_concurrency)) as pool:
        scored = dict(zip((key for _, key in jobs), pool.map(score, jobs), strict=True))

    groups: list[Group] = []
    dropped: list[Dropped] = []
    calls: list[CallRecord] = []
    for query in state.get("batch", []):
        keys = [rollout_key(query["id"], g) for g in range(ctx.group_size)]
        for key in keys:
            _, error, records = scored[key]
            calls += records
            if error is not None:
                dropped.append({"stage": "reward", "item": key, "reason": error})
        rewards = [scored[key][0] for key in keys]
        if ctx.reward == "majority":
            rewards = majority_of_group(keys, stored)
        groups.append(
            {"query_id": query["id"], "keys": keys, "rewards": rewards, "kept": False, "reason": "unjudged"}
        )
    return {"groups": groups, "dropped": dropped, "usage": usage_of(calls)}
