"""Step 2 of Training-Free GRPO: **reward**. A scalar r in [0, 1] for every rollout of the batch.

The reward function comes from the context (``math`` via math-verify, ``exact_match``, ``f1`` or a user
``module:function``). A rollout that failed, or whose reward raised, gets ``None`` (unusable) and is
counted as dropped rather than silently shrinking its group.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from tfgrpo.context import Context
from tfgrpo.evals.rewards import get_reward
from tfgrpo.nodes._llm import context_of, one_line
from tfgrpo.nodes.rollout import load_rollout, rollout_key
from tfgrpo.state.graph_state import StepState
from tfgrpo.state.types import Dropped, Group


def reward(state: StepState, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = context_of(runtime)
    reward_fn = get_reward(ctx.reward)
    refs = {ref["key"]: ref for ref in state.get("rollouts", [])}
    groups: list[Group] = []
    dropped: list[Dropped] = []
    for query in state.get("batch", []):
        keys = [rollout_key(query["id"], g) for g in range(ctx.group_size)]
        rewards: list[float | None] = []
        for key in keys:
            ref = refs.get(key)
            stored = load_rollout(runtime, state.get("run_id", ""), state.get("step", 0), key)
            if ref is None or not ref["ok"] or stored is None:
                rewards.append(None)
                continue
            try:
                value = float(reward_fn(stored["response"], query["answer"]))
            except Exception as exc:
                dropped.append({"stage": "reward", "item": key, "reason": one_line(exc)})
                rewards.append(None)
                continue
            rewards.append(min(1.0, max(0.0, value)))
        groups.append(
            {"query_id": query["id"], "keys": keys, "rewards": rewards, "kept": False, "reason": "unjudged"}
        )
    return {"groups": groups, "dropped": dropped}
