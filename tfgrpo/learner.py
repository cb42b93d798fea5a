"""Drive the learn graph from the command line: SQLite checkpoints in the run directory, progress bars,
outputs after every step, graceful Ctrl-C, and resume by running the same command again."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.runtime import RunControl
from langgraph.store.base import BaseStore
from tqdm import tqdm

from tfgrpo.backends import Backend, open_backend
from tfgrpo.context import Context
from tfgrpo.data import load_dataset
from tfgrpo.errors import ConfigError
from tfgrpo.graphs.learn import compile_learn_graph
from tfgrpo.ledger import Ledger
from tfgrpo.models import resolve_spec
from tfgrpo.nodes.reward import reward_function
from tfgrpo.nodes.schedule import batches_per_epoch, check_resume, training_queries
from tfgrpo.runs import RunDir, run_stoppably, table_header, table_line
from tfgrpo.state.graph_state import LearnState

THREAD_ID = "learn"
SUPERSTEPS_PER_STEP = 10  # the six step nodes, select_batch, advance, validate, validation_gate
MAP_NODES = ("rollout", "summarize")


class Progress:
    """One bar per map stage of the current step (rollout, summarize); a table row per finished step."""

    def __init__(self, enabled: bool, group_size: int) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.group_size = group_size
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
            total = sum(sum(r is not None for r in g["rewards"]) for g in groups if g["kept"])
            self._open("summarize", total)
        elif node in ("rollout", "summarize") and self.bar is not None:
            self.bar.update(1)
        elif node == "extract":
            self.close()


def spent_so_far(store: BaseStore, run_id: str) -> tuple[int, float]:
    """Tokens and dollars of every finished call of a run, from the result memo (exact after a crash)."""
    tokens, usd, offset = 0, 0.0, 0
    while True:
        items = store.search(("tfgrpo", run_id), limit=500, offset=offset)
        for item in items:
            for call in item.value.get("calls", []):
                tokens += call["input_tokens"] + call["output_tokens"]
                usd += call.get("cost_usd") or 0.0
        if len(items) < 500:
            return tokens, usd
        offset += 500


def _final_outputs(run: RunDir, values: dict[str, Any]) -> None:
    """The run's files plus its learning curve (plotted at the end only: matplotlib is not free)."""
    from tfgrpo.evals.report import write_learning_curve

    run.write_outputs(values)
    write_learning_curve(run.path, values.get("history") or [])


def run_learning(
    ctx: Context,
    *,
    run_dir: Path,
    seed: int,
    progress: bool = True,
    keep_checkpoints: bool = False,
    ledger: Ledger | None = None,
    db: str = "",
    run_id: str = "",
) -> int:
    """Learn (or resume) the run in ``run_dir``; ``db`` is ``--db`` (see :mod:`tfgrpo.backends`) and
    ``run_id`` names the run there (default: the run directory's name)."""
    # fail fast with one-line errors, before anything is paid for
    queries = training_queries(ctx)
    reward_function(ctx.reward)
    if ctx.validation:
        if ctx.reward == "majority":
            raise ConfigError("--validation needs a ground-truth reward (not majority)")
        load_dataset(ctx.validation)
    run = RunDir(run_dir)
    run.create()
    with (
        open_backend(db, local_dir=run.path, run_id=run_id or run.path.resolve().name) as backend,
        backend.lock(),
    ):
        return _learn(ctx, run, backend, queries, seed, progress, keep_checkpoints, ledger)


def _learn(
    ctx: Context,
    run: RunDir,
    backend: Backend,
    queries: list[Any],
    seed: int,
    progress: bool,
    keep_checkpoints: bool,
    ledger: Ledger | None,
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
    snapshot = graph.get_state(config)
    values = dict(snapshot.values or {})
    check_resume(values, ctx, queries)
    if values and not snapshot.next:
        print(f"run in {run_dir} is already complete ({len(values.get('history', []))} steps)")
        _final_outputs(run, values)
        return 0
    graph_input: dict[str, Any] | None = None if values else {"seed": seed}
    if graph_input is not None and backend.shared:  # the run id keys its store items in a shared database
        graph_input["run_id"] = backend.run_id
    if values:
        print(f"resuming {run_dir} at step {values.get('step', 0)} of {n_steps}", flush=True)
    else:
        run.write_settings(ctx, seed)
        print(f"learning: {len(queries)} queries, {n_steps} steps -> {run_dir}", flush=True)

    ledger = ledger or Ledger(max_concurrency=ctx.max_concurrency)
    ledger.check_prices(sorted({resolve_spec(ctx.model), resolve_spec(ctx.learner_model or ctx.model)}))
    if values.get("run_id"):
        ledger.spent_tokens, ledger.spent_usd = spent_so_far(store, values["run_id"])
    bars = Progress(progress, ctx.group_size)
    print(table_header(), flush=True)
    for report in values.get("history", []):
        print(table_line(report), flush=True)

    def on_stop() -> None:
        bars.close()
        _final_outputs(run, graph.get_state(config).values)

    try:
        code = run_stoppably(
            lambda control: _drive(
                graph, graph_input, config, ctx, run, backend, bars, control, keep_checkpoints
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
    _final_outputs(run, final)
    library = final.get("library", {"items": []})
    print(f"\ndone: {len(final.get('history', []))} steps, {len(library['items'])} experiences")
    print(f"library: {run_dir / 'library.md'}   report: {run_dir / 'report.md'}")
    for item in library["items"]:
        print(f"  [{item['id']}] {item['text']}")
    return 0


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
) -> None:
    """Stream the graph: progress, pruning after each single-node superstep, outputs after each step."""
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
            if node in MAP_NODES:
                continue
            # a single node finished a superstep: older checkpoints are no longer needed to resume
            snap = graph.get_state(config)
            if not keep_checkpoints:
                backend.prune(
                    config["configurable"]["thread_id"], snap.config["configurable"]["checkpoint_id"]
                )
            if node == "advance":
                run.write_outputs(snap.values)
                print(table_line(snap.values["history"][-1]), flush=True)
