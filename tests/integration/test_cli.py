"""The ``tfgrpo`` command as a user runs it: real subprocesses, real HTTP to the fake server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, SHARED_DATA, cli_env
from tfgrpo.testing.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.integration


def tfgrpo(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "tfgrpo.cli", *args], env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


def learn_args(server: FakeOpenAIServer, run_dir: Path, dataset: str, *extra: str) -> list[str]:
    return [
        "learn", "--dataset", dataset, "--model", "openai:fake", "--base-url", server.base_url,
        "--run-dir", str(run_dir), "--epochs", "1", "--batch-size", "2", "--group-size", "3",
        "--no-progress", *extra,
    ]  # fmt: skip


def test_demo_learns_and_writes_the_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "demo"
    out = tfgrpo("demo", "--run-dir", str(run_dir), "--dataset", "rg:basic_arithmetic:size=8:seed=2")
    assert out.returncode == 0, out.stderr
    assert "does" in out.stdout and "not learn" in out.stdout  # the demo says what it is
    report = json.loads((run_dir / "report.json").read_text())
    assert len(report["steps"]) == 4  # 2 epochs x 2 batches of 4
    assert report["totals"]["calls"] > 0 and report["totals"]["input_tokens"] > 0
    assert all(s["rollouts"] == 16 for s in report["steps"])
    library = json.loads((run_dir / "library.json").read_text())
    assert library["items"], "the scripted learner always proposes lessons"
    for item in library["items"]:
        assert item["id"].startswith("G") and item["sources"]
        assert item["text"] in out.stdout  # the final library is printed
    assert (run_dir / "library.md").read_text().startswith("# Experience library")
    assert "reward" in (run_dir / "report.md").read_text()
    assert sorted(p.name for p in (run_dir / "libraries").iterdir()) == [
        f"step-{i:04d}.json" for i in range(4)
    ]
    assert "OPENAI_API_KEY" not in (run_dir / "run.json").read_text()

    shown = tfgrpo("library", "show", str(run_dir), "--step", "0", "--json")
    assert shown.returncode == 0, shown.stderr
    step0 = json.loads(shown.stdout)
    assert step0 == json.loads((run_dir / "libraries" / "step-0000.json").read_text())
    diff = tfgrpo("library", "diff", str(run_dir), "--step", "0")
    assert diff.returncode == 0
    assert all(f"+ [{item['id']}]" in diff.stdout for item in step0["items"])

    again = tfgrpo("demo", "--run-dir", str(run_dir), "--dataset", "rg:basic_arithmetic:size=8:seed=2")
    assert again.returncode == 0 and "already complete" in again.stdout


BAD_DATASETS = {
    "missing.jsonl": (None, "file not found"),
    "empty.jsonl": ("", "empty file"),
    "noanswer.jsonl": ('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?"}\n', "line 2"),
    "dup.jsonl": (
        '{"id": "a", "question": "1+1?", "answer": "2"}\n{"id": "a", "question": "2+2?", "answer": "4"}\n',
        "duplicate id 'a'",
    ),
    "nocols.csv": ("prompt,answer\nx,1\n", "question"),
    "broken.jsonl": ('{"question": "1+1?", "answer": 2\n', "invalid JSON"),
}


@pytest.mark.parametrize("name", sorted(BAD_DATASETS))
def test_bad_dataset_is_one_line_error(name: str, tmp_path: Path, fake_server: FakeOpenAIServer) -> None:
    content, expected = BAD_DATASETS[name]
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    out = tfgrpo(*learn_args(fake_server, tmp_path / "run", str(path)))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert name in lines[0] and expected in lines[0]
    assert fake_server.requests == []  # nothing was paid for


def test_resume_with_other_settings_is_refused(tmp_path: Path, fake_server: FakeOpenAIServer) -> None:
    run_dir = tmp_path / "run"
    first = tfgrpo(*learn_args(fake_server, run_dir, "rg:basic_arithmetic:size=4:seed=1"))
    assert first.returncode == 0, first.stderr
    other = tfgrpo(
        *learn_args(fake_server, run_dir, "rg:basic_arithmetic:size=4:seed=1", "--group-size", "4")
    )
    assert other.returncode == 2 and "settings differ" in other.stderr
    assert "group_size: 3 -> 4" in other.stderr  # which setting changed, old and new
    changed = tfgrpo(*learn_args(fake_server, run_dir, "rg:basic_arithmetic:size=4:seed=9"))
    assert changed.returncode == 2 and "differs from the one this run started with" in changed.stderr


def test_user_reward_and_failing_server_are_counted(tmp_path: Path, fake_server: FakeOpenAIServer) -> None:
    reward_file = tmp_path / "my_reward.py"
    reward_file.write_text("def score(response, answer):\n    return 1.0 if answer in response else 0.0\n")
    fake_server.fail_next(3, status=400)  # not retried by the client: three rollouts fail
    run_dir = tmp_path / "run"
    out = tfgrpo(
        *learn_args(
            fake_server, run_dir, "rg:basic_arithmetic:size=4:seed=1", "--reward", f"{reward_file}:score"
        )
    )
    assert out.returncode == 0, out.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert report["totals"]["rollouts_failed"] == 3
    assert report["totals"]["dropped"]["rollout"] == 3
    assert any(s["mean_reward"] is not None for s in report["steps"])


def test_hotpotqa_rows_load_with_exact_match(tmp_path: Path, fake_server: FakeOpenAIServer) -> None:
    path = SHARED_DATA / "hotpotqa_distractor_train100.jsonl"
    if not path.exists():
        pytest.skip("../shared/data not present (benchmark data lives outside the repository)")
    small = tmp_path / "hotpot4.jsonl"
    small.write_text("".join(path.read_text().splitlines(keepends=True)[:4]))
    out = tfgrpo(*learn_args(fake_server, tmp_path / "run", str(small), "--reward", "exact_match"))
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    # the scripted model cannot answer these: every group has equal rewards and is skipped
    assert report["totals"]["groups_kept"] == 0 and report["totals"]["groups_skipped"] == 4


def test_search_domain_learns_with_the_offline_corpus(tmp_path: Path, fake_server: FakeOpenAIServer) -> None:
    path = SHARED_DATA / "hotpotqa_distractor_train100.jsonl"
    if not path.exists():
        pytest.skip("../shared/data not present (benchmark data lives outside the repository)")
    small = tmp_path / "hotpot4.jsonl"
    small.write_text("".join(path.read_text().splitlines(keepends=True)[:4]))
    run_dir = tmp_path / "run"
    out = tfgrpo(*learn_args(fake_server, run_dir, str(small), "--domain", "search", "--corpus", str(path)))
    assert out.returncode == 0, out.stderr
    report = json.loads((run_dir / "report.json").read_text())
    roles = report["totals"]["by_role"]
    # the search preset grades with the LLM judge (identical gradings are asked once: cached)
    assert roles["judge"]["calls"] + roles["judge"]["cached"] == 4 * 3
    searches = [b for b in fake_server.requests if b.get("tools")]
    assert searches and {t["function"]["name"] for t in searches[0]["tools"]} == {"search", "open_page"}
    tool_results = [m for b in fake_server.requests for m in b["messages"] if m["role"] == "tool"]
    assert tool_results and all(r["content"].startswith("[") for r in tool_results)  # titled paragraphs


def test_infer_answers_hotpotqa_with_visible_tool_calls(fake_server: FakeOpenAIServer) -> None:
    path = SHARED_DATA / "hotpotqa_distractor_eval300.jsonl"
    if not path.exists():
        pytest.skip("../shared/data not present (benchmark data lives outside the repository)")
    row = json.loads(path.read_text().splitlines()[0])
    out = tfgrpo(
        "infer", "--question", row["question"], "--model", "openai:fake", "--base-url", fake_server.base_url,
        "--domain", "search", "--corpus", str(path), "--trajectory",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "-> search(" in out.stdout and "<- search: [" in out.stdout
    assert out.stdout.strip().splitlines()[-1].startswith("answer: ")


def test_validation_gated_learning_reports_each_check(tmp_path: Path, fake_server: FakeOpenAIServer) -> None:
    validation = tmp_path / "val.jsonl"
    validation.write_text("".join(json.dumps({"question": f"Calculate {a} + 7.", "answer": str(a + 7)}) + "\n"
                                  for a in range(3)))  # fmt: skip
    run_dir = tmp_path / "run"
    out = tfgrpo(*learn_args(fake_server, run_dir, "rg:basic_arithmetic:size=4:seed=1", "--validation",
                             str(validation), "--validation-k", "2"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads((run_dir / "report.json").read_text())
    checked = [s for s in report["steps"] if "validation" in s]
    assert checked, "the scripted learner changes E, so steps are validated"
    for s in checked:
        # the scripted policy ignores E and run i of both arms shares its seed: identical scores, kept
        assert s["validation"]["before"] == s["validation"]["after"] and s["validation"]["kept"]
        assert s["validation"]["runs"] == 3 * 2 * 2 and s["usage"]["validate"]["calls"] == 12
    assert "## Validation-gated updates" in (run_dir / "report.md").read_text()
    assert " keep " in out.stdout  # the table's gate column

    missing = str(tmp_path / "missing.jsonl")
    bad = tfgrpo(*learn_args(fake_server, tmp_path / "r2", "rg:basic_arithmetic:size=4:seed=1",
                             "--validation", missing))  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().endswith("missing.jsonl: file not found")


def test_infer_takes_the_retry_and_timeout_options_of_learn() -> None:
    """A failing server: ``--max-retries N`` is N + 1 requests, then one line (the default's 4 retries with
    backoff made a dead URL take 23 s)."""
    for retries in (0, 2):
        with FakeOpenAIServer() as server:
            server.fail_next(50, status=503)
            out = tfgrpo("infer", "--question", "What is 2 + 2?", "--model", "openai:fake", "--base-url",
                         server.base_url, "--max-retries", str(retries), "--retry-backoff", "0.01",
                         "--request-timeout", "5")  # fmt: skip
            assert out.returncode == 1, out.stdout + out.stderr
            assert len(out.stderr.strip().splitlines()) == 1 and "503" in out.stderr, out.stderr
            assert len(server.requests) == retries + 1


def test_infer_notes_once_that_e_was_learned_with_another_model(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    library = {"version": 1, "next_id": 2, "items": [{"id": "G1", "text": "Carry the one.", "sources": [],
               "created_step": 0, "updated_step": 0}],
               "provenance": {"policy_model": "openai:gpt-4o-mini", "run_id": "dapo-s0"}}  # fmt: skip
    path = tmp_path / "library.json"
    path.write_text(json.dumps(library))
    out = tfgrpo("infer", "--question", "What is 2 + 2?", "--model", "openai:fake", "--base-url",
                 fake_server.base_url, "--library", str(path))  # fmt: skip
    assert out.returncode in (0, 1), out.stderr
    notes = [line for line in out.stderr.splitlines() if "learned with" in line]
    assert notes == [
        "tfgrpo: note: this E was learned with openai:gpt-4o-mini (run 'dapo-s0'); answering with "
        "openai:fake: lessons do not always transfer across models"
    ]
    same = tfgrpo("infer", "--question", "What is 2 + 2?", "--model", "openai:gpt-4o-mini", "--base-url",
                  fake_server.base_url, "--library", str(path))  # fmt: skip
    assert "learned with" not in same.stderr
