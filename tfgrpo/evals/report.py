"""Evaluation reports: metrics per arm, the paired library-vs-baseline comparison, per-question tables,
cost from the ledger, and the PNG plots. Everything is rebuilt from ``results.json`` and ``eval.json``
alone, so ``tfgrpo report EVAL_DIR`` gives the same files without a model."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tfgrpo.evals.metrics import MIN_QUESTIONS, arm_summary, paired_comparison
from tfgrpo.runs.rundir import atomic_write
from tfgrpo.state.types import AttemptResult

RESAMPLES = 10_000


# What a failed run (API error after retries, a reward that could not be computed) counts as: 0 by
# default, like the reference implementation, so every planned run counts and two arms with different
# failure counts are compared on the same runs; ``--exclude-failed`` leaves them out instead.
FAILED_ZERO = "scored 0"
FAILED_EXCLUDED = "excluded"


def failed_runs_policy(settings: Mapping[str, Any]) -> str:
    """``settings["failed_runs"]``; an evaluation that does not say (older ``eval.json``) scores them 0."""
    policy = str(settings.get("failed_runs") or FAILED_ZERO)
    if policy not in (FAILED_ZERO, FAILED_EXCLUDED):
        raise ValueError(f"failed_runs must be {FAILED_ZERO!r} or {FAILED_EXCLUDED!r}, got {policy!r}")
    return policy


def rewards_by_question(
    results: Sequence[AttemptResult], arm: str, question_ids: Sequence[str], *, exclude_failed: bool = False
) -> dict[str, list[float]]:
    """Rewards per question, in run order; a failed run is a 0, or left out with ``exclude_failed``
    (failures are counted per arm either way)."""
    out: dict[str, list[float]] = {qid: [] for qid in question_ids}
    for r in sorted(results, key=lambda r: r["i"]):
        if r["arm"] == arm and not (exclude_failed and r["reward"] is None):
            out.setdefault(r["query_id"], []).append(float(r["reward"] or 0.0))
    return out


def paired_rewards(
    results: Sequence[AttemptResult],
    arm_a: str,
    arm_b: str,
    question_ids: Sequence[str],
    *,
    exclude_failed: bool = False,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The two arms' rewards per question on the same run indices: run i of one arm is paired with run
    i of the other (they share their sampling seed). With ``exclude_failed`` an index failed in either
    arm is left out of both."""
    runs: dict[tuple[str, str], dict[int, float | None]] = {}
    for r in results:
        if r["arm"] in (arm_a, arm_b):
            runs.setdefault((r["arm"], r["query_id"]), {})[r["i"]] = r["reward"]
    a: dict[str, list[float]] = {}
    b: dict[str, list[float]] = {}
    for qid in question_ids:
        ra, rb = runs.get((arm_a, qid), {}), runs.get((arm_b, qid), {})
        both = sorted(
            i for i in ra.keys() & rb.keys() if not (exclude_failed and (ra[i] is None or rb[i] is None))
        )
        a[qid] = [float(ra[i] or 0.0) for i in both]
        b[qid] = [float(rb[i] or 0.0) for i in both]
    return a, b


