"""Parsing the embedded Qwen's tool calls into OpenAI ``tool_calls`` (the server-side half of tool use on
llama.cpp; the real server is exercised in tests/integration/test_embedded_qwen.py)."""

from __future__ import annotations

import json

from tfgrpo.models.tool_calls import as_chunks, code_tools, parse_tool_calls, plain_message, with_tool_calls

PYTHON = {
    "type": "function",
    "function": {
        "name": "python",
        "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]},
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "k": {"type": "integer"}},
            "required": ["query", "k"],
        },
    },
}


def args_of(call: dict) -> dict:  # type: ignore[type-arg]
    return json.loads(call["function"]["arguments"])


def test_template_style_fenced_and_bare_calls_are_all_calls() -> None:
    for text in (
        'Let me run it.\n<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}\n</tool_call>',
        '```json\n{"name": "python", "arguments": {"code": "print(1)"}}\n```',
        '{"name": "python", "arguments": {"code": "print(1)"}}',
    ):
        content, calls = parse_tool_calls(text, {"python"})
        assert [c["function"]["name"] for c in calls] == ["python"] and args_of(calls[0]) == {
            "code": "print(1)"
        }
        assert "tool_call" not in content and "```" not in content and "{" not in content
        assert calls[0]["id"].startswith("call_")


def test_objects_naming_no_offered_tool_stay_text() -> None:
    text = 'The set is {"name": "other", "arguments": {}} and {1, 2}. \\boxed{3}'
    assert parse_tool_calls(text, {"python"}) == (text, [])


def test_a_python_code_block_is_a_python_call_when_python_is_offered() -> None:
    text = "First compute it.\n```python\nprint(17 * 23)\n```\nSo the answer is \\boxed{391}."
    tools = code_tools([PYTHON, SEARCH])
    assert tools == {"python": "code"}  # search takes two required parameters
    content, calls = parse_tool_calls(text, {"python", "search"}, tools)
    assert content == "First compute it." and args_of(calls[0]) == {"code": "print(17 * 23)\n"}
    assert parse_tool_calls(text, {"search"}, {})[1] == []  # not offered: plain text


def test_completion_gets_tool_calls_and_streams_them() -> None:
    out = {
        "id": "x",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": '<tool_call>{"name": "python", "arguments": {"code": "print(2)"}}</tool_call>',
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }
    done = with_tool_calls(out, [PYTHON])
    choice = done["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    chunks = list(as_chunks(done))
    assert chunks[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "python"
    assert (
        chunks[-1]["choices"][0]["finish_reason"] == "tool_calls" and chunks[-1]["usage"]["total_tokens"] == 7
    )


def test_messages_are_made_renderable() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "python", "arguments": '{"code": "1"}'}}
    m = plain_message({"role": "assistant", "content": None, "tool_calls": [call]})
    assert m["content"] == "" and m["tool_calls"][0]["function"]["arguments"] == {"code": "1"}
    assert plain_message({"role": "user", "content": [{"type": "text", "text": "hi"}]})["content"] == "hi"
