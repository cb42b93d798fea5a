"""PNG plots of a learning run and of an evaluation (library vs baseline).

matplotlib is imported inside the functions so ``tfgrpo`` imports without it. Figures are built as
``matplotlib.figure.Figure`` rendered by ``FigureCanvasAgg``: no pyplot global state, no GUI backend,
safe to call from worker threads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_attribution", "plot_eval_comparison", "plot_learning_curve"]

_REWARD_COLOR = "#1f77b4"
_LIBRARY_COLOR = "#ff7f0e"
_KEPT_COLOR = "#2ca02c"
_SKIPPED_COLOR = "#c7c7c7"
_ARM_COLORS = ["#9e9e9e", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
_LEGEND_ABOVE: dict[str, Any] = {
    "loc": "lower left",
    "bbox_to_anchor": (0.0, 1.0),
    "fontsize": 9,
    "frameon": False,
    "borderaxespad": 0.2,
}


def plot_learning_curve(
    steps: Sequence[Mapping[str, Any]],
    path: Path,
    *,
    title: str = "Training-Free GRPO learning curve",
) -> Path:
    """Plot a learning run's per-step report (the ``steps`` list of its report.json) to a PNG.

    Top panel: mean reward per step (left axis, [0, 1]) and experience-library size (right axis).
    Bottom panel: groups kept vs skipped by the variance gate (stacked bars). Dotted vertical lines
    mark epoch boundaries. Steps whose ``mean_reward`` is None (no usable rollout) leave a gap.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    ordered = sorted(steps, key=lambda s: int(s["step"]))
    xs = [int(s["step"]) for s in ordered]
    # None -> NaN so matplotlib breaks the line there instead of inventing a value
    rewards = [math.nan if s.get("mean_reward") is None else float(s["mean_reward"]) for s in ordered]
    sizes = [int(s.get("library_size", 0)) for s in ordered]
    kept = [int(s.get("groups_kept", 0)) for s in ordered]
    skipped = [int(s.get("groups_skipped", 0)) for s in ordered]

    fig = Figure(figsize=(9.0, 6.0), dpi=110, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2.2, 1.0]})
    fig.suptitle(title, fontsize=13)

    # smaller markers on long runs so they do not merge into a band
    marker_size = 5.0 if len(xs) <= 60 else 2.5
    top.plot(xs, rewards, marker="o", color=_REWARD_COLOR, linewidth=1.8, markersize=marker_size)
    top.set_ylim(-0.02, 1.02)
    top.set_ylabel("mean reward", color=_REWARD_COLOR)
    top.tick_params(axis="y", colors=_REWARD_COLOR)
    top.grid(True, axis="y", alpha=0.3)

    twin = top.twinx()
    # markers keep a single step visible (a one-point step line has no length)
    twin.step(xs, sizes, where="mid", color=_LIBRARY_COLOR, linewidth=1.8, marker="s", markersize=3)
    twin.set_ylabel("library size (items)", color=_LIBRARY_COLOR)
    twin.tick_params(axis="y", colors=_LIBRARY_COLOR)
    twin.set_ylim(0, max(sizes, default=0) * 1.15 + 1)
    twin.yaxis.set_major_locator(MaxNLocator(integer=True))

    bottom.bar(xs, kept, width=0.7, color=_KEPT_COLOR, alpha=0.75)
    bottom.bar(xs, skipped, width=0.7, bottom=kept, color=_SKIPPED_COLOR, alpha=0.9)
    bottom.set_ylabel("groups")
    bottom.set_xlabel("step")
    bottom.set_ylim(0, max((k + s for k, s in zip(kept, skipped, strict=True)), default=0) * 1.15 + 1)
    bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
    # min_n_ticks=1: otherwise a one-step run falls back to fractional ticks
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    bottom.grid(True, axis="y", alpha=0.3)
    if xs:
        # half a bar of margin so a single step is not drawn as a zero-width plot
        bottom.set_xlim(min(xs) - 0.6, max(xs) + 0.6)

    epochs = [s.get("epoch") for s in ordered]
    boundaries = [(xs[i] + xs[i - 1]) / 2.0 for i in range(1, len(xs)) if epochs[i] != epochs[i - 1]]
    for x in boundaries:
        for ax in (top, bottom):
            ax.axvline(x, color="0.45", linestyle=":", linewidth=1.2)

    no_reward_note = " (no usable rollouts)" if all(math.isnan(r) for r in rewards) else ""
    handles = [
        # said in the legend rather than over the plot, where it could hide the library line
        Line2D([], [], color=_REWARD_COLOR, marker="o", label="mean reward" + no_reward_note),
        Line2D([], [], color=_LIBRARY_COLOR, marker="s", markersize=3, label="library size"),
    ]
    if boundaries:
        handles.append(Line2D([], [], color="0.45", linestyle=":", label="epoch boundary"))
    # legends sit above their panel, never on top of the data
    top.legend(handles=handles, **_LEGEND_ABOVE, ncols=len(handles))
    bottom.legend(
        handles=[
            Patch(color=_KEPT_COLOR, alpha=0.75, label="groups kept"),
            Patch(color=_SKIPPED_COLOR, label="groups skipped (no reward variance)"),
        ],
        **_LEGEND_ABOVE,
        ncols=2,
    )
    return _save(fig, path)