def build_eval_report(
    settings: Mapping[str, Any], questions: Sequence[Mapping[str, Any]], results: Sequence[AttemptResult]
) -> dict[str, Any]:
    """The whole report as a JSON-able dict (``report.json``)."""
    ids = [q["id"] for q in questions]
    arms: list[str] = list(settings["arms"])
    k, seed = int(settings["k"]), int(settings.get("seed", 0))
    policy = failed_runs_policy(settings)
    exclude = policy == FAILED_EXCLUDED
    by_arm = {arm: rewards_by_question(results, arm, ids, exclude_failed=exclude) for arm in arms}
    summaries: dict[str, Any] = {}
    for arm in arms:
        mine = [r for r in results if r["arm"] == arm]
        failed = [r for r in mine if r["reward"] is None]
        try:
            summary: dict[str, Any] = dict(arm_summary(by_arm[arm], k, n_resamples=RESAMPLES, seed=seed))
        except ValueError:  # every run of the arm failed: no metric, and the report says why
            summary = dict.fromkeys(("mean_at_k", "ci_low", "ci_high", "pass_at_1", "pass_at_k"))
            summary.update(k=k, n_questions=0, n_runs=0, questions_without_runs=len(ids))
        summary.update(
            runs_planned=len(ids) * k,
            runs_done=len(mine),
            runs_failed=len(failed),
            failure_reasons=dict(Counter((r["error"] or "unknown")[:120] for r in failed).most_common(5)),
            calls=sum(r["calls"] for r in mine),
            input_tokens=sum(r["input_tokens"] for r in mine),
            output_tokens=sum(r["output_tokens"] for r in mine),
            cost_usd=round(sum(r["cost_usd"] for r in mine), 6),
            cached_calls=sum(r.get("cached_calls", 0) for r in mine),  # paid by an identical request
        )
        n = max(1, len(ids))
        summary["tokens_per_question"] = round((summary["input_tokens"] + summary["output_tokens"]) / n, 1)
        summary["usd_per_question"] = round(summary["cost_usd"] / n, 6)
        summaries[arm] = summary
    comparison: dict[str, Any] | None = None
    if "library" in arms and "baseline" in arms:
        try:
            paired = paired_rewards(results, "library", "baseline", ids, exclude_failed=exclude)
            comparison = dict(paired_comparison(*paired, n_resamples=RESAMPLES, seed=seed))
        except ValueError as exc:  # no question has usable runs in both arms
            comparison = {"error": str(exc)}
    per_question = []
    for q in questions:
        row: dict[str, Any] = {"id": q["id"], "answer": q["answer"]}
        for arm in arms:
            rewards = by_arm[arm][q["id"]]
            answers = Counter(
                r["answer"] for r in results if r["arm"] == arm and r["query_id"] == q["id"] and r["answer"]
            )
            row[arm] = {
                "runs": len(rewards),
                "mean": round(sum(rewards) / len(rewards), 4) if rewards else None,
                "correct": sum(1 for x in rewards if x >= 1.0),
                "top_answer": answers.most_common(1)[0][0] if answers else "",
            }
        per_question.append(row)
    return {
        "settings": {**settings, "failed_runs": policy},
        "arms": summaries,
        "comparison": comparison,
        "questions": per_question,
    }


def every_run_failed(results: Sequence[Mapping[str, Any]]) -> str | None:
    """The one line of an evaluation none of whose runs got an answer (every call failed), else None:
    ``tfgrpo eval`` exits 1 with it and Studio's eval graph raises it, never a Mean@k of 0."""
    if not results or any(r["reward"] is not None for r in results):
        return None
    calls = sum(r["calls"] for r in results)
    return (
        f"every run of this evaluation failed ({len(results)} of {len(results)}, {calls} LLM calls; "
        f"first error: {results[0]['error'] or 'unknown'})"
    )


def failed_runs_note(settings: Mapping[str, Any]) -> str:
    """The sentence of report.md saying how failed runs were counted."""
    if failed_runs_policy(settings) == FAILED_EXCLUDED:
        return (
            "failed runs excluded from Mean@k and Pass@k (--exclude-failed); "
            "paired on the run indices usable in both arms"
        )
    return (
        "failed runs scored 0 in Mean@k and Pass@k "
        "(every planned run counts; --exclude-failed leaves them out)"
    )


