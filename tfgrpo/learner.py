"""Drive the learn graph from the command line: SQLite checkpoints in the run directory, progress bars,
outputs after every step, graceful Ctrl-C, and resume by running the same command again."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.runtime import RunControl
from langgraph.store.base import BaseStore
from tqdm.auto import tqdm

from tfgrpo.checks import check_context
from tfgrpo.context import Context
from tfgrpo.data import batches_per_epoch, load_dataset, training_queries
from tfgrpo.errors import ConfigError
from tfgrpo.evals.rewards import reward_function, warm_up
from tfgrpo.graphs.learn import compile_learn_graph
from tfgrpo.models.ledger import Ledger, Prices, paid_totals, spent_so_far, use_llm_cache
from tfgrpo.models.spec import resolve_spec
from tfgrpo.nodes.policy import build_models
from tfgrpo.nodes.variance_gate import more_attempts
from tfgrpo.runs.backends import Backend, open_backend
from tfgrpo.runs.gc_tuning import quiet_gc
from tfgrpo.runs.pglock import redacted
from tfgrpo.runs.rundir import (
    RunDir,
    check_resume,
    check_store_holds_run,
    mark_run,
    open_store,
    run_stoppably,
    show_progress,
    step_history,
    table_header,
    table_line,
)
from tfgrpo.runs.runlock import lock_run_dir
from tfgrpo.runs.tracking import LEARN_FILES, Tracker, open_tracker, settings_params
from tfgrpo.state.graph_state import LearnState
from tfgrpo.state.report import nothing_worked
from tfgrpo.state.types import StepReport

THREAD_ID = "learn"
# the six step nodes, share_library, select and choose_candidate (--candidates), select_batch,
# prepare_validation, validate, validation_gate, advance
SUPERSTEPS_PER_STEP = 14
MAP_NODES = ("rollout", "summarize")


class Progress:
    """One bar per map stage of the current step (rollout, summarize); a table row per finished step."""

    def __init__(self, enabled: bool, group_size: int, max_group_size: int = 0) -> None:
        self.enabled = show_progress(enabled)
        self.group_size = group_size
        self.max_group_size = max_group_size
        self.bar: tqdm[Any] | None = None

    def _open(self, desc: str, total: int) -> None:
        self.close()
        if self.enabled and total:
            self.bar = tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def update(self, node: str, update: dict[str, Any]) -> None:
        if node == "select_batch":
            self._open("rollout", len(update.get("batch", [])) * self.group_size)
        elif node == "variance_gate":
            groups = update.get("groups", [])
            more = sum(more_attempts(g, self.group_size, self.max_group_size) for g in groups)
            if more:  # dynamic sampling: all-equal groups get more attempts before any summary
                self._open("rollout (more)", more)
                return
            total = sum(sum(r is not None for r in g["rewards"]) for g in groups if g["kept"])
            self._open("summarize", total)
        elif node in ("rollout", "summarize") and self.bar is not None:
            self.bar.update(1)
        elif node == "extract":
            self.close()


def stored_history(run: RunDir) -> list[StepReport]:
    """The finished steps' reports from the run's ``store.sqlite`` (a killed run's too); [] without one."""
    if not run.store.exists():
        return []
    store = open_store(run.store)
    try:
        runs = store.list_namespaces(prefix=("tfgrpo",), suffix=("history",), max_depth=3)
        return [report for ns in runs for report in step_history(store, ns[1])]
    finally:
        store.conn.close()


def stored_paid(run: RunDir) -> dict[str, Any] | None:
    """What the server was paid for the run in ``run`` (its own run directory's result cache)."""
    if not run.store.exists():
        return None
    try:
        prices = Prices.load(run_prices(run))
    except ConfigError:  # prices this version refuses (a run of an older one): the report has no dollars
        prices = Prices(table={})
    store = open_store(run.store)
    try:
        return paid_totals(store, "", prices)
    finally:
        store.conn.close()


def run_prices(run: RunDir) -> str | None:
    try:
        settings = json.loads((run.path / "run.json").read_text(encoding="utf-8"))
        found = settings["context"]["prices"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if isinstance(found, str) and found else None


def _final_outputs(
    run: RunDir, store: BaseStore, values: dict[str, Any], paid: dict[str, Any] | None = None
) -> list[StepReport]:
    """The run's files plus its learning curve (plotted at the end only: matplotlib is not free)."""
    from tfgrpo.evals.report import write_learning_curve

    history = step_history(store, values.get("run_id", "")) if values else []
    run.write_outputs(values, history, paid)
    write_learning_curve(run.path, history)
    return history


def run_learning(
    ctx: Context,
    *,
    run_dir: Path,
    seed: int,
    progress: bool = True,
    keep_checkpoints: bool = False,
    ledger: Ledger | None = None,
    callbacks: Any = None,
    db: str = "",
    run_id: str = "",
    track: str = "",
    track_traces: bool = False,
) -> int:
    """Learn (or resume) the run in ``run_dir``; ``db`` is ``--db`` (see :mod:`tfgrpo.runs.backends`) and
    ``run_id`` names the run there (default: the run directory's name); ``track`` is ``--track``
    (:mod:`tfgrpo.runs.tracking`)."""
    # fail fast with one-line errors, before anything is paid for
    check_context(ctx)
    queries = training_queries(ctx)
    reward_function(ctx.reward)
    if ctx.validation:
        if ctx.reward == "majority":
            raise ConfigError("--validation needs a ground-truth reward (not majority)")
        load_dataset(ctx.validation)
    if ctx.candidates > 1 and ctx.reward == "majority":  # a selection run is scored alone, not in a group
        raise ConfigError("--candidates above 1 needs a ground-truth reward (not majority)")
    if ledger is not None:  # a model without a price under --budget-usd: refused before the header
        ledger.check_prices(sorted({resolve_spec(ctx.model), resolve_spec(ctx.learner_model or ctx.model)}))
    warm_up(ctx.reward)  # math-verify helpers start (other processes) while this one builds the models
    build_models(ctx, learner=True)  # before the fan-out (see build_models)
    run = RunDir(run_dir)
    run.create()
    tracker = open_tracker(track, run.path, traces=track_traces)
    code = 1  # an exception below ends the MLflow run as FAILED
    with (
        lock_run_dir(run.path),  # one writer per run directory
        open_backend(db, local_dir=run.path, run_id=run_id or run.path.resolve().name) as backend,
        backend.lock(),  # and, in a shared database, one writer per run id
    ):
        try:
            code = _learn(
                ctx, run, backend, queries, seed, progress, keep_checkpoints, ledger, callbacks, tracker
            )
        finally:
            tracker.finish(code, LEARN_FILES)
        return code


def _learn(
    ctx: Context,
    run: RunDir,
    backend: Backend,
    queries: list[Any],
    seed: int,
    progress: bool,
    keep_checkpoints: bool,
    ledger: Ledger | None,
    callbacks: Any,
    tracker: Tracker,
) -> int:
    run_dir, store = run.path, backend.store
    thread = backend.thread(THREAD_ID)
    graph = compile_learn_graph(checkpointer=backend.saver, store=store)
    n_steps = ctx.epochs * batches_per_epoch(len(queries), ctx.batch_size)
    config: RunnableConfig = {
        "configurable": {"thread_id": thread},
        "recursion_limit": (n_steps + 2) * SUPERSTEPS_PER_STEP,
        "max_concurrency": ctx.max_concurrency,
    }
    if callbacks is not None:  # e.g. a tracer: every LLM call of the run nests under the learn run
        config["callbacks"] = callbacks
    snapshot = graph.get_state(config)
    values = dict(snapshot.values or {})
    check_resume(values, ctx, queries)
    if values.get("run_id"):
        where = str(run.store) if not backend.shared else f"the run's store in {redacted(backend.url)}"
        check_store_holds_run(
            store, values["run_id"], where, f"start fresh with another --run-dir (or delete {run_dir})"
        )
    # Complete only when the graph says so: ``advance`` sets ``done`` after the last step. An empty
    # ``snapshot.next`` is not enough: it is also empty when a task's writes are stored but the next
    # checkpoint is not (a kill there), and such a run must continue.
    if values.get("done"):
        history = _final_outputs(run, store, values)
        print(f"run in {run_dir} is already complete ({len(history)} steps)")
        return _failed_run_exit(history, run_dir)
    graph_input: dict[str, Any] | None = None if values else {"seed": seed}
    if not values:
        run.refuse_new_run_over_outputs()
    tracker.start("learn", settings_params(ctx, seed=seed))  # a bad tracking URI stops here, before any call
    if graph_input is not None:
        # the run id keys its store items (given in a shared database); the store knows it from the start
        graph_input["run_id"] = backend.run_id if backend.shared else uuid.uuid4().hex
        mark_run(store, graph_input["run_id"])
    if values:
        print(f"resuming {run_dir} at step {values.get('step', 0)} of {n_steps}", flush=True)
    else:
        run.write_settings(ctx, seed)
        print(f"learning: {len(queries)} queries, {n_steps} steps -> {run_dir}", flush=True)

    ledger = ledger or Ledger(max_concurrency=ctx.max_concurrency)
    cache_run = backend.run_id if backend.shared else ""  # the namespace of the run's result cache
    ledger.spent_tokens, ledger.spent_usd = spent_so_far(store, cache_run, ledger.prices)
    bars = Progress(progress, ctx.group_size, ctx.max_group_size)
    print(table_header(), flush=True)
    finished = step_history(store, values["run_id"]) if values.get("run_id") else []
    for report in finished:
        print(table_line(report), flush=True)
    tracker.catch_up(finished, run_dir)

    def on_stop() -> None:
        bars.close()
        paid = paid_totals(store, cache_run, ledger.prices)
        _final_outputs(run, store, graph.get_state(config).values, paid)

    errors: list[str] = []
    try:
        # every response is kept the moment it arrives (per run id in a shared database)
        with quiet_gc(), use_llm_cache(store, cache_run, ledger):
            code = run_stoppably(
                lambda control: _drive(
                    graph,
                    graph_input,
                    config,
                    ctx,
                    run,
                    backend,
                    bars,
                    control,
                    keep_checkpoints,
                    errors,
                    tracker,
                ),
                ledger,
                on_stop=on_stop,
                stopped=f"stopped; finished work is kept: resume with the same command (--run-dir {run_dir})",
            )
    finally:
        bars.close()
    if code:
        return code

    final = graph.get_state(config).values
    history = _final_outputs(run, store, final, paid_totals(store, cache_run, ledger.prices))
    library = final.get("library", {"items": []})
    print(f"\ndone: {len(history)} steps, {len(library['items'])} experiences")
    print(f"library: {run_dir / 'library.md'}   report: {run_dir / 'report.md'}")
    for item in library["items"]:
        print(f"  [{item['id']}] {item['text']}")
    gated = gate_summary(history)
    if gated:
        print(gated)
    return _failed_run_exit(history, run_dir, errors)


def _failed_run_exit(history: list[StepReport], run_dir: Path, errors: list[str] | None = None) -> int:
    """1 with a one-line error when nothing of the run worked (the first time and every time after)."""
    failure = nothing_worked(history, errors or [])
    if failure:
        print(f"tfgrpo: error: {failure}; what there is was saved in {run_dir}", file=sys.stderr)
        return 1
    return 0


def gate_summary(history: list[StepReport]) -> str | None:
    """One line with the lessons the lesson gate rejected over the run, by reason, or None."""
    counts: dict[str, int] = {}
    for r in history:
        for reason, n in r.get("lessons_rejected", {}).items():
            counts[reason] = counts.get(reason, 0) + n
    retried = sum(sum(r.get("lessons_retried", {}).values()) for r in history)
    if not counts:
        return f"lessons sent back once by the lesson gate: {retried}, all rewritten" if retried else None
    by_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    sent_back = f"{retried} sent back once with the reason; " if retried else ""
    return f"lessons rejected by the lesson gate: {by_reason} ({sent_back}reasons in report.md)"


def _drive(
    graph: Any,
    graph_input: dict[str, Any] | None,
    config: RunnableConfig,
    ctx: Context,
    run: RunDir,
    backend: Backend,
    bars: Progress,
    control: RunControl,
    keep_checkpoints: bool,
    errors: list[str],
    tracker: Tracker,
) -> None:
    """Stream the graph: progress, pruning after each single-node superstep, outputs after each step;
    the reasons of dropped items are collected in ``errors``."""
    for chunk in graph.stream(
        cast(LearnState | None, graph_input),
        config,
        context=ctx,
        stream_mode="updates",
        durability="sync",
        control=control,
    ):
        for node, update in chunk.items():
            if not isinstance(update, dict):
                continue
            bars.update(node, update)
            dropped = update.get("dropped")
            if isinstance(dropped, list) and len(errors) < 10:  # not the Overwrite([]) of ``advance``
                errors.extend(d["reason"] for d in dropped)
            if node in MAP_NODES:
                continue
            # a single node finished a superstep: older checkpoints are no longer needed to resume
            snap = graph.get_state(config)
            if not keep_checkpoints:
                backend.prune(
                    config["configurable"]["thread_id"], snap.config["configurable"]["checkpoint_id"]
                )
            if node == "advance" and snap.values.get("report"):
                report = snap.values["report"]
                run.write_library(snap.values["library"], report["step"])
                print(table_line(report), flush=True)
                tracker.step(report, snap.values["library"])
