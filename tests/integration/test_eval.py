"""``tfgrpo eval`` and ``tfgrpo report`` as a user runs them: real subprocesses, real HTTP to the fake
server, reports and plots on disk, resume after SIGKILL without repeating a finished run."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PYTHON, cli_env, hold_after, interrupt_once_held, sigkill_once_held
from tfgrpo.testing.fake_openai import FakeOpenAIServer, request_key
from tfgrpo.testing.responders import eval_responder, solve_arithmetic

pytestmark = pytest.mark.integration

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def eval_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(eval_responder) as server:
        yield server


def tfgrpo(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "tfgrpo.cli", *args], env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


def write_library(path: Path) -> Path:
    items = [{"id": "G1", "text": "Add digit by digit.", "created_step": 0, "updated_step": 0, "sources": []}]
    path.write_text(json.dumps({"version": 1, "next_id": 2, "items": items}))
    return path


def eval_args(server: FakeOpenAIServer, eval_dir: Path, library: Path, *extra: str) -> list[str]:
    return [
        "eval", "--dataset", "rg:basic_arithmetic:size=8:seed=5", "--library", str(library), "--baseline",
        "--k", "4", "--model", "openai:fake", "--base-url", server.base_url, "--eval-dir", str(eval_dir),
        "--no-progress", *extra,
    ]  # fmt: skip


def test_eval_writes_reports_and_plots_and_report_rebuilds_them(
    eval_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    library = write_library(tmp_path / "library.json")
    eval_dir = tmp_path / "eval"
    out = tfgrpo(*eval_args(eval_server, eval_dir, library))
    assert out.returncode == 0, out.stderr
    assert len(eval_server.completed) == 8 * 4 * 2  # one policy call per run, nothing else
    report = json.loads((eval_dir / "report.json").read_text())
    lib, base = report["arms"]["library"], report["arms"]["baseline"]
    assert lib["n_runs"] == base["n_runs"] == 32 and lib["k"] == 4
    assert lib["mean_at_k"] > base["mean_at_k"]  # the fake server's library really helps
    assert 0 <= lib["ci_low"] <= lib["mean_at_k"] <= lib["ci_high"] <= 1
    assert lib["input_tokens"] > 0 and lib["tokens_per_question"] > 0
    comparison = report["comparison"]
    assert comparison["n_questions"] == 8 and 0 < comparison["p_value"] <= 1
    assert comparison["diff"] == pytest.approx(lib["mean_at_k"] - base["mean_at_k"])
    assert len(report["questions"]) == 8
    md = (eval_dir / "report.md").read_text()
    assert "Mean@4" in md and "Per question" in md
    assert "Library minus baseline" in out.stdout
    png = (eval_dir / "comparison.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 5000
    assert "OPENAI_API_KEY" not in (eval_dir / "eval.json").read_text()

    # finished: the same command pays nothing and reprints the result
    eval_server.reset_stats()
    again = tfgrpo(*eval_args(eval_server, eval_dir, library))
    assert again.returncode == 0 and "already complete" in again.stdout
    assert eval_server.requests == []

    # reports rebuild from the eval directory alone
    (eval_dir / "report.md").unlink()
    (eval_dir / "comparison.png").unlink()
    rebuilt = tfgrpo("report", str(eval_dir))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (eval_dir / "report.md").read_text() == md
    assert (eval_dir / "comparison.png").read_bytes().startswith(PNG)

    # other settings in the same directory are refused before any call
    changed = tfgrpo(*eval_args(eval_server, eval_dir, library)[:-1], "--k", "8", "--no-progress")
    assert changed.returncode == 2
    assert changed.stderr.strip().splitlines() == [
        f"tfgrpo: error: {eval_dir}: this evaluation was started with other settings (k differ); "
        "use another --eval-dir or the same settings"
    ]
    assert eval_server.requests == []


def test_report_rebuilds_a_learning_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "demo"
    out = tfgrpo("demo", "--run-dir", str(run_dir), "--dataset", "rg:basic_arithmetic:size=4:seed=2",
                 "--epochs", "2", "--batch-size", "2", "--no-progress")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (run_dir / "learning_curve.png").read_bytes().startswith(PNG)  # written by learning itself
    (run_dir / "learning_curve.png").unlink()
    before = json.loads((run_dir / "report.json").read_text())
    rebuilt = tfgrpo("report", str(run_dir))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (run_dir / "learning_curve.png").read_bytes().startswith(PNG)
    assert json.loads((run_dir / "report.json").read_text()) == before


def test_report_of_something_else_is_one_line_error(tmp_path: Path) -> None:
    out = tfgrpo("report", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"tfgrpo: error: {tmp_path}: not a tfgrpo run directory (no library.json)"
    ]


def test_sigkill_mid_eval_repeats_no_finished_run(eval_server: FakeOpenAIServer, tmp_path: Path) -> None:
    library = write_library(tmp_path / "library.json")
    eval_dir = tmp_path / "eval"
    hold_after(eval_server, 20)
    cmd = [PYTHON, "-m", "tfgrpo.cli", *eval_args(eval_server, eval_dir, library, "--max-concurrency", "2")]
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finished = sigkill_once_held(proc, eval_server)
    eval_server.hold(None)
    eval_server.release()
    assert len(finished) >= 20

    eval_server.reset_stats()
    out = tfgrpo(*eval_args(eval_server, eval_dir, library))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resuming" in out.stdout
    repeated = [b for b in eval_server.requests if request_key(b) in finished]
    assert repeated == [], f"{len(repeated)} finished runs were paid for again"
    report = json.loads((eval_dir / "report.json").read_text())
    assert report["arms"]["library"]["n_runs"] == report["arms"]["baseline"]["n_runs"] == 32


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        ("majority", "the majority reward needs a group of rollouts: evaluate with a ground-truth reward"),
        ("exact_mtach", "unknown reward 'exact_mtach'; valid: math, exact_match, em, f1, rg, judge, "
         "majority, or 'module:function' / 'path/to/file.py:function'"),
    ],
)  # fmt: skip
def test_bad_reward_is_refused_before_any_run(
    reward: str, message: str, eval_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    library = write_library(tmp_path / "library.json")
    out = tfgrpo(*eval_args(eval_server, tmp_path / "eval", library, "--reward", reward))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"tfgrpo: error: {message}"]
    assert eval_server.requests == []


def test_token_budget_stops_an_eval_that_then_resumes_without_repeats(
    eval_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    library = write_library(tmp_path / "library.json")
    whole = tfgrpo(*eval_args(eval_server, tmp_path / "whole", library))
    assert whole.returncode == 0, whole.stderr
    half = eval_server.usage_totals["total_tokens"] // 2  # a budget buys about what it says
    eval_server.reset_stats()
    eval_dir = tmp_path / "eval"
    stopped = tfgrpo(*eval_args(eval_server, eval_dir, library, "--budget-tokens", str(half)))
    assert stopped.returncode == 3, stopped.stdout + stopped.stderr
    assert "token budget reached" in stopped.stderr and "Traceback" not in stopped.stderr
    paid = len(eval_server.completed)
    assert 0 < paid < 64
    finished = {request_key(b) for b in eval_server.completed}

    eval_server.reset_stats()
    resumed = tfgrpo(*eval_args(eval_server, eval_dir, library, "--budget-tokens", "1000000"))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not [b for b in eval_server.requests if request_key(b) in finished]
    assert len(eval_server.completed) == 64 - paid
    report = json.loads((eval_dir / "report.json").read_text())
    assert report["arms"]["library"]["n_runs"] + report["arms"]["baseline"]["n_runs"] == 64


def test_eval_books_what_the_server_was_paid_when_both_arms_send_the_same_requests(
    eval_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Issue 30: an empty library with --baseline (how the study's controls ended) sends each request from
    both arms; single flight pays it once, and eval booked it twice. A budget stop printed two "spent"."""
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"version": 1, "next_id": 1, "items": []}))
    eval_dir = tmp_path / "eval"
    out = tfgrpo(*eval_args(eval_server, eval_dir, empty))
    assert out.returncode == 0, out.stderr
    paid = eval_server.usage_totals
    arms = json.loads((eval_dir / "report.json").read_text())["arms"].values()
    assert sum(a["calls"] for a in arms) == paid["calls"] == 32
    assert sum(a["input_tokens"] + a["output_tokens"] for a in arms) == paid["total_tokens"]
    assert sum(a["cached_calls"] for a in arms) == 32

    eval_server.reset_stats()
    stopped = tfgrpo(
        *eval_args(eval_server, tmp_path / "half", empty, "--budget-tokens", str(paid["total_tokens"] // 2))
    )
    assert stopped.returncode == 3, stopped.stderr
    assert stopped.stderr.count("spent") == 1, stopped.stderr


def test_ctrl_c_stops_an_eval_cleanly(eval_server: FakeOpenAIServer, tmp_path: Path) -> None:
    library = write_library(tmp_path / "library.json")
    eval_dir = tmp_path / "eval"
    hold_after(eval_server, 10)
    cmd = [PYTHON, "-m", "tfgrpo.cli", *eval_args(eval_server, eval_dir, library)]
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    code, err = interrupt_once_held(proc, eval_server)
    assert code == 130, err
    assert "Resume with the same command" in err and "Traceback" not in err
    assert len(eval_server.completed) < 64  # no new run started after Ctrl-C
    resumed = tfgrpo(*eval_args(eval_server, eval_dir, library))
    assert resumed.returncode == 0 and "resuming" in resumed.stdout


def test_retry_failed_reruns_only_the_failed_runs(eval_server: FakeOpenAIServer, tmp_path: Path) -> None:
    library = write_library(tmp_path / "library.json")
    eval_dir = tmp_path / "eval"
    eval_server.fail_next(5, status=400)  # not transient: 5 runs fail for good
    first = tfgrpo(*eval_args(eval_server, eval_dir, library, "--max-concurrency", "1"))
    assert first.returncode == 0, first.stderr
    report = json.loads((eval_dir / "report.json").read_text())
    assert sum(a["runs_failed"] for a in report["arms"].values()) == 5
    done = {request_key(b) for b in eval_server.completed[5:]}  # one at a time: the first 5 failed

    again = tfgrpo(*eval_args(eval_server, eval_dir, library))
    assert "5 failed run(s): --retry-failed runs them again" in again.stdout

    for round_ in (1, 2):  # a second retry with nothing failed changes nothing
        eval_server.reset_stats()
        retried = tfgrpo(*eval_args(eval_server, eval_dir, library, "--retry-failed"))
        assert retried.returncode == 0, retried.stdout + retried.stderr
        assert len(eval_server.requests) == (5 if round_ == 1 else 0)
        assert not [b for b in eval_server.requests if request_key(b) in done]
        report = json.loads((eval_dir / "report.json").read_text())
        assert [a["runs_failed"] for a in report["arms"].values()] == [0, 0]
        assert [a["n_runs"] for a in report["arms"].values()] == [32, 32]


def test_failed_runs_score_zero_and_exclude_failed_is_recorded(
    eval_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    library = write_library(tmp_path / "library.json")
    eval_dir = tmp_path / "eval"
    eval_server.fail_next(5, status=400)  # not transient: 5 runs of the library arm fail for good
    first = tfgrpo(*eval_args(eval_server, eval_dir, library, "--max-concurrency", "1"))
    assert first.returncode == 0, first.stderr
    report = json.loads((eval_dir / "report.json").read_text())
    lib, base = report["arms"]["library"], report["arms"]["baseline"]
    assert (lib["runs_failed"], base["runs_failed"]) == (5, 0)
    assert lib["n_runs"] == base["n_runs"] == 32  # every planned run counts, the failed ones as 0
    assert json.loads((eval_dir / "eval.json").read_text())["failed_runs"] == "scored 0"
    assert "failed runs 5 (scored 0)" in first.stdout and "failed runs 0 (scored 0)" in first.stdout
    assert "failed runs scored 0" in (eval_dir / "report.md").read_text()

    # the same finished evaluation scored the other way: no request, the report and eval.json say so
    eval_server.reset_stats()
    excluded = tfgrpo(*eval_args(eval_server, eval_dir, library, "--exclude-failed"))
    assert excluded.returncode == 0, excluded.stderr
    assert eval_server.requests == []
    report = json.loads((eval_dir / "report.json").read_text())
    assert [a["n_runs"] for a in report["arms"].values()] == [27, 32]
    # paired on the same run indices: the 5 failed library runs leave their baseline twins out too
    runs = {
        (r["arm"], r["query_id"], r["i"]): r["reward"]
        for r in json.loads((eval_dir / "results.json").read_text())["results"]
    }
    diffs = []
    for q in report["questions"]:
        kept = [i for i in range(4) if runs[("library", q["id"], i)] is not None]
        if kept:
            lib_mean = sum(runs[("library", q["id"], i)] for i in kept) / len(kept)
            diffs.append(lib_mean - sum(runs[("baseline", q["id"], i)] for i in kept) / len(kept))
    assert report["comparison"]["diff"] == pytest.approx(sum(diffs) / len(diffs))
    assert json.loads((eval_dir / "eval.json").read_text())["failed_runs"] == "excluded"
    assert "failed runs excluded" in (eval_dir / "report.md").read_text()
    assert "failed runs 5 (excluded)" in excluded.stdout
    (eval_dir / "report.md").unlink()
    assert tfgrpo("report", str(eval_dir)).returncode == 0
    assert "failed runs excluded" in (eval_dir / "report.md").read_text()


def attribution_responder(body: dict) -> dict:
    """Right with probability (2 + [G1 shown] - [G2 shown]) / 4 by seed: G1 helps, G2 hurts, G3 is inert."""
    system = body["messages"][0]["content"]
    user = body["messages"][-1]["content"]
    shown = 2 + ("[G1]" in system) - ("[G2]" in system)
    value = solve_arithmetic(user)
    right = int(body.get("seed") or 0) % 4 < shown
    return {"content": f"Answer: {value if right else str(value) + '7'}"}


def test_attribute_finds_the_experience_that_helps_and_the_one_that_hurts(tmp_path: Path) -> None:
    texts = ["Add digit by digit.", "Always add one to the result.", "Write neatly."]
    items = [
        {"id": f"G{n}", "text": t, "created_step": 0, "updated_step": 0, "sources": []}
        for n, t in enumerate(texts, start=1)
    ]
    library = tmp_path / "library.json"
    library.write_text(json.dumps({"version": 3, "next_id": 4, "items": items}))
    out_dir = tmp_path / "attr"
    with FakeOpenAIServer(attribution_responder) as server:
        args = ["attribute", "--dataset", "rg:basic_arithmetic:size=10:seed=5", "--library", str(library),
                "--k", "8", "--model", "openai:fake", "--base-url", server.base_url,
                "--eval-dir", str(out_dir), "--no-progress"]  # fmt: skip
        out = tfgrpo(*args)
        assert out.returncode == 0, out.stdout + out.stderr
        assert len(server.requests) == 10 * 8 * 4  # E, and E without each of its 3 experiences
    report = json.loads((out_dir / "report.json").read_text())
    verdicts = {r["id"]: r["verdict"] for r in report["items"]}
    assert verdicts == {"G1": "helps", "G2": "hurts", "G3": "unclear"}
    by_id = {r["id"]: r for r in report["items"]}
    assert by_id["G3"]["contribution"] == 0.0  # an inert experience changes no paired run
    assert by_id["G1"]["contribution"] > 0 > by_id["G2"]["contribution"]
    pruned = json.loads((out_dir / "library.pruned.json").read_text())
    assert [i["id"] for i in pruned["items"]] == ["G1", "G3"] and pruned["next_id"] == 4
    assert (out_dir / "attribution.png").read_bytes().startswith(PNG)
    assert "| G2 |" in (out_dir / "report.md").read_text()
    (out_dir / "report.md").unlink()
    assert tfgrpo("report", str(out_dir)).returncode == 0 and (out_dir / "report.md").exists()
