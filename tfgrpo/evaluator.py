"""Drive the evaluation graph from the command line: checkpoints and the attempt archive in the eval
directory, a progress bar, graceful Ctrl-C, budget stops, resume by running the same command again, and
the reports (metrics, paired comparison, plots) at the end."""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.runtime import RunControl
from tqdm.auto import tqdm

from tfgrpo.api import load_library
from tfgrpo.checks import check_context
from tfgrpo.context import Context
from tfgrpo.data import dataset_fingerprint, load_dataset
from tfgrpo.errors import ConfigError, RunFailed
from tfgrpo.evals.report import (
    FAILED_EXCLUDED,
    FAILED_ZERO,
    every_run_failed,
    verdict,
    write_attribution_report,
    write_eval_report,
)
from tfgrpo.evals.rewards import ground_truth_reward, warm_up
from tfgrpo.graphs.evaluate import compile_eval_graph
from tfgrpo.models.ledger import Ledger, spent_so_far, use_llm_cache
from tfgrpo.models.spec import resolve_spec
from tfgrpo.nodes._llm import publish_library_text
from tfgrpo.nodes.attempt import attempt_key, attempt_namespace
from tfgrpo.nodes.policy import build_models, inference_experiences
from tfgrpo.runs.backends import Backend, open_backend
from tfgrpo.runs.gc_tuning import quiet_gc
from tfgrpo.runs.pglock import redacted
from tfgrpo.runs.reporter import Reporter
from tfgrpo.runs.rundir import (
    atomic_write,
    check_same_database,
    claim_run,
    database_label,
    run_stoppably,
    show_progress,
)
from tfgrpo.runs.runlock import lock_run_dir
from tfgrpo.runs.tracking import EVAL_FILES, Tracker, open_tracker, run_status, settings_params
from tfgrpo.state.graph_state import EvalState
from tfgrpo.state.library import Library, render_library

THREAD_ID = "eval"
# What makes two evaluations the same one: a resume with any of these changed is refused.
EVAL_DEFINING = (
    "mode",
    "dataset",
    "dataset_fingerprint",
    "library_fingerprint",
    "arms",
    "k",
    "seed",
    "model",
    "domain",
    "reward",
    "temperature",
    "top_p",
    "max_tokens",
    "max_model_calls",
    "max_tool_calls",
)


@dataclass(frozen=True)
class EvalResult:
    """What an evaluation leaves: its report (report.json's content) and where it lives."""

    report: dict[str, Any]
    eval_dir: Path


def eval_settings(ctx: Context, *, arms: list[str], k: int, seed: int, queries: list[Any]) -> dict[str, Any]:
    """The settings an evaluation is defined by, plus descriptive ones (never secrets)."""
    experiences = inference_experiences(ctx, None)
    library_items = len(load_library(ctx.library)["items"]) if ctx.library else 0
    return {
        "dataset": ctx.dataset,
        "dataset_fingerprint": dataset_fingerprint(queries),
        "library": ctx.library,
        "library_items": library_items,
        "library_fingerprint": hashlib.sha256(experiences.encode()).hexdigest()[:16] if experiences else "",
        "arms": arms,
        "k": k,
        "seed": seed,
        "model": resolve_spec(ctx.model),
        "judge_model": resolve_spec(ctx.judge_model or ctx.model) if ctx.reward == "judge" else "",
        "base_url": ctx.base_url,
        "domain": ctx.domain,
        "corpus": ctx.corpus,
        "reward": ctx.reward,
        "temperature": ctx.temperature,
        "top_p": ctx.top_p,
        "max_tokens": ctx.max_tokens,
        "max_model_calls": ctx.max_model_calls,
        "max_tool_calls": ctx.max_tool_calls,
    }


def check_eval_resume(eval_dir: Path, settings: dict[str, Any]) -> None:
    path = eval_dir / "eval.json"
    if not path.exists():
        return
    before = json.loads(path.read_text(encoding="utf-8"))
    changed = [name for name in EVAL_DEFINING if before.get(name) != settings.get(name)]
    if changed:
        raise ConfigError(
            f"{eval_dir}: this evaluation was started with other settings ({', '.join(changed)} differ); "
            "use another --eval-dir or the same settings"
        )


