"""Faults, budget and the concurrency cap, measured at a real HTTP server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tfgrpo.context import Context
from tfgrpo.learner import run_learning, spent_so_far
from tfgrpo.models.ledger import BudgetStopped, Ledger, Prices
from tfgrpo.runs.rundir import RunDir, open_sqlite
from tfgrpo.testing.fake_openai import FakeOpenAIServer
from tfgrpo.testing.responders import grpo_responder

pytestmark = pytest.mark.integration

PRICES = {"fake": {"input": 1.0, "output": 4.0}}


def ctx_for(server: FakeOpenAIServer, **kw: object) -> Context:
    values: dict[str, object] = {
        "model": "openai:fake",
        "base_url": server.base_url,
        "dataset": "rg:basic_arithmetic:size=6:seed=4",
        "epochs": 2,
        "batch_size": 3,
        "group_size": 4,
        "max_tokens": 256,
    }
    values.update(kw)
    return Context(**values)  # type: ignore[arg-type]


def learn(server: FakeOpenAIServer, run_dir: Path, ledger: Ledger | None = None, **kw: object) -> str:
    """How the run ended: "done", or "budget" when it stopped at the budget (its finished work saved)."""
    try:
        run_learning(ctx_for(server, **kw), run_dir=run_dir, seed=3, progress=False, ledger=ledger)
    except BudgetStopped:
        return "budget"
    return "done"


def read(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / name).read_text())


def lessons(run_dir: Path) -> dict:
    """E of a run without its provenance (which names the run: two runs never share it)."""
    return {k: v for k, v in read(run_dir, "library.json").items() if k != "provenance"}


def test_transient_faults_are_retried_and_change_nothing(tmp_path: Path) -> None:
    with FakeOpenAIServer(grpo_responder) as clean:
        assert learn(clean, tmp_path / "clean") == "done"
    with FakeOpenAIServer(grpo_responder, fail_rate=0.2, fail_status=500, seed=7) as flaky:
        flaky.fail_next(2, status=429)
        ledger = Ledger(max_concurrency=4, max_retries=8, backoff=0.01)
        assert learn(flaky, tmp_path / "flaky", ledger) == "done"
    clean_report, flaky_report = (
        read(tmp_path / "clean", "report.json"),
        read(tmp_path / "flaky", "report.json"),
    )
    assert [s["operations_applied"] for s in flaky_report["steps"]] == [
        s["operations_applied"] for s in clean_report["steps"]
    ]
    assert lessons(tmp_path / "flaky") == lessons(tmp_path / "clean")
    assert clean_report["totals"]["retries"] == 0
    assert flaky_report["totals"]["retries"] >= 2
    assert flaky_report["totals"]["rollouts_failed"] == 0 and flaky_report["totals"]["dropped"] == {}
    assert flaky_report["totals"]["by_role"]["policy"]["retries"] >= 1


def test_client_errors_are_not_retried(tmp_path: Path) -> None:
    with FakeOpenAIServer(grpo_responder) as server:
        server.fail_next(1, status=400)
        ledger = Ledger(max_concurrency=1, max_retries=5, backoff=0.01)
        assert learn(server, tmp_path / "run", ledger, epochs=1, batch_size=6) == "done"
    report = read(tmp_path / "run", "report.json")
    assert report["totals"]["rollouts_failed"] == 1 and report["totals"]["retries"] == 0


def test_budget_stops_before_exceeding_and_resumes(tmp_path: Path) -> None:
    prices_file = tmp_path / "prices.json"
    prices_file.write_text(json.dumps(PRICES))
    with FakeOpenAIServer(grpo_responder) as server:
        assert learn(server, tmp_path / "full", Ledger(prices=Prices.load(str(prices_file)))) == "done"
        full_cost = read(tmp_path / "full", "report.json")["totals"]["cost_usd"]
        assert full_cost > 0

        budget = full_cost / 2
        run_dir = tmp_path / "run"
        ledger = Ledger(budget_usd=budget, prices=Prices.load(str(prices_file)))
        assert learn(server, run_dir, ledger) == "budget"
        values = read(run_dir, "report.json")
        assert len(values["steps"]) < 4
        _, spent = spent_so_far(_store(run_dir), "", Prices.load(str(prices_file)))
        assert 0 < spent <= budget

        more = Ledger(budget_usd=full_cost * 10, prices=Prices.load(str(prices_file)))
        assert learn(server, run_dir, more) == "done"
    assert len(read(run_dir, "report.json")["steps"]) == 4
    assert lessons(run_dir) == lessons(tmp_path / "full")


def test_token_budget(tmp_path: Path) -> None:
    with FakeOpenAIServer(grpo_responder) as server:
        ledger = Ledger(budget_tokens=3000)
        assert learn(server, tmp_path / "run", ledger) == "budget"
        assert ledger.spent_tokens <= 3000


def test_budget_in_dollars_needs_a_price(tmp_path: Path) -> None:
    from tfgrpo.errors import ConfigError

    with FakeOpenAIServer(grpo_responder) as server, pytest.raises(ConfigError, match="needs a price"):
        learn(server, tmp_path / "run", Ledger(budget_usd=1.0))


def test_max_concurrency_caps_requests_in_flight(tmp_path: Path) -> None:
    with FakeOpenAIServer(grpo_responder, latency=0.25) as server:
        ledger = Ledger(max_concurrency=4, backoff=0.01)
        assert learn(server, tmp_path / "run", ledger, epochs=1, batch_size=6, max_concurrency=4) == "done"
        assert server.max_in_flight == 4  # reached, never passed


def _store(run_dir: Path):  # noqa: ANN202
    from langgraph.store.sqlite import SqliteStore

    return SqliteStore(open_sqlite(RunDir(run_dir).store))
