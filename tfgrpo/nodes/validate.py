"""Beyond the paper: **validation-gated update** of the experience library (optional).

The paper applies every batch's operations. With a held-out validation set (``validation`` in the
context), the learn loop checks each step that changed E: the policy answers every validation question
``validation_k`` times with E before the step and with E after it (run i of both uses the same sampling
seed, so the comparison is paired), and the step's E is kept only if its mean reward is not lower than
before by more than ``validation_tolerance``; otherwise E is rolled back to what it was before the step.
Ids stay unique across a rollback (``next_id`` is kept). Every run is a ``Send`` branch memoized in the
store, so a crash in the middle repeats no finished run.
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.runtime import Runtime, get_runtime
from langgraph.types import Send
from typing_extensions import TypedDict

from tfgrpo.context import Context
from tfgrpo.data import load_dataset
from tfgrpo.nodes._llm import (
    context_of,
    derived_seed,
    library_key,
    library_text_of,
    memo_get,
    memo_put,
    publish_library_text,
    step_namespace,
    stop_if_draining,
    store_of,
)
from tfgrpo.nodes.reward import scored_run
from tfgrpo.state.graph_state import LearnState
from tfgrpo.state.library import Library, empty_library, render_library
from tfgrpo.state.report import usage_totals
from tfgrpo.state.types import Query, StepReport, ValidationReport, ValidationRun, usage_of

ARMS = ("before", "after")


class ValidateTask(TypedDict):
    run_id: str
    step: int
    seed: int
    arm: str
    query: Query
    i: int
    library_key: str


def validation_seed(seed: int, step: int, query_id: str, i: int) -> int:
    """Run i of a validation question gets the same sampling seed before and after: paired."""
    return derived_seed("validate", seed, step, query_id, i)


def arm_texts(state: LearnState, ctx: Context) -> dict[str, str]:
    """E before and after the step, rendered for the validation branches; empty (no validation) without
    a validation set or when the step left E as it was."""
    before = state.get("library_before") or empty_library()
    after = state.get("library") or empty_library()
    if not ctx.validation or before["version"] == after["version"]:
        return {}
    return {"before": render_library(before), "after": render_library(after)}


def prepare_validation(state: LearnState, runtime: Runtime[Context]) -> dict[str, Any]:
    """After update_library: both arms' E into the store, for the validation branches (which carry
    only their keys); nothing to do when the step is not validated."""
    store = store_of(runtime)
    for text in arm_texts(state, context_of(runtime)).values():
        publish_library_text(store, state.get("run_id", ""), text)
    return {}


def fan_out_validation(state: LearnState) -> list[Send] | Literal["advance"]:
    """Validate the step's E when a validation set is given and E changed (prepare_validation published
    both arms' E)."""
    ctx = context_of(get_runtime())
    keys = {arm: library_key(text) for arm, text in arm_texts(state, ctx).items()}
    if not keys:
        return "advance"
    run_id = state.get("run_id", "")
    return [
        Send(
            "validate",
            ValidateTask(
                run_id=run_id,
                step=state.get("step", 0),
                seed=state.get("seed", 0),
                arm=arm,
                query=query,
                i=i,
                library_key=keys[arm],
            ),
        )
        for query in load_dataset(ctx.validation)
        for i in range(ctx.validation_k)
        for arm in ARMS
    ]


def validate(task: ValidateTask, runtime: Runtime[Context]) -> dict[str, Any]:
    """One validation run (a map branch), memoized."""
    ctx = context_of(runtime)
    store = store_of(runtime)
    ns = step_namespace(task["run_id"], task["step"], "validation")
    key = f"{task['arm']}:{task['query']['id']}#{task['i']}"
    done = memo_get(store, ns, key)
    if done is None:
        stop_if_draining(runtime)
        experiences = library_text_of(store, task["run_id"], task["library_key"])
        seed = validation_seed(task["seed"], task["step"], task["query"]["id"], task["i"])
        scored = scored_run(ctx, task["query"], experiences, seed, node="validate")
        run: ValidationRun = {
            "arm": task["arm"],
            "query_id": task["query"]["id"],
            "i": task["i"],
            "reward": scored.value,
        }
        done = {"run": run, "error": scored.error, "calls": scored.calls}
        memo_put(store, ns, key, done)
    return {"validation": [done["run"]], "usage": usage_of(done["calls"])}


def _mean(runs: list[ValidationRun], arm: str) -> float | None:
    values = [r["reward"] for r in runs if r["arm"] == arm and r["reward"] is not None]
    return round(sum(values) / len(values), 4) if values else None


def validation_gate(state: LearnState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Keep the step's E, or roll back to E before the step; record the check in the step report."""
    ctx = context_of(runtime)
    runs = state.get("validation", [])
    before, after = _mean(runs, "before"), _mean(runs, "after")
    library: Library = state.get("library") or empty_library()
    if before is None or after is None:
        kept, reason = True, "no usable validation run in one arm: kept"
    elif after < before - ctx.validation_tolerance:
        kept, reason = False, f"validation reward fell from {before:.3f} to {after:.3f}: rolled back"
    else:
        kept, reason = True, f"validation reward {before:.3f} -> {after:.3f}: kept"
    check: ValidationReport = {
        "before": before,
        "after": after,
        "runs": len(runs),
        "failed": sum(1 for r in runs if r["reward"] is None),
        "kept": kept,
        "reason": reason,
    }
    if not kept:
        previous = state.get("library_before") or empty_library()
        # ids are never reused: the rolled-back E keeps the counter of the rejected one
        library = {**previous, "next_id": library["next_id"], "version": library["version"] + 1}
    usage = state.get("usage") or {}
    report: StepReport = {
        **state["report"],
        "usage": usage,
        "validation": check,
        "library_size": len(library["items"]),
        "library_version": library["version"],
    }
    report.update(usage_totals(report["usage"]))  # type: ignore[typeddict-item]
    return {"library": library, "report": report}