def run_eval(
    ctx: Context,
    *,
    eval_dir: Path,
    k: int,
    seed: int,
    baseline: bool,
    progress: bool = True,
    ledger: Ledger | None = None,
    retry_failed: bool = False,
    attribute: bool = False,
    db: str = "",
    run_id: str = "",
    track: str = "",
    track_traces: bool = False,
    exclude_failed: bool = False,
    reporter: Reporter | None = None,
) -> EvalResult:
    """``tfgrpo eval`` (library vs baseline) or, with ``attribute``, ``tfgrpo attribute``: E against E
    without each of its experiences (leave-one-out), on the same questions and seeds; ``track`` is
    ``--track`` (:mod:`tfgrpo.runs.tracking`). A failed run scores 0 in the metrics, or is left out
    with ``exclude_failed``. Returns the report; raises :class:`RunFailed`
    when every run failed, :class:`BudgetStopped` / :class:`RunInterrupted` on a stop (finished runs are
    kept); tables and notes go to ``reporter`` (default: printed)."""
    if k < 1:
        raise ConfigError("--k must be at least 1")
    check_context(ctx)
    say = reporter or Reporter()
    ground_truth_reward(ctx.reward)  # one-line errors on a bad reward or dataset, before any cost
    warm_up(ctx.reward)  # math-verify helpers start while the first runs wait on the network
    queries = load_dataset(ctx.dataset)
    if not queries:
        raise ConfigError(f"{ctx.dataset}: no questions to evaluate")
    library: Library | None = None
    if attribute:
        library = load_library(ctx.library) if ctx.library else None
        if not library or not library["items"]:
            raise ConfigError("attribution needs --library with at least one experience")
        arms = ["full", *(f"without:{item['id']}" for item in library["items"])]
    else:
        arms = (["library"] if ctx.library else []) + (["baseline"] if baseline or not ctx.library else [])
    settings = eval_settings(ctx, arms=arms, k=k, seed=seed, queries=queries)
    settings["mode"] = "attribute" if attribute else "compare"
    settings["failed_runs"] = FAILED_EXCLUDED if exclude_failed else FAILED_ZERO
    if ctx.library and not settings["library_items"]:
        say.line(f"note: {ctx.library} holds no experience: both arms get the same prompt")
    check_eval_resume(eval_dir, settings)
    if ledger is not None:  # a model without a price under --budget-usd: refused before the header
        ledger.check_prices(sorted({settings["model"], settings["judge_model"] or settings["model"]}))
    build_models(ctx)  # not in the first wave of runs (see build_models)
    if eval_dir.exists() and not eval_dir.is_dir():
        raise ConfigError(f"--eval-dir {eval_dir} is a file, not a directory: pass a directory")
    try:
        eval_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--eval-dir {eval_dir}: cannot create it ({exc.strerror or exc})") from None
    tracker = open_tracker(track, eval_dir, traces=track_traces)
    with (
        lock_run_dir(eval_dir),  # one writer per eval directory
        open_backend(
            db, local_dir=eval_dir, run_id=run_id or eval_dir.resolve().name, local_option="--eval-dir"
        ) as backend,
        backend.lock(),
    ):
        if backend.shared:  # two directories never silently share a run id
            claim_run(backend.store, backend.run_id, eval_dir, derived=not run_id, where=redacted(db))
        # eval.json names the database and run id, so that a resume naming another one says so
        settings |= {"database": database_label(db), "run_id": backend.run_id if db else ""}
        tracker.start(settings["mode"], settings_params(ctx, seed=seed, k=k, arms=arms))
        try:
            result = _evaluate(
                ctx,
                backend,
                eval_dir,
                settings,
                queries,
                library,
                arms,
                k,
                seed,
                progress,
                ledger,
                retry_failed,
                tracker,
                say,
            )
        except BaseException as exc:
            tracker.finish(run_status(exc), EVAL_FILES)
            raise
        tracker.finish("FINISHED", EVAL_FILES)
        return result


