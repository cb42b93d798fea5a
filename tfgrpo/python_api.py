"""``tfgrpo.learn`` and ``tfgrpo.evaluate``: the CLI's ``learn`` and ``eval`` for notebooks and apps.

    import tfgrpo
    result = tfgrpo.learn(dataset=rows, agent=make_agent, learner=ChatOpenAI(...), run_dir="runs/x")
    result.library            # the learned E (a Library dict; ExperienceMiddleware(result.library))
    result.report["totals"]   # the run report (report.json)
    metrics = tfgrpo.evaluate(dataset=test_rows, agent=make_agent, library="runs/x", baseline=True)

Both are resumable: call again with the same arguments (and directory) and finished work is kept.
``db=`` (a SQLite file or ``postgresql://`` URL shared by several runs; default ``$TFGRPO_DATABASE_URL``,
else the run directory's own SQLite files) and ``run_id=`` (the run's name there) work as the CLI's
``--db`` / ``--run-id``; ``verbose=False`` prints nothing (the tables and notes go to the ``tfgrpo``
logger instead). Errors are raised, never printed: a run where nothing worked raises
:class:`tfgrpo.errors.RunFailed` naming the first error (an unreachable server, a refused key, ...).
Models may be spec strings (``openai:gpt-4o-mini``) or LangChain chat-model objects (used as they are);
datasets a file path or ``rg:`` spec, a list of dicts or any iterable of rows (``question``, ``answer``,
optional ``id``), saved as JSONL in the run directory. Progress bars use ``tqdm.auto`` (Jupyter widgets).
A budget stop raises :class:`tfgrpo.models.ledger.BudgetStopped` (a ``BudgetExceeded``) after saving, and
Ctrl-C :class:`tfgrpo.errors.RunInterrupted` (a ``KeyboardInterrupt``); call again to resume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel

from tfgrpo.checks import check_context
from tfgrpo.context import Context
from tfgrpo.data import check_rows
from tfgrpo.errors import ConfigError
from tfgrpo.evals.rewards import default_reward
from tfgrpo.learner import LearnResult
from tfgrpo.models.ledger import Ledger, Prices, ledger_from_context
from tfgrpo.models.spec import as_spec
from tfgrpo.runs.backends import check_run_id, database_url
from tfgrpo.runs.reporter import LogReporter, Reporter
from tfgrpo.state.library import Library

__all__ = ["LearnResult", "evaluate", "learn"]

Dataset = str | os.PathLike[str] | Iterable[Mapping[str, Any]]
Model = str | BaseChatModel | None
MODEL_FIELDS = ("model", "learner_model", "judge_model")


def _dataset_spec(data: Dataset, folder: Path, name: str, *, answers: bool = True) -> str:
    """A dataset spec for the context: paths and specs as they are, rows saved as JSONL in ``folder``."""
    if isinstance(data, str | os.PathLike):
        return os.fspath(data)
    if isinstance(data, Mapping | bytes):
        raise ConfigError(f"{name}: expected a path, a list of dicts or an iterable of rows")
    lines, rows = [], []
    for index, row in enumerate(data):
        if not isinstance(row, Mapping):
            raise ConfigError(f"{name}: row {index}: expected a dict, got {type(row).__name__}")
        try:
            lines.append(json.dumps(dict(row), ensure_ascii=False, sort_keys=True))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: row {index}: not JSON-serializable ({exc})") from None
        rows.append(dict(row))
    # errors name the user's rows (dataset: row 3: ...), not the JSONL copy the run reads them from
    check_rows(rows, name, answers=answers)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    text = "\n".join(lines) + "\n"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return str(path)


def _context(options: dict[str, Any], **values: Any) -> Context:
    """The run's settings: ``options`` (any Context field) and the named arguments given (None: not
    given). Unknown names and out-of-range values are refused by Context, as in Studio and the CLI."""
    merged = {**options, **{k: v for k, v in values.items() if v is not None}}
    if "reward" not in merged:  # a reasoning_gym dataset is scored by its own task
        merged["reward"] = default_reward(
            Context().reward, merged.get("dataset", ""), merged.get("validation", "")
        )
    for name in MODEL_FIELDS:
        if name in merged:
            merged[name] = as_spec(merged[name])
    return Context(**merged)


def _agent_spec(agent: Any) -> str | None:
    if agent is None or agent == "":  # "": the field's default, tfgrpo's own agent
        return None
    from tfgrpo.integrations.user_agent import prepare_agent, register_agent

    spec = agent if isinstance(agent, str) else register_agent(agent)
    prepare_agent(spec)  # a one-line error now, before anything is paid for
    return spec


def _ledger(ctx: Context, prices: Any) -> Ledger:
    """The run's ledger from its settings; ``prices`` may also be a :class:`Prices` table."""
    ledger = ledger_from_context(ctx)
    if isinstance(prices, Prices):
        ledger.prices = prices
    return ledger


