"""Test doubles for tfgrpo, also used by the product's offline demo mode.

* :class:`FakeOpenAIServer` -- stdlib HTTP server speaking the OpenAI
  chat-completions protocol (``python -m tfgrpo.testing.fake_openai``).
* :class:`ScriptedChatModel` -- in-process LangChain chat model.

Both are driven by the same *responder* contract: ``Responder = Callable[[dict],
Reply]`` where the argument is an OpenAI chat-completions request body and
``Reply`` is ``{"content": str, "tool_calls": [{"name": str, "arguments": dict | str}]}``.

Names are imported lazily so that ``python -m tfgrpo.testing.fake_openai`` does not
import its own module twice and the HTTP fake does not need LangChain at import time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tfgrpo.testing.fake_openai import (
        FAKE_MODEL_ID,
        FakeOpenAIServer,
        Reply,
        Responder,
        ResponderLike,
        ToolCallSpec,
        echo_responder,
        estimate_reply_tokens,
        estimate_request_tokens,
        estimate_tokens,
        forced_tool_name,
        last_user_text,
        message_text,
        request_key,
        tool_names,
    )
    from tfgrpo.testing.scripted import ScriptedChatModel, messages_to_request

__all__ = [
    "FAKE_MODEL_ID",
    "FakeOpenAIServer",
    "Reply",
    "Responder",
    "ResponderLike",
    "ScriptedChatModel",
    "ToolCallSpec",
    "echo_responder",
    "estimate_reply_tokens",
    "estimate_request_tokens",
    "estimate_tokens",
    "forced_tool_name",
    "last_user_text",
    "message_text",
    "messages_to_request",
    "request_key",
    "tool_names",
]

_EXPORTS: dict[str, str] = {
    "FAKE_MODEL_ID": "fake_openai",
    "FakeOpenAIServer": "fake_openai",
    "Reply": "fake_openai",
    "Responder": "fake_openai",
    "ResponderLike": "fake_openai",
    "ToolCallSpec": "fake_openai",
    "echo_responder": "fake_openai",
    "estimate_reply_tokens": "fake_openai",
    "estimate_request_tokens": "fake_openai",
    "estimate_tokens": "fake_openai",
    "forced_tool_name": "fake_openai",
    "last_user_text": "fake_openai",
    "message_text": "fake_openai",
    "request_key": "fake_openai",
    "tool_names": "fake_openai",
    "ScriptedChatModel": "scripted",
    "messages_to_request": "scripted",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
