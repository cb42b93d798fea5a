"""``--track mlflow:URI``: a learn run and an evaluation logged to a local MLflow store (SQLite in tmp_path),
read back through MLflow's own client. Real subprocesses, real HTTP to the fake server."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PYTHON, cli_env
from tfgrpo.testing.fake_openai import FakeOpenAIServer
from tfgrpo.testing.responders import eval_responder, one_right_lesson_responder

pytestmark = pytest.mark.integration
mlflow = pytest.importorskip("mlflow", reason="MLflow is the tracking extra: pip install -e '.[tracking]'")


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(eval_responder) as s:  # grpo_responder, plus a library that helps in evals
        yield s


def tfgrpo(*args: str) -> subprocess.CompletedProcess[str]:
    env = cli_env()
    env["OPENAI_API_KEY"] = "sk-test-not-a-real-key-4242"  # must never reach MLflow
    return subprocess.run(
        [PYTHON, "-m", "tfgrpo.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def learn_args(server: FakeOpenAIServer, run_dir: Path, uri: str, *extra: str) -> list[str]:
    return [
        "learn", "--dataset", "rg:basic_arithmetic:size=8:seed=2", "--model", "openai:fake",
        "--base-url", server.base_url, "--run-dir", str(run_dir), "--epochs", "1", "--batch-size", "2",
        "--group-size", "3", "--no-progress", "--track", f"mlflow:{uri}", "--max-concurrency", "1",
        "--max-tokens", "200", "--learner-max-tokens", "600", *extra,
    ]  # fmt: skip


def test_learn_is_tracked_and_a_resumed_run_continues_the_same_mlflow_run(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    # a budget stop after the first step (one call at a time, small caps: the ledger reserves a call's
    # cap), then the same command again: one MLflow run, every step once
    stopped = tfgrpo(*learn_args(server, run_dir, uri, "--budget-tokens", "8000"))
    assert stopped.returncode == 3, stopped.stderr
    first = json.loads((run_dir / "mlflow.json").read_text())
    assert 0 <= first["last_step"] < 3, first  # stopped part-way: the rest is logged on resume
    resumed = tfgrpo(*learn_args(server, run_dir, uri))
    assert resumed.returncode == 0, resumed.stderr
    assert f"continuing MLflow run {first['run_id']}" in resumed.stdout

    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(experiment_names=["tfgrpo"], output_format="list")
    assert [r.info.run_id for r in found] == [first["run_id"]]
    run = found[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["dataset"] == "rg:basic_arithmetic:size=8:seed=2"
    assert run.data.params["group_size"] == "3" and run.data.params["seed"] == "0"

    client = mlflow.MlflowClient(uri)
    report = json.loads((run_dir / "report.json").read_text())
    steps = report["steps"]
    assert len(steps) == 4
    for name in ("library_size", "groups_kept", "cost_usd"):  # |E|, groups kept, cost: once per step
        history = client.get_metric_history(run.info.run_id, name)
        assert [(m.step, m.value) for m in history] == [(s["step"], float(s[name])) for s in steps]
    tokens = client.get_metric_history(run.info.run_id, "tokens")
    assert [m.value for m in tokens] == [float(s["input_tokens"] + s["output_tokens"]) for s in steps]
    rewards = client.get_metric_history(run.info.run_id, "mean_reward")
    assert [m.step for m in rewards] == [s["step"] for s in steps if s["mean_reward"] is not None]

    # E after every step as an artifact, the same as the run directory's snapshots; reports and the plot
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"library.json", "report.md", "learning_curve.png"} <= names
    snapshots = [a.path for a in client.list_artifacts(run.info.run_id, "libraries")]
    assert snapshots == [f"libraries/step-{i:04d}.json" for i in range(4)]
    got = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/libraries/step-0003.json")
    assert json.loads(got) == json.loads((run_dir / "libraries" / "step-0003.json").read_text())
    assert (tmp_path / "mlartifacts").is_dir()  # beside the database, not in the working directory

    # the run page's description is E after the last step (where a user looks first)
    final = json.loads((run_dir / "library.json").read_text())
    assert run.data.tags["mlflow.note.content"].startswith("# E after step 3")
    assert all(item["text"] in run.data.tags["mlflow.note.content"] for item in final["items"])

    logged = json.dumps(run.data.params) + json.dumps(run.data.tags)
    assert "sk-test-not-a-real-key-4242" not in logged


def test_the_selection_among_candidates_is_logged_per_step(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    with FakeOpenAIServer(one_right_lesson_responder) as server:
        out = tfgrpo(*learn_args(server, run_dir, uri, "--candidates", "3"))
    assert out.returncode == 0, out.stderr
    steps = [s for s in json.loads((run_dir / "report.json").read_text())["steps"] if "selection" in s]
    assert steps and any(s["selection"]["chosen"] is not None for s in steps)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    (run,) = mlflow.search_runs(experiment_names=["tfgrpo"], output_format="list")

    def logged(name: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]

    assert logged("selection_extra_calls") == [
        (s["step"], float(s["selection"]["extra_calls"])) for s in steps
    ]
    chosen = [
        (s["step"], float(-1 if s["selection"]["chosen"] is None else s["selection"]["chosen"]))
        for s in steps
    ]
    assert logged("selection_chosen") == chosen
    gains = [
        (s["step"], max(c["delta"] for c in s["selection"]["candidates"] if c["delta"] is not None))
        for s in steps
        if any(c["delta"] is not None for c in s["selection"]["candidates"])
    ]
    assert logged("selection_best_gain") == gains


def test_eval_logs_mean_at_k_and_the_paired_difference(server: FakeOpenAIServer, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    library = tmp_path / "library.json"
    items = [{"id": "G1", "text": "Add digit by digit.", "created_step": 0, "updated_step": 0, "sources": []}]
    library.write_text(json.dumps({"version": 1, "next_id": 2, "items": items}))
    out = tfgrpo(
        "eval", "--dataset", "rg:basic_arithmetic:size=6:seed=5", "--library", str(library), "--baseline",
        "--k", "2", "--model", "openai:fake", "--base-url", server.base_url, "--eval-dir",
        str(tmp_path / "eval"), "--no-progress", "--track", f"mlflow:{uri}", "--track-traces",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(experiment_names=["tfgrpo"], output_format="list")
    metrics = run.data.metrics
    assert run.data.tags["tfgrpo.kind"] == "compare" and run.data.params["k"] == "2"
    for arm in ("library", "baseline"):
        assert metrics[f"{arm}.mean_at_k"] == pytest.approx(report["arms"][arm]["mean_at_k"])
        assert metrics[f"{arm}.pass_at_k"] == pytest.approx(report["arms"][arm]["pass_at_k"])
    comparison = report["comparison"]
    assert metrics["paired.diff"] == pytest.approx(comparison["diff"])
    assert metrics["paired.ci_low"] == pytest.approx(comparison["ci_low"])
    assert metrics["paired.ci_high"] == pytest.approx(comparison["ci_high"])
    names = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run.info.run_id)}
    assert {"report.md", "report.json", "comparison.png"} <= names
    # --track-traces: MLflow's LangChain autologging recorded the model calls (6 x 2 x 2 runs)
    traces = mlflow.search_traces(locations=[run.info.experiment_id], return_type="list")
    spans = [span.name for trace in traces for span in trace.data.spans]
    assert spans.count("ChatOpenAI") == 24, spans[:20]


def test_python_api_tracks_too(server: FakeOpenAIServer, tmp_path: Path) -> None:
    import tfgrpo

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    rows = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(1, 5)]
    options = {"model": "openai:fake", "base_url": server.base_url, "epochs": 1, "batch_size": 2,
               "group_size": 3, "progress": False}  # fmt: skip
    result = tfgrpo.learn(dataset=rows, run_dir=tmp_path / "run", track=f"mlflow:{uri}", **options)
    metrics = tfgrpo.evaluate(
        dataset=rows, library=result.run_dir, baseline=True, k=2, eval_dir=tmp_path / "run" / "heldout",
        model="openai:fake", base_url=server.base_url, progress=False, track=f"mlflow:{uri}",
    )  # fmt: skip
    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(experiment_names=["tfgrpo"], output_format="list")
    runs = {r.data.tags["tfgrpo.kind"]: r for r in found}
    assert set(runs) == {"learn", "compare"}
    assert runs["learn"].data.metrics["library_size"] == len(result.library["items"])  # the last step's
    child = runs["compare"]
    assert child.data.tags["mlflow.parentRunId"] == runs["learn"].info.run_id  # RUN_DIR/heldout nests
    assert child.data.metrics["paired.diff"] == pytest.approx(metrics["comparison"]["diff"])


def test_an_unreachable_tracking_server_stops_the_run_before_any_model_call(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    env = {**cli_env(), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}  # MLflow's own retries: minutes otherwise
    out = subprocess.run(
        [PYTHON, "-m", "tfgrpo.cli", *learn_args(server, tmp_path / "run", "http://127.0.0.1:9")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("tfgrpo: error: --track mlflow:http://127.0.0.1:9: cannot log to MLflow (")
    assert server.requests == []  # nothing paid for
    assert "learning:" not in out.stdout
