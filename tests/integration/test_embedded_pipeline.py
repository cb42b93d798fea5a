"""The product path offline: ``tfgrpo learn`` and ``tfgrpo eval`` on the embedded models behind llama.cpp's
server, through langchain-openai. SmolLM2-135M at tiny sizes proves the pipeline, not learning (a 135M
model does not learn much); the default Qwen2.5-Coder-0.5B runs the main job's shape, shrunk: learning,
then the held-out comparison of E against the baseline, in one command."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import PYTHON, cli_env, needs_embedded_model, needs_qwen
from tfgrpo.cli import MAIN_JOB_GRAMMAR

pytestmark = [pytest.mark.integration]
SMOLLM = "local:smollm2-135m-instruct"
F = TypeVar("F", bound=Callable[..., Any])

DATASET = "rg:basic_arithmetic:size=2:seed=1:max_terms=2:max_digits=1"


def tfgrpo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in cli_env().items() if k not in ("TFGRPO_MODEL", "OPENAI_BASE_URL")}
    return subprocess.run(
        [PYTHON, "-m", "tfgrpo.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )


def marked(marks: list[Any]) -> Callable[[F], F]:
    def apply(test: F) -> F:
        for mark in marks:
            test = mark(test)
        return test

    return apply


@marked(needs_embedded_model)
def test_learn_then_eval_on_the_embedded_model(tmp_path: Path) -> None:
    run_dir, eval_dir = tmp_path / "run", tmp_path / "eval"
    learned = tfgrpo("learn", "--model", SMOLLM, "--dataset", DATASET, "--epochs", "1", "--batch-size", "2",
                     "--group-size", "2", "--max-tokens", "48", "--learner-max-tokens", "48",
                     "--run-dir", str(run_dir),
                     "--no-progress")  # fmt: skip
    assert learned.returncode == 0, learned.stdout + learned.stderr
    assert "SmolLM2-135M-Instruct" in learned.stdout and "does not learn much" in learned.stdout
    report = json.loads((run_dir / "report.json").read_text())
    (step,) = report["steps"]
    assert step["rollouts"] == 4 and step["calls"] >= 4 and step["input_tokens"] > 0
    assert step["rollouts_failed"] == 0, step  # the server answered every rollout
    assert (run_dir / "learning_curve.png").exists()

    evaluated = tfgrpo("eval", "--model", SMOLLM, "--dataset", DATASET, "--library", str(run_dir),
                       "--baseline", "--k", "1", "--max-tokens", "48", "--eval-dir", str(eval_dir),
                       "--no-progress")  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    result = json.loads((eval_dir / "report.json").read_text())
    for arm in ("library", "baseline"):
        # an arm whose requests equal the other's (SmolLM2 may learn an empty E) is answered by single
        # flight: booked as cached, not paid twice
        arm_ = result["arms"][arm]
        assert arm_["n_runs"] == 2 and (arm_["input_tokens"] > 0 or arm_.get("cached_calls", 0) > 0), arm_
    assert (eval_dir / "comparison.png").exists() and "Mean@1" in (eval_dir / "report.md").read_text()


# ~25 s with the answer grammar (4 min before it): in the default run, so CI runs a real Qwen learn + eval
@marked(needs_qwen)
def test_default_model_learns_then_compares_on_held_out_questions(tmp_path: Path) -> None:
    """No model given: Qwen2.5-Coder-0.5B learns, then E and the baseline answer held-out questions with
    paired seeds, and the command prints Mean@k per arm and the paired difference with its CI. With the
    main job's answer grammar, as the main job runs."""
    run_dir = tmp_path / "run"
    heldout = "rg:basic_arithmetic:size=3:seed=7:max_terms=2:max_digits=2"
    learned = tfgrpo("learn", "--dataset", DATASET, "--epochs", "1", "--batch-size", "2", "--group-size",
                     "2", "--max-tokens", "96", "--heldout", heldout, "--heldout-k", "2",
                     "--grammar", MAIN_JOB_GRAMMAR,
                     "--run-dir", str(run_dir), "--no-progress")  # fmt: skip
    assert learned.returncode == 0, learned.stdout + learned.stderr
    out = learned.stdout
    assert "Qwen2.5-Coder-0.5B-Instruct" in out
    assert "held-out evaluation: E against the baseline" in out
    assert "evaluating: 3 questions x k=2 x library/baseline = 12 runs" in out
    assert "library: Mean@2" in out and "baseline: Mean@2" in out
    assert "Library minus baseline Mean@k:" in out and "over only 3 paired questions" in out
    last = out.strip().splitlines()[-1]  # 3 questions: no verdict, said plainly, and where the study is
    assert last.startswith("This run measured no effect") and "docs/learning-effect.md" in last, last
    report = json.loads((run_dir / "heldout" / "report.json").read_text())
    for arm in ("library", "baseline"):
        assert report["arms"][arm]["n_runs"] == 6 and report["arms"][arm]["runs_failed"] == 0
    (step,) = json.loads((run_dir / "report.json").read_text())["steps"]
    assert step["rollouts"] == 4 and step["rollouts_failed"] == 0
