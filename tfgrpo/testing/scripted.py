"""Offline, rule-based LangChain chat model driven by a responder.

:class:`ScriptedChatModel` turns LangChain messages (and tools bound through
:meth:`ScriptedChatModel.bind_tools`) into the same OpenAI chat-completions request
dict that :class:`~tfgrpo.testing.fake_openai.FakeOpenAIServer` would receive from
``ChatOpenAI``, calls the responder, and converts the :class:`Reply` into an
``AIMessage``. One responder therefore drives both fakes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    InvalidToolCall,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

from tfgrpo.testing.fake_openai import (
    Reply,
    ResponderLike,
    echo_responder,
    estimate_reply_tokens,
    estimate_request_tokens,
    normalize_reply,
    request_key,
    tool_call_id,
)

__all__ = ["ScriptedChatModel", "message_to_dict", "messages_to_request"]

_lc_openai_convert: Callable[[BaseMessage], dict] | None
try:  # Same wire format as ChatOpenAI when langchain-openai is available.
    from langchain_openai.chat_models.base import _convert_message_to_dict as _lc_openai_convert
except ImportError:  # pragma: no cover - langchain-openai is a dependency
    _lc_openai_convert = None


def _content_to_openai(content: Any) -> Any:
    if isinstance(content, str):
        return content
    parts: list[Any] = []
    for block in content or []:
        if isinstance(block, str):
            parts.append({"type": "text", "text": block})
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        else:
            parts.append(block)
    return parts


def _fallback_convert(message: BaseMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"content": _content_to_openai(message.content)}
    if message.name is not None:
        out["name"] = message.name
    if isinstance(message, ChatMessage):
        out["role"] = message.role
    elif isinstance(message, HumanMessage):
        out["role"] = "user"
    elif isinstance(message, AIMessage):
        out["role"] = "assistant"
        calls = [
            {
                "id": tc.get("id"),
                "type": "function",
                "function": {"name": tc["name"], "arguments": json.dumps(tc["args"])},
            }
            for tc in message.tool_calls
        ] + [
            {
                "id": tc.get("id"),
                "type": "function",
                "function": {"name": tc.get("name"), "arguments": tc.get("args")},
            }
            for tc in message.invalid_tool_calls
        ]
        if calls:
            out["tool_calls"] = calls
            out["content"] = out["content"] or None
    elif isinstance(message, SystemMessage):
        out["role"] = "system"
    elif isinstance(message, FunctionMessage):
        out["role"] = "function"
    elif isinstance(message, ToolMessage):
        return {
            "role": "tool",
            "content": out["content"],
            "tool_call_id": message.tool_call_id,
        }
    else:
        raise TypeError(f"unsupported message type {type(message)!r}")
    return out


def message_to_dict(message: BaseMessage) -> dict[str, Any]:
    """Convert a LangChain message to an OpenAI chat-completions message dict."""
    if _lc_openai_convert is not None:
        return dict(_lc_openai_convert(message))
    return _fallback_convert(message)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def messages_to_request(
    messages: Sequence[BaseMessage], *, model: str = "scripted", **params: Any
) -> dict[str, Any]:
    """Build the OpenAI request body ``ChatOpenAI`` would send for ``messages``.

    ``params`` (``tools``, ``tool_choice``, ``seed``, ``temperature``, ...) are
    copied when JSON-serializable and not ``None``.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": [message_to_dict(m) for m in messages],
    }
    for key, value in params.items():
        if value is not None and _jsonable(value):
            body[key] = value
    return body


def _normalize_tool_choice(tool_choice: dict | str | bool | None, names: list[str]) -> dict | str | None:
    """Mirror ``ChatOpenAI.bind_tools``' tool_choice mapping."""
    if tool_choice is None or tool_choice is False:
        return None
    if tool_choice is True or tool_choice == "any":
        return "required"
    if isinstance(tool_choice, str):
        if tool_choice in names:
            return {"type": "function", "function": {"name": tool_choice}}
        if tool_choice in ("auto", "none", "required"):
            return tool_choice
        raise ValueError(
            f"tool_choice {tool_choice!r} is neither a bound tool ({names}) nor "
            "one of 'auto', 'none', 'required', 'any'"
        )
    if isinstance(tool_choice, dict):
        return tool_choice
    raise ValueError(f"unrecognized tool_choice {tool_choice!r}")


