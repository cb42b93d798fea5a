"""``tfgrpo learn --dataset hf:...`` with a column mapping: a Hugging Face dataset saved on disk, learned
from over real HTTP to the fake server (offline: HF_DATASETS_OFFLINE=1)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, cli_env
from tfgrpo.testing.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.integration


def test_learn_from_a_saved_hf_dataset_with_a_column_mapping(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    datasets = pytest.importorskip("datasets", reason="the datasets extra: pip install -e '.[datasets]'")
    rows = [{"problem": f"What is {i} + {2 * i}?", "solution": 3 * i} for i in range(1, 5)]
    saved = tmp_path / "sums"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(saved))
    run_dir = tmp_path / "run"
    env = {**cli_env(), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    args = [
        PYTHON, "-m", "tfgrpo.cli", "learn", "--dataset", f"hf:{saved}:train", "--question-field", "problem",
        "--answer-field", "solution", "--model", "openai:fake", "--base-url", fake_server.base_url,
        "--run-dir", str(run_dir), "--epochs", "1", "--batch-size", "2", "--group-size", "3", "--no-progress",
    ]  # fmt: skip
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert len(report["steps"]) == 2 and all(s["rollouts"] == 6 for s in report["steps"])
    settings = json.loads((run_dir / "run.json").read_text())["context"]
    assert settings["dataset"] == f"hf:{saved}:train?question=problem&answer=solution"
    asked = " ".join(json.dumps(r) for r in fake_server.requests)
    assert all(f"What is {i} + {2 * i}?" in asked for i in range(1, 5))  # the mapped questions were asked

    # the same command resumes (the mapped dataset is the same), a wrong field is one line naming the source
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr
    wrong = [a if a != "solution" else "answer_text" for a in args]
    bad = subprocess.run(wrong, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        f"tfgrpo: error: hf:{saved}:train: item 0: field 'answer_text' is missing (the row has fields: "
        "problem, solution): name the answer with --answer-field NAME"
    )
    assert os.fspath(run_dir) not in bad.stderr


def test_python_api_rows_errors_name_the_rows(tmp_path: Path) -> None:
    import tfgrpo
    from tfgrpo.errors import DataError

    rows = [{"question": "What is 1 + 1?", "answer": "2"}, {"question": "What is 2 + 2?"}]
    with pytest.raises(DataError) as info:
        tfgrpo.learn(dataset=rows, model="openai:fake", run_dir=tmp_path / "run", progress=False)
    # not runs/.../dataset.jsonl
    assert str(info.value).startswith(
        "dataset: row 1: field 'answer' is missing (the row has fields: question)"
    )
