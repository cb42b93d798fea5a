"""The agent's tools, configured at call time from the run context (``ToolRuntime``).

The tools are registered once in the graph (so LangGraph's tool node can run them) but read their
settings (corpus files, Python limits, output size) from the context of the run that calls them, and
build what they need lazily: importing this module needs no key, no corpus and no network.
The policy middleware shows the model only the tools of the run's ``domain``.
"""

from __future__ import annotations

import os
from typing import Any

from langchain.tools import ToolRuntime
from langchain_core.tools import BaseTool, tool

from tfgrpo.context import Context, as_context
from tfgrpo.errors import TfgrpoError


def _ctx(runtime: ToolRuntime[Context]) -> Context:
    return as_context(runtime.context)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} characters truncated]"


@tool
def python(code: str, runtime: ToolRuntime[Context]) -> str:
    """Run Python 3 code in a sandbox and return what it prints. Use print() to see results.
    No network, no files kept between calls, a time limit per call."""
    from tfgrpo.tools.python_exec import run_python

    ctx = _ctx(runtime)
    return run_python(
        code, timeout=ctx.python_timeout, max_output=ctx.tool_max_chars, unsafe=ctx.unsafe_python
    ).render()


def _corpus(ctx: Context) -> Any:
    from tfgrpo.tools.corpus import CorpusIndex

    paths = [p.strip() for p in ctx.corpus.split(",") if p.strip()]
    if not paths:
        raise TfgrpoError("no corpus configured (set 'corpus' in the context, or --corpus)")
    return CorpusIndex.load(paths)


@tool
def search(query: str, runtime: ToolRuntime[Context]) -> str:
    """Search the offline document collection. Input: a short keyword query. Returns the top matching
    paragraphs with their titles."""
    ctx = _ctx(runtime)
    try:
        docs = _corpus(ctx).search(query, k=5)
    except TfgrpoError as exc:
        return f"error: {exc}"
    if not docs:
        return "no results"
    text = "\n\n".join(f"[{d.title}] {d.text}" for d in docs)
    return _truncate(text, ctx.tool_max_chars)


@tool
def open_page(title: str, runtime: ToolRuntime[Context]) -> str:
    """Return the full paragraph of the document with exactly this title (from a search result)."""
    ctx = _ctx(runtime)
    try:
        doc = _corpus(ctx).get(title)
    except TfgrpoError as exc:
        return f"error: {exc}"
    if doc is None:
        return f"no document titled {title!r}"
    return _truncate(f"[{doc.title}] {doc.text}", ctx.tool_max_chars)


@tool
def web_search(query: str, runtime: ToolRuntime[Context]) -> str:
    """Search the web (Tavily). Returns titles, URLs and snippets."""
    from tfgrpo.tools.web import web_tools

    ctx = _ctx(runtime)
    try:
        found = {t.name: t for t in web_tools(max_chars=ctx.tool_max_chars)}
    except TfgrpoError as exc:
        return f"error: {exc}"
    return str(found["web_search"].invoke({"query": query}))


@tool
def web_extract(url: str, runtime: ToolRuntime[Context]) -> str:
    """Fetch the main text of a web page (Tavily extract)."""
    from tfgrpo.tools.web import web_tools

    ctx = _ctx(runtime)
    try:
        found = {t.name: t for t in web_tools(max_chars=ctx.tool_max_chars)}
    except TfgrpoError as exc:
        return f"error: {exc}"
    return str(found["web_extract"].invoke({"url": url}))


def all_tools() -> list[BaseTool]:
    tools: list[BaseTool] = [python, search, open_page]
    if os.environ.get("TAVILY_API_KEY"):
        tools += [web_search, web_extract]
    return tools
