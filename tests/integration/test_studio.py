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


@pytest.fixture(scope="module")
def studio() -> Iterator[str]:
    exe = shutil.which("langgraph")
    if exe is None:
        pytest.skip("langgraph CLI not installed (pip install -e '.[test]' installs langgraph-cli[inmem])")
    port = free_port()
    env = dict(os.environ, LANGSMITH_TRACING="false", LANGGRAPH_CLI_NO_ANALYTICS="1")
    env.pop("OPENAI_API_KEY", None)
    log = open(REPO / ".langgraph_api.test.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [exe, "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail("langgraph dev exited: " + (REPO / ".langgraph_api.test.log").read_text()[-2000:])
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
        (REPO / ".langgraph_api.test.log").unlink(missing_ok=True)


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
        assert result["arms"] == ["library", "baseline"] and len(result["results"]) == 3 * 2 * 2
        assert all(r["reward"] in (0.0, 1.0) for r in result["results"])
        assert len(server.requests) == 12
