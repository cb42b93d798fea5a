"""The public embedding API and the example under examples/, against the fake server over HTTP."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, cli_env
from tfgrpo.api import experienced_agent, load_library
from tfgrpo.errors import ConfigError
from tfgrpo.state.library import apply_operations, empty_library
from tfgrpo.testing.fake_openai import FakeOpenAIServer
from tfgrpo.tools.python_exec import sandbox_problem

pytestmark = pytest.mark.integration


@pytest.fixture
def library_dir(tmp_path: Path) -> Path:
    library, _, _ = apply_operations(
        empty_library(), [{"op": "ADD", "content": "Recompute every product twice."}], step=0
    )
    (tmp_path / "library.json").write_text(json.dumps(library))
    return tmp_path


def test_agent_is_a_runnable_sync_async_stream_and_tool(
    fake_server: FakeOpenAIServer, library_dir: Path
) -> None:
    agent = experienced_agent(library_dir, model="openai:fake", base_url=fake_server.base_url)
    out = agent.invoke("Calculate 6 * 7.")
    assert out["answer"] in {"42", "43"}  # the scripted policy is right or off by one
    system = fake_server.requests[-1]["messages"][0]
    assert "[G1] Recompute every product twice." in system["content"]

    assert asyncio.run(agent.ainvoke("Calculate 1 + 1."))["answer"] in {"2", "3"}
    nodes = [next(iter(chunk)) for chunk in agent.stream("Calculate 2 + 2.", stream_mode="updates")]
    assert nodes == ["model", "PolicyMiddleware.after_agent"]

    chain = agent | (lambda state: state["answer"])
    assert chain.invoke("Calculate 3 + 3.") in {"6", "7"}

    tool = agent.as_answer_tool("expert", "Computes arithmetic.")
    assert tool.invoke({"question": "Calculate 10 - 4."}) in {"6", "7"}


@pytest.mark.skipif(sandbox_problem() is not None, reason=f"no Python sandbox here: {sandbox_problem()}")
def test_math_domain_uses_the_python_tool(fake_server: FakeOpenAIServer, library_dir: Path) -> None:
    agent = experienced_agent(library_dir, model="openai:fake", base_url=fake_server.base_url, domain="math")
    out = agent.invoke("Calculate 123 * 456.")
    calls = [c for m in out["messages"] for c in getattr(m, "tool_calls", [])]
    assert [c["name"] for c in calls] == ["python"]
    assert out["answer"] == str(123 * 456)  # the answer came from the sandboxed Python run
    offered = {t["function"]["name"] for t in fake_server.requests[0].get("tools", [])}
    assert offered == {"python"}  # only the domain's tools are shown to the model


def test_bad_library_and_settings_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the experience library"):
        load_library(tmp_path)
    with pytest.raises(ConfigError, match="unknown agent setting"):
        experienced_agent(None, modle="openai:x")


def test_the_embedding_example_runs(fake_server: FakeOpenAIServer, library_dir: Path) -> None:
    env = cli_env() | {"TFGRPO_MODEL": "openai:fake", "OPENAI_BASE_URL": fake_server.base_url}
    out = subprocess.run(
        [PYTHON, str(REPO / "examples" / "embed_in_langchain.py"), str(library_dir)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "library: 1 experiences" in out.stdout
    assert "manager used: ['arithmetic_expert']" in out.stdout
    for label in ("sync:", "async:", "stream:", "chain:"):
        assert label in out.stdout
