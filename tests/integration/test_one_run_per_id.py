"""A run id is the run, on every backend: one process at a time holds it (SQLite too), two directories
never silently share it, each ``--run-id`` gets a directory of its own, and ``run.json`` names the
database and run id so that a resume naming another database says exactly that. Real ``tfgrpo``
processes against the fake server, on a shared SQLite file and (marked postgres) PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, cli_env, hold_after
from tfgrpo.runs.rundir import database_label
from tfgrpo.testing.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "shared.sqlite")


def learn_cmd(server: FakeOpenAIServer, db: str, *where: str) -> list[str]:
    return [
        PYTHON, "-m", "tfgrpo.cli", "learn", "--dataset", "rg:basic_arithmetic:size=2:seed=2",
        "--model", "openai:fake", "--base-url", server.base_url, "--db", db, *where,
        "--epochs", "1", "--batch-size", "2", "--group-size", "3", "--no-progress",
    ]  # fmt: skip


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=cli_env(), cwd=cwd, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)  # fmt: skip


def test_two_run_ids_from_one_folder_each_get_a_directory(
    fake_server: FakeOpenAIServer, tmp_path: Path, shared_db: str
) -> None:
    """README's "Scaling out": a second run id from the same folder, no --run-dir, is a run of its own."""
    for run_id in ("first", "second"):
        out = run(learn_cmd(fake_server, shared_db, "--run-id", run_id), tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        settings = json.loads((tmp_path / "runs" / run_id / "run.json").read_text())
        assert settings["run_id"] == run_id and settings["database"] == database_label(shared_db)
    assert not (tmp_path / "runs" / "learn").exists()


def test_two_directories_never_share_a_run_id_derived_from_their_names(
    fake_server: FakeOpenAIServer, tmp_path: Path, shared_db: str
) -> None:
    """``A/run`` and ``B/run`` on one --db both default to run id ``run``: the second is refused, naming
    both directories, before any call (it would otherwise print "already complete" with A's outputs)."""
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    first = run(learn_cmd(fake_server, shared_db, "--run-dir", "run"), tmp_path / "A")
    assert first.returncode == 0, first.stdout + first.stderr
    paid = len(fake_server.completed)
    clash = run(learn_cmd(fake_server, shared_db, "--run-dir", "run"), tmp_path / "B")
    assert clash.returncode == 2, clash.stdout + clash.stderr
    assert str(tmp_path / "A" / "run") in clash.stderr and str(tmp_path / "B" / "run") in clash.stderr
    assert "--run-id" in clash.stderr and "Traceback" not in clash.stderr
    assert len(fake_server.completed) == paid and not (tmp_path / "B" / "run" / "library.json").exists()
    # the same directory resumes its run (complete), and an explicit --run-id is a run of its own
    again = run(learn_cmd(fake_server, shared_db, "--run-dir", "run"), tmp_path / "A")
    assert again.returncode == 0 and "already complete" in again.stdout, again.stdout + again.stderr
    own = run(learn_cmd(fake_server, shared_db, "--run-dir", "run", "--run-id", "b-run"), tmp_path / "B")
    assert own.returncode == 0, own.stdout + own.stderr
    assert len(fake_server.completed) == 2 * paid


def test_two_directories_never_run_one_run_at_once(
    fake_server: FakeOpenAIServer, tmp_path: Path, shared_db: str
) -> None:
    """While ``A`` runs run id ``shared``, ``B`` on the same run id is refused at once (SQLite took no
    lock per run id: both paid for every call and ended with different libraries for one run)."""
    hold_after(fake_server, 2)
    cmd = learn_cmd(fake_server, shared_db, "--run-dir", str(tmp_path / "A"), "--run-id", "shared")
    first = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while fake_server.held_count() < 1:
            assert time.time() < deadline and first.poll() is None, "A never reached the model"
            time.sleep(0.05)
        clash = run(learn_cmd(fake_server, shared_db, "--run-dir", str(tmp_path / "B"), "--run-id", "shared"),
                    tmp_path)  # fmt: skip
        assert clash.returncode == 2, clash.stdout + clash.stderr
        assert "being run by" in clash.stderr and "'shared'" in clash.stderr
        assert "Traceback" not in clash.stderr
    finally:
        fake_server.hold(None)
        fake_server.release()
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err


def test_a_resume_that_names_another_database_says_so(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    db = str(tmp_path / "shared.sqlite")
    run_dir = str(tmp_path / "r")
    first = run(learn_cmd(fake_server, db, "--run-dir", run_dir, "--run-id", "r1"), tmp_path)
    assert first.returncode == 0, first.stderr
    without = learn_cmd(fake_server, db, "--run-dir", run_dir)
    without.remove("--db")
    without.remove(db)
    out = run(without, tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"--db {db}" in out.stderr and "names no --db" in out.stderr
    assert "checkpoints.sqlite" not in out.stderr  # not blamed: the run never had one
    other_db = str(tmp_path / "other.sqlite")
    other = run(learn_cmd(fake_server, other_db, "--run-dir", run_dir, "--run-id", "r1"), tmp_path)
    assert other.returncode == 2 and f"--db {tmp_path / 'other.sqlite'}" in other.stderr, other.stderr
