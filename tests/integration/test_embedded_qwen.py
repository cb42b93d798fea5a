"""The default embedded model, Qwen2.5-Coder-0.5B-Instruct, assembled from its PyPI part wheels and served
by llama.cpp: the assembled file's hash, tool calls coming back as OpenAI ``tool_calls`` through
langchain-openai, and a real ``python`` tool call in ``tfgrpo infer --domain math``."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from tests.conftest import PYTHON, cli_env, needs_qwen
from tfgrpo.local_chat import LocalChatOpenAI, local_chat_model
from tfgrpo.local_model import DEFAULT_LOCAL_MODEL, EMBEDDED_MODELS, QWEN_05B, LocalModelServer
from tfgrpo.weights import ensure_weights

pytestmark = [pytest.mark.integration, *needs_qwen]


@tool
def python(code: str) -> str:
    """Run Python 3 code and return what it prints."""
    return "391\n"


def chat(server: LocalModelServer, max_tokens: int = 200) -> LocalChatOpenAI:
    return local_chat_model(
        server.base_url, server.model_name, temperature=0.0, max_tokens=max_tokens, timeout=300
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalModelServer]:
    with LocalModelServer(model_name=DEFAULT_LOCAL_MODEL, log_dir=tmp_path_factory.mktemp("qwen")) as srv:
        yield srv


def test_the_assembled_file_has_the_published_hash(tmp_path: Path) -> None:
    path = ensure_weights(QWEN_05B, tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()  # independent of the module's own check
    assert path.stat().st_size == 491_400_064
    assert digest == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert path.read_bytes()[:4] == b"GGUF" and sorted(p.name for p in tmp_path.iterdir()) == [
        path.name,
        path.name + ".verified",
    ]
    assert EMBEDDED_MODELS[DEFAULT_LOCAL_MODEL].weights == QWEN_05B


def test_bound_tools_come_back_as_openai_tool_calls(server: LocalModelServer) -> None:
    model = chat(server).bind_tools([python])
    question = HumanMessage("Use the python tool to compute 17 * 23.")
    reply = model.invoke([question])
    assert isinstance(reply, AIMessage) and reply.tool_calls, reply
    call = reply.tool_calls[0]
    assert call["name"] == "python" and "17" in call["args"]["code"] and call["id"]
    # the tool result and the earlier call (content null) render back into the prompt
    result = ToolMessage("391\n", tool_call_id=call["id"], name="python")
    final = model.invoke([question, reply, result])  # rejected with HTTP 500 by the stock server
    assert isinstance(final, AIMessage) and (final.content or final.tool_calls), final
    grown = final.usage_metadata["input_tokens"] - reply.usage_metadata["input_tokens"]  # type: ignore[index]
    assert grown >= 20, grown  # the call and its <tool_response> were rendered into the prompt


def test_no_tools_offered_means_plain_text(server: LocalModelServer) -> None:
    reply = chat(server, 32).invoke("Say hello in one word.")
    assert isinstance(reply.content, str) and reply.content.strip() and not reply.tool_calls


def test_infer_math_shows_a_real_python_tool_call() -> None:
    env = {k: v for k, v in cli_env().items() if k not in ("TFGRPO_MODEL", "OPENAI_BASE_URL")}
    done = subprocess.run(
        [PYTHON, "-m", "tfgrpo.cli", "infer", "--domain", "math", "--trajectory", "--max-tokens", "256",
         "--question", "Use Python to compute 123456789 * 987654321. Give the exact integer."],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    calls = [ln for ln in lines if ln.startswith("-> python(")]
    results = [ln for ln in lines if ln.startswith("<- python:")]
    assert calls and results, done.stdout
    assert "code" in json.loads(calls[0][len("-> python(") : -1])
    # the tool really ran: its output (or the error of the model's code) came back into the trajectory
    assert all(len(r) > len("<- python: ") for r in results), done.stdout
    assert lines[-1].startswith("answer: "), done.stdout
