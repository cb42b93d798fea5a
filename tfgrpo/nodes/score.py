"""Evaluation: **score**. Mean@k (with its 95% bootstrap CI), Pass@k and failures per arm (a failed
run scores 0 unless ``failed_runs`` is "excluded"), the paired library-vs-baseline difference with its
sign-flip p-value and the interval from the same test, and a row per question, from the runs of every
``attempt``.

Not a step of the learning algorithm but the end of the paper's evaluation protocol, so that the eval
graph's output (what a LangGraph Studio user sees) holds the numbers, not only the raw runs. The CLI
writes the same report to files (:func:`tfgrpo.evals.report.write_eval_report`).
"""

from __future__ import annotations

from typing import Any

from tfgrpo.evals.report import build_eval_report
from tfgrpo.state.graph_state import EvalState


def score(state: EvalState) -> dict[str, Any]:
    settings = {
        "arms": state.get("arms", []),
        "k": state.get("k", 1),
        "seed": state.get("seed", 0),
        "failed_runs": state.get("failed_runs", ""),
    }
    report = build_eval_report(settings, state.get("questions", []), state.get("results", []))
    return {
        "metrics": report["arms"],
        "comparison": report["comparison"],
        "per_question": report["questions"],
    }