def _evaluate(
    ctx: Context,
    backend: Backend,
    eval_dir: Path,
    settings: dict[str, Any],
    queries: list[Any],
    library: Library | None,
    arms: list[str],
    k: int,
    seed: int,
    progress: bool,
    ledger: Ledger | None,
    retry_failed: bool,
    tracker: Tracker,
    say: Reporter,
) -> EvalResult:
    store = backend.store
    graph = compile_eval_graph(checkpointer=backend.saver, store=store)
    fresh_input: EvalState = {
        "questions": queries,
        "arms": arms,
        "k": k,
        "seed": seed,
        "failed_runs": settings["failed_runs"],
    }
    total = len(queries) * k * len(arms)
    config, graph_input = _plan_round(graph, backend, eval_dir, ctx, fresh_input, retry_failed, say)
    if config is not None:
        if graph_input is not None and "eval_id" not in graph_input:  # a new evaluation
            check_same_database(eval_dir, backend.url, backend.run_id, "--eval-dir")
            if any((eval_dir / name).exists() for name in ("results.json", "report.json")):
                raise ConfigError(
                    f"{eval_dir} holds the results of an earlier evaluation but no checkpoint to resume "
                    f"it (checkpoints.sqlite is missing or empty): start fresh with another --eval-dir "
                    f"(or delete {eval_dir})"
                )
            atomic_write(eval_dir / "eval.json", json.dumps(settings, indent=2) + "\n")
            plan = f"{len(queries)} questions x k={k} x {'/'.join(arms)} = {total} runs"
            say.line(f"evaluating: {plan} -> {eval_dir}")
            if library is not None:
                graph_input["eval_id"] = uuid.uuid4().hex[:12]
                graph_input["arm_libraries"] = leave_one_out(store, graph_input["eval_id"], library)
                atomic_write(eval_dir / "library.json", json.dumps(library, indent=2) + "\n")
        ledger = ledger or Ledger(max_concurrency=ctx.max_concurrency)
        ledger.check_prices(sorted({settings["model"], settings["judge_model"] or settings["model"]}))
        cache_run = backend.run_id if backend.shared else ""  # the namespace of the eval's result cache
        # what the server was paid (cached answers apart), exact after a kill, as for learn
        ledger.spent_tokens, ledger.spent_usd = spent_so_far(store, cache_run, ledger.prices)
        # every response is kept the moment it arrives (per run id in a shared database)
        with quiet_gc(), use_llm_cache(store, cache_run, ledger):
            _drive(graph, graph_input, config, ctx, ledger, total, progress, eval_dir)
    results = graph.get_state(_config(eval_dir, ctx, backend)).values.get("results", [])
    _record_failed_runs_policy(eval_dir, settings)
    if library is not None:
        report = write_attribution_report(eval_dir, settings, queries, results, library)
        _print_attribution(report, eval_dir, say)
    else:
        report = write_eval_report(eval_dir, settings, queries, results)
        _print_comparison(report, eval_dir, k, say)
    tracker.evaluation(report)
    failure = every_run_failed(results)
    if failure:
        raise RunFailed(f"{failure}; what there is was saved in {eval_dir}")
    return EvalResult(report=report, eval_dir=eval_dir)


def _record_failed_runs_policy(eval_dir: Path, settings: dict[str, Any]) -> None:
    """The reports follow this command's ``--exclude-failed`` (it changes no run, only the scoring), and
    eval.json says so, so that ``tfgrpo report`` rebuilds the same numbers."""
    path = eval_dir / "eval.json"
    recorded = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if recorded and recorded.get("failed_runs") != settings["failed_runs"]:
        atomic_write(path, json.dumps({**recorded, "failed_runs": settings["failed_runs"]}, indent=2) + "\n")


def eval_complete(values: dict[str, Any]) -> bool:
    """Every planned run (question x k x arm, as ``prepare`` recorded them) has a result. An empty
    ``snapshot.next`` is not enough: it is also empty after ``prepare``'s writes are stored but before
    the next checkpoint (a kill there), when no run has been made."""
    if "questions" not in values or "arms" not in values:
        return False
    planned = len(values["questions"]) * values.get("k", 1) * len(values["arms"])
    done = {(r["arm"], r["query_id"], r["i"]) for r in values.get("results", [])}
    return len(done) >= planned


def _config(eval_dir: Path, ctx: Context, backend: Backend) -> RunnableConfig:
    """The checkpoint thread of the current round (``thread.txt``; a retry round gets a new thread)."""
    thread_file = eval_dir / "thread.txt"
    thread = thread_file.read_text().strip() if thread_file.exists() else THREAD_ID
    return {
        "configurable": {"thread_id": backend.thread(thread)},
        "recursion_limit": 16,
        "max_concurrency": ctx.max_concurrency,
    }


