"""The embedded SmolLM2-135M model behind llama-cpp-python's server: real subprocess, real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.conftest import needs_embedded_model
from tfgrpo.models.local_server import LocalModelServer, find_gguf

pytestmark = needs_embedded_model


class Operation(BaseModel):
    op: Literal["ADD", "UPDATE", "DELETE", "NONE"]
    id: str | None = None
    content: str | None = None
    reason: str


class Operations(BaseModel):
    """Edits to the experience library."""

    analysis: str
    operations: list[Operation]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # still in the table: a zombie of an exited child counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.1)
    return gone(pid)


def chat(server: LocalModelServer, max_tokens: int, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model=server.model_name,
        base_url=server.base_url,
        api_key="not-needed",  # type: ignore[arg-type]
        temperature=kwargs.pop("temperature", 0.2),
        max_completion_tokens=max_tokens,
        extra_body={"max_tokens": max_tokens},
        timeout=120,
        max_retries=0,
        **kwargs,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalModelServer]:
    with LocalModelServer(log_dir=tmp_path_factory.mktemp("llama")) as srv:
        yield srv


def test_finds_the_bundled_gguf() -> None:
    path = find_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 10_000_000


def test_plain_completion_returns_text(server: LocalModelServer) -> None:
    assert server.running and server.base_url.startswith("http://127.0.0.1:")
    reply = chat(server, 64).invoke("What is 2 + 3? Answer briefly.")
    assert isinstance(reply.content, str) and reply.content.strip()


LIBRARY_PROMPT = [
    ("system", "You maintain a library of short problem-solving experiences."),
    ("user", "Library is empty. Lesson learned: check units before adding. Propose operations."),
]


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
def test_forced_tool_call_returns_a_tool_call(server: LocalModelServer, streaming: bool) -> None:
    model = chat(server, 256, streaming=streaming)
    out = model.with_structured_output(Operations, method="function_calling", include_raw=True).invoke(
        LIBRARY_PROMPT
    )
    raw = out["raw"]
    calls = list(raw.tool_calls) + list(raw.invalid_tool_calls)
    assert isinstance(out["parsed"], Operations) or calls, raw
    assert calls and calls[0]["name"] == "Operations"  # streamed: named once, not once per chunk


def test_request_seed_is_honoured(tmp_path: Path) -> None:
    # without prompt_cache a replayed KV prefix cannot nudge the logits: same seed, same text, exactly
    with LocalModelServer(log_dir=tmp_path, prompt_cache=False) as server:

        def sample(seed: int) -> str:
            reply = chat(server, 24, temperature=1.0, seed=seed).invoke("Invent a name for a dragon.")
            return str(reply.content)

        assert sample(11) == sample(11)
        assert len({sample(s) for s in (1, 2, 3)}) > 1


def test_concurrent_streams_all_complete(server: LocalModelServer) -> None:
    model = chat(server, 16, streaming=True)

    def stream(i: int) -> str:
        return "".join(str(c.content) for c in model.stream(f"Count from {i} to {i + 5}."))

    with ThreadPoolExecutor(3) as pool:
        texts = list(pool.map(stream, range(3)))
    assert all(t.strip() for t in texts), texts  # the server must not interrupt queued streams


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    srv = LocalModelServer(log_dir=tmp_path).start()
    pid = srv.pid
    assert pid is not None and not gone(pid)
    srv.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not srv.running
    srv.stop()  # idempotent


# A parent like the tfgrpo CLI, which installs Python's SIGINT handler itself: a process started with
# SIGINT ignored (a background job of a non-interactive shell) inherits the ignore otherwise.
_CHILD = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from tfgrpo.models.local_server import get_local_server
srv = get_local_server()
print(srv.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_signalled_parent_leaves_no_orphan(sig: signal.Signals, tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # a killed parent cannot remove its temp log
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.strip().isdigit(), parent.stderr.read() if parent.stderr else line
        server_pid = int(line)
        assert not gone(server_pid)
        parent.send_signal(sig)
        parent.wait(timeout=30)
        assert wait_gone(server_pid), f"llama server {server_pid} outlived its parent ({sig.name})"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
