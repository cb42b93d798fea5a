"""The compact per-step report: what a user reads to see whether a step did anything, and what it cost."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tfgrpo.state.graph_state import StepState
from tfgrpo.state.library import Library, Operation, RejectedOperation
from tfgrpo.state.types import CallRecord, Dropped, StepReport, Usage, merge_usage, usage_of


def usage_totals(usage: dict[str, Usage]) -> dict[str, Any]:
    """The report's call, token, dollar and time totals from its per-node usage."""
    seconds = 0.0
    if usage:
        first = min(u["first_started"] for u in usage.values())
        seconds = round(max(u["last_ended"] for u in usage.values()) - first, 3)
    return {
        "calls": sum(u["calls"] for u in usage.values()),
        "calls_failed": sum(u["failed"] for u in usage.values()),
        "cached_calls": sum(u.get("cached", 0) for u in usage.values()),
        "cached_tokens": sum(u.get("cached_tokens", 0) for u in usage.values()),
        "retries": sum(u["retries"] for u in usage.values()),
        "cost_usd": round(sum(u["cost_usd"] for u in usage.values()), 6),
        "input_tokens": sum(u["input_tokens"] for u in usage.values()),
        "output_tokens": sum(u["output_tokens"] for u in usage.values()),
        "seconds": seconds,
    }


def build_step_report(
    state: StepState,
    *,
    library: Library,
    applied: list[Operation],
    rejected: list[RejectedOperation],
    more_calls: list[CallRecord],
    more_dropped: list[Dropped],
    final_operations: int | None = None,
    lessons_rejected: dict[str, int] | None = None,
    lessons_retried: dict[str, int] | None = None,
    lessons_kept: int = 0,
    rewrites: list[Operation] | None = None,
) -> StepReport:
    """``final_operations``: how many operations the consolidation kept (merging and discarding
    proposals is its job; the report shows how many it let through). ``lessons_rejected``: ADD/UPDATEs
    the lesson gate stopped for good, by reason (proposals after their retry, and final operations; they
    are also in ``rejected``). ``lessons_retried``: proposals sent back to the learner once, by the
    reason the gate first gave. ``lessons_kept``: proposed ADDs the consolidation left out, kept as
    proposed (never silently dropped). ``rewrites``: the learner's rewrites of rejected proposals that
    passed the gate (with the proposals and the rejections, every lesson's text is in the report)."""
    groups = state.get("groups", [])
    rewards = [r for group in groups for r in group["rewards"] if r is not None]
    usage = merge_usage(state.get("usage"), usage_of(more_calls))
    dropped = [*state.get("dropped", []), *more_dropped]
    rollouts = state.get("rollouts", [])
    proposed = sum(len(p["operations"]) for p in state.get("proposals", []))
    return {
        "step": state.get("step", 0),
        "epoch": state.get("epoch", 0),
        "batch_index": state.get("batch_index", 0),
        "queries": len(state.get("batch", [])),
        "rollouts": len(rollouts),
        "rollouts_failed": sum(1 for r in rollouts if not r["ok"]),
        "mean_reward": round(sum(rewards) / len(rewards), 4) if rewards else None,
        "groups_kept": sum(1 for group in groups if group["kept"]),
        "groups_skipped": sum(1 for group in groups if not group["kept"]),
        "extra_rollouts": sum(group.get("extra_attempts", 0) for group in groups),
        "groups_rescued": sum(1 for group in groups if group["kept"] and group.get("extra_attempts", 0)),
        "operations_proposed": proposed,
        # the text of every proposal, kept: a lesson the gate or the consolidation stopped is read here
        "proposed": [op for p in state.get("proposals", []) for op in p["operations"]],
        "rewrites": list(rewrites or []),
        "operations_final": proposed if final_operations is None else final_operations,
        "operations_applied": len(applied),
        "operations_rejected": len(rejected),
        "rejected": rejected,
        "applied": applied,
        "dropped": dict(Counter(d["stage"] for d in dropped)),
        "lessons_rejected": dict(lessons_rejected or {}),
        "lessons_retried": dict(lessons_retried or {}),
        "lessons_kept": lessons_kept,
        "malformed": {node: u.get("malformed", 0) for node, u in usage.items() if u.get("malformed")},
        "usage": usage,
        **usage_totals(usage),  # type: ignore[typeddict-item]
        "library_size": len(library["items"]),
        "library_version": library["version"],
    }


def nothing_worked(history: list[StepReport], errors: list[str]) -> str | None:
    """A sentence when no rollout of the run could be scored (every call failed, or every reward), else
    None: such a run learned nothing and must not look like a success."""
    rollouts = sum(r["rollouts"] for r in history)
    if not rollouts or any(r["mean_reward"] is not None for r in history):
        return None
    calls = sum(r["calls"] for r in history)
    failed = sum(r["calls_failed"] for r in history)
    why = f" (first error: {errors[0]})" if errors else ""
    if calls and failed == calls:
        return f"every LLM call of this run failed ({failed} of {calls}){why}"
    return f"no rollout could be scored: all {rollouts} rollouts failed or their reward did{why}"
