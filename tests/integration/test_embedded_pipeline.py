"""The product path offline: ``tfgrpo learn`` and ``tfgrpo eval`` with no model given use the embedded
SmolLM2-135M behind llama.cpp's server, through langchain-openai. Tiny sizes: this proves the pipeline,
not learning (a 135M model does not learn much)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, cli_env, needs_embedded_model

pytestmark = [pytest.mark.integration, *needs_embedded_model]

DATASET = "rg:basic_arithmetic:size=2:seed=1:max_terms=2:max_digits=1"


def tfgrpo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in cli_env().items() if k not in ("TFGRPO_MODEL", "OPENAI_BASE_URL")}
    return subprocess.run(
        [PYTHON, "-m", "tfgrpo.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_learn_then_eval_on_the_embedded_model(tmp_path: Path) -> None:
    run_dir, eval_dir = tmp_path / "run", tmp_path / "eval"
    learned = tfgrpo("learn", "--dataset", DATASET, "--epochs", "1", "--batch-size", "2", "--group-size", "2",
                     "--max-tokens", "48", "--learner-max-tokens", "48", "--run-dir", str(run_dir),
                     "--no-progress")  # fmt: skip
    assert learned.returncode == 0, learned.stdout + learned.stderr
    assert "SmolLM2-135M-Instruct" in learned.stdout and "does not learn much" in learned.stdout
    report = json.loads((run_dir / "report.json").read_text())
    (step,) = report["steps"]
    assert step["rollouts"] == 4 and step["calls"] >= 4 and step["input_tokens"] > 0
    assert step["rollouts_failed"] == 0, step  # the server answered every rollout
    assert (run_dir / "learning_curve.png").exists()

    evaluated = tfgrpo("eval", "--dataset", DATASET, "--library", str(run_dir), "--baseline", "--k", "1",
                       "--max-tokens", "48", "--eval-dir", str(eval_dir), "--no-progress")  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    result = json.loads((eval_dir / "report.json").read_text())
    for arm in ("library", "baseline"):
        assert result["arms"][arm]["n_runs"] == 2 and result["arms"][arm]["input_tokens"] > 0
    assert (eval_dir / "comparison.png").exists() and "Mean@1" in (eval_dir / "report.md").read_text()
