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

from tfgrpo.errors import RunFailed
from tfgrpo.evals.report import build_eval_report, every_run_failed
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


def score_or_fail(state: EvalState) -> dict[str, Any]:
    """Studio's eval graph: :func:`score`, but an evaluation whose every call failed ends as an error with
    the CLI's line (``tfgrpo eval`` exits 1 with it), not as a success with Mean@k 0.000. The CLI's graph
    keeps :func:`score`: it writes the reports first, then prints the line."""
    failure = every_run_failed(state.get("results", []))
    if failure:
        raise RunFailed(failure)
    return score(state)
