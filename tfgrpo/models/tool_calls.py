"""Tool calls for Qwen on llama.cpp's server: render requests with the GGUF's own chat template, parse
the model's calls back into OpenAI ``tool_calls``. Pure functions: the server child process imports them
(see ``tfgrpo.models.local_server._BOOTSTRAP``); nothing here imports ``llama_cpp``.

Qwen2.5's template lists the tools in the system prompt and asks for ``<tool_call>{"name": ...,
"arguments": {...}}</tool_call>`` blocks; the Coder models often fence the same object in ```json or write
it bare, so every JSON object that names an offered tool and carries arguments counts as a call.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

_DECODER = json.JSONDecoder()
_FENCE = re.compile(r"```([A-Za-z0-9_]+)[ \t]*\n(.*?)```", re.S)
# what is left of a call's wrapper once its JSON is cut out
_WRAPPER = re.compile(r"<tool_call>\s*</tool_call>|<tool_call>\s*$|</?tool_call>|```[a-zA-Z]*\s*```")


def _call(name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": "call_" + uuid.uuid4().hex[:24],
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def code_tools(tools: list[dict[str, Any]]) -> dict[str, str]:
    """Offered tools that take exactly one required string parameter: tool name -> parameter name (a
    fenced block in the tool's language, e.g. ```python for ``python(code)``, is a call of it)."""
    found = {}
    for tool in tools:
        fn = tool.get("function") or {}
        params = fn.get("parameters") or {}
        props, required = params.get("properties") or {}, params.get("required") or []
        if len(required) == 1 and (props.get(required[0]) or {}).get("type") == "string":
            found[str(fn.get("name"))] = str(required[0])
    return found


def parse_tool_calls(
    text: str, names: set[str], code: dict[str, str] | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """(the text without the calls, OpenAI-style tool calls) for the calls of offered tools in ``text``:
    JSON objects naming a tool in ``names``; failing those, fenced code blocks in the language of a tool
    in ``code`` (tool name -> its one string parameter; the text then keeps everything before the
    first block: what follows it was written without the result)."""
    calls: list[dict[str, Any]] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    while (pos := text.find("{", pos)) >= 0:
        try:
            obj, end = _DECODER.raw_decode(text, pos)
        except ValueError:
            pos += 1
            continue
        if isinstance(obj, dict) and obj.get("name") in names:
            args = obj.get("arguments", obj.get("parameters", {}))
            if isinstance(args, dict | str):
                arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
                calls.append(_call(obj["name"], arguments))
                spans.append((pos, end))
        pos = end
    for start, end in reversed(spans):
        text = text[:start] + text[end:]
    if calls:
        return _WRAPPER.sub("", text).strip(), calls
    blocks = [(m, lang) for m in _FENCE.finditer(text) if (lang := m.group(1).lower()) in (code or {})]
    if not blocks or code is None:
        return text.strip(), calls
    for m, lang in blocks:
        calls.append(_call(lang, json.dumps({code[lang]: m.group(2)}, ensure_ascii=False)))
    return text[: blocks[0][0].start()].strip(), calls


def plain_message(message: dict[str, Any]) -> dict[str, Any]:
    """A request message as the Jinja template can render it: text content (never ``None``), tool-call
    arguments as objects (the template serializes them itself)."""
    m = dict(message)
    content = m.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    m["content"] = content or ""
    calls = []
    for call in m.get("tool_calls") or []:
        fn = dict(call.get("function") or {})
        with contextlib.suppress(TypeError, ValueError):
            fn["arguments"] = json.loads(fn.get("arguments") or "{}")
        calls.append({**call, "function": fn})
    if calls:
        m["tool_calls"] = calls
    return m


def with_tool_calls(out: dict[str, Any], tools: list[dict[str, Any]]) -> dict[str, Any]:
    """A chat completion whose text calls offered tools, turned into one with ``tool_calls``."""
    choice = out["choices"][0]
    names = {str((t.get("function") or {}).get("name")) for t in tools}
    content, calls = parse_tool_calls(choice["message"].get("content") or "", names, code_tools(tools))
    if calls:
        choice["message"]["content"] = content or None
        choice["message"]["tool_calls"] = calls
        choice["finish_reason"] = "tool_calls"
    return out


def as_chunks(out: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A finished chat completion as stream chunks (the text, then each call, then the finish reason)."""
    base = {
        "id": out["id"],
        "created": out["created"],
        "model": out["model"],
        "object": "chat.completion.chunk",
    }
    msg = out["choices"][0]["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    yield chunk({"role": "assistant", "content": msg.get("content") or ""})
    for i, call in enumerate(msg.get("tool_calls") or []):
        yield chunk({"tool_calls": [{"index": i, **call}]})
    yield {**chunk({}, out["choices"][0]["finish_reason"]), "usage": out.get("usage")}
