"""The learner probe's scripted policy (issue 27, study session 4): right in exactly one of eight attempts.

Served by tfgrpo's fake OpenAI-compatible server (``tfgrpo.testing.fake_openai``) as the *policy* of a learn
run on the durations control, so every group of G = 8 holds one rewarded answer and seven that are not: the
learner always has contrast, and the probe asks only whether it can turn that contrast into a lesson that
states the convention (decimal hours). The right attempt answers the decimal; the others answer in minutes,
in hours and minutes, or as h:mm, cycling. Which attempt of a question is right is decided by arrival order
per question (the 1st, 9th, 17th... request for a question text), so exactly one in eight is right whatever
the concurrency; a retried request shifts the order, which the run's rewards show.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from tfgrpo.testing.fake_openai import last_user_text

_MINUTES = re.compile(r"(\d+)\s+minutes")
_seen: dict[str, int] = {}
_lock = threading.Lock()


def _decimal_hours(minutes: int) -> str:
    return f"{minutes / 60:.2f}".rstrip("0").rstrip(".")


def attempt_text(minutes: int, n: int) -> str:
    """The n-th attempt (0-based) at a question about ``minutes``: right when n % 8 == 0."""
    hours, rest = divmod(minutes, 60)
    if n % 8 == 0:
        decimal = _decimal_hours(minutes)
        return f"{minutes} minutes divided by 60 is {decimal} hours.\nAnswer: {decimal}"
    form = n % 3
    if form == 0:
        return f"The duration is given as {minutes} minutes.\nAnswer: {minutes} minutes"
    if form == 1:
        return f"{minutes} minutes is {hours} hours and {rest} minutes.\nAnswer: {hours} hours {rest} minutes"
    return f"{minutes} minutes is {hours} hours and {rest} minutes.\nAnswer: {hours}:{rest:02d}"


def one_in_eight(body: dict[str, Any]) -> str:
    """The fake server's responder: one rewarded attempt in every eight per question."""
    question = last_user_text(body)
    match = _MINUTES.search(question)
    if not match:
        return "Answer: 0"
    with _lock:
        n = _seen.get(question, 0)
        _seen[question] = n + 1
    return attempt_text(int(match.group(1)), n)
