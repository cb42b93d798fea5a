"""Reward functions: ``(response text, gold answer) -> float in [0, 1]``.

Built-ins (see :func:`get_reward`):

* ``math`` -- symbolic equivalence with math-verify, run in a helper process with a wall-clock
  timeout (sympy can hang on inputs such as ``\\boxed{9^{9^{9}}}``);
* ``exact_match`` / ``em`` -- SQuAD-normalised exact match of the extracted final answer;
* ``f1`` -- SQuAD token F1 of the extracted final answer;
* ``module:function`` or ``path/to/file.py:function`` -- a user function, result validated.

Importing this module is cheap and has no side effects: math-verify (and sympy) are only imported
by the helper process, which is started on the first :func:`math_reward` call.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import math
import numbers
import os
import re
import select
import string
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tfgrpo.errors import ConfigError

__all__ = [
    "GROUP_REWARDS",
    "majority_rewards",
    "MATH_VERIFY_TIMEOUT_S",
    "MAX_RESPONSE_CHARS",
    "RewardFn",
    "exact_match_reward",
    "extract_final_answer",
    "f1_reward",
    "get_reward",
    "load_user_reward",
    "math_reward",
    "normalize_answer",
    "reward_names",
    "reward_stats",
    "reward_timeouts",
    "shutdown_math_workers",
]

logger = logging.getLogger(__name__)

RewardFn = Callable[[str, str], float]

# --------------------------------------------------------------------------------------------------
# Tunables (module constants; read at call time so tests and callers may override them)
# --------------------------------------------------------------------------------------------------

#: Wall-clock limit for one math-verify parse+verify in the helper process.
MATH_VERIFY_TIMEOUT_S: float = 10.0
#: Only the last this-many characters of a response are given to math-verify.
MAX_RESPONSE_CHARS: int = 4000
#: Gold answers longer than this are cut (first characters kept).
MAX_GOLD_CHARS: int = 2000
#: Number of math-verify helper processes (started lazily, one per concurrent caller up to this).
MATH_WORKERS: int = max(1, min(4, (os.cpu_count() or 2) // 2))
#: Use helper processes; when False (or if a helper cannot be started) verify in the calling thread.
USE_WORKER_PROCESS: bool = True
#: Time allowed for a helper process to start and import math-verify.
_WORKER_START_TIMEOUT_S: float = 60.0
#: Address-space limit of a helper process, so a runaway sympy computation fails with MemoryError.
_WORKER_MEMORY_LIMIT_BYTES: int = 4 << 30


# --------------------------------------------------------------------------------------------------
# Final-answer extraction and SQuAD-style scoring
# --------------------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_RE = re.compile(r"answer\s*:", re.IGNORECASE)


def _balanced_content(text: str, open_brace: int) -> str | None:
    """Content between ``text[open_brace] == '{'`` and its matching ``}``; None if unbalanced.

    Escaped braces (``\\{``, ``\\}``) do not count.
    """
    depth = 0
    i = open_brace
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1 : i]
        i += 1
    return None


def _clean_answer_line(text: str) -> str:
    text = text.strip()
    # strip markdown emphasis and a trailing period, repeatedly ("**42**." / "42.**")
    prev = None
    while prev != text:
        prev = text
        text = text.strip().strip("*").strip()
        if text.endswith("."):
            text = text[:-1]
    return text


def extract_final_answer(response: str) -> str:
    """The final answer stated in ``response``.

    Content of the last balanced ``\\boxed{...}`` / ``\\fbox{...}``; else the text after the last
    ``Answer:`` (case-insensitive; rest of that line, or the next non-empty line if that is empty),
    without markdown ``**`` and a trailing period; else the last non-empty line; ``''`` if empty.
    """
    if not response or not response.strip():
        return ""
    for match in reversed(list(_BOX_RE.finditer(response))):
        content = _balanced_content(response, match.end() - 1)
        if content is not None:
            return content.strip()
    answer_matches = list(_ANSWER_RE.finditer(response))
    if answer_matches:
        rest = response[answer_matches[-1].end() :]
        lines = rest.split("\n")
        candidate = _clean_answer_line(lines[0])
        if not candidate:
            for line in lines[1:]:
                candidate = _clean_answer_line(line)
                if candidate:
                    break
        if candidate:
            return candidate
    for line in reversed(response.splitlines()):
        if line.strip():
            return line.strip()
    return ""


_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def exact_match_reward(response: str, answer: str) -> float:
    """1.0 if the normalised final answer of ``response`` equals the normalised ``answer``."""
    pred = normalize_answer(extract_final_answer(response))
    gold = normalize_answer(str(answer))
    return 1.0 if pred == gold else 0.0


def f1_reward(response: str, answer: str) -> float:
    """SQuAD token F1 between the normalised final answer of ``response`` and ``answer``."""
    pred_tokens = normalize_answer(extract_final_answer(response)).split()
    gold_tokens = normalize_answer(str(answer)).split()
    if not pred_tokens or not gold_tokens:
        return 1.0 if pred_tokens == gold_tokens else 0.0
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------------------------------
# math-verify, in helper processes
# --------------------------------------------------------------------------------------------------

# Source of the helper process (run with ``python -c``).  ``check`` is also exec'd in-thread for the
# fallback path, so both paths share one implementation.  The helper only imports math-verify, not
# this package, so it neither re-runs the parent's ``__main__`` nor pays for tfgrpo's imports.
_WORKER_SOURCE = r"""
import json, logging, os, sys, threading, time

