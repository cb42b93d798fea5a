"""Settings checked before anything is paid for, beyond what their declaration checks (tfgrpo.context:
types, bounds, choices): the endpoint a URL, the reward fit for the datasets, the search domain's corpus
present and readable, the prompt overrides well-formed, and the options of a command that are not
settings. Each problem is one line naming the option and what it accepts."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlparse

from tfgrpo.context import Context, option
from tfgrpo.errors import ConfigError
from tfgrpo.evals.rewards import check_reward_datasets


def check_number(name: str, value: float | int | None, *, low: float, high: float = math.inf) -> None:
    """``value`` must be a finite number in [low, high] (``None``: not given, nothing to check)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{option(name)} must be a number, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        accepted = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
        raise ConfigError(f"{option(name)} must be {accepted}, got {value!r}")


def check_base_url(url: str) -> None:
    if not url:
        return
    parsed = urlparse(url)
    try:
        port_ok = parsed.port is None or 0 < parsed.port < 65536
    except ValueError:
        port_ok = False
    if parsed.scheme not in ("http", "https") or not parsed.hostname or not port_ok:
        raise ConfigError(
            f"--base-url {url!r} is not an http(s) URL: use e.g. http://127.0.0.1:8080/v1 "
            "(an OpenAI-compatible endpoint, usually ending in /v1)"
        )


def check_corpus(ctx: Context) -> None:
    """The search domain needs something to search: corpus files (each readable JSONL) or the web."""
    if ctx.domain != "search":
        return
    from tfgrpo.tools.web import web_search_available

    paths = [p.strip() for p in ctx.corpus.split(",") if p.strip()]
    if not paths:
        if web_search_available():
            return
        raise ConfigError(
            "--domain search needs a corpus to search: pass --corpus FILE.jsonl (rows with 'title' and "
            "'text') or set TAVILY_API_KEY for web search"
        )
    from tfgrpo.tools.corpus import CorpusIndex

    CorpusIndex.load(paths)  # one-line errors naming the file and line; cached for the run


def check_command_options(args: Any) -> None:
    """Options of a command that are not settings of the run (checked before learning, so that the
    held-out evaluation that follows it cannot fail on them once the learning is paid for)."""
    for name in ("heldout_k", "k"):
        check_number(name, getattr(args, name, None), low=1)


def check_context(ctx: Context) -> None:
    """Raise a one-line :class:`ConfigError` for what ``ctx``'s fields alone cannot tell is wrong (their
    types and ranges were checked when it was made)."""
    from tfgrpo.nodes._prompts import validate_prompts

    check_base_url(ctx.base_url)
    check_reward_datasets(ctx.reward, ctx.dataset, ctx.validation)
    check_corpus(ctx)
    validate_prompts(ctx.prompts)
