"""Reward functions: ``(response text, gold answer) -> float in [0, 1]`` or ``(score, reason)``.

A reward says *why* when it can: every built-in returns a :class:`Scored`, a float that carries its
reason (what it read as the answer, what it expected, why they differ), and a user's reward may return
a plain float or a ``(score, reason)`` pair. :func:`check_reward_value` turns any of them into a
:class:`Scored`; the learner sees the reason next to the attempt.

Built-ins (see :func:`get_reward`):

* ``math`` -- symbolic equivalence with math-verify, run in a helper process with a wall-clock
  timeout (sympy can hang on inputs such as ``\\boxed{9^{9^{9}}}``; the helpers are
  :mod:`tfgrpo.evals.math_verify_pool`);
* ``exact_match`` / ``em`` -- SQuAD-normalised exact match of the extracted final answer;
* ``f1`` -- SQuAD token F1 of the extracted final answer;
* ``rg`` -- a reasoning_gym row scored as its authors do: the task's own ``score_answer`` on the extracted
  final answer (partial credit where the task gives it); the default for ``rg:`` datasets
  (:func:`default_reward`);
* ``module:function`` or ``path/to/file.py:function`` -- a user function, result validated.

Importing this module is cheap and has no side effects: math-verify (and sympy) are only imported
by the helper processes, started on the first :func:`math_reward` call or by :func:`warm_up`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import math
import numbers
import os
import re
import string
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tfgrpo.errors import ConfigError
from tfgrpo.evals import math_verify_pool
from tfgrpo.state.types import Query

__all__ = [
    "GROUP_REWARDS",
    "majority_reasons",
    "majority_rewards",
    "read_expected",
    "MATH_VERIFY_TIMEOUT_S",
    "MAX_RESPONSE_CHARS",
    "RewardFn",
    "Scored",
    "check_reward_value",
    "exact_match_reward",
    "extract_final_answer",
    "f1_reward",
    "default_reward",
    "get_reward",
    "reasoning_gym_reward",
    "score_row",
    "load_user_reward",
    "math_reward",
    "normalize_answer",
    "reward_names",
    "reward_stats",
    "reward_timeouts",
    "shutdown_math_workers",
    "warm_up",
]

RewardFn = Callable[[str, str], float | tuple[float, str]]

#: A reason is kept per rollout in the checkpointed state and shown to the learner: one line, this long.
MAX_REASON_CHARS = 300


class Scored(float):
    """A reward's score in [0, 1] (it *is* that float) with ``reason``: what the reward read as the
    answer, what it expected and why they differ (``''`` when it gave none)."""

    reason: str

    def __new__(cls, score: float, reason: str = "") -> Scored:
        scored = super().__new__(cls, score)
        scored.reason = reason
        return scored

    def __reduce__(self) -> tuple[Any, ...]:
        return (Scored, (float(self), self.reason))

    def __repr__(self) -> str:
        return f"Scored({float(self)!r}, {self.reason!r})"


# --------------------------------------------------------------------------------------------------
# Tunables (module constants; read at call time so tests and callers may override them)
# --------------------------------------------------------------------------------------------------

#: Wall-clock limit for one math-verify parse+verify in the helper process.
MATH_VERIFY_TIMEOUT_S: float = 10.0
#: Only the last this-many characters of a response are given to math-verify.
MAX_RESPONSE_CHARS: int = 4000
#: Gold answers longer than this are cut (first characters kept).
MAX_GOLD_CHARS: int = 2000
#: Use helper processes (:mod:`tfgrpo.evals.math_verify_pool`); when False verify in the calling thread.
USE_WORKER_PROCESS: bool = True


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


def _quoted(text: object, limit: int = 80) -> str:
    return "'" + _one_line(text, limit) + "'"


def read_expected(read: str, expected: object) -> str:
    """The start of a reason: ``read 'X'; expected 'Y'`` (or that no final answer was found)."""
    seen = f"read {_quoted(read)}" if read.strip() else "no final answer found (empty reply)"
    return f"{seen}; expected {_quoted(expected)}"


def exact_match_reward(response: str, answer: str) -> Scored:
    """1.0 if the normalised final answer of ``response`` equals the normalised ``answer``."""
    read = extract_final_answer(response)
    pred, gold = normalize_answer(read), normalize_answer(str(answer))
    if pred == gold:
        return Scored(1.0, f"{read_expected(read, answer)}: the same answer")
    if gold and pred and set(gold.split()) <= set(pred.split()):
        why = "the expected answer with extra words"
    else:
        why = "a different answer" if pred else "nothing to compare"
    return Scored(0.0, f"{read_expected(read, answer)}: {why}")


def f1_reward(response: str, answer: str) -> Scored:
    """SQuAD token F1 between the normalised final answer of ``response`` and ``answer``."""
    read = extract_final_answer(response)
    pred_tokens = normalize_answer(read).split()
    gold_tokens = normalize_answer(str(answer)).split()
    start = read_expected(read, answer)
    if not pred_tokens or not gold_tokens:
        same = pred_tokens == gold_tokens
        return Scored(1.0 if same else 0.0, f"{start}: {'both empty' if same else 'nothing to compare'}")
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    words = f"{num_same} of {len(gold_tokens)} expected words, {len(pred_tokens) - num_same} other"
    if num_same == 0:
        return Scored(0.0, f"{start}: no word in common")
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    f1 = 2 * precision * recall / (precision + recall)
    return Scored(f1, f"{start}: token F1 {f1:.2f} ({words})")


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


def math_reward(response: str, answer: str) -> Scored:
    """1.0 if math-verify finds the (whole) response equivalent to the gold ``answer``, else 0.0.

    Gold is parsed as ``\\boxed{answer}`` (as is if it already contains ``\\boxed``); the prediction
    is the last :data:`MAX_RESPONSE_CHARS` characters of the response, ``\\fbox`` read as ``\\boxed``.
    Runs in a helper process bounded by :data:`MATH_VERIFY_TIMEOUT_S`; a timeout gives 0.0 and is
    counted by :func:`reward_timeouts`.  Thread-safe.
    """
    response = "" if response is None else str(response)
    answer = "" if answer is None else str(answer)
    start = read_expected(extract_final_answer(response), answer)
    if not response.strip() or not answer.strip():
        return Scored(0.0, f"{start}: nothing to compare")
    pred = response[-MAX_RESPONSE_CHARS:].replace("\\fbox{", "\\boxed{")
    golds = _gold_candidates(answer)
    same = math_verify_pool.verify(golds, pred, MATH_VERIFY_TIMEOUT_S, use_process=USE_WORKER_PROCESS)
    if same:
        return Scored(1.0, f"{start}: mathematically equal")
    return Scored(0.0, f"{start}: not mathematically equal (math-verify, on the reply's last answer)")


def reward_timeouts() -> int:
    """Number of math-verify calls (process-wide, since import) that hit the wall-clock timeout."""
    return math_verify_pool.timeouts()


def reward_stats() -> dict[str, int]:
    """Counters: ``timeouts``, ``worker_crashes``, ``worker_errors``, ``in_thread_calls``."""
    return math_verify_pool.stats()


def shutdown_math_workers() -> None:
    """Kill all math-verify helper processes (safe to call any time; later checks start fresh ones)."""
    math_verify_pool.shutdown()


def warm_up(name: str) -> None:
    """Start what reward ``name`` needs in the background (math-verify helpers for ``math``), so that
    the first reward node of a run does not wait for them."""
    if name.strip().lower() == "math" and USE_WORKER_PROCESS:
        math_verify_pool.prewarm()


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


def _score_of(value: object) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isnan(number) and 0.0 <= number <= 1.0:
            return number
    return None


def check_reward_value(name: str, value: object) -> Scored:
    """A reward's return value as a :class:`Scored`: a number (or bool) in [0, 1], a :class:`Scored`, or
    a ``(score, reason)`` pair whose reason is a string. Anything else raises ``ValueError``, one line
    naming the reward and the value."""
    reason: object = getattr(value, "reason", "")
    score: float | None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        score, reason = _score_of(value[0]), value[1]
    else:
        score = _score_of(value)
    if score is None or not isinstance(reason, str):
        raise ValueError(
            f"reward {name!r} returned {_one_line(repr(value), 80)}; expected a number in [0, 1] "
            "or a (score, reason) pair with a string reason"
        )
    return Scored(score, _one_line(reason, MAX_REASON_CHARS) if reason.strip() else "")


def load_user_reward(spec: str) -> RewardFn:
    """Load ``module:function`` or ``path/to/file.py:function`` (``function`` may be dotted).

    Bad specs raise :class:`ConfigError` (one line).  The returned reward gives a :class:`Scored` (its
    ``reason`` is ``''`` when the function returned a plain number) and raises ``ValueError`` (one line,
    naming the spec and the value) when the function returns anything but a real number or bool within
    [0, 1] or a ``(score, reason)`` pair of those and a string; exceptions from the function itself
    propagate unchanged.
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

    def user_reward(response: str, answer: str) -> Scored:
        return check_reward_value(spec, fn(response, answer))

    functools.update_wrapper(user_reward, fn)
    return user_reward


