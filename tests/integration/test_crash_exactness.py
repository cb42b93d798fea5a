"""Crash exactness: a killed run never looks finished, a task's writes are all-or-nothing, a response that
arrived is never paid again, one process per run directory, and damaged state is a one-line refusal."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, cli_env, hold_after
from tests.crash import KILL_ENV
from tfgrpo.testing.fake_openai import FakeOpenAIServer, request_key
from tfgrpo.testing.responders import eval_responder, grpo_responder

pytestmark = pytest.mark.integration


def learn_args(server: FakeOpenAIServer, run_dir: Path, *extra: str) -> list[str]:
    return [
        "learn", "--dataset", "rg:basic_arithmetic:size=6:seed=1",
        "--model", "openai:fake", "--base-url", server.base_url, "--run-dir", str(run_dir),
        "--epochs", "2", "--batch-size", "3", "--group-size", "4", "--max-concurrency", "4", "--no-progress",
        *extra,
    ]  # fmt: skip


def eval_args(server: FakeOpenAIServer, eval_dir: Path, library: Path) -> list[str]:
    return [
        "eval", "--dataset", "rg:basic_arithmetic:size=4:seed=5", "--library", str(library), "--baseline",
        "--k", "2", "--model", "openai:fake", "--base-url", server.base_url, "--eval-dir", str(eval_dir),
        "--no-progress",
    ]  # fmt: skip


def tfgrpo(args: list[str], *, prefix: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, PYTHON, "-m", "tfgrpo.cli", *args], env={**cli_env(), **env}, capture_output=True,
        text=True, timeout=180, cwd=REPO,
    )  # fmt: skip


def permissions_apply() -> tuple[str, ...]:
    """A command prefix under which file permissions apply to this process: root ignores them, so as root
    the command runs without the capabilities that override them (``setpriv``)."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only directory cannot be made here")
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` and everything in it read-only for the ``with`` block."""
    every = [path, *path.rglob("*")]
    modes = {p: p.stat().st_mode for p in every}
    for p in every:
        p.chmod(modes[p] & ~0o222)
    try:
        yield
    finally:
        for p in every:
            p.chmod(modes[p])


def killed_at(node: str, nth: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``tfgrpo args`` with a saver that SIGKILLs the process right after ``node``'s writes."""
    return subprocess.run(
        [PYTHON, "-m", "tests.crash", *args], env={**cli_env(), KILL_ENV: f"{node}:{nth}"},
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )  # fmt: skip


def items(run_dir: Path) -> list[tuple[str, str]]:
    library = json.loads((run_dir / "library.json").read_text())
    return [(i["id"], i["text"]) for i in library["items"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[str, str]]]:
    """E of an uninterrupted run (the fake model answers by request content: runs are reproducible)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    with FakeOpenAIServer(grpo_responder) as server:
        out = tfgrpo(learn_args(server, run_dir))
    assert out.returncode == 0, out.stderr
    yield items(run_dir)


# -- 1. a killed run never looks finished ------------------------------------------------------------


@pytest.mark.parametrize(("node", "nth"), [("variance_gate", 1), ("advance", 1), ("update_library", 3)])
def test_kill_after_a_tasks_writes_resumes_to_the_same_library(
    node: str, nth: int, reference: list[tuple[str, str]], fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    killed = killed_at(node, nth, learn_args(fake_server, run_dir))
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    out = tfgrpo(learn_args(fake_server, run_dir))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "already complete" not in out.stdout
    assert "resuming" in out.stdout
    report = json.loads((run_dir / "report.json").read_text())
    assert [s["step"] for s in report["steps"]] == [0, 1, 2, 3]
    assert all(s["rollouts"] == 12 for s in report["steps"])
    assert items(run_dir) == reference


def test_eval_killed_after_prepare_runs_every_planned_run(tmp_path: Path) -> None:
    library = tmp_path / "library.json"
    item = {"id": "G1", "text": "Add digit by digit.", "created_step": 0, "updated_step": 0, "sources": []}
    library.write_text(json.dumps({"version": 1, "next_id": 2, "items": [item]}))
    with FakeOpenAIServer(eval_responder) as server:
        whole = tfgrpo(eval_args(server, tmp_path / "whole", library))
        assert whole.returncode == 0, whole.stderr
        killed = killed_at("prepare", 1, eval_args(server, tmp_path / "eval", library))
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        out = tfgrpo(eval_args(server, tmp_path / "eval", library))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "already complete" not in out.stdout
    expected = json.loads((tmp_path / "whole" / "report.json").read_text())["arms"]
    arms = json.loads((tmp_path / "eval" / "report.json").read_text())["arms"]
    assert {a: r["n_runs"] for a, r in arms.items()} == {"library": 8, "baseline": 8}
    assert {a: r["mean_at_k"] for a, r in arms.items()} == {a: r["mean_at_k"] for a, r in expected.items()}


# -- 2. a task's writes are one transaction ------------------------------------------------------------

KILL_MID_PUT_WRITES = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from langgraph.checkpoint.base import empty_checkpoint
    from tfgrpo.runs.rundir import open_checkpointer

    saver = open_checkpointer(Path(sys.argv[1]))
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    config = saver.put(config, empty_checkpoint(), {}, {})
    inserted = 0

    def trace(sql):
        global inserted
        if "INTO writes" in sql:
            inserted += 1
            if inserted == 6:  # in the middle of one task's 12 writes
                os.kill(os.getpid(), signal.SIGKILL)

    saver.conn.set_trace_callback(trace)
    saver.put_writes(config, [("__pregel_tasks", {"n": i}) for i in range(12)], "task-1")
    """
)


def test_a_kill_in_the_middle_of_put_writes_keeps_all_of_a_tasks_writes_or_none(tmp_path: Path) -> None:
    db = tmp_path / "checkpoints.sqlite"
    out = subprocess.run([sys.executable, "-c", KILL_MID_PUT_WRITES, str(db)], env=cli_env(),
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == -signal.SIGKILL, out.stderr
    kept = sqlite3.connect(db).execute("SELECT COUNT(*) FROM writes").fetchone()[0]
    assert kept in (0, 12), f"{kept} of a task's 12 writes survived the kill"


def test_store_is_wal_with_one_transaction_per_batch(tmp_path: Path) -> None:
    from langgraph.store.base import PutOp

    from tfgrpo.runs.rundir import open_store

    store = open_store(tmp_path / "store.sqlite")
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    store.batch([PutOp(("ns",), f"k{i}", {"v": i}, index=False) for i in range(20)])
    begins = [s for s in statements if s.strip().upper().startswith("BEGIN")]
    commits = [s for s in statements if s.strip().upper().startswith("COMMIT")]
    assert len(begins) == 1 and len(commits) == 1, statements
    assert len(store.search(("ns",), limit=50)) == 20


# -- 3. a response that arrived is never paid again -------------------------------------------------------


def test_responses_that_arrived_before_a_kill_are_not_paid_again(tmp_path: Path) -> None:
    """Search-agent rollouts make two calls (search, then answer). Freeze at the first second call: its
    first call has arrived, and its node has not finished. One call at a time, so nothing else is in
    flight at the kill: every completed request must come back from the run's store."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"title": f"T{i}", "text": f"{i} plus {i} is {2 * i}."}) + "\n"
                              for i in range(20)))  # fmt: skip
    with FakeOpenAIServer(grpo_responder) as server:
        args = learn_args(server, tmp_path / "run", "--domain", "search", "--corpus", str(corpus),
                          "--reward", "math", "--max-concurrency", "1")  # fmt: skip
        hold_after(server, 0, lambda body: any(m["role"] == "tool" for m in body["messages"]))
        proc = subprocess.Popen([PYTHON, "-m", "tfgrpo.cli", *args], env=cli_env(), cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        try:
            assert server.wait_for_held(1, timeout=60), "no second call was made"
            finished = {request_key(b) for b in server.completed}
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        server.hold(None)
        server.release()
        assert finished, "nothing had finished before the kill"
        server.reset_stats()
        out = tfgrpo(args)
        assert out.returncode == 0, out.stdout + out.stderr
        repeated = [b for b in server.requests if request_key(b) in finished]
    assert repeated == [], f"{len(repeated)} of {len(finished)} responses that had arrived were paid again"


# -- 4. one writer per run directory ------------------------------------------------------------------------


def test_a_second_process_on_the_same_run_dir_is_refused(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    fake_server.hold()
    first = subprocess.Popen([PYTHON, "-m", "tfgrpo.cli", *learn_args(fake_server, run_dir)], env=cli_env(),
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert fake_server.wait_for_held(1, timeout=60)
        second = tfgrpo(learn_args(fake_server, run_dir))
        eval_second = tfgrpo([
            "eval", "--dataset", "rg:basic_arithmetic:size=4:seed=5", "--model", "openai:fake",
            "--base-url", fake_server.base_url, "--eval-dir", str(run_dir),
        ])  # fmt: skip
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        fake_server.hold(None)
        fake_server.release()
    for out in (second, eval_second):
        assert out.returncode == 2, out.stdout + out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and f"process {first.pid}" in lines[0], out.stderr
    assert len([b for b in fake_server.requests]) <= 4  # the second process made no call


def test_a_lock_left_by_a_dead_process_is_taken_over(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from tfgrpo.runs.runlock import FileRunLock
        Path({str(run_dir)!r}).mkdir(parents=True)
        FileRunLock(Path({str(run_dir)!r})).acquire()
        print("locked", flush=True)
        time.sleep(600)
    """)], env=cli_env(), stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    assert (run_dir / ".lock").read_text().strip() == str(holder.pid)  # the dead holder's PID is still there
    out = tfgrpo(learn_args(fake_server, run_dir))
    assert out.returncode == 0, out.stdout + out.stderr
    assert (run_dir / "report.json").exists()


# -- 5. damaged state is a one-line refusal, never a new run over old files ----------------------------------


def finished_run(server: FakeOpenAIServer, run_dir: Path) -> None:
    out = tfgrpo(learn_args(server, run_dir, "--epochs", "1"))
    assert out.returncode == 0, out.stderr


def one_line_refusal(out: subprocess.CompletedProcess[str], *words: str) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
@pytest.mark.parametrize("name", ["checkpoints.sqlite", "store.sqlite"])
def test_damaged_database_is_a_one_line_error(
    name: str, damage: str, fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    finished_run(fake_server, run_dir)
    db = run_dir / name
    for extra in ("-wal", "-shm"):  # fold the WAL into the file first, as after a clean exit
        Path(str(db) + extra).unlink(missing_ok=True)
    data = db.read_bytes()
    db.write_bytes(b"this is not a database" * 100 if damage == "garbage" else data[: len(data) // 2])
    before = (run_dir / "report.json").read_text()
    out = tfgrpo(learn_args(fake_server, run_dir, "--epochs", "1"))
    line = one_line_refusal(out, name, "another --run-dir")
    assert "damaged" in line
    assert (run_dir / "report.json").read_text() == before


def test_run_dir_that_is_a_file_is_a_one_line_error(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    path = tmp_path / "run"
    path.write_text("hello")
    one_line_refusal(tfgrpo(learn_args(fake_server, path)), "is a file")
    library = tmp_path / "library.json"
    library.write_text(json.dumps({"version": 1, "next_id": 1, "items": []}))
    one_line_refusal(tfgrpo(eval_args(fake_server, path, library)), "is a file")


def test_empty_checkpoints_with_old_outputs_do_not_start_a_new_run_over_them(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    finished_run(fake_server, run_dir)
    for extra in ("", "-wal", "-shm"):
        Path(str(run_dir / "checkpoints.sqlite") + extra).unlink(missing_ok=True)
    (run_dir / "checkpoints.sqlite").write_bytes(b"")
    before = {p.name: p.read_bytes() for p in run_dir.glob("*.json")}
    fake_server.reset_stats()
    one_line_refusal(tfgrpo(learn_args(fake_server, run_dir, "--epochs", "1")), "another --run-dir")
    assert {p.name: p.read_bytes() for p in run_dir.glob("*.json")} == before
    assert (run_dir / "checkpoints.sqlite").read_bytes() == b"", "the refused database was written into"
    assert fake_server.requests == []


def test_pid_in_lock_file_is_the_holders(tmp_path: Path) -> None:
    from tfgrpo.runs.runlock import FileRunLock, RunLocked

    with FileRunLock(tmp_path) as lock:
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        other = FileRunLock(tmp_path)
        with pytest.raises(RunLocked) as refused:  # a second descriptor in the same process is refused too
            other.acquire()
        assert refused.value.pid == os.getpid()
        lock.release()
        other.acquire()
        other.release()


def test_deleting_the_lock_file_does_not_let_a_second_writer_in(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """The lock is on the run directory itself: removing RUN/.lock under a holder changes nothing."""
    from tfgrpo.runs.runlock import FileRunLock, RunLocked

    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from tfgrpo.runs.runlock import FileRunLock
        Path({str(run_dir)!r}).mkdir(parents=True)
        FileRunLock(Path({str(run_dir)!r})).acquire()
        print("locked", flush=True)
        time.sleep(600)
    """)], env=cli_env(), stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        (run_dir / ".lock").unlink()
        with pytest.raises(RunLocked):
            FileRunLock(run_dir).acquire()
        out = tfgrpo(learn_args(fake_server, run_dir))
        line = one_line_refusal(out, "in use by")
        assert "one tfgrpo process per run directory" in line
        assert fake_server.requests == []
    finally:
        holder.kill()
        holder.wait(timeout=10)
    out = tfgrpo(learn_args(fake_server, run_dir))  # the holder gone: the run starts
    assert out.returncode == 0, out.stdout + out.stderr


def _outputs(run_dir: Path) -> dict[str, bytes]:
    names = ("report.json", "report.md", "learning_curve.png", "library.json")
    return {name: (run_dir / name).read_bytes() for name in names if (run_dir / name).exists()}


def test_a_read_only_run_is_called_read_only_and_says_what_still_works(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Issue 30: `tfgrpo report` called a read-only run's store damaged and advised deleting a good run;
    `learn` printed a 26-line traceback (.lock)."""
    run_dir = tmp_path / "run"
    finished_run(fake_server, run_dir)
    before = _outputs(run_dir)
    as_user = permissions_apply()
    with read_only(run_dir):
        learn = one_line_refusal(tfgrpo(learn_args(fake_server, run_dir, "--epochs", "2"), prefix=as_user))
        report = one_line_refusal(tfgrpo(["report", str(run_dir)], prefix=as_user))
        for line in (learn, report):
            assert "read-only" in line and "damaged" not in line and "delete" not in line, line
            assert "--out" in line and "tfgrpo eval --library" in line
        elsewhere = tfgrpo(["report", str(run_dir), "--out", str(tmp_path / "copy")], prefix=as_user)
        assert elsewhere.returncode == 0, elsewhere.stderr
        shown = tfgrpo(["library", "show", str(run_dir)], prefix=as_user)
        assert shown.returncode == 0, shown.stderr
    assert json.loads((tmp_path / "copy" / "report.json").read_text())["steps"]
    assert _outputs(run_dir) == before


def test_an_emptied_store_of_a_finished_run_is_refused_not_rewritten_as_zero_steps(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    finished_run(fake_server, run_dir)
    (run_dir / "store.sqlite").write_bytes(b"")  # : > RUN/store.sqlite
    before = _outputs(run_dir)
    assert "report.md" in before and "learning_curve.png" in before
    fake_server.reset_stats()
    out = tfgrpo(learn_args(fake_server, run_dir, "--epochs", "1"))
    one_line_refusal(out, "store.sqlite", "another --run-dir")
    assert "already complete" not in out.stdout
    assert _outputs(run_dir) == before
    assert (run_dir / "store.sqlite").read_bytes() == b"", "the refused database was written into"
    assert fake_server.requests == []


def test_a_foreign_store_is_refused(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    mine, other = tmp_path / "mine", tmp_path / "other"
    finished_run(fake_server, mine)
    finished_run(fake_server, other)
    for extra in ("", "-wal", "-shm"):
        Path(str(mine / "store.sqlite") + extra).unlink(missing_ok=True)
    (mine / "store.sqlite").write_bytes((other / "store.sqlite").read_bytes())
    before = _outputs(mine)
    out = tfgrpo(learn_args(fake_server, mine, "--epochs", "1"))
    one_line_refusal(out, "store.sqlite", "another --run-dir")
    assert _outputs(mine) == before


def test_an_emptied_store_of_a_running_run_is_refused_without_traceback(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    killed = killed_at("variance_gate", 2, learn_args(fake_server, run_dir))
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    (run_dir / "store.sqlite").write_bytes(b"")
    fake_server.reset_stats()
    out = tfgrpo(learn_args(fake_server, run_dir))
    one_line_refusal(out, "store.sqlite", "another --run-dir")
    assert fake_server.requests == []


def test_a_finished_run_where_every_call_failed_keeps_exiting_1(tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        dead_url = server.base_url  # a port where nothing listens any more
    run_dir = tmp_path / "run"
    args = ["learn", "--dataset", "rg:basic_arithmetic:size=2:seed=1", "--model", "openai:fake",
            "--base-url", dead_url, "--run-dir", str(run_dir), "--epochs", "1", "--batch-size", "2",
            "--group-size", "2", "--no-progress", "--max-retries", "0"]  # fmt: skip
    first = tfgrpo(args)
    assert first.returncode == 1, first.stdout + first.stderr
    again = tfgrpo(args)
    assert again.returncode == 1, again.stdout + again.stderr
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "every LLM call of this run failed" in lines[0], again.stderr
