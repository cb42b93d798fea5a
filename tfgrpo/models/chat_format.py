"""The chat model class for the embedded llama.cpp server: langchain-openai's ``ChatOpenAI`` with the two
request adjustments the server needs."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_openai import ChatOpenAI


class LocalChatOpenAI(ChatOpenAI):
    """``ChatOpenAI`` for llama-cpp-python's server. LangChain sends ``content: null`` next to tool calls,
    which the server's request schema rejects (HTTP 500): it gets ``""`` instead. Build it with
    ``extra_body={"max_tokens": N}`` (the server ignores ``max_completion_tokens``)."""

    def _get_request_payload(
        self, input_: LanguageModelInput, *, stop: list[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        for message in payload.get("messages") or []:
            if isinstance(message, dict) and message.get("content") is None:
                message["content"] = ""
        return payload


def local_chat_model(
    base_url: str,
    model: str,
    *,
    temperature: float,
    max_tokens: int,
    timeout: float,
    grammar: str = "",
    **sampling: Any,
) -> LocalChatOpenAI:
    """``grammar``: GBNF text the server constrains sampling with (its ``grammar`` request field)."""
    return LocalChatOpenAI(
        model=model,
        base_url=base_url,
        api_key="not-needed",  # type: ignore[arg-type]
        temperature=temperature,
        max_completion_tokens=max_tokens,
        # llama.cpp ignores max_completion_tokens
        extra_body={"max_tokens": max_tokens, **({"grammar": grammar} if grammar else {})},
        timeout=timeout,
        max_retries=0,  # tfgrpo's ledger retries transient errors itself (and counts them)
        **sampling,  # top_p when set
    )