RG_REWARD = "rg"


def reasoning_gym_reward(response: str, answer: str) -> Scored:
    """The ``rg`` reward needs the row, not only its answer: call :func:`score_row`."""
    raise ConfigError(
        "the 'rg' reward scores a reasoning_gym row: it needs the row (score_row), not an answer"
    )


def _score_reasoning_gym(response: str, query: Query) -> Scored:
    from tfgrpo.data import rg_entry

    dataset, entry = rg_entry(query)
    read = extract_final_answer(response)
    score = check_reward_value(query.get("source", RG_REWARD), dataset.score_answer(read, entry))
    return Scored(score, f"{read_expected(read, query['answer'])}: the task's scorer gave {score:.3g}")


def score_row(fn: RewardFn, response: str, query: Query) -> Scored:
    """``fn`` on a response and its row (the row's gold answer for ordinary rewards, the whole row, its
    reasoning_gym entry, for the ``rg`` reward), checked: a :class:`Scored`, or ``ValueError``."""
    if fn is reasoning_gym_reward:
        return _score_reasoning_gym(response, query)
    return check_reward_value(getattr(fn, "__name__", "reward"), fn(response, query["answer"]))


def default_reward(fallback: str, *datasets: str) -> str:
    """The reward a run gets when none is named: reasoning_gym datasets are scored by their own task
    (``rg``) when every dataset the run scores (training, validation) is one; anything else by
    ``fallback`` (the domain's)."""
    named = [str(d) for d in datasets if d]
    return RG_REWARD if named and all(d.startswith("rg:") for d in named) else fallback


