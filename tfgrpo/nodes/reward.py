"""Step 2 of Training-Free GRPO: **reward**. A scalar r in [0, 1] for every rollout of the batch, and
the reward's reason (what it read as the answer, what it expected, why they differ) when it gives one.

The reward comes from the context: ``math`` (math-verify), ``exact_match``, ``f1``, ``rg`` (a
reasoning_gym task's own scorer), a user
``module:function``, or ``judge`` -- an LLM grading the answer against the ground truth as CORRECT or
INCORRECT ("grade a quiz", as the paper does for web tasks), with the judge model and memoized like every
other LLM result. A rollout that failed, or whose reward raised or returned a bad value, gets ``None``
(unusable) and is counted as dropped rather than silently shrinking its group. The reasons go on the
group (``reward_reasons``, parallel to its keys) for the learner.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables.config import ContextThreadPoolExecutor
from langgraph.runtime import Runtime

from tfgrpo.context import Context
from tfgrpo.evals.rewards import (
    RewardFn,
    extract_final_answer,
    ground_truth_reward,
    majority_reasons,
    majority_rewards,
    read_expected,
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
from tfgrpo.state.types import CallRecord, Dropped, Group, Query, Rollout, RolloutRef, usage_of

JUDGE_SYSTEM = (
    "You are a teacher grading a quiz. You get a question, the true answer and a student's answer. "
    "Grade only factual correctness: the student's answer is CORRECT if it states the same thing as the "
    "true answer (wording, order, extra context and minor spelling do not matter) and contains no "
    "contradicting claim; otherwise it is INCORRECT. Reply with exactly one word: CORRECT or INCORRECT."
)
JUDGE_USER = "Question: {question}\nTrue answer: {answer}\nStudent answer: {response}\nGrade:"
_VERDICT = re.compile(r"\b(INCORRECT|CORRECT)\b")


@dataclass(frozen=True)
class RewardOutcome:
    """The reward of one response: ``value`` (None: unusable, ``error`` says why), the reward's
    ``reason`` ('' when it gave none) and the calls it made (the judge's)."""

    value: float | None
    reason: str = ""
    error: str | None = None
    calls: list[CallRecord] = field(default_factory=list)


def judge_grade(ctx: Context, query: Query, response: str) -> RewardOutcome:
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
    reason = ""
    if msg is not None:
        verdict = _VERDICT.search(str(msg.content).upper())
        if verdict is None:
            error = f"judge verdict is neither CORRECT nor INCORRECT: {str(msg.content)[:80]!r}"
            record["malformed"] = 1
        else:
            value = 1.0 if verdict.group(1) == "CORRECT" else 0.0
            reason = f"{read_expected(answer, query['answer'])}: the judge said {verdict.group(1)}"
    return RewardOutcome(value, reason, error, [record])


def score_response(ctx: Context, reward_fn: RewardFn | None, query: Query, response: str) -> RewardOutcome:
    """The reward of one response: ``reward_fn`` (checked: a number in [0, 1] or a ``(score, reason)``
    pair), or the judge when it is None. A reward that raised or returned a bad value is unusable (value
    None, the error in one line naming the reward and the value) -- counted, never a silent 0."""
    if reward_fn is None:
        return judge_grade(ctx, query, response)
    try:
        scored = score_row(reward_fn, response, query)
    except Exception as exc:
        return RewardOutcome(None, error=one_line(exc))
    return RewardOutcome(float(scored), scored.reason)


def judge_score(
    runtime: Runtime[Context], ctx: Context, state: StepState, query: Query, key: str, stored: Rollout
) -> RewardOutcome:
    """One judge call per rollout, memoized in the store."""
    store = store_of(runtime)
    ns = step_namespace(state.get("run_id", ""), state.get("step", 0), "judge")
    done = memo_get(store, ns, key)
    if done is None:
        outcome = judge_grade(ctx, query, stored["response"])
        done = {
            "value": outcome.value,
            "reason": outcome.reason,
            "error": outcome.error,
            "calls": outcome.calls,
        }
        memo_put(store, ns, key, done)
    return RewardOutcome(done["value"], done.get("reason", ""), done["error"], done["calls"])


def majority_of_group(keys: list[str], stored: dict[str, Rollout]) -> list[RewardOutcome]:
    """No ground truth: agreement with the group's majority answer (the paper's self-judged ablation)."""
    responses = [stored[key]["response"] if key in stored else None for key in keys]
    values, top = majority_rewards(responses)
    return [
        RewardOutcome(value, reason)
        for value, reason in zip(values, majority_reasons(responses, top), strict=True)
    ]


@dataclass(frozen=True)
class ScoredRun:
    """One agent run and its reward: the run's messages, the reward (None when the run or its scoring
    failed, then ``error`` says why) and every ledger record, the judge's included."""

    messages: list[BaseMessage]
    value: float | None
    error: str | None
    calls: list[CallRecord]


def scored_run(ctx: Context, query: Query, experiences: str, seed: int, *, node: str) -> ScoredRun:
    """One agent run with E, then its reward (evaluation and validation runs)."""
    messages, error, calls = run_policy(ctx, query["question"], experiences, seed, node=node)
    value: float | None = None
    if error is None:
        outcome = score_response(ctx, ground_truth_reward(ctx.reward), query, final_text(messages))
        value, error, calls = outcome.value, outcome.error, [*calls, *outcome.calls]
    return ScoredRun(messages, value, error, calls)


def group_keys(query_id: str, group_size: int, refs: Iterable[RolloutRef]) -> list[str]:
    """The store keys of a query's attempts in g order: the first G, and any drawn beyond them."""
    gs = {*range(group_size), *(ref["g"] for ref in refs if ref["query_id"] == query_id)}
    return [rollout_key(query_id, g) for g in sorted(gs)]


def earlier_outcomes(groups: list[Group]) -> dict[str, RewardOutcome]:
    """What an earlier pass of this step scored, by rollout key: dynamic sampling comes back here with
    more attempts, and what was scored (and booked, and dropped) then is not done again."""
    return {
        key: RewardOutcome(value, reason)
        for group in groups
        for key, value, reason in zip(
            group["keys"],
            group["rewards"],
            group.get("reward_reasons") or [""] * len(group["keys"]),
            strict=True,
        )
    }


def reward(state: StepState, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = context_of(runtime)
    reward_fn = reward_function(ctx.reward)
    refs = {ref["key"]: ref for ref in state.get("rollouts", [])}
    run_id, step = state.get("run_id", ""), state.get("step", 0)
    batch = state.get("batch", [])
    keys_of = {q["id"]: group_keys(q["id"], ctx.group_size, refs.values()) for q in batch}
    before = earlier_outcomes(state.get("groups", []))
    jobs = [(q, key) for q in batch for key in keys_of[q["id"]] if key not in before]
    # every usable rollout to read in one store operation (majority reads the whole group)
    wanted = (
        [key for q in batch for key in keys_of[q["id"]]] if ctx.reward == "majority" else [k for _, k in jobs]
    )
    usable = [key for key in wanted if key in refs and refs[key]["ok"]]
    found = memo_get_many(store_of(runtime), step_namespace(run_id, step, "rollouts"), usable)
    stored = {key: done["rollout"] for key, done in found.items() if done is not None}

    def score(job: tuple[Query, str]) -> RewardOutcome:
        query, key = job
        if ctx.reward == "majority" or key not in stored:
            # majority: scored per group below; not stored: a failed rollout, counted by ``rollout``
            return RewardOutcome(None)
        if reward_fn is None:
            return judge_score(runtime, ctx, state, query, key, stored[key])
        return score_response(ctx, reward_fn, query, stored[key]["response"])

    with ContextThreadPoolExecutor(max_workers=max(1, ctx.max_concurrency)) as pool:
        scored = dict(zip((key for _, key in jobs), pool.map(score, jobs), strict=True))

    groups: list[Group] = []
    dropped: list[Dropped] = []
    calls: list[CallRecord] = []
    for query in batch:
        keys = keys_of[query["id"]]
        for key in keys:
            if key in scored:
                calls += scored[key].calls
                if scored[key].error is not None:
                    dropped.append({"stage": "reward", "item": key, "reason": scored[key].error or ""})
        outcomes = [before[key] if key in before else scored[key] for key in keys]
        if ctx.reward == "majority":
            outcomes = majority_of_group(keys, stored)
        groups.append(
            {
                "query_id": query["id"],
                "keys": keys,
                "rewards": [outcome.value for outcome in outcomes],
                "reward_reasons": [outcome.reason for outcome in outcomes],
                "extra_attempts": len(keys) - ctx.group_size,
                "kept": False,
                "reason": "unjudged",
            }
        )
    return {"groups": groups, "dropped": dropped, "usage": usage_of(calls)}
