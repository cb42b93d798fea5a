"""Bad settings are refused before any call, a run where nothing worked does not exit 0, provider errors
read as sentences, and a server's Retry-After is honoured."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tfgrpo.cli import main
from tfgrpo.testing.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.integration


def learn(base_url: str, run_dir: Path, *extra: str) -> list[str]:
    return [
        "learn", "--dataset", "rg:basic_arithmetic:size=2:seed=1", "--model", "openai:fake",
        "--base-url", base_url, "--run-dir", str(run_dir), "--epochs", "1", "--batch-size", "2",
        "--group-size", "2", "--no-progress", *extra,
    ]  # fmt: skip


BAD = [
    (["--temperature", "-1"], "--temperature"),
    (["--temperature", "nan"], "--temperature"),
    (["--request-timeout", "0"], "--request-timeout"),
    (["--request-timeout", "-5"], "--request-timeout"),
    (["--experiences-per-group", "0"], "--experiences-per-group"),
    (["--max-library-items", "0"], "--max-library-items"),
    (["--max-library-tokens", "-1"], "--max-library-tokens"),
    (["--max-model-calls", "0"], "--max-model-calls"),
    (["--max-tool-calls", "-1"], "--max-tool-calls"),
    (["--validation-tolerance", "-0.1"], "--validation-tolerance"),
    (["--max-retries", "-1"], "--max-retries"),
    (["--retry-backoff", "-1"], "--retry-backoff"),
    (["--retry-backoff", "1e12"], "--retry-backoff"),
    (["--request-timeout", "1e12"], "--request-timeout"),
    (["--max-retries", "1000000"], "--max-retries"),
    # refused before the learning is paid for, under its own name, never silently replaced by 4
    (["--heldout", "rg:basic_arithmetic:size=2:seed=9", "--heldout-k", "0"], "--heldout-k"),
    (["--heldout", "rg:basic_arithmetic:size=2:seed=9", "--heldout-k", "-1"], "--heldout-k"),
    (["--heldout-k", "0"], "--heldout-k"),
    (["--learner-temperature", "3"], "--learner-temperature"),
    (["--domain", "search"], "--corpus"),
    (["--domain", "search", "--corpus", "missing.jsonl"], "missing.jsonl"),
    # issue 30: a NaN price turned the budget off, a negative one paid back (cost_usd -0.04)
    (["--prices", '{"fake": {"input": "nan", "output": 1}}', "--budget-usd", "0.001"], "input price"),
    (["--prices", '{"fake": {"input": 1, "output": "inf"}}'], "output price"),
    (["--prices", '{"fake": {"input": -1, "output": 1}}', "--budget-usd", "0.001"], "input price"),
    # a mistyped database became a SQLite file in the current directory, and the run exited 0
    (["--db", "mysql://user@host/runs"], "postgresql://"),
    (["--db", "postgres:/host/db"], "postgresql://"),
]


@pytest.mark.parametrize(("extra", "named"), BAD, ids=[" ".join(e) for e, _ in BAD])
def test_bad_setting_is_refused_before_any_call(
    extra: list[str],
    named: str,
    fake_server: FakeOpenAIServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TAVILY_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    code = main(learn(fake_server.base_url, tmp_path / "run", *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and named in err[0], err
    assert fake_server.requests == []


def test_a_model_without_a_price_under_a_dollar_budget_is_refused_before_the_header(
    fake_server: FakeOpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(learn(fake_server.base_url, tmp_path / "run", "--budget-usd", "1"))
    out = capsys.readouterr()
    assert code == 2 and "--prices" in out.err, out.err
    assert "learning:" not in out.out and not (tmp_path / "run" / "run.json").exists()
    assert fake_server.requests == []


def test_a_report_is_written_whatever_the_prices_a_run_recorded(
    fake_server: FakeOpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert main(learn(fake_server.base_url, run_dir)) == 0
    settings = json.loads((run_dir / "run.json").read_text())
    settings["context"]["prices"] = '{"fake": {"input": "nan", "output": 1}}'  # an older version's run
    (run_dir / "run.json").write_text(json.dumps(settings))
    (run_dir / "report.json").unlink()
    assert main(["report", str(run_dir)]) == 0, capsys.readouterr().err
    assert json.loads((run_dir / "report.json").read_text())["totals"]["calls"] > 0


def test_a_database_url_env_var_of_another_scheme_is_refused(
    fake_server: FakeOpenAIServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TFGRPO_DATABASE_URL", "mysql://user:secret@host/runs")
    code = main(learn(fake_server.base_url, tmp_path / "run"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "TFGRPO_DATABASE_URL" in err[0] and "postgresql://" in err[0], err
    assert "secret" not in err[0]
    assert list(tmp_path.iterdir()) == [], "a file was created for the mistyped database"


def test_corpus_that_does_not_parse_is_refused(
    fake_server: FakeOpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"title": "A", "text": "fine"}\n{"title": broken\n')
    code = main(learn(fake_server.base_url, tmp_path / "run", "--domain", "search", "--corpus", str(corpus)))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"{corpus}:2" in err[0], err
    assert fake_server.requests == []


@pytest.mark.parametrize("url", ["localhost:8080", "ftp://example.org/v1", "http://", "http://host:99999/v1"])
def test_base_url_must_be_an_http_url(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["infer", "--question", "1+1?", "--model", "openai:fake", "--base-url", url])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--base-url" in err[0] and "http" in err[0], err


def test_a_run_where_every_call_failed_exits_nonzero_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOpenAIServer() as server:
        dead_url = server.base_url  # a port where nothing listens any more
    run_dir = tmp_path / "run"
    code = main(learn(dead_url, run_dir, "--max-retries", "0"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, err
    assert len(err) == 1 and "every LLM call of this run failed (4 of 4)" in err[0], err
    assert "cannot connect to" in err[0] and "--base-url" in err[0]  # a sentence, not an exception dump
    assert (run_dir / "report.json").exists()  # saved what it has


def test_a_reward_that_raises_on_every_row_exits_nonzero(
    fake_server: FakeOpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reward = tmp_path / "bad_reward.py"
    reward.write_text("def score(response, answer):\n    raise RuntimeError('boom')\n")
    code = main(learn(fake_server.base_url, tmp_path / "run", "--reward", f"{reward}:score"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "no rollout could be scored" in err[0], err


def test_an_evaluation_where_every_run_failed_exits_nonzero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOpenAIServer() as server:
        dead_url = server.base_url
    code = main([
        "eval", "--dataset", "rg:basic_arithmetic:size=2:seed=5", "--k", "1", "--model", "openai:fake",
        "--base-url", dead_url, "--eval-dir", str(tmp_path / "eval"), "--no-progress", "--max-retries", "0",
    ])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "every run of this evaluation failed (2 of 2" in err[0], err
    assert (tmp_path / "eval" / "results.json").exists()


def test_retry_after_is_honoured(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    """The server asks for 1.5 s; the configured backoff (0.01 s) alone would retry at once."""
    arrivals: list[float] = []
    fake_server.fail_next(1, status=429, retry_after=1.5)
    original_enter = fake_server._enter

    def enter(body: dict) -> None:
        arrivals.append(time.monotonic())
        original_enter(body)

    fake_server._enter = enter  # type: ignore[method-assign]
    code = main(
        learn(fake_server.base_url, tmp_path / "run", "--max-concurrency", "1", "--retry-backoff", "0.01")
    )
    assert code == 0
    assert len(arrivals) >= 2 and arrivals[1] - arrivals[0] >= 1.4, arrivals[:3]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["totals"]["retries"] == 1


def test_retry_after_as_an_http_date_and_in_milliseconds() -> None:
    import httpx
    import openai

    from tfgrpo.models.ledger import retry_after

    def error(status: int, headers: dict[str, str]) -> openai.APIStatusError:
        request = httpx.Request("POST", "http://x/v1/chat/completions")
        response = httpx.Response(status, headers=headers, request=request)
        return openai.APIStatusError("busy", response=response, body=None)

    assert retry_after(error(503, {"retry-after": "2"})) == 2.0
    assert retry_after(error(429, {"retry-after-ms": "250"})) == 0.25
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= (retry_after(error(429, {"retry-after": date})) or 0) <= 31
    assert retry_after(error(500, {"retry-after": "2"})) is None  # only 429 and 503 carry it


def test_provider_errors_read_as_sentences(
    fake_server: FakeOpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_server.fail_next(1, status=404)
    code = main(["infer", "--question", "1+1?", "--model", "openai:fake", "--base-url", fake_server.base_url])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert "404" in err[0] and "check --model and --base-url" in err[0]
    dead_url = "http://127.0.0.1:9/v1"

    code = main(learn(dead_url, tmp_path / "run", "--model", "nosuchprovider:model"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown provider: use openai:NAME" in err[0], err

    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(learn(dead_url, blocker / "run"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot create it" in err[0], err
