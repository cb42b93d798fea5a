"""Tests for the test doubles in ``tfgrpo.testing`` (fake OpenAI server, scripted model).

Everything runs offline against 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

import tfgrpo
from tfgrpo.testing import (
    FakeOpenAIServer,
    Reply,
    ScriptedChatModel,
    echo_responder,
    forced_tool_name,
    last_user_text,
    request_key,
)

# ---------------------------------------------------------------------------
# A responder shared by the HTTP fake and the scripted model
# ---------------------------------------------------------------------------


class Verdict(BaseModel):
    """A structured answer."""

    label: str
    score: int


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def responder(body: dict) -> Reply:
    text = last_user_text(body)
    forced = forced_tool_name(body)
    if forced == "Verdict":
        if "malformed" in text:
            return {"content": "", "tool_calls": [{"name": "Verdict", "arguments": '{"label": "x", '}]}
        return {
            "content": "",
            "tool_calls": [{"name": "Verdict", "arguments": {"label": "good", "score": 7}}],
        }
    messages = body["messages"]
    tool_results = [m for m in messages if m.get("role") == "tool"]
    if tool_results:
        return {"content": f"the sum is {tool_results[-1]['content']}"}
    if body.get("tools") and "add" in text:
        return {"content": "", "tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]}
    return {"content": "echo: " + text}


def _post(url: str, body: dict[str, Any], timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _chat_body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "fake", "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    srv = FakeOpenAIServer(responder)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _llm(srv: FakeOpenAIServer, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(model="fake", base_url=srv.base_url, api_key="x", max_retries=0, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# FakeOpenAIServer through ChatOpenAI
# ---------------------------------------------------------------------------


def test_plain_invoke(server: FakeOpenAIServer) -> None:
    msg = _llm(server).invoke("hi there")
    assert msg.content == "echo: hi there"
    assert msg.usage_metadata is not None
    assert msg.usage_metadata["input_tokens"] >= 1
    assert msg.usage_metadata["output_tokens"] >= 1
    assert len(server.requests) == 1
    assert len(server.completed) == 1  # recorded before the client could return
    assert server.in_flight == 0
    assert server.requests[0]["messages"] == [{"role": "user", "content": "hi there"}]


def test_raw_endpoints(server: FakeOpenAIServer) -> None:
    base = server.base_url
    with urllib.request.urlopen(base.removesuffix("/v1") + "/health", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(base + "/models", timeout=5) as resp:
        models = json.loads(resp.read())
    assert [m["id"] for m in models["data"]] == ["fake"]

    # also served without the /v1 prefix; tool-call wire format
    body = _chat_body(
        "add please",
        tools=[{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
    )
    status, _, raw = _post(base.removesuffix("/v1") + "/chat/completions", body)
    assert status == 200
    data = json.loads(raw)
    assert data["object"] == "chat.completion"
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["role"] == "assistant"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert json.loads(call["function"]["arguments"]) == {"a": 2, "b": 3}
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    status, _, raw = _post(base + "/nope", body)
    assert status == 404 and "error" in json.loads(raw)


def test_structured_output_function_calling(server: FakeOpenAIServer) -> None:
    result = _llm(server).with_structured_output(Verdict, method="function_calling").invoke("judge")
    assert result == Verdict(label="good", score=7)
    sent = server.requests[-1]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "Verdict"}}
    assert [t["function"]["name"] for t in sent["tools"]] == ["Verdict"]


def test_bind_tools_round_trip(server: FakeOpenAIServer) -> None:
    llm = _llm(server).bind_tools([add])
    messages: list[Any] = [HumanMessage("please add 2 and 3")]
    first = llm.invoke(messages)
    assert isinstance(first, AIMessage)
    (call,) = first.tool_calls
    assert call["name"] == "add" and call["args"] == {"a": 2, "b": 3}
    messages += [first, ToolMessage(str(add(**call["args"])), tool_call_id=call["id"])]
    final = llm.invoke(messages)
    assert final.content == "the sum is 5"
    assistant = server.requests[-1]["messages"][1]
    assert assistant["role"] == "assistant" and assistant["tool_calls"][0]["id"] == call["id"]


def test_streaming(server: FakeOpenAIServer) -> None:
    chunks = list(_llm(server).stream("a reasonably long message to split into chunks"))
    assert len(chunks) > 2
    full: Any = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.content == "echo: a reasonably long message to split into chunks"
    assert full.usage_metadata is not None and full.usage_metadata["total_tokens"] > 0

    tool_chunks = list(_llm(server).bind_tools([add]).stream("add them"))
    merged: Any = tool_chunks[0]
    for t in tool_chunks[1:]:
        merged = merged + t
    assert [(tc["name"], tc["args"]) for tc in merged.tool_calls] == [("add", {"a": 2, "b": 3})]
    assert server.requests[-1]["stream"] is True
    assert len(server.completed) == 2


def test_fail_next_500_then_recovers(server: FakeOpenAIServer) -> None:
    server.fail_next(1)
    with pytest.raises(openai.InternalServerError) as excinfo:
        _llm(server).invoke("boom")
    assert excinfo.value.status_code == 500
    assert _llm(server).invoke("fine").content == "echo: fine"
    assert len(server.requests) == 2


def test_fail_next_429_has_retry_after(server: FakeOpenAIServer) -> None:
    server.fail_next(2, status=429)
    with pytest.raises(openai.RateLimitError):
        _llm(server).invoke("slow down")
    status, headers, raw = _post(server.base_url + "/chat/completions", _chat_body("x"))
    assert status == 429
    assert {k.lower(): v for k, v in headers.items()}["retry-after"] == "0"
    assert json.loads(raw)["error"]["type"] == "rate_limit_exceeded"


def test_fail_rate_is_deterministic() -> None:
    def pattern() -> list[int]:
        with FakeOpenAIServer(fail_rate=0.5, fail_status=503, seed=7) as srv:
            return [_post(srv.base_url + "/chat/completions", _chat_body("x"))[0] for _ in range(12)]

    first = pattern()
    assert first == pattern()
    assert set(first) == {200, 503}


def test_malformed_next(server: FakeOpenAIServer) -> None:
    server.malformed_next(1)
    with pytest.raises((json.JSONDecodeError, openai.APIError)):
        _llm(server).invoke("garbage please")
    assert _llm(server).invoke("ok").content == "echo: ok"


def test_hang_next_times_out_client(server: FakeOpenAIServer) -> None:
    server.hang_next(1, seconds=30)
    start = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        _llm(server, timeout=0.3).invoke("hang")
    assert time.monotonic() - start < 5
    assert len(server.completed) == 0
    # stop() (fixture teardown) interrupts the hanging handler


def test_hold_and_release(server: FakeOpenAIServer) -> None:
    server.hold(lambda body: "freeze" in last_user_text(body))
    results: queue.Queue[Any] = queue.Queue()
    t = threading.Thread(target=lambda: results.put(_llm(server).invoke("freeze me").content))
    t.start()
    try:
        assert server.wait_for_held(1, timeout=5)
        assert server.held_count() == 1
        # other requests are not affected by the gate
        assert _llm(server).invoke("pass").content == "echo: pass"
        assert len(server.requests) == 2
        assert [last_user_text(b) for b in server.completed] == ["pass"]
        assert results.empty()
    finally:
        server.release()
        t.join(timeout=5)
    assert results.get_nowait() == "echo: freeze me"
    assert server.held_count() == 0
    assert len(server.completed) == 2


def test_stop_drops_held_requests() -> None:
    srv = FakeOpenAIServer().start()
    errors: queue.Queue[BaseException] = queue.Queue()

    def call() -> None:
        try:
            _llm(srv, timeout=10).invoke("never answered")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.put(exc)

    t = threading.Thread(target=call)
    try:
        srv.hold(lambda body: True)
        t.start()
        assert srv.wait_for_held(1, timeout=5)
    finally:
        srv.stop()
        t.join(timeout=5)
    assert not t.is_alive()
    assert isinstance(errors.get_nowait(), openai.APIConnectionError)
    assert len(srv.requests) == 1 and srv.completed == []


def test_max_in_flight_with_latency() -> None:
    with FakeOpenAIServer(latency=0.4) as srv:
        llm = _llm(srv)
        threads = [threading.Thread(target=llm.invoke, args=(f"q{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert srv.max_in_flight == 4
        assert srv.in_flight == 0
        assert len(srv.completed) == 4


def test_request_key_identifies_identical_calls() -> None:
    a = _chat_body("same", seed=1, stream=False)
    b = _chat_body("same", seed=1, stream=True, temperature=0.7)
    assert request_key(a) == request_key(b)
    assert request_key(a) != request_key(_chat_body("same", seed=2))
    assert request_key(a) != request_key(_chat_body("other", seed=1))
    assert FakeOpenAIServer.request_key(a) == request_key(a)


def test_echo_responder_forced_tool() -> None:
    body = _chat_body(
        "x",
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        tool_choice={"type": "function", "function": {"name": "f"}},
    )
    assert echo_responder(body) == {"content": "", "tool_calls": [{"name": "f", "arguments": {}}]}
    assert echo_responder(_chat_body("x")) == {"content": "echo: x"}


def test_cli_entry() -> None:
    env = dict(os.environ)
    root = str(Path(tfgrpo.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tfgrpo.testing.fake_openai",
            "--port",
            "0",
            "--latency",
            "0.01",
            "--responder",
            "tfgrpo.testing.fake_openai:echo_responder",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()  # type: ignore[union-attr]
        line = lines.get(timeout=15).strip()
        assert line.startswith("listening on http://127.0.0.1:"), (line, proc.poll())
        base_url = line.removeprefix("listening on ")
        assert base_url.endswith("/v1")
        status, _, raw = _post(base_url + "/chat/completions", _chat_body("cli"))
        assert status == 200
        assert json.loads(raw)["choices"][0]["message"]["content"] == "echo: cli"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


# ---------------------------------------------------------------------------
# ScriptedChatModel
# ---------------------------------------------------------------------------


def test_scripted_plain() -> None:
    model = ScriptedChatModel(responder)
    msg = model.invoke([SystemMessage("be brief"), HumanMessage("hello")])
    assert msg.content == "echo: hello"
    assert msg.usage_metadata is not None
    assert msg.usage_metadata["total_tokens"] == (
        msg.usage_metadata["input_tokens"] + msg.usage_metadata["output_tokens"]
    )
    assert model.call_count == 1
    assert model.calls[0]["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
    ]
    assert ScriptedChatModel().invoke("x").content == "echo: x"  # default echo_responder


def test_scripted_structured_output() -> None:
    model = ScriptedChatModel(responder=responder)
    assert model.with_structured_output(Verdict).invoke("judge") == Verdict(label="good", score=7)
    out: Any = model.with_structured_output(Verdict, method="function_calling", include_raw=True).invoke(
        "judge"
    )
    assert out["parsed"] == Verdict(label="good", score=7)
    assert out["parsing_error"] is None
    assert out["raw"].tool_calls[0]["id"].startswith("call_")
    assert model.calls[-1]["tool_choice"] == "required"


def test_scripted_invalid_tool_call() -> None:
    model = ScriptedChatModel(responder)
    out: Any = model.with_structured_output(Verdict, include_raw=True).invoke("malformed please")
    raw = out["raw"]
    assert out["parsed"] is None
    assert raw.tool_calls == []
    (bad,) = raw.invalid_tool_calls
    assert bad["name"] == "Verdict" and bad["args"] == '{"label": "x", '
    assert bad["error"]


def test_scripted_bind_tools_matches_server_request(server: FakeOpenAIServer) -> None:
    model = ScriptedChatModel(responder)
    scripted = model.bind_tools([add])
    first = scripted.invoke("please add")
    (call,) = first.tool_calls
    assert call["args"] == {"a": 2, "b": 3}
    history = [HumanMessage("please add"), first, ToolMessage("5", tool_call_id=call["id"])]
    assert scripted.invoke(history).content == "the sum is 5"

    # the same conversation over HTTP produces the same request messages and tool schema
    _llm(server).bind_tools([add]).invoke(history)
    assert server.requests[-1]["messages"] == model.calls[-1]["messages"]
    assert server.requests[-1]["tools"] == model.calls[-1]["tools"]
