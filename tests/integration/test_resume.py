"""Kill a real ``tfgrpo learn`` process mid fan-out and check the restart pays for no finished call."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, cli_env, hold_after, interrupt_once_held, sigkill_once_held
from tfgrpo.testing.fake_openai import FakeOpenAIServer, request_key

pytestmark = pytest.mark.integration


def is_rollout(body: dict) -> bool:
    system = " ".join(str(m.get("content")) for m in body["messages"] if m["role"] == "system")
    return not body.get("tools") and "SUMMARIZE" not in system


def learn_cmd(server: FakeOpenAIServer, run_dir: Path) -> list[str]:
    return [
        PYTHON, "-m", "tfgrpo.cli", "learn",
        "--dataset", "rg:basic_arithmetic:size=6:seed=1",
        "--model", "openai:fake", "--base-url", server.base_url,
        "--run-dir", str(run_dir),
        "--epochs", "2", "--batch-size", "3", "--group-size", "4",
        "--max-concurrency", "4", "--no-progress",
    ]  # fmt: skip


def test_sigkill_mid_rollout_repeats_no_finished_call(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # step 0 has 12 rollouts; the 2nd step's rollouts start after 12 + its learner calls. Freeze inside
    # step 1's fan-out so that both a finished step and finished branches must survive the kill.
    hold_after(fake_server, 12 + 5, is_rollout)
    proc = subprocess.Popen(learn_cmd(fake_server, run_dir), env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    finished = sigkill_once_held(proc, fake_server)
    fake_server.hold(None)
    fake_server.release()
    assert (run_dir / "libraries" / "step-0000.json").exists(), "step 0 should have finished before the kill"
    rollouts_done = sum(1 for b in fake_server.completed if is_rollout(b))
    assert rollouts_done >= 12 + 5

    fake_server.reset_stats()
    out = subprocess.run(learn_cmd(fake_server, run_dir), env=cli_env(), capture_output=True, text=True,
                         timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resuming" in out.stdout
    repeated = [b for b in fake_server.requests if request_key(b) in finished]
    assert repeated == [], f"{len(repeated)} finished LLM calls were made again"

    report = json.loads((run_dir / "report.json").read_text())
    assert [s["step"] for s in report["steps"]] == [0, 1, 2, 3]
    assert all(s["rollouts"] == 12 for s in report["steps"])
    library = json.loads((run_dir / "library.json").read_text())
    ids = [item["id"] for item in library["items"]]
    assert len(ids) == len(set(ids)) and library["next_id"] > max(int(i[1:]) for i in ids)


# Ctrl-C, and what docker stop, systemd and CI cancellation (SIGTERM) and a closed terminal (SIGHUP) send:
# each drains (issue 30: SIGTERM and SIGHUP ended the run like SIGKILL, the calls in flight paid and lost)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_drains_and_resumes(sig: int, fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    hold_after(fake_server, 6, is_rollout)
    proc = subprocess.Popen(learn_cmd(fake_server, run_dir), env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    code, err = interrupt_once_held(proc, fake_server, sig)
    assert code == 130, err
    assert "resume with the same command" in err
    assert "Traceback" not in err
    finished = {request_key(b) for b in fake_server.completed}  # the held calls in flight included

    fake_server.reset_stats()
    out = subprocess.run(learn_cmd(fake_server, run_dir), env=cli_env(), capture_output=True, text=True,
                         timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    repeated = [b for b in fake_server.requests if request_key(b) in finished]
    assert repeated == [], f"{len(repeated)} calls finished during the drain were paid again"
    report = json.loads((run_dir / "report.json").read_text())
    assert [s["step"] for s in report["steps"]] == [0, 1, 2, 3]


def test_sigkill_mid_validation_repeats_no_finished_call(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    validation = tmp_path / "val.jsonl"
    validation.write_text("".join(json.dumps({"question": f"Calculate {a} + 1000.", "answer": str(a + 1000)})
                                  + "\n" for a in range(4)))  # fmt: skip

    def is_validation(body: dict) -> bool:
        return "+ 1000." in str(body["messages"][-1]["content"])

    cmd = [*learn_cmd(fake_server, tmp_path / "run"), "--validation", str(validation), "--validation-k", "2"]
    hold_after(fake_server, 5, is_validation)  # 16 validation runs per checked step: freeze after 5
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finished = sigkill_once_held(proc, fake_server)
    fake_server.hold(None)
    fake_server.release()
    assert sum(1 for b in fake_server.completed if is_validation(b)) >= 5

    fake_server.reset_stats()
    out = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    repeated = [b for b in fake_server.requests if request_key(b) in finished]
    assert repeated == [], f"{len(repeated)} finished LLM calls were made again"
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    checked = [s for s in report["steps"] if "validation" in s]
    assert checked and all(s["validation"]["runs"] == 16 for s in checked)