def _fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def verdict(comparison: Mapping[str, Any] | None) -> str:
    """One honest sentence about the library-vs-baseline difference."""
    if not comparison:
        return "No baseline arm: run with --baseline to compare with the same model without E."
    if "error" in comparison:
        return f"No comparison: {comparison['error']}"
    diff, lo, hi = comparison["diff"], comparison["ci_low"], comparison["ci_high"]
    n = comparison["n_questions"]
    if not comparison.get("reliable", True):
        return (
            f"Library minus baseline Mean@k: {diff:+.3f} over only {n} paired questions "
            f"(p = {comparison['p_value']:.3g}). With fewer than {MIN_QUESTIONS} questions the interval is "
            "not reliable: no verdict; evaluate more questions."
        )
    span = f"{diff:+.3f} (95% CI {lo:+.3f} .. {hi:+.3f}, p = {comparison['p_value']:.3g})"
    if comparison["spans_zero"]:
        return (
            f"Library minus baseline Mean@k: {span}. The confidence interval spans zero: this evaluation "
            "shows no difference distinguishable from noise."
        )
    direction = "better" if diff > 0 else "worse"
    return f"Library minus baseline Mean@k: {span}. The library arm is {direction}, beyond the 95% interval."


def eval_markdown(report: Mapping[str, Any]) -> str:
    s = report["settings"]
    k = s["k"]
    lines = [
        "# tfgrpo evaluation",
        "",
        f"- dataset: `{s['dataset']}` ({len(report['questions'])} questions), "
        f"k = {k}, seed = {s.get('seed', 0)}",
        f"- model: `{s.get('model') or 'embedded default'}`, domain: {s.get('domain')}, "
        f"reward: {s.get('reward')}, temperature: {s.get('temperature')}",
        f"- library: `{s.get('library') or '-'}` ({s.get('library_items', 0)} experiences)",
        f"- {failed_runs_note(s)}",
        "",
        "## Result",
        "",
        verdict(report.get("comparison")),
        "",
        f"| arm | Mean@{k} | 95% CI | Pass@1 | Pass@{k} | runs scored / planned | failed | tokens / question "
        "| $ / question |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, a in report["arms"].items():
        lines.append(
            f"| {arm} | {_fmt(a['mean_at_k'])} | {_fmt(a['ci_low'])} .. {_fmt(a['ci_high'])} | "
            f"{_fmt(a['pass_at_1'])} | {_fmt(a['pass_at_k'])} | {a['n_runs']} / {a['runs_planned']} | "
            f"{a['runs_failed']} | {a['tokens_per_question']:.0f} | {a['usd_per_question']:.5f} |"
        )
    c = report.get("comparison")
    if c and "error" not in c:
        lines += [
            "",
            f"Paired over {c['n_questions']} questions (run i of both arms shares its sampling seed): "
            f"library better on {c['wins']}, worse on {c['losses']}, tied on {c['ties']}. p: two-sided "
            "paired sign-flip test over questions (exact below 14 questions, else "
            f"{RESAMPLES} random sign vectors); CI: the same test inverted, so it excludes 0 exactly "
            "when p <= 0.05.",
        ]
    failed = {arm: a["failure_reasons"] for arm, a in report["arms"].items() if a["failure_reasons"]}
    if failed:
        how = "left out of the metrics" if failed_runs_policy(s) == FAILED_EXCLUDED else "scored 0"
        lines += ["", f"## Failed runs ({how})", ""]
        for arm, reasons in failed.items():
            lines += [f"- {arm}: {n} x {why}" for why, n in reasons.items()]
    arms = list(report["arms"])
    lines += ["", "## Per question", ""]
    header = "| id | answer | " + " | ".join(f"{a} mean | {a} correct | {a} top answer" for a in arms) + " |"
    lines += [header, "|" + "---|" * (2 + 3 * len(arms))]
    for row in report["questions"]:
        cells = [str(row["id"]), str(row["answer"])[:40]]
        for arm in arms:
            q = row[arm]
            cells += [_fmt(q["mean"]), f"{q['correct']}/{q['runs']}", q["top_answer"][:40].replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Plot: `comparison.png`.", ""]
    return "\n".join(lines)


def write_results(
    eval_dir: Path, questions: Sequence[Mapping[str, Any]], results: Sequence[AttemptResult]
) -> list[dict[str, Any]]:
    """results.json: every run's compact result and the questions' ids and answers (what
    ``tfgrpo report`` rebuilds from). Returns those questions."""
    eval_dir.mkdir(parents=True, exist_ok=True)
    slim = [{"id": q["id"], "answer": q["answer"]} for q in questions]
    payload = {"questions": slim, "results": list(results)}
    atomic_write(eval_dir / "results.json", json.dumps(payload, ensure_ascii=False) + "\n")
    return slim


def write_eval_report(
    eval_dir: Path,
    settings: Mapping[str, Any],
    questions: Sequence[Mapping[str, Any]],
    results: Sequence[AttemptResult],
) -> dict[str, Any]:
    """Write results.json, report.json, report.md and comparison.png; return the report."""
    from tfgrpo.evals.plots import plot_eval_comparison

    slim_questions = write_results(eval_dir, questions, results)
    report = build_eval_report(settings, slim_questions, results)
    atomic_write(eval_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic_write(eval_dir / "report.md", eval_markdown(report))
    title = f"{Path(str(settings['dataset'])).name}: Mean@{settings['k']} and Pass@{settings['k']}"
    comparison = report["comparison"]
    usable = comparison if comparison and "error" not in comparison else None
    scored = {arm: a for arm, a in report["arms"].items() if a["mean_at_k"] is not None}
    plot_eval_comparison(scored, eval_dir / "comparison.png", title=title, comparison=usable)
    return report


def rebuild_eval_report(eval_dir: Path, out: Path | None = None) -> dict[str, Any]:
    """The reports of ``eval_dir`` written again, there or in ``out``."""
    settings = json.loads((eval_dir / "eval.json").read_text(encoding="utf-8"))
    data = json.loads((eval_dir / "results.json").read_text(encoding="utf-8"))
    target = out or eval_dir
    if settings.get("mode") == "attribute":
        library = json.loads((eval_dir / "library.json").read_text(encoding="utf-8"))
        return write_attribution_report(target, settings, data["questions"], data["results"], library)
    return write_eval_report(target, settings, data["questions"], data["results"])


def write_learning_curve(run_dir: Path, steps: Sequence[Mapping[str, Any]]) -> Path:
    from tfgrpo.evals.plots import plot_learning_curve

    return plot_learning_curve(steps, run_dir / "learning_curve.png", title=f"Learning curve: {run_dir.name}")


def build_attribution_report(
    settings: Mapping[str, Any],
    questions: Sequence[Mapping[str, Any]],
    results: Sequence[AttemptResult],
    library: Mapping[str, Any],
) -> dict[str, Any]:
    """Leave-one-out attribution: for each experience, Mean@k of E minus Mean@k of E without it, paired
    over questions. Positive: the experience helps; an interval entirely below zero: it hurts."""
    ids = [q["id"] for q in questions]
    k, seed = int(settings["k"]), int(settings.get("seed", 0))
    policy = failed_runs_policy(settings)
    exclude = policy == FAILED_EXCLUDED
    full = rewards_by_question(results, "full", ids, exclude_failed=exclude)
    try:
        full_summary: dict[str, Any] | None = dict(arm_summary(full, k, n_resamples=RESAMPLES, seed=seed))
    except ValueError:
        full_summary = None
    rows: list[dict[str, Any]] = []
    for item in library["items"]:
        arm = f"without:{item['id']}"
        row: dict[str, Any] = {"id": item["id"], "text": item["text"]}
        try:
            paired = paired_rewards(results, "full", arm, ids, exclude_failed=exclude)
            cmp = paired_comparison(*paired, n_resamples=RESAMPLES, seed=seed)
        except ValueError as exc:
            row.update(contribution=None, ci_low=None, ci_high=None, p_value=None, verdict="no data")
            row["error"] = str(exc)
        else:
            lo, hi = cmp["ci_low"], cmp["ci_high"]
            row.update(contribution=cmp["diff"], ci_low=lo, ci_high=hi, p_value=cmp["p_value"])
            if not cmp["reliable"]:  # too few questions for the interval to mean anything
                row["verdict"] = "too few questions"
            else:
                row["verdict"] = "helps" if lo > 0 else "hurts" if hi < 0 else "unclear"
        rows.append(row)
    rows.sort(key=lambda r: -1e9 if r["contribution"] is None else -r["contribution"])
    failed = sum(1 for r in results if r["reward"] is None)
    return {
        "settings": {**settings, "failed_runs": policy},
        "full": full_summary,
        "items": rows,
        "runs": len(results),
        "runs_failed": failed,
        "cost_usd": round(sum(r["cost_usd"] for r in results), 6),
    }


def attribution_markdown(report: Mapping[str, Any]) -> str:
    s = report["settings"]
    full = report["full"]
    lines = [
        "# tfgrpo experience attribution (leave-one-out)",
        "",
        f"- dataset: `{s['dataset']}` ({s.get('k')} runs per question and variant, seed {s.get('seed', 0)})",
        f"- library: `{s.get('library')}` ({len(report['items'])} experiences), model `{s.get('model')}`",
        f"- E as a whole: Mean@{s.get('k')} "
        + (
            f"{full['mean_at_k']:.3f} (95% CI {full['ci_low']:.3f} .. {full['ci_high']:.3f})" if full else "-"
        ),
        f"- runs: {report['runs']} ({report['runs_failed']} failed), ${report['cost_usd']:.4f}; "
        + failed_runs_note(s),
        "",
        "Contribution = Mean@k with E minus Mean@k with E without the experience, paired over questions "
        "(run i of every variant shares its sampling seed). `helps` / `hurts`: the 95% interval is above / "
        "below zero; `unclear`: it spans zero (no evidence either way); `too few questions`: fewer than "
        f"{MIN_QUESTIONS} questions, the interval is not reliable.",
        "",
        "| id | contribution | 95% CI | p | verdict | experience |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["items"]:
        if r["contribution"] is None:
            lines.append(f"| {r['id']} | - | - | - | {r['verdict']} | {r['text'].replace('|', '/')} |")
            continue
        lines.append(
            f"| {r['id']} | {r['contribution']:+.3f} | {r['ci_low']:+.3f} .. {r['ci_high']:+.3f} | "
            f"{r['p_value']:.3g} | {r['verdict']} | {r['text'].replace('|', '/')} |"
        )
    hurts = [r["id"] for r in report["items"] if r["verdict"] == "hurts"]
    lines += [
        "",
        f"Pruned library (without {', '.join(hurts)}): `library.pruned.json`."
        if hurts
        else "No experience hurts beyond the 95% interval: nothing to prune.",
        "",
        "Plot: `attribution.png`.",
        "",
    ]
    return "\n".join(lines)


def write_attribution_report(
    eval_dir: Path,
    settings: Mapping[str, Any],
    questions: Sequence[Mapping[str, Any]],
    results: Sequence[AttemptResult],
    library: Mapping[str, Any],
) -> dict[str, Any]:
    """Write results.json, report.json, report.md, attribution.png and, when an experience hurts,
    library.pruned.json (E without it; ids and provenance of the others unchanged)."""
    from tfgrpo.evals.plots import plot_attribution

    slim_questions = write_results(eval_dir, questions, results)
    report = build_attribution_report(settings, slim_questions, results, library)
    hurts = {r["id"] for r in report["items"] if r["verdict"] == "hurts"}
    pruned = None
    if hurts:
        pruned = {
            **library,
            "items": [i for i in library["items"] if i["id"] not in hurts],
            "version": int(library["version"]) + 1,
        }
        atomic_write(
            eval_dir / "library.pruned.json", json.dumps(pruned, indent=2, ensure_ascii=False) + "\n"
        )
    report["pruned"] = sorted(hurts) if hurts else None
    atomic_write(eval_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic_write(eval_dir / "report.md", attribution_markdown(report))
    plot_attribution(
        [r for r in report["items"] if r["contribution"] is not None],
        eval_dir / "attribution.png",
        title=f"Leave-one-out contribution of each experience (Mean@{settings['k']})",
    )
    return report
