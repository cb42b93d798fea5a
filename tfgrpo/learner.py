"""Drive the learn graph for the CLI and the Python API: SQLite checkpoints in the run directory, progress
bars, outputs after every step, graceful Ctrl-C, and resume by running the same command again. It returns
a :class:`LearnResult` and raises typed errors; its tables and notes go to a reporter
(:mod:`tfgrpo.runs.reporter`), and only the CLI prints errors and picks exit codes."""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.runtime import RunControl
from langgraph.store.base import BaseStore
from tqdm.auto import tqdm

from tfgrpo.checks import check_context
from tfgrpo.context import Context
from tfgrpo.data import batches_per_epoch, dataset_fingerprint, load_dataset, training_queries
from tfgrpo.errors import ConfigError, RunFailed
from tfgrpo.evals.rewards import reward_function, warm_up
from tfgrpo.graphs.learn import compile_learn_graph
from tfgrpo.models.ledger import Ledger, Prices, paid_totals, spent_so_far, use_llm_cache
from tfgrpo.models.spec import resolve_spec
from tfgrpo.nodes.policy import build_models
from tfgrpo.nodes.variance_gate import more_attempts
from tfgrpo.runs.backends import Backend, open_backend
from tfgrpo.runs.gc_tuning import quiet_gc
from tfgrpo.runs.pglock import redacted
from tfgrpo.runs.reporter import Reporter
from tfgrpo.runs.rundir import (
    RunDir,
    check_resume,
    check_same_database,
    check_store_holds_run,
    claim_run,
    mark_run,
    open_store_to_read,
    run_stoppably,
    show_progress,
    step_history,
    table_header,
    table_line,
)
from tfgrpo.runs.runlock import lock_run_dir
from tfgrpo.runs.tracking import LEARN_FILES, Tracker, open_tracker, run_status, settings_params
from tfgrpo.state.graph_state import LearnState
from tfgrpo.state.library import Library, empty_library
from tfgrpo.state.published import make_provenance
from tfgrpo.state.report import nothing_worked
from tfgrpo.state.types import StepReport

THREAD_ID = "learn"
# the six step nodes, share_library, select and choose_candidate (--candidates), select_batch,
# prepare_validation, validate, validation_gate, advance
SUPERSTEPS_PER_STEP = 14
# dynamic sampling (--max-group-size): each round of extra attempts is rollout -> reward -> variance_gate
SUPERSTEPS_PER_ROUND = 3


