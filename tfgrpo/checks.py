"""Settings checked before anything is paid for: every number in range, the endpoint a URL, the search
domain's corpus present and readable. Each problem is one line naming the option and what it accepts."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlparse

from tfgrpo.context import Context
from tfgrpo.errors import ConfigError
from tfgrpo.evals.rewards import check_reward_datasets

STRUCTURED_METHODS = ("function_calling", "json_mode", "json_schema")
# Upper bounds of the options counted in seconds or retries: a value beyond them is a typo, and a
# huge one would only fail later, mid-run and paid for (1e12 s overflows the clock: OverflowError).
MAX_SECONDS = 86_400.0  # a day per LLM call or Python run
MAX_BACKOFF = 3_600.0
MAX_RETRIES = 100


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_number(name: str, value: float | int | None, *, low: float, high: float = math.inf) -> None:
    """``value`` must be a finite number in [low, high] (``None``: not given, nothing to check)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{_option(name)} must be a number, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        accepted = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
        raise ConfigError(f"{_option(name)} must be {accepted}, got {value!r}")


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


def check_ledger_options(args: Any) -> None:
    """The ledger's command-line options: retries, backoff and budgets."""
    check_number("max_retries", args.max_retries, low=0, high=MAX_RETRIES)
    check_number("retry_backoff", args.retry_backoff, low=0, high=MAX_BACKOFF)
    for name in ("budget_usd", "budget_tokens"):
        value = getattr(args, name)
        check_number(name, value, low=0)
        if value is not None and value <= 0:
            raise ConfigError(f"{_option(name)} must be positive, got {value!r}")


def check_command_options(args: Any) -> None:
    """Options of a command that are not settings of the run (checked before learning, so that the
    held-out evaluation that follows it cannot fail on them once the learning is paid for)."""
    for name in ("heldout_k", "k"):
        check_number(name, getattr(args, name, None), low=1)


def check_context(ctx: Context) -> None:
    """Raise a one-line :class:`ConfigError` for the first setting of ``ctx`` out of range."""
    at_least_one = (
        "epochs",
        "batch_size",
        "experiences_per_group",
        "max_library_items",
        "max_library_tokens",
        "validation_k",
        "max_model_calls",
        "max_tokens",
        "learner_max_tokens",
        "judge_max_tokens",
        "max_concurrency",
        "tool_max_chars",
    )
    for name in at_least_one:
        check_number(name, getattr(ctx, name), low=1)
    check_number("group_size", ctx.group_size, low=2)
    check_number("max_group_size", ctx.max_group_size, low=0)
    if 0 < ctx.max_group_size < ctx.group_size:
        raise ConfigError(
            f"--max-group-size must be at least --group-size ({ctx.group_size}) or 0 (no extra attempts), "
            f"got {ctx.max_group_size}"
        )
    check_number("max_tool_calls", ctx.max_tool_calls, low=0)
    check_number("structured_retries", ctx.structured_retries, low=0)
    check_number("whole_attempt_tokens", ctx.whole_attempt_tokens, low=0)
    for name in ("temperature", "learner_temperature", "judge_temperature"):
        check_number(name, getattr(ctx, name), low=0, high=2)
    check_number("validation_tolerance", ctx.validation_tolerance, low=0, high=1)
    for name in ("request_timeout", "python_timeout"):
        value = getattr(ctx, name)
        check_number(name, value, low=0, high=MAX_SECONDS)
        if value == 0:
            raise ConfigError(f"{_option(name)} must be more than 0 seconds")
    if ctx.structured_method not in STRUCTURED_METHODS:
        raise ConfigError(f"structured_method must be one of {', '.join(STRUCTURED_METHODS)}")
    check_base_url(ctx.base_url)
    check_reward_datasets(ctx.reward, ctx.dataset, ctx.validation)
    check_corpus(ctx)
