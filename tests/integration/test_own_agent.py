"""The user's own agent: ExperienceMiddleware in a user's create_agent app, learning on that agent
(``tfgrpo learn --agent``), the Python API, and the Runnable conventions -- against the fake server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_openai import ChatOpenAI
from langgraph.store.memory import InMemoryStore

import tfgrpo
from tests.conftest import PYTHON, REPO, cli_env, hold_after, sigkill_once_held
from tests.integration import acme_agent
from tfgrpo.errors import ConfigError
from tfgrpo.models.ledger import BudgetExceeded
from tfgrpo.state.library import apply_operations, empty_library, render_library
from tfgrpo.testing.fake_openai import FakeOpenAIServer, request_key
from tfgrpo.testing.responders import tool_agent_responder

pytestmark = pytest.mark.integration


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(tool_agent_responder) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)  # the user's model object reads it
        yield srv


def make_library(*lessons: str) -> dict[str, Any]:
    library, _, _ = apply_operations(
        empty_library(), [{"op": "ADD", "content": text} for text in lessons], step=0
    )
    return dict(library)


def system_text(body: dict[str, Any]) -> str:
    return " ".join(str(m.get("content")) for m in body["messages"] if m["role"] == "system")


class Tagging(AgentMiddleware[Any, Any]):
    """Another middleware of the user's: it must keep working next to ours."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def wrap_model_call(self, request: ModelRequest[Any], handler: Any) -> ModelResponse:
        self.calls += 1
        return handler(request)

    async def awrap_model_call(self, request: ModelRequest[Any], handler: Any) -> ModelResponse:
        self.calls += 1
        return await handler(request)


def test_middleware_adds_e_to_the_users_own_agent(server: FakeOpenAIServer, tmp_path: Path) -> None:
    library = make_library("Recompute every product twice.")
    (tmp_path / "library.json").write_text(json.dumps(library))
    tagging = Tagging()
    agent = create_agent(
        acme_agent.make_model(),
        [acme_agent.calculator],
        system_prompt=acme_agent.SYSTEM_PROMPT,
        middleware=[tfgrpo.ExperienceMiddleware(library=tmp_path), tagging],
    )
    out = agent.invoke({"messages": [("user", "Calculate 6 * 7.")]})
    assert out["messages"][-1].content.endswith("Answer: 42")
    first, second = server.requests
    assert first["model"] == "acme-model"  # the user's model object, not tfgrpo's
    assert system_text(first) == acme_agent.SYSTEM_PROMPT + "\n\n" + render_library(library)  # type: ignore[arg-type]
    assert first["tools"] == [convert_to_openai_tool(acme_agent.calculator)]  # the user's tool schema
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "tool"]
    assert system_text(second) == system_text(first)
    assert tagging.calls == 2

    # the file changed: the next call sees the new E (and async works the same)
    (tmp_path / "library.json").write_text(json.dumps(make_library("Write the result as digits.")))
    asyncio.run(agent.ainvoke({"messages": [("user", "Calculate 2 + 2.")]}))
    assert "[G1] Write the result as digits." in system_text(server.requests[-1])
    assert "Recompute" not in system_text(server.requests[-1])


def test_middleware_takes_a_library_object_or_a_store_namespace(server: FakeOpenAIServer) -> None:
    library = make_library("Recompute every product twice.")
    agent = create_agent(
        acme_agent.make_model(), [], system_prompt="Be brief.",
        middleware=[tfgrpo.ExperienceMiddleware(library)],  # type: ignore[arg-type]
    )  # fmt: skip
    agent.invoke({"messages": [("user", "Calculate 1 + 1.")]})
    assert system_text(server.requests[-1]) == "Be brief.\n\n" + render_library(library)  # type: ignore[arg-type]

    store = InMemoryStore()
    store.put(("acme", "e"), "library", library)
    agent = create_agent(
        acme_agent.make_model(), [], store=store, middleware=[tfgrpo.ExperienceMiddleware(namespace="acme/e")]
    )
    agent.invoke({"messages": [("user", "Calculate 1 + 1.")]})
    assert system_text(server.requests[-1]) == render_library(library)  # type: ignore[arg-type]
    store.put(("acme", "e"), "library", make_library("A new lesson."))  # updated in place: seen at once
    agent.invoke({"messages": [("user", "Calculate 1 + 1.")]})
    assert "[G1] A new lesson." in system_text(server.requests[-1])
    store.put(("acme", "e"), "library", make_library("An async lesson."))
    asyncio.run(agent.ainvoke({"messages": [("user", "Calculate 1 + 1.")]}))  # async store read
    assert "[G1] An async lesson." in system_text(server.requests[-1])

    with pytest.raises(ConfigError, match="no experience library there"):
        tfgrpo.ExperienceMiddleware(library="/nonexistent/run")


