"""Books you can trust (issue 30): a call the client gave up on is booked and kept inside the budget, prices
are range-checked, a database URL of another scheme is refused, the drained-stop's message has one figure."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import openai
import pytest
from httpx import Request
from langchain_core.messages import AIMessage
from langgraph.store.memory import InMemoryStore

from tfgrpo.api import load_library
from tfgrpo.errors import ConfigError
from tfgrpo.models.cache import StoreLLMCache
from tfgrpo.models.ledger import BudgetExceeded, CallFailed, Ledger, Prices, paid_totals, spent_so_far
from tfgrpo.runs.backends import database_url


def reply(tokens_in: int, tokens_out: int) -> AIMessage:
    usage = {"input_tokens": tokens_in, "output_tokens": tokens_out, "total_tokens": tokens_in + tokens_out}
    return AIMessage("ok", usage_metadata=usage)  # type: ignore[arg-type]


def timeout() -> openai.APITimeoutError:
    return openai.APITimeoutError(request=Request("POST", "http://127.0.0.1/v1/chat/completions"))


def times_out_then(answers: list[AIMessage | None]):  # type: ignore[no-untyped-def]
    """A call that times out where ``answers`` has None, else answers."""

    def call() -> AIMessage:
        answer = answers.pop(0)
        if answer is None:
            raise timeout()
        return answer

    return call


def test_a_timed_out_attempt_is_booked_at_its_reservation_and_kept_in_the_store() -> None:
    store = InMemoryStore()
    ledger = Ledger(backoff=0.0)
    ledger.cache = StoreLLMCache(store)
    out, retries = ledger.call(
        times_out_then([None, reply(30, 20)]), spec="m", reserve_in=100, reserve_out=200
    )
    assert retries == 1
    assert ledger.spent_tokens == (100 + 200) + (30 + 20)  # the abandoned attempt may be billed up to that
    paid = paid_totals(store)
    assert paid["timed_out"] == {"calls": 1, "tokens": 300, "cost_usd": 0.0}
    assert paid["calls"] == 0  # the answered call is stored by LangChain's cache, not by this fake
    assert spent_so_far(store)[0] == 300  # a resume starts from it


def test_a_call_that_times_out_for_good_is_booked_too() -> None:
    ledger = Ledger(backoff=0.0, max_retries=1)
    with pytest.raises(CallFailed):
        ledger.call(times_out_then([None, None]), spec="m", reserve_in=10, reserve_out=90)
    assert ledger.spent_tokens == 200
    assert ledger._reserved_tokens == 0 and ledger._in_flight == 0  # nothing left reserved


def test_the_retry_of_a_timed_out_call_needs_a_budget_of_its_own() -> None:
    # 1000 tokens: the first attempt reserves 100 + 800 and times out; its retry cannot get a useful answer
    ledger = Ledger(budget_tokens=1000, backoff=0.0)
    with pytest.raises(BudgetExceeded):
        ledger.call(times_out_then([None, reply(1, 1)]), spec="m", reserve_in=100, reserve_out=800)
    assert ledger.spent_tokens == 900 <= 1000


def test_an_async_timed_out_attempt_is_booked_too() -> None:
    ledger = Ledger(backoff=0.0)
    answers: list[AIMessage | None] = [None, reply(5, 5)]

    async def call() -> AIMessage:
        return times_out_then(answers)()

    asyncio.run(ledger.acall(call, spec="m", reserve_in=50, reserve_out=50, message_of=lambda m: m))
    assert ledger.spent_tokens == 100 + 10


@pytest.mark.parametrize(
    "entry",
    [{"input": "nan", "output": 1}, {"input": 1, "output": "inf"}, {"input": -0.5, "output": 1}],
    ids=["nan", "inf", "negative"],
)
def test_a_price_out_of_range_is_refused_naming_the_model(entry: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"model 'fake': the (input|output) price must be a finite number"):
        Prices.load(json.dumps({"fake": entry}))


def test_a_price_table_built_in_python_is_checked_too() -> None:
    with pytest.raises(ConfigError, match="finite number >= 0"):
        Prices(table={"m": (math.nan, 1.0)})


def test_a_budget_stop_reason_has_no_figure_the_spent_line_would_contradict() -> None:
    ledger = Ledger(budget_tokens=1000, spent_tokens=800)
    with pytest.raises(BudgetExceeded) as stop:
        ledger.call(lambda: reply(1, 1), spec="m", reserve_in=150, reserve_out=4096)
    assert "token budget reached" in stop.value.reason and "800" not in stop.value.reason


@pytest.mark.parametrize(
    ("given", "taken"),
    [
        ("postgresql+psycopg://u@h/db", "postgresql://u@h/db"),  # SQLAlchemy's form
        ("postgres://u@h/db", "postgres://u@h/db"),
        ("sqlite:///runs/all.sqlite", "sqlite:///runs/all.sqlite"),
        ("runs/all.sqlite", "runs/all.sqlite"),
        ("C:\\runs\\all.sqlite", "C:\\runs\\all.sqlite"),  # a Windows path is not a scheme
        ("", ""),
    ],
)
def test_supported_database_forms_are_taken(given: str, taken: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TFGRPO_DATABASE_URL", raising=False)
    assert database_url(given) == taken


@pytest.mark.parametrize(
    "given",
    ["mysql://u@h/db", "postgres:/host/db", "postgresql:/h/db", "sqlite://rel.sqlite", "mongodb+srv://h"],
)
def test_a_database_url_of_another_form_is_refused_in_one_line(given: str) -> None:
    with pytest.raises(
        ConfigError, match=r"--db .* is not a supported database: use postgresql://"
    ) as refused:
        database_url(given)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("items", "named"),
    [
        ([{"id": "G1", "text": 42}], "item 1 (G1): 'text' must be a non-empty string, got a number"),
        (
            [{"id": "G1", "text": "a"}, {"id": "G1", "text": "b"}],
            "item 2: id 'G1' is used twice (first by item 1)",
        ),
        (["Add digit by digit."], 'item 1: expected an object {"id", "text"}, got a string'),
        ([{"text": "a"}], "item 1: 'id' must be a non-empty string, got null"),
        ([{"id": "G1", "text": "a", "sources": "q1"}], "item 1 (G1): 'sources' must be a list"),
        (
            [{"id": "G1", "text": "a", "created_step": "0"}],
            "item 1 (G1): 'created_step' must be a whole number",
        ),
    ],
)
def test_a_hand_edited_library_is_checked_item_by_item(
    items: list[object], named: str, tmp_path: Path
) -> None:
    """Issue 30: "text": 42 or one id twice was accepted silently; other malformed items quoted raw Python."""
    path = tmp_path / "library.json"
    path.write_text(json.dumps({"version": 1, "next_id": 2, "items": items}))
    with pytest.raises(ConfigError) as refused:
        load_library(path)
    assert str(refused.value).startswith(f"{path}: {named}") and "\n" not in str(refused.value)


def test_a_hand_written_item_gets_its_defaults_and_never_an_id_again(tmp_path: Path) -> None:
    path = tmp_path / "library.json"
    path.write_text(json.dumps({"items": [{"id": "G4", "text": "Add digit by digit."}]}))
    library = load_library(path)
    assert library["items"][0]["sources"] == [] and library["items"][0]["created_step"] == 0
    assert library["next_id"] == 5
