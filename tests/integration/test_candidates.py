"""Lessons chosen by what they do, tested from outside: ``tfgrpo learn --candidates N`` against a fake
server whose learner proposes junk and, now and then, the one lesson that works, and whose policy is right
with that lesson in E. Several candidates keep it, one does not; every selection run is booked (report =
server) and budgeted; a kill during the selection repays no finished call."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON, REPO, cli_env, hold_after, sigkill_once_held
from tfgrpo.testing.fake_openai import FakeOpenAIServer, request_key
from tfgrpo.testing.responders import RIGHT_LESSON, one_right_lesson_responder

pytestmark = pytest.mark.integration

QUESTIONS, BATCH, G = 6, 3, 4


def learn_args(server: FakeOpenAIServer, run_dir: Path, *extra: str) -> list[str]:
    return [
        "learn", "--dataset", f"rg:basic_arithmetic:size={QUESTIONS}:seed=1", "--model", "openai:fake",
        "--base-url", server.base_url, "--run-dir", str(run_dir), "--epochs", "1", "--batch-size",
        str(BATCH), "--group-size", str(G), "--max-concurrency", "4", "--no-progress", *extra,
    ]  # fmt: skip


def tfgrpo(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "tfgrpo.cli", *args], env=cli_env(), capture_output=True, text=True, timeout=300,
        cwd=REPO,
    )  # fmt: skip


def is_policy(body: dict) -> bool:
    return body.get("seed") is not None and not body.get("tools")


def lessons(run_dir: Path) -> list[str]:
    return [item["text"] for item in json.loads((run_dir / "library.json").read_text())["items"]]


def report(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "report.json").read_text())


def table_cell(stdout: str, column: str, step: int = 0) -> str:
    rows = [line.split() for line in stdout.splitlines() if line.split()]
    header = next(row for row in rows if row[0] == "step")
    return next(row for row in rows if row[0] == str(step))[header.index(column)]


def test_four_candidates_keep_the_lesson_that_works_and_one_does_not(tmp_path: Path) -> None:
    with FakeOpenAIServer(one_right_lesson_responder) as server:
        one = tfgrpo(learn_args(server, tmp_path / "one"))
        assert one.returncode == 0, one.stdout + one.stderr
        server.reset_stats()
        four = tfgrpo(learn_args(server, tmp_path / "four", "--candidates", "4"))
        assert four.returncode == 0, four.stdout + four.stderr
        paid = server.usage_totals
        policy = [b for b in server.requests if is_policy(b)]
    assert lessons(tmp_path / "one") and RIGHT_LESSON not in lessons(tmp_path / "one")
    assert RIGHT_LESSON in lessons(tmp_path / "four")
    assert "selection" not in report(tmp_path / "one")["steps"][0]
    first = report(tmp_path / "four")["steps"][0]
    selection = first["selection"]
    chosen = [c for c in selection["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and selection["chosen"] == chosen[0]["candidate"]
    assert any(RIGHT_LESSON in lesson for lesson in chosen[0]["lessons"])
    assert chosen[0]["delta"] > 0
    # every selection run is booked: the report's totals are what the server was paid for
    totals = report(tmp_path / "four")["totals"]
    assert totals["input_tokens"] + totals["output_tokens"] == paid["total_tokens"]
    assert totals["calls"] == paid["calls"]
    runs = sum(c["runs"] for s in report(tmp_path / "four")["steps"] for c in s.get("selection", {}).get(
        "candidates", []))  # fmt: skip
    assert runs > 0 and totals["rollouts"] + runs == len(policy)
    # the step table's column: the calls beyond one update
    assert table_cell(four.stdout, "cand") == str(selection["extra_calls"])
    assert table_cell(one.stdout, "cand") == "-"


def test_a_kill_during_the_selection_repays_no_finished_call(tmp_path: Path) -> None:
    with FakeOpenAIServer(one_right_lesson_responder) as server:
        whole = tfgrpo(learn_args(server, tmp_path / "whole", "--candidates", "4"))
        assert whole.returncode == 0, whole.stderr
    with FakeOpenAIServer(one_right_lesson_responder) as server:
        args = learn_args(server, tmp_path / "run", "--candidates", "4")
        hold_after(server, BATCH * G + 2, is_policy)  # the first step's rollouts and two selection runs
        proc = subprocess.Popen(
            [PYTHON, "-m", "tfgrpo.cli", *args], env=cli_env(), cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        finished = sigkill_once_held(proc, server)
        assert proc.returncode == -signal.SIGKILL
        assert sum(1 for b in server.completed if is_policy(b)) > BATCH * G, "killed before the selection"
        server.hold(None)
        server.release()
        server.reset_stats()
        out = tfgrpo(args)
        assert out.returncode == 0, out.stdout + out.stderr
        repeated = [b for b in server.requests if request_key(b) in finished]
    assert repeated == [], f"{len(repeated)} of {len(finished)} finished requests were paid again"
    assert lessons(tmp_path / "run") == lessons(tmp_path / "whole")
    assert report(tmp_path / "run")["steps"][0]["selection"] == report(tmp_path / "whole")["steps"][0][
        "selection"]  # fmt: skip


def test_candidates_respect_the_token_budget(tmp_path: Path) -> None:
    with FakeOpenAIServer(one_right_lesson_responder) as server:
        full = tfgrpo(learn_args(server, tmp_path / "full", "--candidates", "4"))
        assert full.returncode == 0, full.stderr
        whole = server.usage_totals["total_tokens"]
        server.reset_stats()
        one = tfgrpo(learn_args(server, tmp_path / "one"))
        assert one.returncode == 0, one.stderr
        single = server.usage_totals["total_tokens"]
    assert whole > single  # the candidates cost something, and it is counted
    budget = (whole + single) // 2  # more than one candidate needs, less than four
    with FakeOpenAIServer(one_right_lesson_responder) as server:
        out = tfgrpo(
            [*learn_args(server, tmp_path / "half", "--candidates", "4"), "--budget-tokens", str(budget)]
        )
        spent = server.usage_totals["total_tokens"]
    assert out.returncode == 3, out.stdout + out.stderr
    assert "budget" in out.stderr + out.stdout
    assert spent <= budget
