"""``tfgrpo runs list`` / ``tfgrpo runs rm RUN_ID``: the runs of a shared database (SQLite here; the same
code reads PostgreSQL, see the postgres-marked test), real subprocesses and real HTTP to the fake server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, cli_env
from tfgrpo.testing.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.integration
PRICES = '{"openai:fake": {"input": 1.0, "output": 2.0}}'


def tfgrpo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "tfgrpo.cli", *args], env=cli_env(), capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def learn(server: FakeOpenAIServer, tmp_path: Path, db: str, run_id: str, size: int) -> None:
    out = tfgrpo(
        "learn", "--dataset", f"rg:basic_arithmetic:size={size}:seed=2", "--model", "openai:fake",
        "--base-url", server.base_url, "--run-dir", str(tmp_path / run_id), "--run-id", run_id, "--db", db,
        "--epochs", "1", "--batch-size", "2", "--group-size", "3", "--no-progress", "--prices", PRICES,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def runs_of(db: str) -> dict[str, dict[str, object]]:
    out = tfgrpo("runs", "list", "--db", db, "--json")
    assert out.returncode == 0, out.stderr
    return {r["run_id"]: r for r in json.loads(out.stdout)}


def check_list_and_rm(server: FakeOpenAIServer, tmp_path: Path, db: str) -> None:
    learn(server, tmp_path, db, "small", 2)
    learn(server, tmp_path, db, "large", 6)
    runs = runs_of(db)
    assert sorted(runs) == ["large", "small"]
    for run_id, steps in (("small", 1), ("large", 3)):
        report = json.loads((tmp_path / run_id / "report.json").read_text())
        row = runs[run_id]
        assert row["kind"] == "learn" and row["steps"] == steps == len(report["steps"])
        assert row["library_size"] == report["steps"][-1]["library_size"]
        assert row["cost_usd"] == pytest.approx(report["totals"]["cost_usd"], abs=1e-6)
        assert row["cost_usd"] > 0 and row["updated"]
    table = tfgrpo("runs", "list", "--db", db)
    assert table.returncode == 0 and "large" in table.stdout and "small" in table.stdout

    refused = tfgrpo("runs", "rm", "small", "--db", db)  # no terminal to ask, no --yes: nothing deleted
    assert refused.returncode == 2 and "pass --yes" in refused.stderr
    unknown = tfgrpo("runs", "rm", "smal", "--db", db, "--yes")
    assert unknown.returncode == 2 and "no run 'smal'" in unknown.stderr and "large, small" in unknown.stderr
    gone = tfgrpo("runs", "rm", "small", "--db", db, "--yes")
    assert gone.returncode == 0, gone.stderr
    assert "deleted run 'small'" in gone.stdout
    assert sorted(runs_of(db)) == ["large"]
    # the other run is whole: E still shows, and its run resumes as complete
    shown = tfgrpo("library", "show", "large", "--db", db, "--json")
    assert (
        shown.returncode == 0
        and json.loads(shown.stdout)["items"]
        == json.loads((tmp_path / "large" / "library.json").read_text())["items"]
    )


def test_runs_list_and_rm_in_a_shared_sqlite_file(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    check_list_and_rm(fake_server, tmp_path, str(tmp_path / "shared.sqlite"))


@pytest.mark.postgres
def test_runs_list_and_rm_in_postgresql(
    fake_server: FakeOpenAIServer, tmp_path: Path, postgres_url: str
) -> None:
    check_list_and_rm(fake_server, tmp_path, postgres_url)


def test_runs_needs_a_database(tmp_path: Path) -> None:
    out = tfgrpo("runs", "list")
    assert out.returncode == 2 and "needs --db" in out.stderr
    missing = tfgrpo("runs", "list", "--db", str(tmp_path / "nope.sqlite"))
    assert missing.returncode == 2 and "no such database file" in missing.stderr
    assert not (tmp_path / "nope.sqlite").exists()  # listing creates nothing


def check_rm_then_the_same_command_pays_again(server: FakeOpenAIServer, tmp_path: Path, db: str) -> None:
    """``runs rm`` deletes every namespace the run wrote (the result memo too): the same command afterwards
    is a new run that pays the server again, instead of replaying the "deleted" run's answers."""
    learn(server, tmp_path, db, "again", 2)
    first = len(server.completed)
    assert first > 0
    gone = tfgrpo("runs", "rm", "again", "--db", db, "--yes")
    assert gone.returncode == 0, gone.stderr
    assert "cached response" in gone.stdout  # it says what it deleted, the memo included
    assert "again" not in runs_of(db)
    learn(server, tmp_path, db, "again", 2)
    assert len(server.completed) - first == first  # paid in full again: nothing replayed


def test_rm_deletes_the_memo_in_a_shared_sqlite_file(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    check_rm_then_the_same_command_pays_again(fake_server, tmp_path, str(tmp_path / "shared.sqlite"))


@pytest.mark.postgres
def test_rm_deletes_the_memo_in_postgresql(
    fake_server: FakeOpenAIServer, tmp_path: Path, postgres_url: str
) -> None:
    check_rm_then_the_same_command_pays_again(fake_server, tmp_path, postgres_url)


def test_runs_list_shows_an_evaluation_once_with_its_tokens_and_pipes_cleanly(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    db = str(tmp_path / "shared.sqlite")
    learn(fake_server, tmp_path, db, "lr", 2)
    evaluated = tfgrpo(
        "eval", "--library", "lr", "--dataset", "rg:basic_arithmetic:size=2:seed=9", "--model", "openai:fake",
        "--base-url", fake_server.base_url, "--db", db, "--run-id", "lr-test", "--eval-dir",
        str(tmp_path / "lr-test"), "--k", "1", "--no-progress", "--prices", PRICES,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    runs = runs_of(db)
    assert sorted(runs) == ["lr", "lr-test"]  # no second row under the evaluation's internal id
    row = runs["lr-test"]
    assert row["kind"] == "eval" and row["status"] == "done" and row["updated"]
    assert row["calls"] == 2 and row["tokens"] > 0 and row["cached_tokens"] == 0
    assert runs["lr"]["status"] == "done" and runs["lr"]["calls"] > 0
    for reader in ("head -1", "true"):  # ``true`` reads nothing: the first write hits a closed pipe
        piped = subprocess.run(
            f"{PYTHON} -m tfgrpo.cli runs list --db {db} | {reader}", shell=True, env=cli_env(),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert piped.stderr == "", piped.stderr
        assert piped.stdout.startswith("run ") if reader == "head -1" else piped.stdout == ""