def _plan_round(
    graph: Any,
    backend: Backend,
    eval_dir: Path,
    ctx: Context,
    fresh_input: EvalState,
    retry_failed: bool,
    say: Reporter,
) -> tuple[RunnableConfig | None, EvalState | None]:
    """What to run now: (config, input). Config None: complete, nothing to run. Input
    None: resume the interrupted round. A retry round starts on a new thread with the same eval id, so
    every finished run comes back from the memo for free and only the failed ones (memo deleted) run."""
    store = backend.store
    config = _config(eval_dir, ctx, backend)
    snapshot = graph.get_state(config)
    values = dict(snapshot.values or {})
    failed = [r for r in values.get("results", []) if r["reward"] is None]
    if not values:
        return config, fresh_input
    if not eval_complete(values):
        say.line(f"resuming {eval_dir}: {len(values.get('results', []))} runs already done")
        return config, None
    if not (retry_failed and failed):
        note = f" ({len(failed)} failed run(s): --retry-failed runs them again)" if failed else ""
        say.line(f"evaluation in {eval_dir} is already complete{note}")
        return None, None
    for r in failed:
        store.delete(attempt_namespace(values["eval_id"], r["arm"]), attempt_key(r["query_id"], r["i"]))
    thread = str(config["configurable"]["thread_id"]).rsplit("/", 1)[-1]
    rounds = int(thread.split("-retry")[1]) if "-retry" in thread else 0
    atomic_write(eval_dir / "thread.txt", f"{THREAD_ID}-retry{rounds + 1}\n")
    say.line(f"retrying {len(failed)} failed run(s) of {eval_dir}")
    graph_input: EvalState = {**fresh_input, "eval_id": values["eval_id"]}
    if values.get("arm_libraries"):
        graph_input["arm_libraries"] = values["arm_libraries"]
    return _config(eval_dir, ctx, backend), graph_input


def _print_comparison(report: dict[str, Any], eval_dir: Path, k: int, say: Reporter) -> None:
    policy = report["settings"]["failed_runs"]
    for arm, a in report["arms"].items():
        if a["mean_at_k"] is None:
            say.line(f"{arm:>8}: no usable run ({a['runs_failed']} failed; see report.md)")
            continue
        say.line(
            f"{arm:>8}: Mean@{k} {a['mean_at_k']:.3f} (95% CI {a['ci_low']:.3f} .. {a['ci_high']:.3f})  "
            f"Pass@{k} {a['pass_at_k']:.3f}  failed runs {a['runs_failed']} ({policy})  ${a['cost_usd']:.4f}"
        )
    say.line(verdict(report["comparison"]))
    say.line(f"report: {eval_dir / 'report.md'}   plot: {eval_dir / 'comparison.png'}")


def _print_attribution(report: dict[str, Any], eval_dir: Path, say: Reporter) -> None:
    for row in report["items"]:
        if row["contribution"] is None:
            say.line(f"[{row['id']}] no data: {row.get('error', '')}")
            continue
        say.line(
            f"[{row['id']}] {row['verdict']:>7}: contribution {row['contribution']:+.3f} "
            f"(95% CI {row['ci_low']:+.3f} .. {row['ci_high']:+.3f})  {row['text'][:60]}"
        )
    say.line(f"report: {eval_dir / 'report.md'}   plot: {eval_dir / 'attribution.png'}")
    if report["pruned"] is not None:
        say.line(f"without the experiences that hurt: {eval_dir / 'library.pruned.json'}")


def leave_one_out(store: Any, eval_id: str, library: Library) -> dict[str, str]:
    """Publish E and E minus each experience; returns arm -> store key of the rendering."""
    arms = {"full": publish_library_text(store, eval_id, render_library(library))}
    for item in library["items"]:
        rest: Library = {**library, "items": [i for i in library["items"] if i["id"] != item["id"]]}
        arms[f"without:{item['id']}"] = publish_library_text(store, eval_id, render_library(rest))
    return arms


def _drive(
    graph: Any,
    graph_input: EvalState | None,
    config: RunnableConfig,
    ctx: Context,
    ledger: Ledger,
    total: int,
    progress: bool,
    eval_dir: Path,
) -> None:
    """Stream the graph with a progress bar (a stop raises, see :func:`run_stoppably`)."""
    done = len(graph.get_state(config).values.get("results", []))
    bar = None
    if show_progress(progress):
        bar = tqdm(total=total, initial=done, desc="eval", file=sys.stderr, dynamic_ncols=True)

    def drive(control: RunControl) -> None:
        for chunk in graph.stream(
            cast(EvalState | None, graph_input),
            config,
            context=ctx,
            stream_mode="updates",
            durability="sync",
            control=control,
        ):
            if bar is not None and "attempt" in chunk:
                bar.update(1)

    try:
        run_stoppably(
            drive,
            ledger,
            on_stop=lambda: None,  # every finished run is already in the checkpoint and the store
            stopped=f"stopped; finished runs are kept. Resume with the same command (--eval-dir {eval_dir}); "
            "from Python, call again to resume",
        )
    finally:
        if bar is not None:
            bar.close()
