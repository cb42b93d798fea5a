"""Web search and page extraction through Tavily (``tavily-python``), built lazily.

Importing this module imports no Tavily code and needs no key: :func:`web_tools` checks for
``TAVILY_API_KEY`` and the tools create the client at their first call. Failures of a call (HTTP errors,
timeouts, a refused key, no connection) come back to the agent as an ``error: ...`` text instead of
raising. The key never appears in a tool's output, an error text or an exception message.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from tfgrpo.bounded import BoundedDict
from tfgrpo.errors import ConfigError
from tfgrpo.tools.corpus import fit_blocks, truncate

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool

KEY_ENV = "TAVILY_API_KEY"
BASE_URL_ENV = "TAVILY_API_BASE_URL"  # optional: a Tavily-compatible endpoint (proxy, test stub)

WEB_SEARCH_DESCRIPTION = (
    "Search the web. Input: a search query. Returns the top results with their titles, URLs and a "
    "snippet of each page."
)
WEB_EXTRACT_DESCRIPTION = (
    "Fetch the main text of a web page. Input: a full URL (e.g. one from web_search). Returns the "
    "page text, truncated if long."
)


def _api_key() -> str | None:
    key = os.environ.get(KEY_ENV, "").strip()
    return key or None


def web_search_available() -> bool:
    """Whether the web tools can be built (``TAVILY_API_KEY`` is set). Makes no request."""
    return _api_key() is not None


_CLIENTS: BoundedDict[tuple[str, str | None], Any] = BoundedDict(16)
_CLIENTS_LOCK = threading.Lock()


def _client(key: str, base_url: str | None) -> Any:
    with _CLIENTS_LOCK:
        client = _CLIENTS.get((key, base_url))
        if client is None:
            from tavily import TavilyClient

            client = TavilyClient(api_key=key, api_base_url=base_url)
            _CLIENTS[(key, base_url)] = client
        return client


def _scrub(text: str, key: str) -> str:
    """``text`` with the key blanked out, should a server or a library ever echo it."""
    return text.replace(key, "[redacted]") if len(key) >= 6 else text


def _error_text(tool: str, exc: BaseException, key: str) -> str:
    """One line for the agent: which call failed and why (HTTP status, timeout, ...)."""
    detail = " ".join(str(exc).split()) or "no details"
    return truncate(_scrub(f"error: {tool} failed: {type(exc).__name__}: {detail}", key), 400)


class _WebSearchInput(BaseModel):
    query: str = Field(description="What to search for on the web.")


class _WebExtractInput(BaseModel):
    url: str = Field(description="The full URL of the page to read, starting with http:// or https://.")


def web_tools(
    max_chars: int = 2000,
    api_base_url: str | None = None,
    *,
    max_results: int = 5,
    timeout: float = 30.0,
) -> list[BaseTool]:
    """``[web_search, web_extract]`` tools backed by Tavily.

    ``api_base_url`` points the client elsewhere than Tavily's API (default: ``$TAVILY_API_BASE_URL``,
    else Tavily's). Each tool's output is at most ``max_chars`` characters. Raises :class:`ConfigError`
    when ``TAVILY_API_KEY`` is not set.
    """
    from langchain_core.tools import StructuredTool

    key = _api_key()
    if key is None:
        raise ConfigError(f"web search needs {KEY_ENV} (set it in the environment, or run without web tools)")
    if max_chars < 100:
        raise ConfigError(f"tool max_chars must be at least 100, got {max_chars}")
    if max_results < 1:
        raise ConfigError(f"web search max_results must be at least 1, got {max_results}")
    if timeout <= 0:
        raise ConfigError(f"web search timeout must be positive, got {timeout}")
    base_url = (api_base_url or os.environ.get(BASE_URL_ENV) or "").strip().rstrip("/") or None

    def web_search(query: str) -> str:
        if not query.strip():
            return "error: empty query: give a few words to search for."
        try:
            response = _client(key, base_url).search(
                query, max_results=max_results, search_depth="basic", timeout=timeout
            )
            results = [r for r in response.get("results") or [] if isinstance(r, dict)]
        except Exception as exc:  # every failure goes back to the agent as text
            return _error_text("web_search", exc, key)
        if not results:
            return f"No web results for {query!r}."
        blocks = [
            (
                f"[{i}] {str(r.get('title') or '(no title)').strip()}\nURL: {r.get('url', '')}\n",
                " ".join(str(r.get("content") or "").split()),
            )
            for i, r in enumerate(results, 1)
        ]
        return fit_blocks([(_scrub(h, key), _scrub(b, key)) for h, b in blocks], max_chars)

    def web_extract(url: str) -> str:
        url = url.strip()
        if not url.startswith(("http://", "https://")):
            return f"error: not a web address: {url!r} (give a full URL starting with http:// or https://)"
        try:
            response = _client(key, base_url).extract(urls=[url], timeout=timeout)
            pages = [r for r in response.get("results") or [] if isinstance(r, dict) and r.get("raw_content")]
            failed = [f for f in response.get("failed_results") or [] if isinstance(f, dict)]
        except Exception as exc:
            return _error_text("web_extract", exc, key)
        if pages:
            text = f"{pages[0].get('url') or url}\n{str(pages[0]['raw_content']).strip()}"
        else:
            reason = " ".join(str(failed[0].get("error") or "").split()) if failed else ""
            text = f"error: could not extract {url}" + (f": {reason}" if reason else " (no content)")
        return truncate(_scrub(text, key), max_chars)

    return [
        StructuredTool.from_function(
            func=web_search,
            name="web_search",
            description=WEB_SEARCH_DESCRIPTION,
            args_schema=_WebSearchInput,
        ),
        StructuredTool.from_function(
            func=web_extract,
            name="web_extract",
            description=WEB_EXTRACT_DESCRIPTION,
            args_schema=_WebExtractInput,
        ),
    ]