def plot_eval_comparison(
    arms: Mapping[str, Mapping[str, float]],
    path: Path,
    *,
    title: str,
    comparison: Mapping[str, Any] | None = None,
) -> Path:
    """Plot Mean@k (with its bootstrap CI) and Pass@k per arm as grouped bars to a PNG.

    ``arms`` maps an arm label to the dict returned by :func:`tfgrpo.evals.metrics.arm_summary`;
    ``comparison`` is the optional dict of :func:`tfgrpo.evals.metrics.paired_comparison`
    (library minus baseline), summarised in a line under the plot.
    """
    from matplotlib.figure import Figure

    labels = list(arms)
    ks = {int(arms[a]["k"]) for a in labels if "k" in arms[a]}
    k_text = str(ks.pop()) if len(ks) == 1 else "k"
    metric_names = [f"Mean@{k_text}", f"Pass@{k_text}"]

    fig = Figure(figsize=(7.5, 5.2), dpi=110, layout="constrained")
    ax = fig.subplots()
    fig.suptitle(title, fontsize=13)
    n_arms = max(len(labels), 1)
    width = 0.8 / n_arms
    for i, label in enumerate(labels):
        arm = arms[label]
        color = _ARM_COLORS[i % len(_ARM_COLORS)]
        offset = (i - (n_arms - 1) / 2.0) * width
        mean, pass_k = float(arm["mean_at_k"]), float(arm["pass_at_k"])
        # asymmetric CI, clamped at 0 in case a caller passes a CI that does not contain the mean
        err_low = max(mean - float(arm.get("ci_low", mean)), 0.0)
        err_high = max(float(arm.get("ci_high", mean)) - mean, 0.0)
        ax.bar(
            [offset],
            [mean],
            width * 0.92,
            yerr=[[err_low], [err_high]],
            capsize=6,
            error_kw={"elinewidth": 1.5, "ecolor": "0.15"},
            color=color,
            label=label,
        )
        ax.bar([1 + offset], [pass_k], width * 0.92, color=color)
        # labels sit above the error bar so the two never overlap
        ax.text(offset, mean + err_high + 0.015, f"{mean:.3f}", ha="center", va="bottom", fontsize=9)
        ax.text(1 + offset, pass_k + 0.015, f"{pass_k:.3f}", ha="center", va="bottom", fontsize=9)

    ax.set_xticks([0, 1], metric_names)
    ax.set_xlim(-0.6, 1.6)
    # headroom above 1.0 for the value labels; ticks still cover [0, 1] only
    ax.set_ylim(0, 1.12)
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("score")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    # above the axes: inside, it would cover bars and value labels near 1.0
    ax.legend(**_LEGEND_ABOVE, ncols=min(n_arms, 6))
    notes = ["error bars: 95% bootstrap CI of Mean@k over questions"]
    if comparison is not None:
        notes.insert(0, _comparison_text(comparison))
    # supxlabel (unlike fig.text) is given its own space by the constrained layout
    fig.supxlabel("\n".join(notes), fontsize=9.5)
    return _save(fig, path)


def plot_attribution(rows: Sequence[Mapping[str, Any]], path: Path, *, title: str) -> Path:
    """Horizontal bars: each experience's leave-one-out contribution with its 95% CI, green when the
    interval is above zero, red when below, grey when it spans zero. ``rows`` carry ``id``, ``text``,
    ``contribution``, ``ci_low``, ``ci_high`` (see :func:`tfgrpo.evals.report.build_attribution_report`)."""
    from matplotlib.figure import Figure

    rows = list(rows)
    fig = Figure(figsize=(8.0, 1.6 + 0.45 * max(len(rows), 1)), dpi=110, layout="constrained")
    ax = fig.subplots()
    fig.suptitle(title, fontsize=12)
    ys = list(range(len(rows)))[::-1]  # the first row (largest contribution) on top
    for y, row in zip(ys, rows, strict=True):
        c, lo, hi = float(row["contribution"]), float(row["ci_low"]), float(row["ci_high"])
        color = _KEPT_COLOR if lo > 0 else "#d62728" if hi < 0 else _SKIPPED_COLOR
        ax.barh([y], [c], color=color, height=0.6)
        ax.errorbar(
            [c], [y], xerr=[[max(c - lo, 0.0)], [max(hi - c, 0.0)]], fmt="none", ecolor="0.15", capsize=4
        )
    labels = [f"[{r['id']}] {str(r['text'])[:48]}{'…' if len(str(r['text'])) > 48 else ''}" for r in rows]
    ax.set_yticks(ys, labels, fontsize=8.5)
    ax.axvline(0.0, color="0.3", linewidth=1)
    ax.set_xlabel("Mean@k with E minus Mean@k without the experience (95% CI)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    if not rows:
        ax.text(0.5, 0.5, "no experience with usable runs", transform=ax.transAxes, ha="center")
    return _save(fig, path)


def _comparison_text(comparison: Mapping[str, Any]) -> str:
    diff, low, high = (float(comparison[key]) for key in ("diff", "ci_low", "ci_high"))
    p = float(comparison["p_value"])
    level = round(100 * float(comparison.get("confidence", 0.95)))
    p_text = f"{p:.2f}" if p >= 0.01 else f"{p:.2g}"
    text = (
        f"library - baseline: {diff:+.3f} ({level}% CI {low:+.2f} .. {high:+.2f}), "
        f"p = {p_text}, n = {int(comparison['n_questions'])}"
    )
    if not comparison.get("reliable", True):
        text += "  (too few questions: no verdict)"
    elif comparison.get("spans_zero"):
        text += "  (CI spans 0)"
    return text


def _save(fig: Figure, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(path))
    # the Figure was never registered with pyplot; clearing drops its artists right away
    fig.clear()
    return path
