"""``--db postgresql://...``: real ``tfgrpo`` processes against a real PostgreSQL server (see
tests/pg_server.py): kill and resume on "another machine", eval of a run's published E, two runs in one
database, the advisory run lock, pruning, and a budget that survives the move."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, cli_env, hold_after, sigkill_once_held
from tests.integration.test_resume import is_rollout
from tfgrpo.testing.fake_openai import FakeOpenAIServer, request_key

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def learn_cmd(server: FakeOpenAIServer, run_dir: Path, db: str, run_id: str, *extra: str) -> list[str]:
    return [
        PYTHON, "-m", "tfgrpo.cli", "learn",
        "--dataset", "rg:basic_arithmetic:size=6:seed=1",
        "--model", "openai:fake", "--base-url", server.base_url,
        "--run-dir", str(run_dir), "--db", db, "--run-id", run_id,
        "--epochs", "2", "--batch-size", "3", "--group-size", "4",
        "--max-concurrency", "4", "--no-progress", *extra,
    ]  # fmt: skip


def checkpoints_of(db: str, thread: str) -> int:
    import psycopg

    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = %s", (thread,)).fetchone()
    return int(row[0]) if row else 0


def test_sigkill_and_resume_elsewhere_repeats_no_finished_call(
    fake_server: FakeOpenAIServer, postgres_url: str, tmp_path: Path
) -> None:
    hold_after(fake_server, 12 + 5, is_rollout)  # freeze inside step 1's rollouts
    cmd = learn_cmd(fake_server, tmp_path / "machine-a", postgres_url, "arith")
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finished = sigkill_once_held(proc, fake_server)
    fake_server.hold(None)
    fake_server.release()
    assert sum(1 for b in fake_server.completed if is_rollout(b)) >= 12 + 5

    # "another machine": a new run directory, the same database and run id
    fake_server.reset_stats()
    out = subprocess.run(learn_cmd(fake_server, tmp_path / "machine-b", postgres_url, "arith"),
                         env=cli_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resuming" in out.stdout and "at step 1" in out.stdout
    repeated = [b for b in fake_server.requests if request_key(b) in finished]
    assert repeated == [], f"{len(repeated)} finished LLM calls were made again"
    report = json.loads((tmp_path / "machine-b" / "report.json").read_text())
    assert [s["step"] for s in report["steps"]] == [0, 1, 2, 3]
    assert all(s["rollouts"] == 12 for s in report["steps"])
    # pruned as it went: only what resuming needs is left
    assert checkpoints_of(postgres_url, "arith/learn") <= 2

    # E as published after every step, readable by run id
    shown = subprocess.run([PYTHON, "-m", "tfgrpo.cli", "library", "show", "arith", "--db", postgres_url,
                            "--json"], env=cli_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == json.loads((tmp_path / "machine-b" / "library.json").read_text())
    # and each step's change to it, the same as the run dir's own record says
    from_db, from_dir = (
        subprocess.run(
            [PYTHON, "-m", "tfgrpo.cli", "library", "diff", *where, "--step", "3", "--json"],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        for where in (["arith", "--db", postgres_url], [str(tmp_path / "machine-b")])
    )
    assert from_db.returncode == 0 and from_dir.returncode == 0, from_db.stderr + from_dir.stderr
    assert json.loads(from_db.stdout) == json.loads(from_dir.stdout)
    assert json.loads(from_db.stdout)["step"] == 3


def test_two_runs_share_one_database_and_the_run_lock_refuses_a_second_process(
    fake_server: FakeOpenAIServer, postgres_url: str, tmp_path: Path
) -> None:
    hold_after(fake_server, 3, is_rollout)
    first = subprocess.Popen(learn_cmd(fake_server, tmp_path / "a", postgres_url, "run-a"), env=cli_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 60
        while fake_server.held_count() < 1:
            assert time.time() < deadline and first.poll() is None, "run-a never reached the model"
            time.sleep(0.05)
        # the same run from another process (another machine): refused while run-a runs
        clash = subprocess.run(learn_cmd(fake_server, tmp_path / "a2", postgres_url, "run-a"),
                               env=cli_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
        assert clash.returncode == 2, clash.stdout + clash.stderr
        assert "being run by another process" in clash.stderr and "Traceback" not in clash.stderr
    finally:
        fake_server.hold(None)
        fake_server.release()
    # another run in the same database, with other settings, at the same time
    second = subprocess.run(learn_cmd(fake_server, tmp_path / "b", postgres_url, "run-b", "--epochs", "1"),
                            env=cli_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 0, second.stdout + second.stderr
    steps_a = json.loads((tmp_path / "a" / "report.json").read_text())["steps"]
    steps_b = json.loads((tmp_path / "b" / "report.json").read_text())["steps"]
    assert len(steps_a) == 4 and len(steps_b) == 2
    assert checkpoints_of(postgres_url, "run-a/learn") <= 2
    assert checkpoints_of(postgres_url, "run-b/learn") <= 2

    # a finished run resumed by id is complete, not restarted; --keep-checkpoints keeps them all
    again = subprocess.run(learn_cmd(fake_server, tmp_path / "a3", postgres_url, "run-a"), env=cli_env(),
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0 and "already complete (4 steps)" in again.stdout, again.stdout + again.stderr
    kept = subprocess.run(learn_cmd(fake_server, tmp_path / "c", postgres_url, "run-c", "--epochs", "1",
                                    "--keep-checkpoints"), env=cli_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert kept.returncode == 0, kept.stderr
    assert checkpoints_of(postgres_url, "run-c/learn") > 10


def test_eval_of_a_published_library_and_a_budget_that_moves_with_the_run(
    fake_server: FakeOpenAIServer, postgres_url: str, tmp_path: Path
) -> None:
    learned = subprocess.run(learn_cmd(fake_server, tmp_path / "run", postgres_url, "lib", "--epochs", "1"),
                             env=cli_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert learned.returncode == 0, learned.stdout + learned.stderr
    eval_cmd = [
        PYTHON, "-m", "tfgrpo.cli", "eval", "--dataset", "rg:basic_arithmetic:size=3:seed=4",
        "--library", "lib", "--baseline", "--k", "2", "--db", postgres_url,
        "--model", "openai:fake", "--base-url", fake_server.base_url,
        "--eval-dir", str(tmp_path / "eval"), "--no-progress",
    ]  # fmt: skip
    out = subprocess.run(eval_cmd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Mean@2" in out.stdout
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert set(report["arms"]) == {"library", "baseline"}
    assert report["arms"]["library"]["runs_done"] == 3 * 2
    published = json.loads((tmp_path / "run" / "library.json").read_text())
    assert report["settings"]["library_items"] == len(published["items"])

    # the agent with that run's E, from any machine that reaches the database
    fake_server.reset_stats()
    cmd = [PYTHON, "-m", "tfgrpo.cli", "infer", "--library", "lib", "--db", postgres_url, "--question",
           "Calculate 2 + 2.", "--model", "openai:fake", "--base-url", fake_server.base_url]  # fmt: skip
    infer = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert infer.returncode == 0 and "answer: " in infer.stdout, infer.stdout + infer.stderr
    system = fake_server.requests[-1]["messages"][0]["content"]
    assert all(f"[{item['id']}] {item['text']}" in system for item in published["items"])

    # a budget-stopped run resumed on another machine keeps what it spent: it stops again almost at once,
    # where the same budget on a fresh run pays for many calls
    def budget_run(run_dir: str, run_id: str) -> tuple[subprocess.CompletedProcess[str], int]:
        fake_server.reset_stats()
        cmd = learn_cmd(fake_server, tmp_path / run_dir, postgres_url, run_id,
                        "--budget-tokens", "8000", "--max-concurrency", "1")  # fmt: skip
        done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 3, done.stdout + done.stderr
        return done, len(fake_server.requests)

    first, calls_first = budget_run("m1", "budget")
    second, calls_second = budget_run("m2", "budget")
    assert "resuming" in second.stdout
    spent_first = int(first.stderr.split("spent so far: ")[1].split()[0])
    assert int(second.stderr.split("spent so far: ")[1].split()[0]) >= spent_first > 0
    assert calls_second <= 2 < calls_first


def test_advisory_lock_is_released_when_its_holder_dies(postgres_url: str) -> None:
    from tfgrpo.errors import ConfigError
    from tfgrpo.runs.pglock import PostgresRunLock

    script = (
        "import time\nfrom tfgrpo.runs.pglock import PostgresRunLock\n"
        f"lock = PostgresRunLock({postgres_url!r}, 'x')\n"
        "lock.acquire()\nprint('held', flush=True)\ntime.sleep(60)\n"
    )
    holder = subprocess.Popen([PYTHON, "-c", script], env=cli_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(ConfigError, match="being run by another process"),
            PostgresRunLock(postgres_url, "x"),
        ):
            pass
        with PostgresRunLock(postgres_url, "y"):  # another run id: free
            pass
        holder.kill()
        holder.wait(timeout=10)
        deadline = time.time() + 10
        while True:  # the server notices the dropped connection at once, or nearly
            try:
                with PostgresRunLock(postgres_url, "x"):
                    break
            except ConfigError:
                assert time.time() < deadline, "the lock of a killed process was never released"
                time.sleep(0.2)
    finally:
        if holder.poll() is None:
            holder.kill()


def test_the_python_api_learns_into_postgresql_from_the_environment_and_a_users_agent_reads_it(
    fake_server: FakeOpenAIServer, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Issue 22, finding 4: tfgrpo.learn() honours $TFGRPO_DATABASE_URL (it used to go to SQLite in the run
    directory), quietly; ExperienceMiddleware(run=...) then finds the run's E in the same database."""
    from langchain.agents import create_agent
    from langchain_openai import ChatOpenAI

    import tfgrpo

    monkeypatch.setenv("TFGRPO_DATABASE_URL", postgres_url)
    rows = [{"question": f"Calculate {a} + {a}.", "answer": str(2 * a)} for a in (3, 4, 5)]
    result = tfgrpo.learn(
        rows, model="openai:fake", base_url=fake_server.base_url, run_dir=tmp_path / "nb", run_id="nb-s0",
        epochs=1, batch_size=3, group_size=2, verbose=False, progress=False,
    )  # fmt: skip
    assert capsys.readouterr().out == ""
    assert not (tmp_path / "nb" / "checkpoints.sqlite").exists() and checkpoints_of(
        postgres_url, "nb-s0/learn"
    )
    model = ChatOpenAI(model="app", base_url=fake_server.base_url, api_key="x", max_retries=0)  # type: ignore[arg-type]
    agent = create_agent(
        model, [], system_prompt="Be brief.", middleware=[tfgrpo.ExperienceMiddleware(run="nb-s0")]
    )
    agent.invoke({"messages": [("user", "Calculate 1 + 1.")]})
    system = fake_server.requests[-1]["messages"][0]["content"]
    assert result.library["items"] and all(i["text"] in system for i in result.library["items"])