def check(golds, pred):
    from math_verify import parse, verify
    target = parse(pred, parsing_timeout=None)
    if not target:
        return False
    for gold in golds:
        parsed = parse(gold, parsing_timeout=None)
        if parsed and verify(parsed, target, timeout_seconds=None):
            return True
    return False

def main(memory_limit):
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # stray prints must not corrupt the protocol on stdout
    parent = os.getppid()

    def watchdog():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    hello = json.loads(sys.stdin.readline())
    sys.path[:] = hello["sys_path"] + [p for p in sys.path if p not in hello["sys_path"]]
    logging.disable(logging.CRITICAL)
    if memory_limit:
        try:
            import resource
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            if hard == resource.RLIM_INFINITY or hard > memory_limit:
                resource.setrlimit(resource.RLIMIT_AS, (memory_limit, hard))
        except Exception:
            pass
    try:
        import math_verify  # noqa: F401
        check(["\\boxed{1}"], "\\boxed{1}")  # warm up parser caches
    except BaseException as exc:
        out.write(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
        return
    out.write(json.dumps({"ok": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            reply = {"ok": True, "result": bool(check(req["golds"], req["pred"]))}
        except BaseException as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        out.write(json.dumps(reply) + "\n")
        out.flush()
"""


class _WorkerTimeout(Exception):
    pass


class _WorkerDied(Exception):
    pass


class _WorkerUnavailable(Exception):
    pass


class _PoolClosed(_WorkerUnavailable):
    pass


_stats_lock = threading.Lock()
_stats: dict[str, int] = {"timeouts": 0, "worker_crashes": 0, "worker_errors": 0, "in_thread_calls": 0}


def _bump(key: str) -> None:
    with _stats_lock:
        _stats[key] += 1


def reward_timeouts() -> int:
    """Number of math-verify calls (process-wide, since import) that hit the wall-clock timeout."""
    with _stats_lock:
        return _stats["timeouts"]


def reward_stats() -> dict[str, int]:
    """Counters: ``timeouts``, ``worker_crashes``, ``worker_errors``, ``in_thread_calls``."""
    with _stats_lock:
        return dict(_stats)


class _Worker:
    """One helper process speaking JSON lines over its stdin/stdout."""

    def __init__(self) -> None:
        code = _WORKER_SOURCE + f"\nmain({_WORKER_MEMORY_LIMIT_BYTES!r})\n"
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                bufsize=0,
                close_fds=True,
                start_new_session=True,  # Ctrl-C in the terminal is the parent's business
            )
        except OSError as exc:
            raise _WorkerUnavailable(f"cannot start math-verify helper: {exc}") from exc
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin = self.proc.stdin
        self._fd = self.proc.stdout.fileno()
        self._buf = bytearray()
        try:
            self._send({"sys_path": [p for p in sys.path if isinstance(p, str)]})
            reply = self._recv(time.monotonic() + _WORKER_START_TIMEOUT_S)
        except (_WorkerTimeout, _WorkerDied) as exc:
            self.kill()
            raise _WorkerUnavailable(f"math-verify helper did not start: {exc!r}") from exc
        if not reply.get("ok"):
            self.kill()
            raise _WorkerUnavailable(f"math-verify helper failed to start: {reply.get('error')}")

    def _send(self, obj: dict[str, Any]) -> None:
        try:
            self._stdin.write((json.dumps(obj) + "\n").encode("utf-8"))
            self._stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as exc:
            raise _WorkerDied(f"write failed: {exc}") from exc

    def _recv(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _WorkerTimeout()
            try:
                ready, _, _ = select.select([self._fd], [], [], remaining)
            except (OSError, ValueError) as exc:
                raise _WorkerDied(f"select failed: {exc}") from exc
            if not ready:
                raise _WorkerTimeout()
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise _WorkerDied(f"helper exited (code {self.proc.poll()})")
            self._buf.extend(chunk)
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        result: dict[str, Any] = json.loads(line.decode("utf-8"))
        return result

    def check(self, golds: list[str], pred: str, timeout: float) -> bool:
        self._send({"golds": golds, "pred": pred})
        reply = self._recv(time.monotonic() + timeout)
        if not reply.get("ok"):
            _bump("worker_errors")
            logger.debug("math-verify helper error: %s", reply.get("error"))
            return False
        return bool(reply.get("result"))

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class _WorkerPool:
    """Up to ``size`` helpers; each call borrows one exclusively, so any thread may call ``check``."""

    def __init__(self, size: int) -> None:
        self.pid = os.getpid()
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._closed = False

    def check(self, golds: list[str], pred: str, timeout: float) -> bool:
        with self._slots:
            worker = self._borrow()
            try:
                result = worker.check(golds, pred, timeout)
            except _WorkerTimeout:
                _bump("timeouts")
                logger.warning("math-verify timed out after %.1fs; helper restarted, reward 0.0", timeout)
                self._discard(worker)
                return False
            except _WorkerDied as exc:
                _bump("worker_crashes")
                logger.warning("math-verify helper died (%s); reward 0.0", exc)
                self._discard(worker)
                return False
            except BaseException:
                self._discard(worker)  # e.g. KeyboardInterrupt mid-call: the protocol is out of step
                raise
            self._return(worker)
            return result

    def _borrow(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise _PoolClosed("math-verify helpers are shut down")
            if self._idle:
                return self._idle.pop()
        worker = _Worker()  # slow (imports sympy); outside the lock
        with self._lock:
            if self._closed:
                worker.kill()
                raise _PoolClosed("math-verify helpers are shut down")
            self._all.add(worker)
        return worker

    def _return(self, worker: _Worker) -> None:
        with self._lock:
            if self._closed:
                worker.kill()
            else:
                self._idle.append(worker)

    def _discard(self, worker: _Worker) -> None:
        with self._lock:
            self._all.discard(worker)
        worker.kill()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
            self._idle.clear()
        for worker in workers:
            worker.kill()


_pool_lock = threading.Lock()
_pool_instance: _WorkerPool | None = None
_atexit_registered = False
_process_broken = False
_exiting = False
_in_thread_check: Callable[[list[str], str], bool] | None = None


def _get_pool() -> _WorkerPool:
    global _pool_instance, _atexit_registered
    with _pool_lock:
        if _pool_instance is None or _pool_instance.pid != os.getpid():
            # (a forked child must not share its parent's pipes: start afresh)
            _pool_instance = _WorkerPool(MATH_WORKERS)
            if not _atexit_registered:
                atexit.register(_shutdown_at_exit)
                _atexit_registered = True
        return _pool_instance


def shutdown_math_workers() -> None:
    """Kill all math-verify helper processes (registered with atexit; safe to call any time).

    A later :func:`math_reward` call starts fresh helpers.
    """
    global _pool_instance
    with _pool_lock:
        pool, _pool_instance = _pool_instance, None
    if pool is not None and pool.pid == os.getpid():
        pool.close()


def _shutdown_at_exit() -> None:
    global _exiting
    _exiting = True  # a straggling (daemon) thread must not start new helpers now
    shutdown_math_workers()


def _check_in_thread(golds: list[str], pred: str) -> bool:
    global _in_thread_check
    if _in_thread_check is None:
        namespace: dict[str, Any] = {}
        exec(compile(_WORKER_SOURCE, "<math-verify helper>", "exec"), namespace)
        _in_thread_check = namespace["check"]
    _bump("in_thread_calls")
    try:
        return bool(_in_thread_check(golds, pred))
    except Exception as exc:
        _bump("worker_errors")
        logger.debug("math-verify error: %s", exc)
        return False


_NUMBER_WITH_WORDS_RE = re.compile(
    r"^\s*\\?\$?\s*(-?\d[\d,]*(?:\.\d+)?)\s+([A-Za-z]{2,}(?:\s+[A-Za-z]+)*)\s*\.?\s*$"
)
_MATH_WORDS = frozenset({"pi", "sqrt", "frac", "cdot", "times", "i", "e", "x", "y", "z", "n", "k"})


def _gold_candidates(answer: str) -> list[str]:
    answer = answer.strip()[:MAX_GOLD_CHARS]
    golds = [answer if "\\boxed" in answer else "\\boxed{" + answer + "}"]
    # "18 eggs" inside \boxed{} parses as 18*E*g*g*s; also accept the bare number in that case.
    match = _NUMBER_WITH_WORDS_RE.match(answer)
    if match and not any(word.lower() in _MATH_WORDS for word in match.group(2).split()):
        golds.append("\\boxed{" + match.group(1) + "}")
    return golds


def math_reward(response: str, answer: str) -> float:
    """1.0 if math-verify finds the (whole) response equivalent to the gold ``answer``, else 0.0.

    Gold is parsed as ``\\boxed{answer}`` (as is if it already contains ``\\boxed``); the prediction
    is the last :data:`MAX_RESPONSE_CHARS` characters of the response, ``\\fbox`` read as ``\\boxed``.
    Runs in a helper process bounded by :data:`MATH_VERIFY_TIMEOUT_S`; a timeout gives 0.0 and is
    counted by :func:`reward_timeouts`.  Thread-safe.
    """
    global _process_broken
    response = "" if response is None else str(response)
    answer = "" if answer is None else str(answer)
    if not response.strip() or not answer.strip():
        return 0.0
    pred = response[-MAX_RESPONSE_CHARS:].replace("\\fbox{", "\\boxed{")
    golds = _gold_candidates(answer)
    if USE_WORKER_PROCESS and not _process_broken and not _exiting and os.name == "posix":
        try:
            return 1.0 if _get_pool().check(golds, pred, MATH_VERIFY_TIMEOUT_S) else 0.0
        except _PoolClosed:
            pass  # shut down while this call was waiting: verify this one in-thread
        except _WorkerUnavailable as exc:
            if not _process_broken:
                _process_broken = True
                logger.warning("%s; verifying in-thread without a timeout from now on", exc)
    return 1.0 if _check_in_thread(golds, pred) else 0.0


# --------------------------------------------------------------------------------------------------
# User rewards and the registry
# --------------------------------------------------------------------------------------------------


def _one_line(text: object, limit: int = 200) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _load_module_from_file(spec: str, path_text: str) -> Any:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ConfigError(f"reward {spec!r}: file not found: {path_text}")
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode("utf-8")).hexdigest()[:10]
    stem = re.sub(r"\W", "_", resolved.stem)
    mod_name = f"_tfgrpo_user_reward_{stem}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    mod_spec = importlib.util.spec_from_file_location(mod_name, resolved)
    if mod_spec is None or mod_spec.loader is None:
        raise ConfigError(f"reward {spec!r}: cannot import {path_text}")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[mod_name] = module
    try:
        mod_spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(mod_name, None)
        if not isinstance(exc, Exception):
            raise
        raise ConfigError(
            f"reward {spec!r}: cannot import {path_text}: {_one_line(f'{type(exc).__name__}: {exc}')}"
        ) from None
    return module


def _check_reward_value(spec: str, value: object) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isnan(number) and 0.0 <= number <= 1.0:
            return number
    raise ValueError(f"reward {spec!r} returned {_one_line(repr(value), 80)}; expected a number in [0, 1]")


def load_user_reward(spec: str) -> RewardFn:
    """Load ``module:function`` or ``path/to/file.py:function`` (``function`` may be dotted).

    Bad specs raise :class:`ConfigError` (one line).  The returned reward raises ``ValueError``
    (one line, naming the spec and the value) when the function returns anything but a real number
    or bool within [0, 1]; exceptions from the function itself propagate unchanged.
    """
    spec = spec.strip()
    module_part, sep, attr_part = spec.rpartition(":")
    module_part, attr_part = module_part.strip(), attr_part.strip()
    if (
        not sep
        or not module_part
        or not attr_part
        or not all(piece.isidentifier() for piece in attr_part.split("."))
    ):
        raise ConfigError(f"reward {spec!r}: expected 'module:function' or 'path/to/file.py:function'")
    is_path = module_part.endswith(".py") or "/" in module_part or os.sep in module_part
    if is_path:
        module = _load_module_from_file(spec, module_part)
    else:
        if not all(piece.isidentifier() for piece in module_part.split(".")):
            raise ConfigError(f"reward {spec!r}: {module_part!r} is not a module name or a .py file")
        try:
            module = importlib.import_module(module_part)
        except Exception as exc:
            raise ConfigError(
                f"reward {spec!r}: cannot import module {module_part!r}: "
                f"{_one_line(f'{type(exc).__name__}: {exc}')}"
            ) from None
    target: Any = module
    for piece in attr_part.split("."):
        try:
            target = getattr(target, piece)
        except AttributeError:
            raise ConfigError(f"reward {spec!r}: {module_part!r} has no attribute {attr_part!r}") from None
    if not callable(target):
        raise ConfigError(f"reward {spec!r}: {attr_part!r} is not callable (it is a {type(target).__name__})")
    fn: Callable[[str, str], object] = target

    def user_reward(response: str, answer: str) -> float:
        return _check_reward_value(spec, fn(response, answer))

    functools.update_wrapper(user_reward, fn)
    return user_reward


_BUILTIN_REWARDS: dict[str, RewardFn] = {
    "math": math_reward,
    "exact_match": exact_match_reward,
    "em": exact_match_reward,
    "f1": f1_reward,
}


def majority_rewards(responses: Sequence[str | None]) -> tuple[list[float | None], str | None]:
    """Reward without ground truth (self-consistency): 1.0 for a response whose normalised final answer
    is the group's unique most frequent one (given by at least two responses), else 0.0; ``None`` (a
    failed rollout) stays ``None``. Returns the rewards and the majority answer (``None`` when there is
    no unique majority: every reward is then 0 and the variance gate skips the group)."""
    answers = [None if r is None else normalize_answer(extract_final_answer(r)) for r in responses]
    counts = Counter(a for a in answers if a)
    ranked = counts.most_common(2)
    if not ranked or ranked[0][1] < 2 or (len(ranked) > 1 and ranked[1][1] == ranked[0][1]):
        return [None if a is None else 0.0 for a in answers], None
    top = ranked[0][0]
    return [None if a is None else float(a == top) for a in answers], top


GROUP_REWARDS = ("judge", "majority")  # rewards computed by the reward node itself, not a RewardFn


def reward_names() -> list[str]:
    """Names accepted by :func:`get_reward` besides ``module:function`` specs."""
    return list(_BUILTIN_REWARDS)


def get_reward(name: str) -> RewardFn:
    """A built-in reward by name (``math``, ``exact_match``/``em``, ``f1``) or a user ``spec``."""
    text = str(name).strip()
    if ":" in text:
        return load_user_reward(text)
    fn = _BUILTIN_REWARDS.get(text.lower())
    if fn is None:
        raise ConfigError(
            f"unknown reward {text!r}; valid: {', '.join([*_BUILTIN_REWARDS, *GROUP_REWARDS])}, "
            "or 'module:function' / 'path/to/file.py:function'"
        )
    return fn
