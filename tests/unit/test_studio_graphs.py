"""The graphs as langgraph.json serves them (Studio): user-facing inputs and outputs, E published to the
store after every step and read back by run id, errors the API server passes on, a ledger per thread."""

from __future__ import annotations

from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from tfgrpo.context import Context
from tfgrpo.errors import ConfigError, DataError, TfgrpoError
from tfgrpo.graphs.evaluate import compile_eval_graph
from tfgrpo.graphs.inference import build_studio_inference_graph
from tfgrpo.graphs.learn import compile_learn_graph
from tfgrpo.models.ledger import LEDGER_NAMESPACE, BudgetExceeded
from tfgrpo.nodes.publish import library_namespace, published_library, published_steps
from tfgrpo.runs.backends import Backend, check_run_id, database_url, open_backend, redacted
from tfgrpo.runs.rundir import step_history
from tfgrpo.testing.scripted import ScriptedChatModel

SMALL = {"model": "scripted:m", "epochs": 1, "batch_size": 2, "group_size": 2}
DATASET = "rg:basic_arithmetic:size=4:seed=1"


def test_learn_takes_the_documented_input_and_publishes_e_after_every_step(
    scripted: list[ScriptedChatModel],
) -> None:
    store = InMemoryStore()
    graph = compile_learn_graph(store=store, studio=True)
    # the context's dataset is a bad one: the input's must win
    out = graph.invoke({"dataset": DATASET, "seed": 1, "run_id": "r1"}, context=Context(dataset="x", **SMALL))
    assert set(out) == {"run_id", "library", "history", "done"}
    assert out["run_id"] == "r1" and [s["step"] for s in out["history"]] == [0, 1]
    assert published_steps(store, "r1") == [0, 1]
    assert published_library(store, "r1") == out["library"]
    assert published_library(store, "r1", 1) == out["library"]
    latest = store.get(library_namespace("r1"), "latest")
    assert latest is not None and latest.value["step"] == 1
    # a new thread (here: no checkpointer) may not reuse the run id of a run that has published E
    with pytest.raises(ConfigError, match="run id 'r1' is taken"):
        graph.invoke({"dataset": DATASET, "run_id": "r1"}, context=Context(**SMALL))


def test_inference_and_eval_read_e_by_run_id(scripted: list[ScriptedChatModel]) -> None:
    store = InMemoryStore()
    learned = compile_learn_graph(store=store, studio=True).invoke(
        {"dataset": DATASET, "run_id": "r2"}, context=Context(**SMALL)
    )
    assert learned["library"]["items"]
    inference = build_studio_inference_graph(store=store)
    answer = inference.invoke(
        {"question": "Calculate 2 + 3."}, context=Context(model="scripted:m", library_run="r2")
    )
    assert set(answer) == {"answer", "messages"} and answer["answer"]
    scored = compile_eval_graph(store=store, studio=True).invoke(
        {"dataset": "rg:basic_arithmetic:size=2:seed=4", "library": "r2", "k": 2, "baseline": False},
        context=Context(model="scripted:m"),
    )
    assert set(scored) == {"eval_id", "metrics", "comparison", "per_question"}
    assert list(scored["metrics"]) == ["library"] and scored["comparison"] is None
    assert scored["metrics"]["library"]["runs_done"] == 2 * 2
    with pytest.raises(ConfigError, match="run 'nope': no step has finished"):
        inference.invoke({"question": "Hi"}, context=Context(model="scripted:m", library_run="nope"))


def test_inference_needs_a_question_or_messages(scripted: list[ScriptedChatModel]) -> None:
    with pytest.raises(ConfigError, match="give a 'question' or 'messages'"):
        build_studio_inference_graph().invoke({}, context=Context(model="scripted:m"))


def test_tfgrpo_errors_are_value_errors_so_the_api_server_shows_their_text() -> None:
    # langgraph_api.serde shows the message of a ValueError and hides any other exception's
    assert issubclass(TfgrpoError, ValueError)
    assert issubclass(DataError, ValueError) and issubclass(BudgetExceeded, ValueError)


