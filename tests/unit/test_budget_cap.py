"""A budget caps each call's max_tokens by what it has left, waits for calls in flight before it stops,
and says how much is left when it stops."""

from __future__ import annotations

import threading
import time

import pytest
from langchain_core.messages import AIMessage

from tfgrpo.models.ledger import BudgetExceeded, Ledger, Prices, capped


def reply(tokens_in: int, tokens_out: int) -> AIMessage:
    return AIMessage(
        "ok",
        usage_metadata={
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "total_tokens": tokens_in + tokens_out,
        },
    )


def test_max_tokens_is_capped_by_what_the_budget_has_left() -> None:
    ledger = Ledger(budget_tokens=1000)
    seen: list[dict] = []
    ledger.call(lambda: seen.append(capped()) or reply(50, 100), spec="m", reserve_in=100, reserve_out=4096)
    assert seen == [{"max_tokens": 900}]  # 1000 - the prompt's bound
    assert ledger.spent_tokens == 150
    ledger.call(lambda: seen.append(capped()) or reply(50, 100), spec="m", reserve_in=100, reserve_out=256)
    assert seen[-1] == {}  # not capped: the request is the same as without a budget


def test_no_budget_leaves_the_request_alone() -> None:
    seen: list[dict] = []
    Ledger().call(lambda: seen.append(capped()) or reply(1, 1), spec="m", reserve_in=10, reserve_out=4096)
    assert seen == [{}]


def test_the_run_stops_only_when_the_rest_cannot_pay_a_useful_call() -> None:
    ledger = Ledger(budget_tokens=1000, spent_tokens=800)
    with pytest.raises(BudgetExceeded, match=r"token budget reached: 200 of 1000 tokens left \(800 spent\)"):
        ledger.call(lambda: reply(1, 1), spec="m", reserve_in=150, reserve_out=4096)


def test_a_call_waits_for_the_calls_in_flight_instead_of_stopping() -> None:
    ledger = Ledger(budget_tokens=1000, max_concurrency=4)
    started, results = threading.Event(), []

    def first() -> AIMessage:
        started.set()
        time.sleep(0.3)
        return reply(100, 50)  # reserved 100 + 800, cost 150

    thread = threading.Thread(target=lambda: ledger.call(first, spec="m", reserve_in=100, reserve_out=800))
    thread.start()
    started.wait()
    # 100 left beside the call in flight: too few now, enough once it settles
    out, _ = ledger.call(
        lambda: results.append(capped()) or reply(100, 100), spec="m", reserve_in=100, reserve_out=4096
    )
    thread.join()
    assert results == [{"max_tokens": 750}]  # 1000 - 150 spent - 100 prompt
    assert ledger.spent_tokens == 350


def test_a_dollar_budget_caps_by_the_output_price() -> None:
    prices = Prices.load('{"m": {"input": 1.0, "output": 4.0}}')
    ledger = Ledger(budget_usd=0.001, prices=prices)  # $1000 per 1e9: 1000 input-token units
    seen: list[dict] = []
    ledger.call(lambda: seen.append(capped()) or reply(200, 10), spec="m", reserve_in=200, reserve_out=4096)
    assert seen == [{"max_tokens": 200}]  # (1000 - 200 * 1) / 4
    with pytest.raises(BudgetExceeded, match=r"dollar budget reached: \$0\.0008 of \$0\.0010 left"):
        ledger.call(lambda: reply(1, 1), spec="m", reserve_in=900, reserve_out=4096)


def test_the_prompt_bound_learns_the_models_tokens_per_byte() -> None:
    ledger = Ledger(budget_tokens=10_000)
    assert ledger.prompt_bound("m", 1000) == 1000  # bytes, until the model has answered
    ledger.call(lambda: reply(250, 10), spec="m", reserve_in=1000, reserve_out=100)
    assert ledger.prompt_bound("m", 1000) == 312 + 16  # 1000 x 0.25 x the 1.25 margin
    assert ledger.prompt_bound("other", 1000) == 1000
