"""Step 3 of Training-Free GRPO: the **variance gate**.

A group teaches nothing when its rewards are all equal (its group-relative advantage is 0). We keep a
group when at least 2 rollouts are usable and their reward spread (max - min) is > 0. The reference code
tests ``0 < mean < 1`` instead, which is wrong for partial rewards (e.g. F1 values all 0.5).

The router after the gate sends one summarize branch per usable rollout of a kept group; when nothing
passes it routes straight to ``update_library``: an empty list of Sends would end the whole run.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import get_runtime
from langgraph.types import Send

from tfgrpo.nodes._llm import publish_library_text, store_of
from tfgrpo.state.graph_state import StepState
from tfgrpo.state.library import render_library
from tfgrpo.state.types import Group

MIN_USABLE = 2


def judge_group(group: Group) -> Group:
    usable = [r for r in group["rewards"] if r is not None]
    if len(usable) < MIN_USABLE:
        kept, reason = False, f"only {len(usable)} usable rollout(s)"
    elif max(usable) - min(usable) <= 0:
        kept, reason = False, f"no reward spread (all {usable[0]:g})"
    else:
        kept, reason = True, f"spread {max(usable) - min(usable):g}"
    return {**group, "kept": kept, "reason": reason}


def variance_gate(state: StepState) -> dict[str, Any]:
    return {"groups": [judge_group(group) for group in state.get("groups", [])]}


def route_after_gate(state: StepState) -> list[Send] | str:
    queries = {q["id"]: q for q in state.get("batch", [])}
    library_text = render_library(state["library"]) if state.get("library") else ""
    library_key = publish_library_text(store_of(get_runtime()), state.get("run_id", ""), library_text)
    sends = [
        Send(
            "summarize",
            {
                "run_id": state.get("run_id", ""),
                "step": state.get("step", 0),
                "query": queries[group["query_id"]],
                "key": key,
                "g": g,
                "reward": value,
                "reward_reason": reasons[g] if g < len(reasons) else "",
                "library_key": library_key,
            },
        )
        for group in state.get("groups", [])
        if group["kept"]
        for reasons in [group.get("reward_reasons", [])]
        for g, (key, value) in enumerate(zip(group["keys"], group["rewards"], strict=True))
        if value is not None
    ]
    return sends or "update_library"
