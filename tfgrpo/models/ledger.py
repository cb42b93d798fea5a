"""The token and dollar ledger, the run-wide cap on in-flight LLM calls, retries and the budget stop.

Every LLM call of a run goes through :meth:`Ledger.call`:

* a process-wide semaphore caps in-flight calls across the whole run (LangGraph's ``max_concurrency``
  is per graph level; ``extract`` also runs its own pool);
* before the call, its worst-case cost is *reserved*: input tokens are bounded by the prompt's UTF-8
  bytes (a byte-level BPE token covers at least one byte) plus a per-message allowance, output tokens by
  ``max_tokens``. With ``--budget-tokens`` / ``--budget-usd``, a call's ``max_tokens`` is capped by what
  the budget has left after its prompt and the calls in flight; a call that could not get a useful
  answer waits for the calls in flight to settle (they usually cost less than reserved), and only when
  none is in flight and the rest still cannot pay one does :class:`BudgetExceeded` stop the run
  resumably. The budget is never exceeded, and most of it is used;
* a call answered from the run's result cache (:mod:`tfgrpo.models.cache`) paid nothing: it is booked
  apart (``cached``) and never against the budget;
* an attempt the client gave up on (a timeout) may still be answered, and billed, by the provider: it is
  booked at its reservation (prompt bound + ``max_tokens``), kept in the run's store (a resume counts it)
  and reported apart ("timed out, possibly billed"); its retry needs a reservation of its own;
* transient failures (429, 5xx, timeouts, connection resets, malformed bodies) are retried with
  exponential backoff and jitter; other 4xx errors are not; retries are counted.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from langchain_core.messages import AIMessage, BaseMessage

from tfgrpo.bounded import BoundedDict
from tfgrpo.errors import ConfigError, ProviderError, TfgrpoError
from tfgrpo.models.cache import (
    CACHED_FLAG,
    NAMESPACE,
    CallScope,
    StoreLLMCache,
    current_scope,
    enter_scope,
    exit_scope,
    install,
    paid_usage,
    uninstall,
)
from tfgrpo.state.types import CallRecord

# USD per 1M tokens (input, output), list prices of late 2025; override with --prices FILE.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "deepseek-chat": (0.27, 1.10),
    "deepseek-reasoner": (0.55, 2.19),
    # the embedded models run on your CPU
    "smollm2-135m-instruct": (0.0, 0.0),
    "qwen2.5-coder-0.5b-instruct": (0.0, 0.0),
    "qwen2.5-coder-1.5b-instruct": (0.0, 0.0),
}
PER_MESSAGE_TOKENS = 16
# A prompt's token bound is its UTF-8 bytes (strict: a byte-level BPE token covers at least one byte) until
# the model has answered; then the most tokens per byte its prompts have had in this run, with this
# margin (never above the bytes): the bytes bound is ~4x too high for English text, and a budget would
# stop with a quarter of it unspent.
DENSITY_MARGIN = 1.25
# The least completion a call is made with when the budget caps it (or its own max_tokens, if smaller):
# fewer would buy an answer cut off before it says anything.
MIN_COMPLETION_TOKENS = 128
T = TypeVar("T")
ROLES = {
    "rollout": "policy",
    "validate": "policy",
    "select": "policy",
    "summarize": "learner",
    "extract": "learner",
    "update_library": "learner",
    "retry_lesson": "learner",
}


class BudgetExceeded(TfgrpoError):
    """The next call could pass the run's budget: the run stops here and can be resumed. ``reason`` says
    so without figures (the CLI prints the spent total once, after the calls in flight settled)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class BudgetStopped(BudgetExceeded):
    """A run stopped at its budget, its finished work saved: ``cause`` says which budget, ``spent_tokens``
    and ``spent_usd`` what the run has spent, ``resume`` how to go on."""

    def __init__(self, cause: str, *, spent_tokens: int, spent_usd: float, resume: str) -> None:
        super().__init__(f"{cause}; spent so far: {spent_tokens} tokens, ${spent_usd:.4f}; {resume}", cause)
        self.cause = cause
        self.spent_tokens = spent_tokens
        self.spent_usd = spent_usd
        self.resume = resume


