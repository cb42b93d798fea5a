"""Dynamic sampling from outside: ``tfgrpo learn --max-group-size N`` against a fake server whose policy is
right about one time in ten. More groups keep contrast, every extra attempt is booked (report = server)
and budgeted, a kill during the extra draws repays no finished attempt, and a reward's reason reaches
the learner."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON, REPO, cli_env, hold_after, sigkill_once_held
from tfgrpo.testing.fake_openai import FakeOpenAIServer, request_key
from tfgrpo.testing.responders import rarely_right_responder

pytestmark = pytest.mark.integration

# a user's reward that says why, with a mark to find in the learner's requests
REWARD = """
def score(response, answer):
    got = response.rsplit("Answer:", 1)[-1].strip()
    if got == answer:
        return 1.0, f"MARK read {got!r}; expected {answer!r}"
    return (0.0, f"MARK read {got!r}; expected {answer!r}: off by {float(got) - float(answer):g}")
"""


def learn_args(server: FakeOpenAIServer, run_dir: Path, reward: Path, *extra: str) -> list[str]:
    return [
        "learn", "--dataset", "rg:basic_arithmetic:size=6:seed=1", "--model", "openai:fake",
        "--base-url", server.base_url, "--run-dir", str(run_dir), "--epochs", "1", "--batch-size", "3",
        "--group-size", "4", "--max-concurrency", "4", "--no-progress", "--reward", f"{reward}:score",
        *extra,
    ]  # fmt: skip


def tfgrpo(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "tfgrpo.cli", *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def is_policy(body: dict) -> bool:
    return body.get("seed") is not None and not body.get("tools")


def totals(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "report.json").read_text())["totals"]


@pytest.fixture
def reward(tmp_path: Path) -> Path:
    path = tmp_path / "why_reward.py"
    path.write_text(REWARD)
    return path


def test_more_groups_keep_contrast_every_extra_attempt_is_booked_and_the_reason_reaches_the_learner(
    tmp_path: Path, reward: Path
) -> None:
    with FakeOpenAIServer(rarely_right_responder) as server:
        alone = tfgrpo(learn_args(server, tmp_path / "alone", reward))
        assert alone.returncode == 0, alone.stdout + alone.stderr
        server.reset_stats()
        grown = tfgrpo(learn_args(server, tmp_path / "grown", reward, "--max-group-size", "16"))
        assert grown.returncode == 0, grown.stdout + grown.stderr
        paid = server.usage_totals
        policy = [b for b in server.requests if is_policy(b)]
        learner = [json.dumps(b) for b in server.requests if not is_policy(b)]
    before, after = totals(tmp_path / "alone"), totals(tmp_path / "grown")
    print(f"groups with contrast: G alone {before['groups_kept']} of 6, cap 16 {after['groups_kept']} of 6")
    assert after["groups_kept"] > before["groups_kept"]
    assert after["extra_rollouts"] > 0 and after["groups_rescued"] > 0
    assert after["rollouts"] == 6 * 4 + after["extra_rollouts"] == len(policy)
    assert after["input_tokens"] + after["output_tokens"] == paid["total_tokens"]  # report = server
    assert after["calls"] == paid["calls"]
    assert "more" in grown.stdout and "resc" in grown.stdout  # the step table's columns
    assert any("MARK read" in body for body in learner), "no reward reason reached the learner"


def test_a_kill_during_the_extra_draws_repays_no_finished_attempt(tmp_path: Path, reward: Path) -> None:
    with FakeOpenAIServer(rarely_right_responder) as server:
        whole = tfgrpo(learn_args(server, tmp_path / "whole", reward, "--max-group-size", "16"))
        assert whole.returncode == 0, whole.stderr
    expected = totals(tmp_path / "whole")
    with FakeOpenAIServer(rarely_right_responder) as server:
        args = learn_args(server, tmp_path / "run", reward, "--max-group-size", "16")
        hold_after(server, 3 * 4 + 1, is_policy)  # the first step's G attempts and one extra pass
        proc = subprocess.Popen(
            [PYTHON, "-m", "tfgrpo.cli", *args], env=cli_env(), cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        finished = sigkill_once_held(proc, server)
        assert proc.returncode == -signal.SIGKILL
        assert sum(1 for b in server.completed if is_policy(b)) > 3 * 4, "killed before any extra attempt"
        server.hold(None)
        server.release()
        server.reset_stats()
        out = tfgrpo(args)
        assert out.returncode == 0, out.stdout + out.stderr
        repeated = [b for b in server.requests if request_key(b) in finished]
    assert repeated == [], f"{len(repeated)} of {len(finished)} finished requests were paid again"
    got = totals(tmp_path / "run")
    for key in ("rollouts", "extra_rollouts", "groups_kept", "groups_rescued"):
        assert got[key] == expected[key], key


def test_extra_attempts_respect_the_token_budget(tmp_path: Path, reward: Path) -> None:
    with FakeOpenAIServer(rarely_right_responder) as server:
        full = tfgrpo(learn_args(server, tmp_path / "full", reward, "--max-group-size", "16"))
        assert full.returncode == 0, full.stderr
        whole = server.usage_totals["total_tokens"]
    budget = whole // 2
    with FakeOpenAIServer(rarely_right_responder) as server:
        args = learn_args(server, tmp_path / "half", reward, "--max-group-size", "16")
        out = tfgrpo([*args, "--budget-tokens", str(budget)])
        spent = server.usage_totals["total_tokens"]
    assert out.returncode == 3, out.stdout + out.stderr
    assert "budget" in out.stderr + out.stdout
    assert spent <= budget


def test_a_long_run_that_grows_every_group_to_the_cap_finishes(tmp_path: Path) -> None:
    # every attempt scores 0: each step draws every extra round (G = 2 up to 16: 7 rounds of
    # rollout -> reward -> variance_gate), which the run's recursion limit must allow for
    reward = tmp_path / "zero.py"
    reward.write_text("def score(response, answer):\n    return 0.0\n")
    with FakeOpenAIServer(rarely_right_responder) as server:
        args = learn_args(server, tmp_path / "run", reward, "--max-group-size", "16")
        args[args.index("--batch-size") + 1] = "1"
        args[args.index("--group-size") + 1] = "2"
        done = tfgrpo(args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert totals(tmp_path / "run")["extra_rollouts"] == 6 * 14