def learn_cmd(server: FakeOpenAIServer, run_dir: Path, agent: str) -> list[str]:
    return [
        PYTHON, "-m", "tfgrpo.cli", "learn",
        "--agent", agent,
        "--dataset", "rg:basic_arithmetic:size=6:seed=1",
        "--model", "openai:fake", "--base-url", server.base_url,
        "--run-dir", str(run_dir),
        "--epochs", "2", "--batch-size", "3", "--group-size", "4",
        "--max-concurrency", "4", "--no-progress",
    ]  # fmt: skip


def is_agent_followup(body: dict[str, Any]) -> bool:
    """The user's agent's second call of a rollout (after its tool ran)."""
    return body.get("model") == "acme-model" and any(m["role"] == "tool" for m in body["messages"])


def test_learn_on_the_users_agent_survives_sigkill(server: FakeOpenAIServer, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = cli_env() | {"OPENAI_BASE_URL": server.base_url}
    cmd = learn_cmd(server, run_dir, "tests/integration/acme_agent.py:factory")
    # step 0 has 12 rollouts of 2 calls each; freeze the 2nd calls of step 1 after 5 of them finished,
    # so a finished step, finished rollouts and first calls of unfinished rollouts must all survive
    hold_after(server, 12 + 5, is_agent_followup)
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    finished = sigkill_once_held(proc, server)
    server.hold(None)
    server.release()
    before = list(server.completed)
    assert (run_dir / "libraries" / "step-0000.json").exists(), "step 0 should have finished before the kill"

    server.reset_stats()
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resuming" in out.stdout
    repeated = [b for b in server.requests if request_key(b) in finished]
    assert repeated == [], f"{len(repeated)} finished LLM calls were made again"

    calls = before + list(server.requests)
    rollouts = [b for b in calls if b.get("model") == "acme-model"]
    assert rollouts and all(b["tools"][0]["function"]["name"] == "calculator" for b in rollouts)
    assert all(system_text(b).startswith(acme_agent.SYSTEM_PROMPT) for b in rollouts)
    assert any("[G1]" in system_text(b) for b in rollouts), "E never reached the user's agent"
    summaries = [b for b in calls if "SUMMARIZE" in system_text(b)]
    assert summaries and all("calculator" in b["messages"][-1]["content"] for b in summaries)
    report = json.loads((run_dir / "report.json").read_text())
    assert [s["step"] for s in report["steps"]] == [0, 1, 2, 3]
    assert all(s["rollouts"] == 12 and s["rollouts_failed"] == 0 for s in report["steps"])
    # every call of the user's agent is in the ledger: 2 per rollout, booked as policy calls
    assert report["totals"]["by_role"]["policy"]["calls"] == 4 * 12 * 2


def test_an_agent_without_the_middleware_is_refused(server: FakeOpenAIServer, tmp_path: Path) -> None:
    out = subprocess.run(
        learn_cmd(server, tmp_path / "run", "tests/integration/acme_agent.py:plain"),
        env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert "has no tfgrpo.ExperienceMiddleware" in out.stderr and "Traceback" not in out.stderr
    assert server.requests == []


class Calls(BaseCallbackHandler):
    def __init__(self) -> None:
        self.models: list[UUID | None] = []

    def on_chat_model_start(
        self, serialized: Any, messages: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kw: Any
    ) -> None:
        self.models.append(parent_run_id)


def test_python_api_with_model_objects_and_nested_callbacks(server: FakeOpenAIServer, tmp_path: Path) -> None:
    rows = [{"question": f"Calculate {a} * 3.", "answer": str(a * 3)} for a in range(2, 8)]
    learner = ChatOpenAI(model="fake-learner", base_url=server.base_url, api_key="x", max_retries=0)  # type: ignore[arg-type]
    handler = Calls()
    result = tfgrpo.learn(
        dataset=iter(rows), agent=acme_agent.factory, learner=learner, run_dir=tmp_path / "run",
        epochs=1, batch_size=3, group_size=4, progress=False, callbacks=[handler],
    )  # fmt: skip
    assert result.library["items"], "nothing learned"
    assert len(result.steps) == 2
    models = {b["model"] for b in server.requests}
    assert models == {"acme-model", "fake-learner"}
    # a handler on the learn run sees every call, each nested under a run of the learn graph (a few more
    # than requests: an identical prompt within the run is answered from the run's result cache)
    assert len(handler.models) >= len(server.requests)
    assert None not in handler.models

    n = len(server.requests)
    again = tfgrpo.learn(
        dataset=rows, agent=acme_agent.factory, learner=learner, run_dir=tmp_path / "run",
        epochs=1, batch_size=3, group_size=4, progress=False,
    )  # fmt: skip
    assert len(server.requests) == n and again.library == result.library  # resumed: nothing paid twice

    report = tfgrpo.evaluate(
        dataset=rows[:3], agent=acme_agent.factory, library=result.library, baseline=True, k=2,
        eval_dir=tmp_path / "eval", progress=False,
    )  # fmt: skip
    assert set(report["arms"]) == {"library", "baseline"}
    assert all(arm["mean_at_k"] is not None for arm in report["arms"].values())


def test_experienced_agent_takes_model_objects_context_and_configurable(server: FakeOpenAIServer) -> None:
    model = ChatOpenAI(model="obj-model", base_url=server.base_url, api_key="x", max_retries=0)  # type: ignore[arg-type]
    agent = tfgrpo.experienced_agent(None, model=model)
    assert agent.invoke("Calculate 2 + 3.")["answer"] in {"5", "6"}
    assert server.requests[-1]["model"] == "obj-model"

    other = ChatOpenAI(model="ctx-model", base_url=server.base_url, api_key="x", max_retries=0)  # type: ignore[arg-type]
    agent.invoke("Calculate 2 + 3.", context={"model": other})
    assert server.requests[-1]["model"] == "ctx-model"
    agent.with_config(configurable={"model": "openai:cfg-model", "base_url": server.base_url}).invoke(
        "Calculate 1."
    )
    assert server.requests[-1]["model"] == "cfg-model"
    with pytest.raises(ConfigError, match="did you mean 'model'"):
        agent.with_config(configurable={"modle": "openai:x"}).invoke("Calculate 1.")


def test_the_own_agent_example_runs_and_resumes(server: FakeOpenAIServer, tmp_path: Path) -> None:
    env = cli_env() | {"OPENAI_BASE_URL": server.base_url, "MODEL": "acme-model"}
    cmd = [PYTHON, str(REPO / "examples" / "improve_your_own_agent.py"), str(tmp_path / "acme")]
    started = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "learned " in out.stdout and "library: Mean@2" in out.stdout and "baseline: Mean@2" in out.stdout
    assert "tools used: ['calculator']" in out.stdout and "answer: " in out.stdout
    assert "[G1]" in system_text(server.requests[-1])  # production calls carry E
    n = len(server.requests)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(server.requests) - n == 2, "a second run paid for learning or evaluation again"
    assert time.time() - started < 300


def test_callbacks_see_every_call_of_tfgrpos_own_agent(server: FakeOpenAIServer, tmp_path: Path) -> None:
    handler = Calls()
    rows = [{"question": f"Calculate {a} + 4.", "answer": str(a + 4)} for a in range(4)]
    tfgrpo.learn(
        dataset=rows, model="openai:fake", base_url=server.base_url, run_dir=tmp_path / "run",
        epochs=1, batch_size=2, group_size=4, progress=False, callbacks=[handler],
    )  # fmt: skip
    assert len(server.requests) > 8
    # rollouts included; an identical prompt within the run may come from the run's result cache
    assert len(handler.models) >= len(server.requests)
    assert None not in handler.models  # each nested under the learn run: one trace in LangSmith


def test_cap_retries_and_budget_apply_to_the_users_agent(server: FakeOpenAIServer, tmp_path: Path) -> None:
    rows = [{"question": f"Calculate {a} * 5.", "answer": str(a * 5)} for a in range(2, 6)]
    options: dict[str, Any] = dict(
        agent=acme_agent.factory, learner="openai:fake", base_url=server.base_url, epochs=1, batch_size=4,
        group_size=4, max_concurrency=2, retry_backoff=0.01, progress=False,
    )  # fmt: skip
    server.fail_next(2, status=500)  # the run's first calls are the user's agent's
    result = tfgrpo.learn(dataset=rows, run_dir=tmp_path / "run", **options)
    assert server.max_in_flight <= 2  # the run-wide cap holds for the user's model calls
    policy = result.report["totals"]["by_role"]["policy"]
    assert policy["retries"] == 2 and result.report["totals"]["rollouts_failed"] == 0
    assert policy["calls"] == 4 * 4 * 2

    server.reset_stats()
    with pytest.raises(BudgetExceeded, match="call again to resume"):
        tfgrpo.learn(dataset=rows, run_dir=tmp_path / "budget", budget_tokens=2500, **options)
    assert 0 < len(server.requests) < 4 * 4 * 2  # stopped before the rollouts were all paid for


def test_inference_graph_honours_context_and_configurable(server: FakeOpenAIServer) -> None:
    from tfgrpo.context import Context
    from tfgrpo.graphs.inference import build_inference_graph

    graph = build_inference_graph()
    question = {"messages": [("user", "Calculate 3 + 3.")]}
    graph.invoke(question, context=Context(model="openai:ctx-model", base_url=server.base_url))
    assert server.requests[-1]["model"] == "ctx-model"
    config: Any = {"configurable": {"model": "openai:cfg-model", "base_url": server.base_url}}
    graph.invoke(question, config, context=Context(model="openai:ctx-model", base_url=server.base_url))
    assert server.requests[-1]["model"] == "cfg-model"


def test_learn_on_a_compiled_user_graph(server: FakeOpenAIServer, tmp_path: Path) -> None:
    rows = [{"question": f"Calculate {a} - 9.", "answer": str(a - 9)} for a in range(3)]
    result = tfgrpo.learn(
        dataset=rows, agent=acme_agent.compiled(), learner="openai:fake", base_url=server.base_url,
        run_dir=tmp_path / "run", epochs=2, batch_size=3, group_size=4, progress=False,
    )  # fmt: skip
    assert result.report["totals"]["by_role"]["policy"]["calls"] == 2 * 3 * 4 * 2
    step2 = [b for b in server.requests if b["model"] == "acme-model"][-1]
    assert system_text(step2) == acme_agent.SYSTEM_PROMPT + "\n\n" + render_library(
        json.loads((tmp_path / "run" / "libraries" / "step-0000.json").read_text())
    )  # E of step 0, rendered as ExperienceMiddleware renders it in production


def test_learn_on_an_agent_without_a_model_is_refused_before_the_header(
    server: FakeOpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tfgrpo.cli import main

    run_dir = tmp_path / "run"
    code = main(["learn", "--agent", "tests/integration/acme_agent.py:factory", "--run-dir", str(run_dir)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""  # no run header, no embedded model's install
    assert err.strip().splitlines() == [
        "tfgrpo: error: learn --agent needs the model that learns from its runs: name --model or "
        "--learner-model (the agent brings its own model)"
    ]
    assert not run_dir.exists() and server.requests == []
