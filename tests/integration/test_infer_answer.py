"""The embedded agent ends with an answer (issue 19, section 3): an empty final turn after tool calls gets
one more model call without tools; an answer still empty is reported as such, never as ``answer: ``.

Real HTTP (langchain-openai) to the fake server, with a scripted model that calls the python tool and then
replies with nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from tfgrpo.cli import main
from tfgrpo.testing.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.integration

PRODUCT = str(123456789 * 987654321)


def _tool_results(body: dict[str, Any]) -> list[str]:
    return [str(m["content"]) for m in body["messages"] if m["role"] == "tool"]


def tools_then_empty(body: dict[str, Any]) -> dict[str, Any]:
    """Calls python once, then replies empty while it has tools; answers when asked without tools."""
    results = _tool_results(body)
    if body.get("tools"):
        if not results:
            return {"tool_calls": [{"name": "python", "arguments": {"code": "print(123456789 * 987654321)"}}]}
        return {"content": ""}
    return {"content": f"The tool printed {results[-1].strip()}.\n\\boxed{{{results[-1].strip()}}}"}


def always_empty_after_tools(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("tools") and not _tool_results(body):
        return {"tool_calls": [{"name": "python", "arguments": {"code": "print(123456789 * 987654321)"}}]}
    return {"content": ""}


def infer(server: FakeOpenAIServer) -> int:
    return main([
        "infer", "--domain", "math", "--unsafe-python", "--trajectory", "--model", "openai:fake",
        "--base-url", server.base_url, "--question", "Use the python tool to compute 123456789 * 987654321",
    ])  # fmt: skip


def test_an_empty_turn_after_tool_calls_is_asked_again_without_tools(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FakeOpenAIServer(tools_then_empty) as server:
        code = infer(server)
        requests = server.requests
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"<- python: {PRODUCT}" in out
    assert out.strip().splitlines()[-1] == f"answer: {PRODUCT}"
    assert len(requests) == 3  # tool call, empty reply, the call without tools
    assert requests[1].get("tools") and not requests[2].get("tools")
    assert "give your final answer now" in requests[2]["messages"][0]["content"]


def test_an_answer_still_empty_is_reported_as_no_answer(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeOpenAIServer(always_empty_after_tools) as server:
        code = infer(server)
        calls = len(server.requests)
    out = capsys.readouterr().out
    assert code == 1
    assert not any(line.startswith("answer:") for line in out.splitlines()), out
    assert out.strip().splitlines()[-1].startswith("no answer: the model's final reply was empty")
    assert calls == 3  # asked once more, not in a loop