def _reply_to_message(body: dict, reply: Reply, model_name: str) -> AIMessage:
    key = request_key(body)
    tool_calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for i, tc in enumerate(reply.get("tool_calls", []) or []):
        call_id = tool_call_id(key, i)
        args = tc.get("arguments", {})
        if isinstance(args, str):
            try:
                parsed = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as exc:
                invalid.append(
                    InvalidToolCall(
                        name=tc["name"],
                        args=args,
                        id=call_id,
                        error=f"Function {tc['name']} arguments are not valid JSON: {exc}",
                        type="invalid_tool_call",
                    )
                )
                continue
            if not isinstance(parsed, dict):
                invalid.append(
                    InvalidToolCall(
                        name=tc["name"],
                        args=args,
                        id=call_id,
                        error=f"Function {tc['name']} arguments are not a JSON object",
                        type="invalid_tool_call",
                    )
                )
                continue
            args = parsed
        tool_calls.append(ToolCall(name=tc["name"], args=dict(args), id=call_id, type="tool_call"))
    input_tokens = estimate_request_tokens(body)
    output_tokens = estimate_reply_tokens(reply)
    has_calls = bool(tool_calls or invalid)
    return AIMessage(
        content=reply.get("content", "") or "",
        tool_calls=tool_calls,
        invalid_tool_calls=invalid,
        usage_metadata={
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        },
        response_metadata={
            "model_name": model_name,
            "finish_reason": "tool_calls" if has_calls else "stop",
            "model_provider": "scripted",
        },
    )


class ScriptedChatModel(BaseChatModel):
    """Chat model whose answers come from a responder (see ``fake_openai.Reply``).

    ``ScriptedChatModel(responder)`` or ``ScriptedChatModel(responder=...)``.
    ``bind_tools`` and the default ``with_structured_output(method="function_calling")``
    work; responders should use :func:`~tfgrpo.testing.fake_openai.forced_tool_name`
    to detect forced calls (it accepts ``"required"`` with a single tool, which is
    what ``BaseChatModel.with_structured_output`` sends). Tool-call ``arguments``
    given as unparseable strings become ``AIMessage.invalid_tool_calls``.
    Every request body is recorded in :attr:`calls` (thread-safe).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    responder: ResponderLike = Field(default=echo_responder)
    model_name: str = "scripted"
    seed: int | None = None
    temperature: float | None = None
    disable_streaming: bool | Literal["tool_calling"] = True

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _calls: list[dict] = PrivateAttr(default_factory=list)

    def __init__(self, responder: ResponderLike | None = None, **kwargs: Any) -> None:
        if responder is not None:
            kwargs["responder"] = responder
        super().__init__(**kwargs)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    @property
    def calls(self) -> list[dict]:
        """Request bodies passed to the responder, in order (a snapshot copy)."""
        with self._lock:
            return list(self._calls)

    @property
    def call_count(self) -> int:
        with self._lock:
            return len(self._calls)

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict | str | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        formatted = [convert_to_openai_tool(t) for t in tools]
        names = [t["function"]["name"] for t in formatted if "function" in t]
        choice = _normalize_tool_choice(tool_choice, names)
        if choice is not None:
            kwargs["tool_choice"] = choice
        return self.bind(tools=formatted, **kwargs)

    def _build_request(
        self, messages: list[BaseMessage], stop: list[str] | None, **kwargs: Any
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"seed": self.seed, "temperature": self.temperature}
        params.update(kwargs)
        if stop:
            params["stop"] = stop
        return messages_to_request(messages, model=self.model_name, **params)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        body = self._build_request(messages, stop, **kwargs)
        with self._lock:
            self._calls.append(body)
        reply = normalize_reply(self.responder(body))
        message = _reply_to_message(body, reply, self.model_name)
        return ChatResult(
            generations=[ChatGeneration(message=message)],
            llm_output={"model_name": self.model_name},
        )
