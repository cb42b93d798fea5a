"""Experiment tracking: ``--track mlflow[:URI]`` (``track=`` in Python) logs a learn or eval run to MLflow.

One MLflow run per run directory (or eval directory), in the experiment ``$MLFLOW_EXPERIMENT_NAME``
(default ``tfgrpo``):

* params: the run's settings (the :class:`~tfgrpo.context.Context` without API keys), the seed, and for an
  evaluation k and the arms;
* metrics: after every learning step (MLflow step = the step number) ``mean_reward``, ``groups_kept``,
  ``groups_skipped``, ``library_size`` (|E|), ``input_tokens``, ``output_tokens``, ``tokens``,
  ``cost_usd``, ``calls``, ``calls_failed``, ``rollouts_failed``, ``operations_applied``, ``seconds``;
  after an evaluation ``ARM.mean_at_k``, ``ARM.pass_at_k``, ``ARM.pass_at_1``, ``ARM.ci_low/high`` and the
  paired difference ``paired.diff``, ``paired.ci_low``, ``paired.ci_high``, ``paired.p_value``;
* artifacts: E after every step (``libraries/step-NNNN.json``), and when the run stops its reports and
  plots (``library.json``, ``report.md``, ``learning_curve.png`` / ``comparison.png`` ...).
* the run's description (the top of its page in ``mlflow ui``): E after the last step logged, as markdown.

The MLflow run id is kept in ``DIR/mlflow.json`` with the last step logged: running the same command again
continues the same MLflow run and logs only the steps it has not logged (a step finished just before a kill
is logged on resume). A held-out evaluation in ``RUN_DIR/heldout`` becomes a child run of the learn run.

``URI`` is anything MLflow takes (``sqlite:///mlflow.db``, ``http://host:5000``, ``databricks``); a bare
path is a SQLite file. Without one, MLflow's default (``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``
in the current directory). A tracking server that fails in the middle of a run costs a warning, not the
run: learning is paid work.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from tfgrpo.context import Context
from tfgrpo.errors import ConfigError
from tfgrpo.models.ledger import BudgetStopped
from tfgrpo.runs.pglock import redacted
from tfgrpo.state.library import Library, library_markdown
from tfgrpo.state.types import StepReport

HINT = "--track mlflow needs MLflow, an extra: pip install 'tfgrpo[tracking]'"
STATE_FILE = "mlflow.json"
DEFAULT_EXPERIMENT = "tfgrpo"
STEP_METRICS = (
    "mean_reward",
    "groups_kept",
    "groups_skipped",
    "library_size",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "calls",
    "calls_failed",
    "rollouts",
    "rollouts_failed",
    "operations_applied",
    "operations_rejected",
    "seconds",
)
ARM_METRICS = ("mean_at_k", "ci_low", "ci_high", "pass_at_1", "pass_at_k", "runs_failed", "cost_usd")
PAIRED_METRICS = ("diff", "ci_low", "ci_high", "p_value", "wins", "losses", "ties")
# the learn run's and the evaluation's outputs, logged when the run stops (those that exist)
LEARN_FILES = ("library.json", "library.md", "report.json", "report.md", "learning_curve.png")
EVAL_FILES = ("report.json", "report.md", "comparison.png", "attribution.png")
SECRET_WORDS = ("key", "secret", "token_", "password")


def selection_metrics(report: StepReport) -> dict[str, float]:
    """A step's selection among candidates (``--candidates``): the best paired gain over the current E,
    the kept candidate (-1: E stayed) and what the selection cost beyond one update; {} without it."""
    selection = report.get("selection")
    if selection is None:
        return {}
    gains = [c["delta"] for c in selection["candidates"] if c["delta"] is not None]
    out = {
        "selection_chosen": float(-1 if selection["chosen"] is None else selection["chosen"]),
        "selection_extra_calls": float(selection["extra_calls"]),
        "selection_extra_tokens": float(selection["extra_tokens"]),
        "selection_extra_cost_usd": float(selection["extra_cost_usd"]),
    }
    if gains:
        out["selection_best_gain"] = float(max(gains))
    return out


def parse_track(spec: str | None) -> str | None:
    """The tracking URI of ``--track`` ("" = MLflow's default), or None for no tracking."""
    spec = (spec or "").strip()
    if not spec:
        return None
    kind, _, uri = spec.partition(":")
    if kind != "mlflow":
        raise ConfigError(f"--track {spec}: expected mlflow or mlflow:URI (e.g. mlflow:sqlite:///mlflow.db)")
    uri = uri.strip()
    if uri and "://" not in uri and uri != "databricks" and not uri.startswith(("databricks", "file:")):
        uri = "sqlite:///" + os.path.abspath(uri)  # a bare path: a SQLite file
    return uri


def settings_params(ctx: Context, **extra: Any) -> dict[str, str]:
    """The settings as MLflow params: every Context field but secrets, plus ``extra``; values as text."""
    values = {**asdict(ctx), **extra}
    out = {}
    for name, value in values.items():
        if any(word in name.lower() for word in SECRET_WORDS):
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
        out[name] = redacted(text)[
            :6000
        ]  # (a password in a base_url or database URL stays out)  # MLflow's limit on a param value
    return out


def metric_name(name: str) -> str:
    """MLflow keeps letters, digits, ``_ - . / space``: ``without:G1`` becomes ``without_G1``."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


RunStatus = Literal["FINISHED", "KILLED", "FAILED"]


def run_status(exc: BaseException | None) -> RunStatus:
    """How a run ended, as MLflow says it: a stop to resume later (budget, Ctrl-C) is KILLED."""
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, BudgetStopped | KeyboardInterrupt) else "FAILED"


class Tracker:
    """No tracking: every hook does nothing (the default)."""

    def start(self, kind: str, params: Mapping[str, str]) -> None:
        return None

    def step(self, report: StepReport, library: Library | None) -> None:
        return None

    def catch_up(self, history: Sequence[StepReport], run_dir: Path) -> None:
        return None

    def evaluation(self, report: Mapping[str, Any]) -> None:
        return None

    def finish(self, status: RunStatus, files: Sequence[str] = ()) -> None:
        return None


def open_tracker(track: str | None, directory: Path, *, traces: bool = False) -> Tracker:
    """The tracker ``--track`` asks for, for the run (or evaluation) in ``directory``; with ``traces``
    (``--track-traces``) MLflow's LangChain autologging also records the model calls as traces. A one-line
    error when the spec is wrong or MLflow is not installed."""
    uri = parse_track(track)
    if uri is None:
        if traces:
            raise ConfigError("--track-traces needs --track mlflow[:URI]")
        return Tracker()
    return MlflowTracker(uri, directory, traces=traces)


class MlflowTracker(Tracker):
    """Logs through :class:`mlflow.MlflowClient` (no global active run: the graph's threads do not care)."""

    def __init__(self, uri: str, directory: Path, *, traces: bool = False) -> None:
        try:
            import mlflow
            from mlflow import MlflowClient
        except ImportError:
            raise ConfigError(HINT) from None
        self.uri = uri or mlflow.get_tracking_uri()
        self.directory = directory
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id = ""
        self.last_step = -1
        self.broken = False
        self.traces = traces

    # -- the run and its state file
    def _state(self, directory: Path) -> dict[str, Any]:
        try:
            data = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) and data.get("tracking_uri") == self.uri else {}

    def _save(self) -> None:
        state = {"tracking_uri": self.uri, "run_id": self.run_id, "last_step": self.last_step}
        (self.directory / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    def _experiment_id(self) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = None
        if self.uri.startswith("sqlite:///"):  # artifacts beside the database, not in the working directory
            location = Path(self.uri[len("sqlite:///") :]).resolve().parent.joinpath("mlartifacts").as_uri()
        return str(self.client.create_experiment(name, artifact_location=location))

    def _existing_run(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return bool(run_id) and self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    def start(self, kind: str, params: Mapping[str, str]) -> None:
        """Continue this directory's MLflow run, or create one with the settings as params."""
        try:
            self._start(kind, params)
            if self.traces:
                self._autolog()
        except ConfigError:
            raise
        except Exception as exc:  # before any model call: a bad URI is the user's to fix
            raise ConfigError(
                f"--track mlflow:{self.uri}: cannot log to MLflow ({_first_line(exc)})"
            ) from None

    def _start(self, kind: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param, RunStatus

        state = self._state(self.directory)
        if self._existing_run(state.get("run_id", "")):
            self.run_id, self.last_step = state["run_id"], int(state.get("last_step", -1))
            self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            print(f"tracking: continuing MLflow run {self.run_id} ({self.uri})", flush=True)
            return
        tags = {"tfgrpo.kind": kind, "tfgrpo.dir": str(self.directory.resolve())}
        parent = self._state(self.directory.parent).get("run_id", "")
        if parent and self._existing_run(parent):  # e.g. RUN_DIR/heldout: a child of the learn run
            tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self._experiment_id(), run_name=self.directory.name, tags=tags)
        self.run_id, self.last_step = run.info.run_id, -1
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        self._save()
        print(f"tracking: MLflow run {self.run_id} ({self.uri})", flush=True)

    def _autolog(self) -> None:
        """MLflow's own LangChain tracing (``mlflow.langchain.autolog``): each graph run of this process
        becomes a trace in the run's experiment, its model calls and nodes as spans."""
        import mlflow
        import mlflow.langchain

        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(experiment_id=self.client.get_run(self.run_id).info.experiment_id)
        mlflow.langchain.autolog(silent=True)

    # -- logging during the run: a failure is a warning (the run goes on)
    def _safely(self, what: str, fn: Any, *args: Any) -> None:
        if self.broken or not self.run_id:
            return
        try:
            fn(*args)
        except Exception as exc:
            self.broken = True
            print(f"tfgrpo: warning: MLflow: cannot log {what} ({_first_line(exc)}); "
                  "tracking stops, the run goes on", file=sys.stderr, flush=True)  # fmt: skip

    def step(self, report: StepReport, library: Library | None) -> None:
        if report["step"] > self.last_step:
            self._safely(f"step {report['step']}", self._log_step, report, library)

    def _log_step(self, report: StepReport, library: Library | None) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(report["step"])
        values: dict[str, Any] = {name: report.get(name) for name in STEP_METRICS}
        values["tokens"] = report["input_tokens"] + report["output_tokens"]
        values.update(selection_metrics(report))
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if _number(v)]
        self.client.log_batch(self.run_id, metrics=metrics)
        if library is not None:
            text = json.dumps(library, indent=2, ensure_ascii=False) + "\n"
            self.client.log_text(self.run_id, text, f"libraries/step-{step:04d}.json")
            # the run's description, the top of its MLflow page: E now, where a user looks first
            note = library_markdown(library, f"E after step {step}")
            self.client.set_tag(self.run_id, "mlflow.note.content", note)
        self.last_step = step
        self._save()

    def catch_up(self, history: Sequence[StepReport], run_dir: Path) -> None:
        """Log the finished steps not logged yet (a kill between a step and its logging), E from the run
        directory's ``libraries/step-NNNN.json``."""
        for report in history:
            if report["step"] > self.last_step:
                self.step(report, _library_file(run_dir, report["step"]))

    def evaluation(self, report: Mapping[str, Any]) -> None:
        self._safely("the evaluation", self._log_evaluation, report)

    def _log_evaluation(self, report: Mapping[str, Any]) -> None:
        values: dict[str, Any] = {}
        for arm, summary in report.get("arms", {}).items():
            values.update({f"{metric_name(arm)}.{m}": summary.get(m) for m in ARM_METRICS})
        comparison = report.get("comparison") or {}
        values.update({f"paired.{m}": comparison.get(m) for m in PAIRED_METRICS})
        for row in report.get("items", []):  # attribution: each experience's contribution
            values[f"contribution.{metric_name(str(row.get('id')))}"] = row.get("contribution")
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if _number(v)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, status: RunStatus, files: Sequence[str] = ()) -> None:
        """Log the reports and plots that exist, and end the MLflow run (FINISHED, or KILLED when stopped to
        resume later, or FAILED)."""
        for name in files:
            path = self.directory / name
            if path.is_file():
                self._safely(name, self.client.log_artifact, self.run_id, str(path))
        self._safely("the run's end", self.client.set_terminated, self.run_id, status)


def _library_file(run_dir: Path, step: int) -> Library | None:
    try:
        data: Library = json.loads((run_dir / "libraries" / f"step-{step:04d}.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