def _ledger_settings(
    budget_usd: float | None, budget_tokens: int | None, prices: Any, max_retries: int, retry_backoff: float
) -> dict[str, Any]:
    """The ledger's named arguments as the settings they are (checked by Context like any other)."""
    return {
        "budget_usd": budget_usd,
        "budget_tokens": budget_tokens,
        "prices": None if isinstance(prices, Prices) else prices,
        "max_retries": max_retries,
        "retry_backoff": retry_backoff,
    }


def _reporter(verbose: bool) -> Reporter:
    """``verbose``: the CLI's tables and notes on stdout; else to the ``tfgrpo`` logger."""
    return Reporter() if verbose else LogReporter()


def _db_and_run_id(db: str | None, run_id: str | None) -> tuple[str, str]:
    """``db=`` or ``$TFGRPO_DATABASE_URL`` (as ``--db``), and a checked ``run_id`` ("": the folder's)."""
    if run_id is not None:
        check_run_id(run_id)
    return database_url(db), run_id or ""


def learn(
    dataset: Dataset,
    *,
    agent: Any = None,
    model: Model = None,
    learner: Model = None,
    reward: str | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    validation: Dataset | None = None,
    seed: int = 0,
    progress: bool = True,
    budget_usd: float | None = None,
    budget_tokens: int | None = None,
    prices: str | Prices | None = None,
    max_retries: int = 4,
    retry_backoff: float = 1.0,
    keep_checkpoints: bool = False,
    callbacks: Any = None,
    track: str | None = None,
    db: str | None = None,
    run_id: str | None = None,
    verbose: bool = True,
    **options: Any,
) -> LearnResult:
    """Learn an experience library E (Training-Free GRPO), like ``tfgrpo learn``; resumable.

    Args:
        dataset: training questions (path / ``rg:`` spec, list of dicts, or iterable of rows).
        agent: your own agent as the policy: a compiled ``create_agent`` graph that includes
            ``ExperienceMiddleware()``, a factory taking ``middleware=``, or a ``module:attr`` /
            ``file.py:attr`` string. Without it the policy is tfgrpo's agent on ``model``.
        model: the policy model of tfgrpo's agent (and the default ``learner``), spec or object.
        learner: the model that summarizes rollouts and extracts experiences, spec or object.
        reward: ``math``, ``exact_match``, ``f1``, ``rg``, ``judge``, ``majority`` or ``module:function``
            (default: ``rg``, the task's own scorer, for an ``rg:`` dataset, else ``math``).
        run_dir: where checkpoints, E and reports go; the same directory resumes (default:
            ``runs/RUN_ID`` with ``run_id``, else ``runs/learn``).
        callbacks: LangChain callback handlers (e.g. a LangSmith tracer) for the learn run; every
            LLM call of the run, rollouts of your agent included, nests under it.
        track: ``"mlflow"`` or ``"mlflow:URI"``: log the run to MLflow (docs/tracking.md).
        db: a SQLite file or ``postgresql://`` URL several runs share (``--db``); default
            ``$TFGRPO_DATABASE_URL``, else SQLite files in ``run_dir``.
        run_id: the run's name in ``db`` (``--run-id``; default: ``run_dir``'s name). Its E is then
            published there under that id (``ExperienceMiddleware(run=run_id, db=db)``).
        verbose: False prints nothing (tables and notes go to the ``tfgrpo`` logger).
        options: any :class:`tfgrpo.context.Context` field (``epochs``, ``batch_size``, ``group_size``,
            ``max_concurrency``, ``domain``, ``temperature``, ...).
    """
    from tfgrpo.learner import run_learning

    folder = Path(run_dir) if run_dir is not None else Path("runs", run_id or "learn")
    url, name = _db_and_run_id(db, run_id)
    spec = _agent_spec(agent)
    if agent is not None and learner is None and model is None and not options.get("learner_model"):
        raise ConfigError("learn(agent=...) needs learner= (or model=): the model that learns from its runs")
    ctx = _context(
        options,
        dataset=_dataset_spec(dataset, folder, "dataset", answers=reward != "majority"),
        validation=_dataset_spec(validation, folder, "validation") if validation is not None else None,
        agent=spec,
        model=model,
        learner_model=learner,
        reward=reward,
        **_ledger_settings(budget_usd, budget_tokens, prices, max_retries, retry_backoff),
    )
    check_context(ctx)  # before the ledger is built, so a bad setting costs nothing
    ledger = _ledger(ctx, prices)
    return run_learning(
        ctx,
        run_dir=folder,
        seed=seed,
        progress=progress,
        keep_checkpoints=keep_checkpoints,
        ledger=ledger,
        callbacks=callbacks,
        db=url,
        run_id=name,
        track=track or "",
        reporter=_reporter(verbose),
    )