def check_reward_datasets(reward: str, *datasets: str) -> None:
    """One line, before any cost, when the ``rg`` reward is asked for rows that are not reasoning_gym's."""
    if reward != RG_REWARD:
        return
    for dataset in datasets:
        if dataset and not str(dataset).startswith("rg:"):
            raise ConfigError(
                f"reward 'rg' scores reasoning_gym datasets (rg:NAME) only, not {dataset!r}: "
                "name another --reward"
            )


_BUILTIN_REWARDS: dict[str, RewardFn] = {
    "math": math_reward,
    "exact_match": exact_match_reward,
    "em": exact_match_reward,
    "f1": f1_reward,
    RG_REWARD: reasoning_gym_reward,
}


def majority_reasons(responses: Sequence[str | None], top: str | None) -> list[str]:
    """Why each response got its :func:`majority_rewards` reward (``''`` for a failed rollout)."""
    reasons = []
    for response in responses:
        if response is None:
            reasons.append("")
            continue
        read = extract_final_answer(response)
        seen = f"read {_quoted(read)}" if read.strip() else "no final answer found (empty reply)"
        if top is None:
            reasons.append(f"{seen}; no answer was given by more attempts than any other (no majority)")
        elif normalize_answer(read) == top:
            reasons.append(f"{seen}: the group's majority answer")
        else:
            reasons.append(f"{seen}; the group's majority answer is {_quoted(top)}")
    return reasons


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


def reward_function(name: str) -> RewardFn | None:
    """The per-response reward for ``name``; None for the group-level ones (judge, majority). Raises a
    one-line ConfigError for an unknown name: call it before paying for rollouts."""
    return None if name in GROUP_REWARDS else get_reward(name)


def ground_truth_reward(name: str) -> RewardFn | None:
    """:func:`reward_function` for runs scored alone (evaluation): ``majority`` needs a group."""
    if name == "majority":
        raise ConfigError(
            "the majority reward needs a group of rollouts: evaluate with a ground-truth reward"
        )
    return reward_function(name)
