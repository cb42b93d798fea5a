"""``langgraph dev`` serves the graphs of langgraph.json offline; the inference graph runs through the SDK."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO
from tfgrpo.state.library import apply_operations, empty_library
from tfgrpo.testing.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def langgraph_dev(config: Path, **env_vars: str) -> Iterator[str]:
    """``langgraph dev`` on a free port with ``config`` (a langgraph.json); yields its URL."""
    exe = shutil.which("langgraph")
    if exe is None:
        pytest.skip("langgraph CLI not installed (pip install -e '.[test]' installs langgraph-cli[inmem])")
    port = free_port()
    env = dict(os.environ, LANGSMITH_TRACING="false", LANGGRAPH_CLI_NO_ANALYTICS="1")
    env.pop("OPENAI_API_KEY", None)
    env.update(env_vars)
    log_path = config.parent / ".langgraph_api.test.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [exe, "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port),
         "--config", str(config)],
        cwd=config.parent, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail("langgraph dev exited: " + log_path.read_text()[-2000:])
            try:
                if httpx.get(f"{url}/ok", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("langgraph dev did not answer /ok within 120 s")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        log_path.unlink(missing_ok=True)
        if config.parent != REPO:  # an example app: leave its directory as it was
            shutil.rmtree(config.parent / ".langgraph_api", ignore_errors=True)


@pytest.fixture(scope="module")
def studio() -> Iterator[str]:
    with langgraph_dev(REPO / "langgraph.json") as url:
        yield url


def test_studio_lists_the_graphs(studio: str) -> None:
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=studio)
    graph_ids = {a["graph_id"] for a in client.assistants.search(limit=20)}
    assert {"learn", "step", "inference", "eval"} <= graph_ids


def test_studio_runs_the_inference_graph_with_a_library(studio: str, tmp_path: Path) -> None:
    from langgraph_sdk import get_sync_client

    library, _, _ = apply_operations(
        empty_library(), [{"op": "ADD", "content": "Always double-check the sign of the result."}], step=0
    )
    lib_file = tmp_path / "library.json"
    lib_file.write_text(json.dumps(library))
    with FakeOpenAIServer() as server:  # echo responder: answers with the question
        client = get_sync_client(url=studio)
        result = client.runs.wait(
            None,
            "inference",
            input={"messages": [{"role": "user", "content": "Calculate 2 + 3."}]},
            context={"model": "openai:fake", "base_url": server.base_url, "library": str(lib_file)},
        )
        assert isinstance(result, dict), result
        assert "Calculate 2 + 3." in result["answer"]
        system = server.requests[-1]["messages"][0]
        assert system["role"] == "system"
        assert "[G1] Always double-check the sign of the result." in system["content"]


def test_studio_runs_the_eval_graph(studio: str, tmp_path: Path) -> None:
    from langgraph_sdk import get_sync_client

    from tfgrpo.testing.responders import eval_responder

    library, _, _ = apply_operations(
        empty_library(), [{"op": "ADD", "content": "Add digit by digit."}], step=0
    )
    lib_file = tmp_path / "library.json"
    lib_file.write_text(json.dumps(library))
    with FakeOpenAIServer(eval_responder) as server:
        client = get_sync_client(url=studio)
        thread = client.threads.create()
        result = client.runs.wait(
            thread["thread_id"],
            "eval",
            input={"k": 2, "seed": 1},
            context={
                "model": "openai:fake",
                "base_url": server.base_url,
                "library": str(lib_file),
                "dataset": "rg:basic_arithmetic:size=3:seed=4",
            },
        )
        assert isinstance(result, dict), result
        assert list(result["metrics"]) == ["library", "baseline"]
        assert all(m["runs_done"] == 3 * 2 and m["runs_failed"] == 0 for m in result["metrics"].values())
        assert len(server.requests) == 12


# -- what a Studio user does: the documented inputs only, errors as text, learn then use


def small_learn_context(server: FakeOpenAIServer, **more: object) -> dict[str, object]:
    return {"model": "openai:fake", "base_url": server.base_url, "epochs": 1, "batch_size": 2,
            "group_size": 2, **more}  # fmt: skip


def test_studio_forms_show_only_what_a_user_gives(studio: str) -> None:
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=studio)
    by_graph = {a["graph_id"]: a for a in client.assistants.search(limit=20)}
    inputs = {g: set(client.assistants.get_schemas(by_graph[g]["assistant_id"])["input_schema"]["properties"])
              for g in ("learn", "step", "eval", "inference")}  # fmt: skip
    assert inputs == {
        "learn": {"dataset", "seed", "run_id"},
        "step": {"batch", "library", "run_id"},
        "eval": {"dataset", "library", "k", "baseline", "seed"},
        "inference": {"question", "messages"},
    }
    context = client.assistants.get_schemas(by_graph["learn"]["assistant_id"])["context_schema"]["properties"]
    assert {"budget_usd", "budget_tokens", "prices", "max_retries", "max_concurrency"} <= set(context)
    # each graph's context form: only the fields it uses, each described
    inference = client.assistants.get_schemas(by_graph["inference"]["assistant_id"])["context_schema"]
    assert not {"epochs", "group_size", "lesson_pattern", "batch_size"} & set(inference["properties"])
    assert all(p.get("description") for p in inference["properties"].values())
    assert all(p.get("description") for p in context.values())


def test_studio_context_values_are_checked(studio: str) -> None:
    """A misspelled field (which the API server would drop silently) and values of the wrong type end the
    run with one line naming the field (issue 22, finding 2)."""
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=studio)
    cases = [
        ({"modle": "openai:gpt-4o-mini"}, "unknown context field 'modle' (did you mean 'model'?)"),
        (
            {"model": "openai:x", "max_model_calls": "4"},
            "context field 'max_model_calls': expected an integer",
        ),
        (
            {"model": "openai:x", "prices": ["x", 1]},
            "context field 'prices': expected an object",
        ),
    ]
    for context, message in cases:
        out = client.runs.wait(
            client.threads.create()["thread_id"], "inference", input={"question": "Hi"}, context=context,
            raise_error=False,
        )  # fmt: skip
        assert isinstance(out, dict) and "__error__" in out, out
        assert out["__error__"]["message"].startswith(message), out
        assert "\n" not in out["__error__"]["message"]


def test_studio_learn_then_infer_and_eval_with_the_published_library(
    studio: str, fake_server: FakeOpenAIServer
) -> None:
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=studio)
    learn_thread = client.threads.create()
    learned = client.runs.wait(
        learn_thread["thread_id"],
        "learn",
        input={"dataset": "rg:basic_arithmetic:size=4:seed=1", "seed": 3},  # the documented input only
        context=small_learn_context(fake_server),
    )
    assert isinstance(learned, dict) and "__error__" not in learned, learned
    assert set(learned) <= {"run_id", "library", "history", "done"}
    assert [s["step"] for s in learned["history"]] == [0, 1]
    items = learned["library"]["items"]
    assert items, "the scripted learner always proposes experiences"

    # another thread, the inference graph, E found by the learn run's id
    answer = client.runs.wait(
        None,
        "inference",
        input={"question": "Calculate 7 + 5."},
        context={"model": "openai:fake", "base_url": fake_server.base_url, "library_run": learned["run_id"]},
    )
    assert isinstance(answer, dict) and set(answer) == {"answer", "messages"}, answer
    assert answer["answer"] in {"11", "12", "13"}  # the scripted policy is right or off by one
    assert [m["type"] for m in answer["messages"]] == ["human", "ai"]  # the trajectory
    system = fake_server.requests[-1]["messages"][0]["content"]
    assert all(f"[{item['id']}] {item['text']}" in system for item in items)

    # the eval graph with the same run's E: Mean@k and the paired CI in its output
    scored = client.runs.wait(
        client.threads.create()["thread_id"],
        "eval",
        input={"dataset": "rg:basic_arithmetic:size=3:seed=4", "library": learned["run_id"], "k": 2},
        context={"model": "openai:fake", "base_url": fake_server.base_url},
    )
    assert isinstance(scored, dict) and "__error__" not in scored, scored
    assert set(scored["metrics"]) == {"library", "baseline"}
    assert 0.0 <= scored["metrics"]["library"]["mean_at_k"] <= 1.0
    assert scored["metrics"]["library"]["runs_done"] == 3 * 2
    assert {"diff", "ci_low", "ci_high", "p_value"} <= set(scored["comparison"])
    assert len(scored["per_question"]) == 3


def test_studio_errors_reach_the_client_as_one_line(studio: str, fake_server: FakeOpenAIServer,
                                                    tmp_path: Path) -> None:  # fmt: skip
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=studio)
    missing = tmp_path / "nope.jsonl"
    failed = client.runs.wait(
        client.threads.create()["thread_id"],
        "learn",
        input={"dataset": str(missing)},
        context=small_learn_context(fake_server),
        raise_error=False,
    )
    error = failed["__error__"]
    assert error["error"] == "DataError"
    assert str(missing) in error["message"] and "\n" not in error["message"]
    assert "internal error" not in error["message"]

    # the context's budget caps a Studio run: it stops with the ledger's line, resumably
    thread = client.threads.create()["thread_id"]
    capped = client.runs.wait(
        thread,
        "learn",
        input={"dataset": "rg:basic_arithmetic:size=4:seed=1"},
        context=small_learn_context(fake_server, budget_tokens=3000),
        raise_error=False,
    )
    assert capped["__error__"]["error"] == "BudgetExceeded", capped
    assert "token budget reached" in capped["__error__"]["message"]
    done = client.runs.wait(thread, "learn", input=None, context=small_learn_context(fake_server))
    assert isinstance(done, dict) and len(done["history"]) == 2, done


def test_studio_failures_are_failures_with_the_clis_line(studio: str, fake_server: FakeOpenAIServer) -> None:
    """Issue 22, finding 1: a learn run whose every call failed ends as an error (not an empty library),
    and provider errors reach the client as the one-line sentence, not 'An internal error occurred'."""
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=studio)
    with FakeOpenAIServer() as gone:
        dead = gone.base_url  # nothing listens there any more
    failed = client.runs.wait(
        client.threads.create()["thread_id"],
        "learn",
        input={"dataset": "rg:basic_arithmetic:size=4:seed=1"},
        context={
            "model": "openai:fake",
            "base_url": dead,
            "max_retries": 0,
            "epochs": 1,
            "batch_size": 2,
            "group_size": 2,
        },  # fmt: skip
        raise_error=False,
    )
    assert isinstance(failed, dict) and "__error__" in failed, failed
    message = failed["__error__"]["message"]
    assert message.startswith("every LLM call of this run failed (8 of 8)"), message
    assert f"cannot connect to {dead}" in message and "\n" not in message

    def infer(base_url: str) -> dict[str, str]:
        out = client.runs.wait(
            client.threads.create()["thread_id"],
            "inference",
            input={"question": "Calculate 2 + 3."},
            context={"model": "openai:fake", "base_url": base_url, "max_retries": 0},
            raise_error=False,
        )
        assert isinstance(out, dict) and "__error__" in out, out
        error: dict[str, str] = out["__error__"]
        assert "internal error" not in error["message"] and "\n" not in error["message"], error
        return error

    assert infer(dead)["message"].startswith(f"cannot connect to {dead}")
    fake_server.fail_next(1, status=401)
    assert "refused the credentials (HTTP 401)" in infer(fake_server.base_url)["message"]
    fake_server.fail_next(1, status=404)
    assert "answered 404 (no such model or endpoint)" in infer(fake_server.base_url)["message"]


def test_a_users_own_agent_in_studio_gets_e_from_a_studio_learn_run(fake_server: FakeOpenAIServer) -> None:
    """Issue 22, finding 3: learn in ``langgraph dev``, then the user's own ``create_agent`` served beside it
    (examples/studio_app) names that run: ``ExperienceMiddleware(run=RUN_ID)`` reads E from the server's
    store, and the system prompt the model server receives holds E after the user's own prompt."""
    from langgraph_sdk import get_sync_client

    app = REPO / "examples" / "studio_app" / "langgraph.json"
    with langgraph_dev(app, OPENAI_BASE_URL=fake_server.base_url, OPENAI_API_KEY="sk-not-used",
                       TFGRPO_LIBRARY_RUN="team-math") as url:  # fmt: skip
        client = get_sync_client(url=url)
        before = client.runs.wait(
            None, "agent", input={"messages": [{"role": "user", "content": "Hi"}]}, raise_error=False
        )
        # before the run's first step the app answers without E (issue 29: warned once, never an error)
        assert isinstance(before, dict) and before.get("messages"), before
        assert "no step has finished" not in str(before)
        learned = client.runs.wait(
            client.threads.create()["thread_id"],
            "learn",
            input={"dataset": "rg:basic_arithmetic:size=4:seed=1", "run_id": "team-math"},
            context=small_learn_context(fake_server),
        )
        assert isinstance(learned, dict) and learned["library"]["items"], learned
        answer = client.runs.wait(
            None, "agent", input={"messages": [{"role": "user", "content": "Calculate 7 + 5."}]}
        )
        assert isinstance(answer, dict) and answer["messages"][-1]["type"] == "ai", answer
    system = fake_server.requests[-1]["messages"][0]
    assert system["role"] == "system" and fake_server.requests[-1]["model"] == "gpt-4o-mini"
    assert system["content"].startswith("You are Acme's arithmetic assistant.")
    assert all(f"[{i['id']}] {i['text']}" in system["content"] for i in learned["library"]["items"])
