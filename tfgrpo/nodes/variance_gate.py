"""Step 3 of Training-Free GRPO: the **variance gate**.

A group teaches nothing when its rewards are all equal (its group-relative advantage is 0). We keep a
group when at least 2 rollouts are usable and their reward spread (max - min) is > 0. The reference code
tests ``0 < mean < 1`` instead, which is wrong for partial rewards (e.g. F1 values all 0.5).

A kept group whose attempts are all short and tool-less is marked ``read_whole``: the extractor reads
those attempts themselves (``nodes/attempts.py``), so they get no summarize call. The router after the
gate sends one summarize branch per usable rollout of every other kept group; with nothing to summarize
it routes to ``extract`` when a group was kept, else straight to ``update_library`` (an empty list of
Sends would end the whole run).

Dynamic sampling (DAPO, ``max_group_size``): before any of that, while a group's usable rewards are all
equal and it holds fewer attempts than the cap, the router sends it back to ``rollout`` for up to G more
attempts (new g indices G, G+1, ...: their own memo keys and sampling seeds, booked and budgeted like
any rollout); ``reward`` scores only the new ones and the gate judges the grown group. A group with
fewer than 2 usable attempts (failed calls) gets none: more attempts would fail the same way.
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.runtime import Runtime, get_runtime
from langgraph.types import Send

from tfgrpo.nodes._llm import context_of, library_text, store_of
from tfgrpo.nodes._llm import library_key as text_key
from tfgrpo.nodes.attempts import group_attempts, read_whole
from tfgrpo.nodes.rollout import rollout_send
from tfgrpo.state.graph_state import StepState
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


def more_attempts(group: Group, group_size: int, cap: int) -> int:
    """How many attempts an all-equal group gets next (dynamic sampling): up to G, within ``cap``
    (``max_group_size``; 0: none)."""
    usable = sum(1 for r in group["rewards"] if r is not None)
    if group["kept"] or usable < MIN_USABLE:
        return 0
    return max(0, min(group_size, cap - len(group["keys"])))


def _reasons(group: Group) -> list[str]:
    """The reward's reason of each attempt, "" where it gave none (``reward_reasons`` is optional)."""
    given = list(group.get("reward_reasons") or [])
    return [given[g] if g < len(given) else "" for g in range(len(group["keys"]))]


def variance_gate(state: StepState, runtime: Runtime[Any]) -> dict[str, Any]:
    groups = [judge_group(group) for group in state.get("groups", [])]
    store, run_id, step = store_of(runtime), state.get("run_id", ""), state.get("step", 0)
    limit = context_of(runtime).whole_attempt_tokens
    return {
        "groups": [
            {**group, "read_whole": read_whole(group_attempts(store, run_id, step, group), limit)}
            if group["kept"]
            else group
            for group in groups
        ]
    }


def route_after_gate(state: StepState) -> list[Send] | Literal["extract", "update_library"]:
    ctx = context_of(get_runtime())
    queries = {q["id"]: q for q in state.get("batch", [])}
    more = [
        rollout_send(state, queries[group["query_id"]], len(group["keys"]) + i)
        for group in state.get("groups", [])
        for i in range(more_attempts(group, ctx.group_size, ctx.max_group_size))
    ]
    if more:
        return more
    # E's rendering is in the store since the step's start (rollout.share_library): only its key here
    library_key = text_key(library_text(state.get("library")))
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
                "library_key": library_key,
                "reward_reason": reason,
            },
        )
        for group in state.get("groups", [])
        if group["kept"] and not group.get("read_whole")
        for g, (key, value, reason) in enumerate(
            zip(group["keys"], group["rewards"], _reasons(group), strict=True)
        )
        if value is not None
    ]
    if sends:
        return sends
    return "extract" if any(group["kept"] for group in state.get("groups", [])) else "update_library"
