"""The outer loop of Training-Free GRPO: epochs over a small training set, one step per batch.

``start`` initialises a run (id, empty E, counters) and refuses a changed dataset; ``select_batch``
takes batch ``batch_index`` of epoch ``epoch`` from a seeded shuffle that differs per epoch (the
reference code's shuffle has no effect) and keeps the last partial batch; ``advance`` records the step's
report in the store (the run's history: :func:`step_history`; in state it would make every checkpoint
grow with the number of steps), clears the per-step channels so checkpoints do not grow with B x G, and
moves the counters.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any, Literal

from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore
from langgraph.types import Overwrite

from tfgrpo.context import Context
from tfgrpo.data import batches_per_epoch, dataset_fingerprint, epoch_order, training_queries
from tfgrpo.errors import ConfigError, DataError, RunFailed
from tfgrpo.models.spec import resolve_spec
from tfgrpo.nodes._llm import context_of, step_namespace, store_of
from tfgrpo.nodes._prompts import validate_prompts
from tfgrpo.runs.rundir import check_resume, history_namespace, step_history
from tfgrpo.state.graph_state import LearnState
from tfgrpo.state.library import empty_library
from tfgrpo.state.published import LATEST, library_namespace, make_provenance, publish_library
from tfgrpo.state.report import nothing_worked
from tfgrpo.state.types import StepReport


def cleared_step_channels() -> dict[str, Any]:
    """Empty values for the per-step channels (``Overwrite`` bypasses the append reducers)."""
    return {
        "batch": [],
        "groups": [],
        "proposals": [],
        "candidates": [],
        "selection": Overwrite([]),
        "rollouts": Overwrite([]),
        "summaries": Overwrite([]),
        "usage": Overwrite({}),
        "dropped": Overwrite([]),
        "validation": Overwrite([]),
    }


def run_context(state: LearnState, runtime: Runtime[Context]) -> Context:
    """The run's settings; a dataset given as graph input (Studio's learn form) replaces the context's."""
    ctx = context_of(runtime)
    dataset = state.get("dataset")
    return replace(ctx, dataset=dataset) if dataset and dataset != ctx.dataset else ctx


def start(state: LearnState, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = run_context(state, runtime)
    validate_prompts(ctx.prompts)  # a bad prompt override fails before any call
    queries = training_queries(ctx)
    if not queries:
        raise DataError(f"{ctx.dataset}: no rows")
    check_resume(dict(state), ctx, queries)
    run_id = state.get("run_id")
    store = runtime.store
    # a run id given as input names one run: a new thread must not mix its results with another's
    if (
        run_id
        and not state.get("step")
        and store is not None
        and store.get(library_namespace(run_id), LATEST)
    ):
        raise ConfigError(
            f"run id {run_id!r} is taken: that run has already published E; continue its thread "
            "(run it again with no input) or pick another run_id"
        )
    return {
        "run_id": run_id or uuid.uuid4().hex,
        "seed": state.get("seed", 0),
        "library": state.get("library") or empty_library(),
        "epoch": state.get("epoch", 0),
        "batch_index": state.get("batch_index", 0),
        "step": state.get("step", 0),
        "dataset_fingerprint": dataset_fingerprint(queries),
        "settings_fingerprint": ctx.settings_fingerprint(),
        "run_settings": ctx.run_defining(),
        "done": state.get("epoch", 0) >= ctx.epochs,
        # a thread re-invoked with input restarts its current step: drop that step's partial records
        **cleared_step_channels(),
    }


def select_batch(state: LearnState, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = run_context(state, runtime)
    order = epoch_order(
        training_queries(ctx),
        state.get("seed", 0),
        state.get("epoch", 0),
    )
    first = state.get("batch_index", 0) * ctx.batch_size
    update: dict[str, Any] = {"batch": order[first : first + ctx.batch_size]}
    if ctx.validation:  # E before the step: what a validation-gated update rolls back to (else a 2nd E
        update["library_before"] = state.get("library")  # in every checkpoint, for nothing)
    return update


def advance(state: LearnState, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = run_context(state, runtime)
    # E after this step (after any validation rollback), where inference and eval find it by run id
    publish_library(
        store_of(runtime),
        state.get("run_id", ""),
        state.get("step", 0),
        state.get("library") or empty_library(),
        make_provenance(
            policy_model="" if ctx.agent else resolve_spec(ctx.model),  # a user's agent: its own model
            learner_model=resolve_spec(ctx.learner_model or ctx.model),
            dataset_fingerprint=str(state.get("dataset_fingerprint") or ""),
            run_id=state.get("run_id", ""),
            step=state.get("step", 0),
        ),
    )
    n_batches = batches_per_epoch(len(training_queries(ctx)), ctx.batch_size)
    epoch, batch_index = state.get("epoch", 0), state.get("batch_index", 0) + 1
    if batch_index >= n_batches:
        epoch, batch_index = epoch + 1, 0
    report = state.get("report")
    if report:  # idempotent: a re-run of this node after a crash writes the same record again
        store_of(runtime).put(
            history_namespace(state.get("run_id", "")),
            f"step-{report['step']:05d}",
            dict(report),
            index=False,
        )
    return {
        "step": state.get("step", 0) + 1,
        "epoch": epoch,
        "batch_index": batch_index,
        "done": epoch >= ctx.epochs,
        # per-step channels: cleared so the checkpoint stays the same size whatever B x G is
        **cleared_step_channels(),
    }


def finish(state: LearnState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Studio's learn graph only: the run's output carries the per-step history, read from the store
    once at the end (the CLI's graph never puts it in state, so its checkpoints stay flat in steps).
    A run that learned nothing because every call failed (or no rollout could be scored) ends as an
    error with the CLI's line, not as a success with an empty library."""
    store, run_id = store_of(runtime), state.get("run_id", "")
    history = step_history(store, run_id)
    failure = nothing_worked(history, first_rollout_errors(store, run_id, history))
    if failure:
        raise RunFailed(failure)
    return {"history": history}


def first_rollout_errors(store: BaseStore, run_id: str, history: list[StepReport]) -> list[str]:
    """The reasons of the first failed rollouts of the run (from the rollout memo in the store)."""
    for report in history:
        items = store.search(step_namespace(run_id, report["step"], "rollouts"), limit=50)
        errors = [e for item in items if (e := (item.value.get("rollout") or {}).get("error"))]
        if errors:
            return errors
    return []


def route_next(state: LearnState) -> Literal["select_batch", "__end__"]:
    return "__end__" if state.get("done") else "select_batch"  # "__end__" is END