def evaluate(
    dataset: Dataset,
    *,
    library: str | os.PathLike[str] | Library | None = None,
    agent: Any = None,
    model: Model = None,
    judge: Model = None,
    reward: str | None = None,
    k: int = 4,
    baseline: bool = False,
    eval_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    budget_usd: float | None = None,
    budget_tokens: int | None = None,
    prices: str | Prices | None = None,
    max_retries: int = 4,
    retry_backoff: float = 1.0,
    retry_failed: bool = False,
    track: str | None = None,
    db: str | None = None,
    run_id: str | None = None,
    verbose: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Mean@k / Pass@k with E (and, with ``baseline=True``, without it, paired), like ``tfgrpo eval``;
    resumable. Returns the evaluation report (``report.json`` of ``eval_dir``). ``library`` is a
    library.json / run directory, a Library dict (e.g. ``learn(...).library``) or the run id of a learn
    run in ``db``; ``track="mlflow[:URI]"`` logs Mean@k / Pass@k and the paired difference to MLflow
    (docs/tracking.md). ``db``, ``run_id`` (this evaluation's name in ``db``) and ``verbose`` as for
    :func:`learn`."""
    from tfgrpo.evaluator import run_eval

    folder = Path(eval_dir) if eval_dir is not None else Path("runs", f"eval-{run_id}" if run_id else "eval")
    url, name = _db_and_run_id(db, run_id)
    if isinstance(library, str) and url and not Path(library).exists():  # a learn run's id in the database
        from tfgrpo.runs.library_ref import fetch_published_library

        library = fetch_published_library(url, library, folder / "published")
    if isinstance(library, dict):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "input-library.json").write_text(json.dumps(library, indent=2), encoding="utf-8")
        library = folder / "input-library.json"
    if k < 1:
        raise ConfigError("k must be at least 1")
    ctx = _context(
        options,
        dataset=_dataset_spec(dataset, folder, "dataset"),
        library=os.fspath(library) if library is not None else None,
        agent=_agent_spec(agent),
        model=model,
        judge_model=judge,
        reward=reward,
        **_ledger_settings(budget_usd, budget_tokens, prices, max_retries, retry_backoff),
    )
    ledger = _ledger(ctx, prices)
    return run_eval(
        ctx,
        eval_dir=folder,
        k=k,
        seed=seed,
        baseline=baseline,
        progress=progress,
        ledger=ledger,
        retry_failed=retry_failed,
        db=url,
        run_id=name,
        track=track or "",
        reporter=_reporter(verbose),
    ).report
