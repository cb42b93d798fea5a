"""Rewards of the learning study (benchmarks/learning_effect.py), given as ``--reward FILE:function``.

* ``decimal_hours``: the positive control. 1.0 when the final answer's first number is the duration in
  hours (gold "2.45" for 147 minutes, within 0.005); minutes, "2:27" or "2 hours 27 minutes" get 0.
* ``rg_*``: reasoning-gym's own ``score_answer`` for that task (partial credit where it gives it), applied
  to the final answer. tfgrpo hands a reward only the response and the gold answer, so each function
  rebuilds the entry fields its task's scorer reads from the gold answer.

The final answer is the text after the last ``Answer:`` (the policy prompt asks for that line), else the
last ``\\boxed{...}``, else the last non-empty line. Each reward returns ``(score, reason)``: the reason
(what it read, what it expected, why they differ) is shown to the learner beside the attempt.
"""

from __future__ import annotations

import re
from typing import Any

_ANSWER = re.compile(r"answer\s*:", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def final_answer(response: str) -> str:
    """The answer stated on the response's last ``Answer:`` line (else boxed, else its last line)."""
    matches = list(_ANSWER.finditer(response or ""))
    if matches:
        rest = response[matches[-1].end() :].strip().split("\n")[0]
        return _clean(rest)
    boxed = _BOXED.findall(response or "")
    if boxed:
        return _clean(boxed[-1])
    lines = [line for line in (response or "").splitlines() if line.strip()]
    return _clean(lines[-1]) if lines else ""


def _clean(text: str) -> str:
    text = text.strip().strip("*").strip().strip("`").strip()
    boxed = _BOXED.search(text)
    if boxed:
        text = boxed.group(1)
    text = text.strip("$ ").strip()
    return text[:-1].strip() if text.endswith(".") else text


def _read(answer: str, gold: str) -> str:
    shown = answer if len(answer) <= 80 else answer[:77] + "..."
    return (f"read '{shown}'" if answer else "no final answer found") + f"; expected '{gold}'"


def decimal_hours(response: str, gold: str) -> tuple[float, str]:
    """1.0 when the final answer is the duration in decimal hours (first number within 0.005 of gold)."""
    answer = final_answer(response)
    read = _read(answer, gold)
    if re.search(r"\d:\d", answer):  # 2:27 is hours and minutes, not decimal hours
        return 0.0, f"{read}: hours:minutes, not decimal hours"
    number = _NUMBER.search(answer.replace(",", ""))
    if number is None:
        return 0.0, f"{read}: no number in the answer"
    if abs(float(number.group()) - float(gold)) <= 0.005 + 1e-9:
        return 1.0, f"{read}: the duration in decimal hours"
    minutes = round(float(gold) * 60)
    if abs(float(number.group()) - minutes) < 0.5:
        return 0.0, f"{read}: the duration in minutes, not in decimal hours"
    return 0.0, f"{read}: a different number"


def _rg_score(task: str, response: str, entry: dict[str, Any]) -> tuple[float, str]:
    from reasoning_gym import get_score_answer_fn

    answer = final_answer(response)
    score = float(min(1.0, max(0.0, get_score_answer_fn(task)(answer, entry) or 0.0)))
    return score, f"{_read(answer, entry['answer'])}: the task's scorer gave {score:.3g}"


def rg_word_sorting(response: str, gold: str) -> tuple[float, str]:
    return _rg_score(
        "word_sorting", response, {"answer": gold, "metadata": {"sorted_words": gold.split(", ")}}
    )


def rg_leg_counting(response: str, gold: str) -> tuple[float, str]:
    return _rg_score("leg_counting", response, {"answer": gold, "metadata": {}})


def rg_family_relationships(response: str, gold: str) -> tuple[float, str]:
    return _rg_score("family_relationships", response, {"answer": gold, "metadata": {}})


def rg_letter_counting(response: str, gold: str) -> tuple[float, str]:
    return _rg_score("letter_counting", response, {"answer": gold, "metadata": {}})


def rg_fraction_simplification(response: str, gold: str) -> tuple[float, str]:
    # gold is "$\dfrac{99}{196}$"; the scorer reads the simplified parts (and the original ones, which the
    # gold answer does not hold: they only give 0.1 of partial credit, so they are left impossible here)
    parts = [int(n) for n in re.findall(r"\d+", gold)]
    if len(parts) != 2:
        return 0.0, f"expected '{gold}': not a fraction of two numbers"
    metadata = {
        "simplified_numerator": parts[0],
        "simplified_denominator": parts[1],
        "numerator": -1,
        "denominator": -1,
    }
    return _rg_score("fraction_simplification", response, {"answer": gold, "metadata": metadata})