def test_a_thread_ledger_takes_its_budget_from_the_context_and_keeps_its_spending(
    scripted: list[ScriptedChatModel],
) -> None:
    store, saver = InMemoryStore(), InMemorySaver()
    graph = compile_learn_graph(checkpointer=saver, store=store, studio=True)
    config = {"configurable": {"thread_id": "t-budget"}}
    with pytest.raises(BudgetExceeded, match="token budget reached"):
        graph.invoke({"dataset": DATASET}, config, context=Context(budget_tokens=2500, **SMALL))
    spent = store.get(LEDGER_NAMESPACE, "t-budget")
    assert spent is not None and 0 < spent.value["tokens"] <= 2500
    # resumed with the cap lifted, it finishes; the stored total only grows
    out = graph.invoke(None, config, context=Context(**SMALL))
    assert len(out["history"]) == 2
    after = store.get(LEDGER_NAMESPACE, "t-budget")
    assert after is not None and after.value["tokens"] > spent.value["tokens"]


def test_database_urls_and_run_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFGRPO_DATABASE_URL", "postgresql://u:secret@h/db")
    assert database_url(None) == "postgresql://u:secret@h/db" and database_url("x.sqlite") == "x.sqlite"
    assert redacted("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    with pytest.raises(ConfigError, match="without '/'"):
        check_run_id("runs/a")


def test_runs_share_one_sqlite_file_by_run_id(scripted: list[ScriptedChatModel], tmp_path: Path) -> None:
    db = str(tmp_path / "all.sqlite")
    threads = []
    for run_id in ("a", "b"):
        with open_backend(db, local_dir=tmp_path / run_id, run_id=run_id) as backend:
            assert isinstance(backend, Backend) and backend.shared
            graph = compile_learn_graph(checkpointer=backend.saver, store=backend.store)
            config = {"configurable": {"thread_id": backend.thread("learn")}}
            out = graph.invoke({"run_id": run_id, "dataset": DATASET}, config, context=Context(**SMALL))
            assert out["done"] and len(step_history(backend.store, run_id)) == 2
            latest = graph.get_state(config).config["configurable"]["checkpoint_id"]
            before = sum(1 for _ in backend.saver.list(config))
            assert backend.prune(backend.thread("learn"), latest) == before - 1
            threads.append(backend.thread("learn"))
    assert threads == ["a/learn", "b/learn"]
    with open_backend(db, local_dir=tmp_path, run_id="a") as backend:
        assert published_steps(backend.store, "a") == published_steps(backend.store, "b") == [0, 1]
        assert sum(1 for _ in backend.saver.list({"configurable": {"thread_id": "a/learn"}})) == 1


# -- failures are failures on the server path too (issue 22, finding 1)


def dead_url() -> str:
    from tfgrpo.testing.fake_openai import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        return server.base_url  # nothing listens there any more: every call is refused


def test_a_studio_learn_run_whose_every_call_failed_is_an_error_not_an_empty_library() -> None:
    url = dead_url()
    graph = compile_learn_graph(checkpointer=InMemorySaver(), store=InMemoryStore(), studio=True)
    context = Context(model="openai:fake", base_url=url, max_retries=0, epochs=1, batch_size=2, group_size=2)
    with pytest.raises(TfgrpoError) as failed:  # a thread: its ledger takes max_retries from the context
        graph.invoke({"dataset": DATASET}, {"configurable": {"thread_id": "dead"}}, context=context)
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith("every LLM call of this run failed (8 of 8)"), message  # as the CLI says
    assert f"cannot connect to {url}" in message


def test_a_studio_eval_whose_every_call_failed_is_an_error_not_a_zero_score() -> None:
    url = dead_url()
    graph = compile_eval_graph(checkpointer=InMemorySaver(), store=InMemoryStore(), studio=True)
    context = Context(model="openai:fake", base_url=url, max_retries=0)
    with pytest.raises(TfgrpoError) as failed:
        graph.invoke(
            {"dataset": "rg:basic_arithmetic:size=2:seed=4", "k": 2, "baseline": True},
            {"configurable": {"thread_id": "dead-eval"}},
            context=context,
        )
    message = str(failed.value)
    assert "\n" not in message
    # the CLI's line (tfgrpo eval exits 1 with it), not Mean@k 0.000 with runs_failed 4
    assert message.startswith("every run of this evaluation failed (4 of 4"), message
    assert f"cannot connect to {url}" in message


def test_a_provider_error_in_the_inference_graph_is_a_one_line_tfgrpo_error() -> None:
    url = dead_url()
    with pytest.raises(TfgrpoError, match=f"^cannot connect to {url}.*is the server running") as failed:
        build_studio_inference_graph(checkpointer=InMemorySaver(), store=InMemoryStore()).invoke(
            {"question": "Hi"},
            {"configurable": {"thread_id": "t"}},  # a thread: its ledger takes max_retries from the context
            context=Context(model="openai:fake", base_url=url, max_retries=0),
        )
    assert "\n" not in str(failed.value)