def recursion_limit(ctx: Context, n_steps: int) -> int:
    """LangGraph's superstep cap for a run of ``n_steps``, with room for every extra-attempt round a step
    may draw (a group grows by up to G attempts per round until it reaches ``max_group_size``)."""
    extra = max(0, (ctx.max_group_size or ctx.group_size) - ctx.group_size)
    rounds = -(-extra // ctx.group_size)
    return (n_steps + 2) * (SUPERSTEPS_PER_STEP + SUPERSTEPS_PER_ROUND * rounds)


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
    store = open_store_to_read(run.store)
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
    store = open_store_to_read(run.store)
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


@dataclass(frozen=True)
class LearnResult:
    """What a learning run leaves: E, the run report (report.json's content, with its steps) and where
    the run lives."""

    library: Library
    report: dict[str, Any]
    run_dir: Path
    steps: list[StepReport] = field(default_factory=list)


def _final_outputs(
    run: RunDir, store: BaseStore, values: dict[str, Any], paid: dict[str, Any] | None = None
) -> LearnResult:
    """The run's files plus its learning curve (plotted at the end only: matplotlib is not free)."""
    from tfgrpo.evals.report import write_learning_curve

    history = step_history(store, values.get("run_id", "")) if values else []
    report = run.write_outputs(values, history, paid)
    write_learning_curve(run.path, history)
    library: Library = values.get("library") or empty_library()
    return LearnResult(library=library, report=report, run_dir=run.path, steps=history)


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
    reporter: Reporter | None = None,
) -> LearnResult:
    """Learn (or resume) the run in ``run_dir``; ``db`` is ``--db`` (see :mod:`tfgrpo.runs.backends`) and
    ``run_id`` names the run there (default: the run directory's name); ``track`` is ``--track``
    (:mod:`tfgrpo.runs.tracking`); the tables and notes go to ``reporter`` (default: printed).

    Raises :class:`RunFailed` when nothing of the run worked (the first error named),
    :class:`BudgetStopped` at the budget and :class:`RunInterrupted` after Ctrl-C, each once the finished
    work is saved; a resume is the same call."""
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
    say = reporter or Reporter()
    with (
        lock_run_dir(run.path),  # one writer per run directory
        open_backend(db, local_dir=run.path, run_id=run_id or run.path.resolve().name) as backend,
        backend.lock(),  # and, in a shared database, one writer per run id
    ):
        if backend.shared:  # two directories never silently share a run id
            claim_run(backend.store, backend.run_id, run.path, derived=not run_id, where=redacted(db))
        try:
            result = _learn(
                ctx, run, backend, queries, seed, progress, keep_checkpoints, ledger, callbacks, tracker, say
            )
        except BaseException as exc:
            tracker.finish(run_status(exc), LEARN_FILES)
            raise
        tracker.finish("FINISHED", LEARN_FILES)
        return result


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
    say: Reporter,
) -> LearnResult:
    run_dir, store = run.path, backend.store
    thread = backend.thread(THREAD_ID)
    graph = compile_learn_graph(checkpointer=backend.saver, store=store)
    n_steps = ctx.epochs * batches_per_epoch(len(queries), ctx.batch_size)
    config: RunnableConfig = {
        "configurable": {"thread_id": thread},
        "recursion_limit": recursion_limit(ctx, n_steps),
        "max_concurrency": ctx.max_concurrency,
    }
    if callbacks is not None:  # e.g. a tracer: every LLM call of the run nests under the learn run
        config["callbacks"] = callbacks
    snapshot = graph.get_state(config)
    values = dict(snapshot.values or {})
    check_resume(values, ctx, queries)
    run.provenance = make_provenance(
        policy_model="" if ctx.agent else resolve_spec(ctx.model),  # a user's agent: its own model
        learner_model=resolve_spec(ctx.learner_model or ctx.model),
        dataset_fingerprint=dataset_fingerprint(queries),
        run_id=backend.run_id if backend.shared else run_dir.resolve().name,
        step=values.get("step", 0) - 1 if values else None,
    )
    if values.get("run_id"):
        where = str(run.store) if not backend.shared else f"the run's store in {redacted(backend.url)}"
        check_store_holds_run(
            store, values["run_id"], where, f"start fresh with another --run-dir (or delete {run_dir})"
        )
    # Complete only when the graph says so: ``advance`` sets ``done`` after the last step. An empty
    # ``snapshot.next`` is not enough: it is also empty when a task's writes are stored but the next
    # checkpoint is not (a kill there), and such a run must continue.
    if values.get("done"):
        result = _final_outputs(run, store, values)
        say.line(f"run in {run_dir} is already complete ({len(result.steps)} steps)")
        return _worked(result)
    graph_input: dict[str, Any] | None = None if values else {"seed": seed}
    if not values:  # a new run: not over another run's outputs, nor a run kept in another database
        check_same_database(run_dir, backend.url, backend.run_id)
        run.refuse_new_run_over_outputs(
            f"run {backend.run_id!r} has none in {redacted(backend.url)}" if backend.shared else ""
        )
    tracker.start("learn", settings_params(ctx, seed=seed))  # a bad tracking URI stops here, before any call
    if graph_input is not None:
        # the run id keys its store items (given in a shared database); the store knows it from the start
        graph_input["run_id"] = backend.run_id if backend.shared else uuid.uuid4().hex
        mark_run(store, graph_input["run_id"])
    if values:
        say.line(f"resuming {run_dir} at step {values.get('step', 0)} of {n_steps}")
    else:
        run.write_settings(ctx, seed, db=backend.url, run_id=backend.run_id)
        say.line(f"learning: {len(queries)} queries, {n_steps} steps -> {run_dir}")

    ledger = ledger or Ledger(max_concurrency=ctx.max_concurrency)
    cache_run = backend.run_id if backend.shared else ""  # the namespace of the run's result cache
    ledger.spent_tokens, ledger.spent_usd = spent_so_far(store, cache_run, ledger.prices)
    bars = Progress(progress, ctx.group_size, ctx.max_group_size)
    say.line(table_header())
    finished = step_history(store, values["run_id"]) if values.get("run_id") else []
    for report in finished:
        say.line(table_line(report))
    tracker.catch_up(finished, run_dir)

    def on_stop() -> None:
        bars.close()
        paid = paid_totals(store, cache_run, ledger.prices)
        _final_outputs(run, store, graph.get_state(config).values, paid)

    errors: list[str] = []
    stopped = f"stopped; finished work is kept: resume with the same command (--run-dir {run_dir})"
    try:
        # every response is kept the moment it arrives (per run id in a shared database)
        with quiet_gc(), use_llm_cache(store, cache_run, ledger):
            run_stoppably(
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
                    say,
                ),
                ledger,
                on_stop=on_stop,
                stopped=f"{stopped}; from Python, call again to resume",
            )
    finally:
        bars.close()

    result = _final_outputs(
        run, store, graph.get_state(config).values, paid_totals(store, cache_run, ledger.prices)
    )
    say.line(f"\ndone: {len(result.steps)} steps, {len(result.library['items'])} experiences")
    say.line(f"library: {run_dir / 'library.md'}   report: {run_dir / 'report.md'}")
    for item in result.library["items"]:
        say.line(f"  [{item['id']}] {item['text']}")
    gated = gate_summary(result.steps)
    if gated:
        say.line(gated)
    return _worked(result, errors)


def _worked(result: LearnResult, errors: list[str] | None = None) -> LearnResult:
    """``result``, unless nothing of the run worked: then :class:`RunFailed` naming the first error (the
    first time and every time after)."""
    failure = nothing_worked(result.steps, errors or [])
    if failure:
        raise RunFailed(f"{failure}; what there is was saved in {result.run_dir}")
    return result


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
    say: Reporter,
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
                say.line(table_line(report))
                tracker.step(report, snap.values["library"])