class CallFailed(Exception):
    """A call that failed for good: ``cause`` is the provider's error, ``retries`` the attempts spent."""

    def __init__(self, cause: BaseException, retries: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.retries = retries


def role_of(node: str) -> str:
    # a candidate's calls (--candidates) are booked under NODE@cN: the role is NODE's
    node = node.split("@", 1)[0]
    return ROLES.get(node, "judge" if "judge" in node else node)


def _model_name(spec: str) -> str:
    name = spec.split(":", 1)[1] if ":" in spec else spec
    return name.split("@", 1)[0]  # instance:NAME@2, a second object of one model (tfgrpo.models.spec)


@dataclass
class Prices:
    table: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    def __post_init__(self) -> None:
        # a NaN price turns every budget comparison false (the budget is off), a negative one pays back:
        # refused before anything is paid
        for model, (rate_in, rate_out) in self.table.items():
            _check_rate("prices", model, rate_in, rate_out)

    @classmethod
    def load(cls, path: str | None) -> Prices:
        prices = cls()
        if not path:
            return prices
        try:
            text = path if path.lstrip().startswith("{") else Path(path).read_text(encoding="utf-8")
            data = json.loads(text)  # a file, or the table itself (Studio's context field)
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read price table ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected an object {{model: {{input, output}}}}")
        for model, entry in data.items():
            try:
                rate = (float(entry["input"]), float(entry["output"]))
            except (TypeError, KeyError, ValueError):
                raise ConfigError(
                    f'{path}: model {model!r}: expected {{"input": USD per 1M, "output": USD per 1M}}'
                ) from None
            _check_rate(path, model, *rate)
            prices.table[model] = rate
        return prices

    def rate(self, spec: str) -> tuple[float, float] | None:
        return self.table.get(spec) or self.table.get(_model_name(spec))

    def cost(self, spec: str, input_tokens: int, output_tokens: int) -> float | None:
        rate = self.rate(spec)
        if rate is None:
            return None
        return (input_tokens * rate[0] + output_tokens * rate[1]) / 1e6


def _check_rate(where: str, model: str, rate_in: float, rate_out: float) -> None:
    for name, value in (("input", rate_in), ("output", rate_out)):
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ConfigError(
                f"{where}: model {model!r}: the {name} price must be a finite number >= 0 "
                f"(USD per 1M tokens), got {value!r}"
            )


def is_timeout(exc: BaseException) -> bool:
    """The client gave up waiting: the server may still have answered, and billed, the request."""
    import openai

    return isinstance(exc, openai.APITimeoutError | TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """429, 5xx, timeouts, connection problems and unreadable bodies are worth another try."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    if isinstance(exc, openai.APITimeoutError | openai.APIConnectionError):
        return True
    if isinstance(exc, json.JSONDecodeError | TimeoutError | ConnectionError):
        return True
    return isinstance(exc, openai.APIResponseValidationError)


RETRY_AFTER_MAX = 300.0  # seconds: a longer Retry-After is waited for this long, then retried


def retry_after(exc: BaseException) -> float | None:
    """The wait a 429/503 response asks for in its ``Retry-After`` (or ``retry-after-ms``) header."""
    import openai

    if not isinstance(exc, openai.APIStatusError) or exc.status_code not in (429, 503):
        return None
    headers = exc.response.headers
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:  # an HTTP date
            from email.utils import parsedate_to_datetime

            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def explain(exc: BaseException) -> str | None:
    """A sentence a user can act on for a provider error that survived the retries (None: not one)."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "the model server did not answer in time: raise --request-timeout or check the server's load"
    if isinstance(exc, openai.APIConnectionError):
        url = str(exc.request.url) if getattr(exc, "request", None) is not None else "the model server"
        return f"cannot connect to {url}: is the server running, and is --base-url right?"
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return (
            f"the model server refused the credentials (HTTP {exc.status_code}): "
            "check OPENAI_API_KEY (and --base-url)"
        )
    if isinstance(exc, openai.NotFoundError):
        return (
            "the model server answered 404 (no such model or endpoint): check --model and --base-url "
            "(an OpenAI-compatible endpoint usually ends in /v1)"
        )
    if isinstance(exc, openai.RateLimitError):
        return "rate limited by the model server (HTTP 429) on every retry: lower --max-concurrency or wait"
    if isinstance(exc, openai.BadRequestError):
        detail = str(getattr(exc, "message", "") or exc).strip().splitlines()
        return (
            f"the model server rejected the request (HTTP 400: {detail[0][:160] if detail else ''}): "
            "check --model, --max-tokens and the server's context size"
        )
    if isinstance(exc, openai.APIStatusError) and exc.status_code >= 500:
        return (
            f"the model server failed (HTTP {exc.status_code}) on every retry: check the server, "
            "or raise --max-retries"
        )
    if isinstance(exc, openai.APIResponseValidationError | json.JSONDecodeError):
        return "the model server sent a response that is not valid OpenAI JSON: check --base-url"
    return None


def as_provider_error(exc: BaseException) -> BaseException:
    """``exc`` as a :class:`ProviderError` carrying :func:`explain`'s sentence (the LangGraph API server
    shows the message of a ``ValueError``, "An internal error occurred" for an ``openai`` error), or
    ``exc`` itself when it is not a provider error."""
    sentence = explain(exc)
    if sentence is None:
        return exc
    return ProviderError(sentence, exc)


def reserve_tokens(messages: list[BaseMessage], extra: Any = None) -> int:
    """An upper bound on the input tokens of ``messages`` (plus e.g. tool schemas in ``extra``)."""
    size = sum(len(str(m.content).encode()) + PER_MESSAGE_TOKENS for m in messages)
    if extra is not None:
        size += len(json.dumps(extra, default=str).encode())
    return size


class Ledger:
    def __init__(
        self,
        *,
        max_concurrency: int = 4,
        budget_usd: float | None = None,
        budget_tokens: int | None = None,
        prices: Prices | None = None,
        max_retries: int = 4,
        backoff: float = 1.0,
        backoff_max: float = 30.0,
        spent_usd: float = 0.0,
        spent_tokens: int = 0,
    ) -> None:
        self.semaphore = threading.BoundedSemaphore(max(1, max_concurrency))
        self.budget_usd = budget_usd
        self.budget_tokens = budget_tokens
        self.prices = prices or Prices()
        self.max_retries = max_retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.spent_usd = spent_usd
        self.spent_tokens = spent_tokens
        self._reserved_usd = 0.0
        self._reserved_tokens = 0
        self._in_flight = 0  # calls holding a reservation
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # a reservation was given back
        # called with the totals after every call (the server's per-thread ledgers persist them)
        self.on_spend: Callable[[int, float], None] | None = None
        self._persist_lock = threading.Lock()
        self.cache: StoreLLMCache | None = None  # the run's result cache (see use_llm_cache)
        self._density: dict[str, float] = {}  # model -> most prompt tokens per bound unit seen

    def prompt_bound(self, spec: str, reserve_in: int) -> int:
        """The prompt tokens to reserve for a call whose bytes bound is ``reserve_in``."""
        density = self._density.get(spec)
        if density is None:
            return reserve_in
        return min(reserve_in, int(reserve_in * density * DENSITY_MARGIN) + PER_MESSAGE_TOKENS)

    def check_prices(self, specs: list[str]) -> None:
        if self.budget_usd is None:
            return
        for spec in specs:
            if self.prices.rate(spec) is None:
                raise ConfigError(
                    f"--budget-usd needs a price for model {spec!r}: pass --prices FILE "
                    '({"MODEL": {"input": USD per 1M tokens, "output": USD per 1M tokens}})'
                )

    def _affordable(self, spec: str, tokens_in: int) -> float:
        """The most output tokens the budget can still pay after ``tokens_in`` and the calls in flight
        (infinite without a budget). Under ``self._lock``."""
        out = float("inf")
        if self.budget_tokens is not None:
            out = min(out, self.budget_tokens - self.spent_tokens - self._reserved_tokens - tokens_in)
        if self.budget_usd is not None:
            rate_in, rate_out = self.prices.rate(spec) or (0.0, 0.0)
            left = (self.budget_usd - self.spent_usd - self._reserved_usd) * 1e6 - tokens_in * rate_in
            if left < 0:
                out = min(out, -1.0)
            elif rate_out > 0:
                out = min(out, left / rate_out)
        return out

    def _try_reserve(self, spec: str, tokens_in: int, tokens_out: int) -> tuple[int, float, int] | None:
        """(tokens, usd, max output tokens) reserved, or None when the call must wait for the calls in
        flight; raises :class:`BudgetExceeded` when none is in flight and the budget cannot pay it.
        Under ``self._lock``."""
        need = min(tokens_out, MIN_COMPLETION_TOKENS)
        tokens_in = self.prompt_bound(spec, tokens_in)
        affordable = self._affordable(spec, tokens_in)
        if affordable < need:
            # wait for the calls in flight to settle; never inside a call (it would wait for itself)
            if self._in_flight and current_scope() is None:
                return None
            raise self._budget_stop(spec, tokens_in, need)
        out = int(min(tokens_out, affordable))
        tokens = tokens_in + out
        usd = self.prices.cost(spec, tokens_in, out) or 0.0
        self._reserved_tokens += tokens
        self._reserved_usd += usd
        self._in_flight += 1
        return tokens, usd, out

    def _budget_stop(self, spec: str, tokens_in: int, need: int) -> BudgetExceeded:
        what = f"a call to {spec} may need up to {tokens_in} tokens of prompt and at least {need} of answer"
        if self.budget_tokens is not None and self._affordable_tokens(tokens_in) < need:
            left = self.budget_tokens - self.spent_tokens
            return BudgetExceeded(
                f"token budget reached: {left} of {self.budget_tokens} tokens left ({self.spent_tokens} "
                f"spent), too few for a useful call ({what}); raise --budget-tokens and run the same command",
                f"token budget reached (--budget-tokens {self.budget_tokens}): too few left for a useful "
                f"call ({what}); raise --budget-tokens and run the same command",
            )
        left_usd = (self.budget_usd or 0.0) - self.spent_usd
        return BudgetExceeded(
            f"dollar budget reached: ${left_usd:.4f} of ${self.budget_usd or 0.0:.4f} left "
            f"(${self.spent_usd:.4f} spent), too little for a useful call ({what}); raise --budget-usd "
            "and run the same command",
            f"dollar budget reached (--budget-usd {self.budget_usd or 0.0:g}): too little left for a "
            f"useful call ({what}); raise --budget-usd and run the same command",
        )

    def _affordable_tokens(self, tokens_in: int) -> float:
        if self.budget_tokens is None:
            return float("inf")
        return self.budget_tokens - self.spent_tokens - self._reserved_tokens - tokens_in

    def _reserve(self, spec: str, tokens_in: int, tokens_out: int) -> tuple[int, float, int]:
        with self._settled:
            while (got := self._try_reserve(spec, tokens_in, tokens_out)) is None:
                self._settled.wait()
            return got

    async def _areserve(self, spec: str, tokens_in: int, tokens_out: int) -> tuple[int, float, int]:
        delay = 0.001
        while True:  # never a blocking wait on the event loop
            with self._lock:
                got = self._try_reserve(spec, tokens_in, tokens_out)
            if got is not None:
                return got
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _settle(self, spec: str, msg: AIMessage | None, reserve_in: int) -> None:
        usage: dict[str, Any] = dict((msg.usage_metadata if msg is not None else None) or {})
        reported_in = int(usage.get("input_tokens", 0) or 0)
        if reported_in and reserve_in > 0:
            with self._lock:
                self._density[spec] = max(self._density.get(spec, 0.0), reported_in / reserve_in)
        if msg is not None and (msg.response_metadata or {}).get(CACHED_FLAG):
            return  # answered from the run's result cache: nothing was paid
        used_in = reported_in or reserve_in  # no usage reported: assume the worst
        used_out = int(usage.get("output_tokens", 0) or 0)
        with self._lock:
            self.spent_tokens += used_in + used_out
            self.spent_usd += self.prices.cost(spec, used_in, used_out) or 0.0
        if self.on_spend is not None:
            with self._persist_lock:  # one writer at a time: the stored totals never go back
                with self._lock:
                    totals = (self.spent_tokens, self.spent_usd)
                self.on_spend(*totals)

    def _book_abandoned(self, spec: str, tokens: int, usd: float, tokens_in: int) -> None:
        """An attempt the client gave up on: its reservation becomes spent (the provider may bill it up to
        that), and it is kept in the run's store so that a resume counts it too."""
        with self._settled:
            self.spent_tokens += tokens
            self.spent_usd += usd
        if self.cache is not None:
            self.cache.book_abandoned(spec, tokens_in, tokens - tokens_in)
        if self.on_spend is not None:
            with self._persist_lock:
                with self._lock:
                    totals = (self.spent_tokens, self.spent_usd)
                self.on_spend(*totals)

    def _release(self, tokens: int, usd: float) -> None:
        with self._settled:
            self._reserved_tokens -= tokens
            self._reserved_usd -= usd
            self._in_flight -= 1
            self._settled.notify_all()

    def _delay(self, retries: int, exc: BaseException | None = None) -> float:
        asked = retry_after(exc) if exc is not None else None
        if asked is not None:  # the server said when: wait that long (a little jitter spreads the branches)
            return min(RETRY_AFTER_MAX, asked) * (1 + 0.1 * random.random())
        # exponential backoff with jitter, so that parallel branches do not retry in lockstep
        return min(self.backoff_max, self.backoff * 2 ** (retries - 1)) * (0.5 + random.random())

    def _scope(self, spec: str, out: int, reserve_out: int) -> CallScope:
        return CallScope(self.cache, spec=spec, max_tokens=out if out < reserve_out else None)

    def _failed(self, spec: str, exc: Exception, retries: int, held: tuple[int, float, int]) -> bool:
        """After a failed attempt holding ``held``: raises :class:`CallFailed` when it is not retried;
        True when its retry needs a reservation of its own (the client gave up: the attempt is booked at
        its reservation, which the provider may bill)."""
        timed_out = is_timeout(exc)
        if timed_out:
            tokens, usd, out = held
            self._book_abandoned(spec, tokens, usd, tokens - out)
        if not is_transient(exc) or retries >= self.max_retries:
            raise CallFailed(exc, retries) from exc
        return timed_out

    def call(
        self,
        fn: Callable[[], T],
        *,
        spec: str,
        reserve_in: int,
        reserve_out: int,
        message_of: Callable[[T], AIMessage | None] = lambda out: out,  # type: ignore[assignment,return-value]
    ) -> tuple[T, int]:
        """Run ``fn`` under the cap, the budget and the retry policy; returns (result, retries). ``fn``
        runs in a :class:`~tfgrpo.models.cache.CallScope`: the run's result cache answers it, and
        :func:`capped` gives the ``max_tokens`` the budget allows it."""
        held: tuple[int, float, int] | None = self._reserve(spec, reserve_in, reserve_out)
        retries = 0
        try:
            while True:
                assert held is not None
                with self.semaphore:  # not held during a backoff: the cap is on requests in flight
                    scope = self._scope(spec, held[2], reserve_out)
                    token = enter_scope(scope)
                    try:
                        out = fn()
                        break
                    except Exception as exc:
                        failure: Exception = exc
                        renew = self._failed(spec, exc, retries, held)
                    finally:
                        exit_scope(scope, token)
                retries += 1
                if renew:  # the timed-out attempt's reservation is spent: its retry reserves anew
                    self._release(held[0], held[1])
                    held = None
                time.sleep(self._delay(retries, failure))
                if held is None:
                    held = self._reserve(spec, reserve_in, reserve_out)
            self._settle(spec, message_of(out), reserve_in)
            return out, retries
        finally:
            if held is not None:
                self._release(held[0], held[1])

    async def _aacquire(self) -> None:
        """Take a permit without blocking the event loop. Never a blocking acquire in a worker thread: a
        cancelled caller would leave that thread to take a permit nobody releases (every later call of
        the process then hangs). A non-blocking try holds nothing while it sleeps, so cancelling is safe."""
        delay = 0.001
        while not self.semaphore.acquire(blocking=False):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def acall(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        spec: str,
        reserve_in: int,
        reserve_out: int,
        message_of: Callable[[T], AIMessage | None],
    ) -> tuple[T, int]:
        """:meth:`call` for async graphs (the LangGraph API server runs graphs async)."""
        held: tuple[int, float, int] | None = await self._areserve(spec, reserve_in, reserve_out)
        retries = 0
        try:
            while True:
                assert held is not None
                await self._aacquire()
                try:
                    scope = self._scope(spec, held[2], reserve_out)
                    token = enter_scope(scope)
                    try:
                        out = await fn()
                        break
                    except Exception as exc:
                        failure: Exception = exc
                        renew = self._failed(spec, exc, retries, held)
                    finally:
                        exit_scope(scope, token)
                finally:
                    self.semaphore.release()
                retries += 1
                if renew:
                    self._release(held[0], held[1])
                    held = None
                await asyncio.sleep(self._delay(retries, failure))
                if held is None:
                    held = await self._areserve(spec, reserve_in, reserve_out)
            self._settle(spec, message_of(out), reserve_in)
            return out, retries
        finally:
            if held is not None:
                self._release(held[0], held[1])


def capped(settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """``settings`` with the ``max_tokens`` the budget allows the current ledger call (unchanged when the
    budget does not cap it: the request is then the same as without a budget)."""
    scope = current_scope()
    settings = dict(settings or {})
    if scope is not None and scope.max_tokens is not None:
        settings["max_tokens"] = scope.max_tokens
    return settings


_default_lock = threading.Lock()
# The run's ledger, per context (not per process): two runs in two threads of one process each have
# their own; the graph's branches inherit it (LangGraph runs them in copies of the caller's context).
_active: ContextVar[Ledger | None] = ContextVar("tfgrpo_ledger", default=None)
_defaults: BoundedDict[int, Ledger] = BoundedDict(16)  # by max_concurrency


@contextmanager
def use_ledger(ledger: Ledger) -> Iterator[Ledger]:
    """Make ``ledger`` the one every node of this run uses (the CLI does this per run)."""
    token = _active.set(ledger)
    try:
        yield ledger
    finally:
        _active.reset(token)


def active_ledger() -> Ledger | None:
    return _active.get()


@contextmanager
def use_llm_cache(store: Any, run_id: str = "", ledger: Ledger | None = None) -> Iterator[StoreLLMCache]:
    """Persist every LLM response of the run in ``store`` for the ``with`` block. The cache belongs to
    ``ledger`` (else the active one; else a new ledger made active for the block): it answers only the
    calls made through that ledger, never a user's other models. ``run_id`` keeps the runs of a shared
    database apart: a run never answers its calls with another run's responses."""
    cache = StoreLLMCache(store, NAMESPACE + (run_id,) if run_id else NAMESPACE)
    owner = ledger or active_ledger()
    fresh = owner is None
    if owner is None:
        owner = Ledger()
    previous, owner.cache = owner.cache, cache
    install()
    try:
        if fresh:
            with use_ledger(owner):
                yield cache
        else:
            yield cache
    finally:
        uninstall()
        owner.cache = previous


def with_cap(request: Any) -> Any:
    """An agent's ``ModelRequest`` with the ``max_tokens`` the budget allows the current ledger call."""
    settings = capped(request.model_settings)
    return request if settings == request.model_settings else request.override(model_settings=settings)


def paid_totals(store: Any, run_id: str = "", prices: Prices | None = None) -> dict[str, Any]:
    """What the server was paid for a run's responses (from its result cache, where each response is
    stored with its usage as it arrives: exact after kills and resumes). ``cost_usd`` counts the priced
    models only. ``timed_out``: the attempts the client gave up on, apart, at their reservations (calls,
    tokens, cost_usd): the provider may have billed them up to that."""
    prices = prices or Prices()
    calls = tokens_in = tokens_out = 0
    usd = 0.0
    late = {"calls": 0, "tokens": 0, "cost_usd": 0.0}
    for paid in paid_usage(store, run_id):
        n_in, n_out = int(paid.get("input_tokens", 0)), int(paid.get("output_tokens", 0))
        cost = prices.cost(str(paid.get("spec", "")), n_in, n_out) or 0.0
        if paid.get("timed_out"):
            late["calls"] += 1
            late["tokens"] += n_in + n_out
            late["cost_usd"] += cost
            continue
        calls += 1
        tokens_in += n_in
        tokens_out += n_out
        usd += cost
    late["cost_usd"] = round(late["cost_usd"], 6)
    return {
        "calls": calls,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "cost_usd": round(usd, 6),
        "timed_out": late,
    }


def spent_so_far(store: Any, run_id: str = "", prices: Prices | None = None) -> tuple[int, float]:
    """Tokens and dollars a run's budget has spent (``run_id``: its result cache's, "" in its own run or
    eval directory), exact after a crash: what the server was paid, plus the attempts the client gave up
    on at their reservations."""
    paid = paid_totals(store, run_id, prices)
    late = paid["timed_out"]
    return paid["input_tokens"] + paid["output_tokens"] + late["tokens"], paid["cost_usd"] + late["cost_usd"]


def current_ledger(max_concurrency: int = 4) -> Ledger:
    """The active ledger (the run's), else the thread's under a checkpointer and store (the LangGraph
    server, Studio), else a shared unlimited one per concurrency level (library use)."""
    active = _active.get()
    if active is not None:
        return active
    thread = _thread_ledger()
    if thread is not None:
        return thread
    with _default_lock:
        if max_concurrency not in _defaults:
            _defaults[max_concurrency] = Ledger(max_concurrency=max_concurrency)
        return _defaults[max_concurrency]


# One ledger per checkpoint thread when graphs run under the LangGraph server: its budget, prices,
# retries and concurrency come from the run context; its totals are kept in the store, so a thread resumed
# after a server restart (or on another server sharing PostgreSQL) keeps its budget.
LEDGER_NAMESPACE = ("tfgrpo-ledger",)
# one per server thread: an evicted thread's ledger is rebuilt from its totals in the store
_threads: BoundedDict[tuple[int, str], Ledger] = BoundedDict(1024)


def ledger_from_context(ctx: Any) -> Ledger:
    """A ledger from the context's ``budget_usd``, ``budget_tokens`` (None: no cap), ``prices``,
    ``max_retries``, ``retry_backoff`` and ``max_concurrency``."""
    ledger = Ledger(
        max_concurrency=ctx.max_concurrency,
        prices=Prices.load(ctx.prices or None),
        max_retries=max(0, ctx.max_retries),
        backoff=max(0.0, ctx.retry_backoff),
    )
    _apply_budget(ledger, ctx)
    return ledger


def _apply_budget(ledger: Ledger, ctx: Any) -> None:
    ledger.budget_usd = ctx.budget_usd if ctx.budget_usd and ctx.budget_usd > 0 else None
    ledger.budget_tokens = ctx.budget_tokens if ctx.budget_tokens and ctx.budget_tokens > 0 else None


def _thread_ledger() -> Ledger | None:
    try:
        from langgraph.config import get_config
        from langgraph.runtime import get_runtime

        thread = (get_config().get("configurable") or {}).get("thread_id")
        runtime = get_runtime()
    except (RuntimeError, KeyError, ImportError):
        return None  # not inside a graph run
    store = runtime.store
    if not thread or store is None:
        return None
    from tfgrpo.context import as_context

    ctx = as_context(runtime.context)
    slot = (id(store), str(thread))  # a thread id is unique within one store (server, database)
    with _default_lock:
        ledger = _threads.get(slot)
        if ledger is None:
            ledger = ledger_from_context(ctx)
            item = store.get(LEDGER_NAMESPACE, str(thread))
            if item is not None:
                ledger.spent_tokens, ledger.spent_usd = int(item.value["tokens"]), float(item.value["usd"])

            def persist(tokens: int, usd: float, key: str = str(thread)) -> None:
                value = {"tokens": tokens, "usd": usd}
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    store.put(LEDGER_NAMESPACE, key, value, index=False)
                else:  # an async node: the store's sync API must not block the event loop
                    loop.create_task(store.aput(LEDGER_NAMESPACE, key, value, index=False))

            ledger.on_spend = persist
            _threads[slot] = ledger
        _apply_budget(ledger, ctx)  # a resumed thread may come with a raised budget
        if ctx.model and ledger.budget_usd is not None:
            from tfgrpo.models.spec import resolve_spec

            ledger.check_prices([resolve_spec(ctx.model)])
        return ledger


def make_record(
    node: str, model: str, ok: bool, started: float, msg: BaseMessage | None, retries: int = 0
) -> CallRecord:
    usage = getattr(msg, "usage_metadata", None) or {}
    tokens_in = int(usage.get("input_tokens", 0) or 0)
    tokens_out = int(usage.get("output_tokens", 0) or 0)
    record: CallRecord = {
        "node": node,
        "role": role_of(node),
        "model": model,
        "ok": ok,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "cost_usd": current_ledger().prices.cost(model, tokens_in, tokens_out),
        "retries": retries,
        "started": started,
        "seconds": round(time.time() - started, 4),
    }
    if msg is not None and (msg.response_metadata or {}).get(CACHED_FLAG):
        record["cached"] = 1  # answered from the run's result cache: booked apart, not paid again
    return record
