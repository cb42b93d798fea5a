"""Estimate what the paper's protocol costs on a hosted model, from the ledger of a small dry run.

The dry run (any model, e.g. the embedded one) measures the prompt side of every role: system prompts,
the rendered library, questions, the learner's templates. How much a model *writes* depends on the model,
so output lengths are assumptions you pass (defaults: a long-reasoning model on competition math).
Prompts that embed generated text (a summary sees its rollout, extract sees G summaries) are scaled with
those assumptions too.

    python benchmarks/protocol_cost.py --learn-run runs/smoke-learn --eval-dir runs/smoke-eval \\
        --input-price 0.27 --output-price 1.10

Prints the number of calls, tokens and dollars per role for: learning (N problems, E epochs, G rollouts,
batch B) and evaluation (Q questions x k runs x 2 arms x D datasets).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def node_usage(run_dir: Path) -> dict[str, dict[str, float]]:
    """Calls and tokens per node, summed over a learning run's steps."""
    steps = json.loads((run_dir / "report.json").read_text())["steps"]
    out: dict[str, dict[str, float]] = {}
    for step in steps:
        for node, u in step.get("usage", {}).items():
            agg = out.setdefault(node, {"calls": 0, "input_tokens": 0, "output_tokens": 0})
            for key in agg:
                agg[key] += u[key]
    return out


def per_call(usage: dict[str, dict[str, float]], node: str, key: str) -> float:
    u = usage.get(node)
    return u[key] / u["calls"] if u and u["calls"] else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--learn-run", required=True, type=Path, help="a dry-run learning directory")
    p.add_argument("--eval-dir", type=Path, help="a dry-run eval directory")
    p.add_argument("--problems", type=int, default=100)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--group-size", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--kept-fraction", type=float, default=0.5, help="share of groups with reward spread")
    p.add_argument("--questions", type=int, default=30, help="eval questions per dataset (AIME: 30)")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--datasets", type=int, default=2, help="AIME 2024 and 2025")
    p.add_argument("--rollout-output", type=int, default=6000, help="assumed tokens written per rollout")
    p.add_argument("--summary-output", type=int, default=400)
    p.add_argument("--extract-output", type=int, default=300)
    p.add_argument("--update-output", type=int, default=800)
    p.add_argument("--input-price", type=float, default=0.27, help="USD per 1M input tokens")
    p.add_argument("--output-price", type=float, default=1.10, help="USD per 1M output tokens")
    a = p.parse_args(argv)

    usage = node_usage(a.learn_run)
    measured_rollout_out = per_call(usage, "rollout", "output_tokens")
    rollout_in = per_call(usage, "rollout", "input_tokens")
    # the summary prompt embeds the rollout: swap the dry run's rollout length for the assumed one
    summary_in = (
        max(0.0, per_call(usage, "summarize", "input_tokens") - measured_rollout_out) + a.rollout_output
    )
    measured_summary_out = per_call(usage, "summarize", "output_tokens")
    extract_in = (
        max(0.0, per_call(usage, "extract", "input_tokens") - a.group_size * measured_summary_out)
        + a.group_size * a.summary_output
    )
    update_in = per_call(usage, "update_library", "input_tokens") or 1500.0
    unmeasured = [n for n in ("rollout", "summarize", "extract", "update_library") if not usage.get(n)]

    steps = a.epochs * math.ceil(a.problems / a.batch_size)
    rollouts = a.epochs * a.problems * a.group_size
    kept_groups = round(a.epochs * a.problems * a.kept_fraction)
    rows: list[tuple[str, int, float, float]] = [
        ("learn: rollout", rollouts, rollout_in, a.rollout_output),
        ("learn: summarize", kept_groups * a.group_size, summary_in, a.summary_output),
        ("learn: extract", kept_groups, extract_in, a.extract_output),
        ("learn: update_library", steps, update_in, a.update_output),
    ]
    if a.eval_dir is not None:
        report: dict[str, Any] = json.loads((a.eval_dir / "report.json").read_text())
        arms = report["arms"]
        runs = sum(arm["n_runs"] + arm["runs_failed"] for arm in arms.values())
        eval_in = sum(arm["input_tokens"] for arm in arms.values()) / max(1, runs)
        rows.append(("eval: runs (2 arms)", a.questions * a.k * 2 * a.datasets, eval_in, a.rollout_output))

    print(f"dry run: {a.learn_run}" + (f" + {a.eval_dir}" if a.eval_dir else ""))
    print(f"prices: ${a.input_price}/1M input, ${a.output_price}/1M output; assumed rollout output "
          f"{a.rollout_output} tokens")  # fmt: skip
    heads = ("calls", 8), ("in/call", 10), ("out/call", 10), ("M tokens in", 13), ("M tokens out", 14)
    print(f"{'role':<24}" + "".join(f"{h:>{w}}" for h, w in heads) + f"{'USD':>10}")
    total_usd = {"learn": 0.0, "eval": 0.0}
    for name, calls, tin, tout in rows:
        m_in, m_out = calls * tin / 1e6, calls * tout / 1e6
        usd = m_in * a.input_price + m_out * a.output_price
        total_usd[name.split(":")[0]] += usd
        print(f"{name:<24}{calls:>8}{tin:>10.0f}{tout:>10.0f}{m_in:>13.2f}{m_out:>14.2f}{usd:>10.2f}")
    print(f"learning total: ${total_usd['learn']:.2f}   evaluation total: ${total_usd['eval']:.2f}")
    if unmeasured:
        print(f"not in the dry run (no kept group?), prompt overhead assumed: {', '.join(unmeasured)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
