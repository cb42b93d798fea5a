"""Unit tests for tfgrpo.evals.plots: real PNG files of a sensible size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.image as mpimg

from tfgrpo.evals.metrics import arm_summary, paired_comparison
from tfgrpo.evals.plots import _comparison_text, plot_eval_comparison, plot_learning_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path, min_width: int = 400, min_height: int = 300) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = mpimg.imread(str(path))
    height, width = image.shape[:2]
    assert width >= min_width and height >= min_height, (width, height)
    assert width <= 4000 and height <= 4000, (width, height)
    # not a blank canvas: something was drawn
    assert float(image[..., :3].std()) > 0.01


def _steps(n: int, *, rewards: bool = True) -> list[dict[str, Any]]:
    return [
        {
            "step": i,
            "epoch": (i - 1) // 3 + 1,
            "mean_reward": (0.3 + 0.05 * i if rewards and i != 4 else None),
            "library_size": i * 2,
            "groups_kept": i % 3,
            "groups_skipped": 2 - i % 3,
        }
        for i in range(1, n + 1)
    ]


def test_learning_curve_writes_png(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "dir" / "curve.png"
    result = plot_learning_curve(_steps(8), out)
    assert result == out
    _assert_png(out)


def test_learning_curve_single_step(tmp_path: Path) -> None:
    out = plot_learning_curve(_steps(1), tmp_path / "one.png", title="one step")
    _assert_png(out)


def test_learning_curve_all_rewards_none(tmp_path: Path) -> None:
    out = plot_learning_curve(_steps(5, rewards=False), tmp_path / "none.png")
    _assert_png(out)


def _arms() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    baseline = {f"q{i}": [float((i + j) % 3 == 0) for j in range(4)] for i in range(12)}
    library = {f"q{i}": [float((i + j) % 2 == 0) for j in range(4)] for i in range(12)}
    arms: dict[str, dict[str, Any]] = {
        "baseline": dict(arm_summary(baseline, 4, n_resamples=500)),
        "library": dict(arm_summary(library, 4, n_resamples=500)),
    }
    return arms, dict(paired_comparison(library, baseline, n_resamples=500))


def test_eval_comparison_with_comparison(tmp_path: Path) -> None:
    arms, comparison = _arms()
    out = tmp_path / "eval" / "comparison.png"
    result = plot_eval_comparison(arms, out, title="eval", comparison=comparison)
    assert result == out
    _assert_png(out)


def test_eval_comparison_without_comparison(tmp_path: Path) -> None:
    arms, _ = _arms()
    out = plot_eval_comparison(arms, tmp_path / "plain.png", title="eval, no comparison")
    _assert_png(out)


def test_comparison_text_format() -> None:
    comparison = {"diff": 0.0333, "ci_low": -0.02, "ci_high": 0.09, "p_value": 0.21, "n_questions": 30}
    text = _comparison_text({**comparison, "spans_zero": True})
    assert text == "library - baseline: +0.033 (95% CI -0.02 .. +0.09), p = 0.21, n = 30  (CI spans 0)"
    comparison = {"diff": 0.5, "ci_low": 0.5, "ci_high": 0.5, "p_value": 0.0002, "n_questions": 20}
    text = _comparison_text({**comparison, "spans_zero": False})
    assert "spans" not in text and "p = 0.0002" in text


def test_comparison_text_below_the_minimum_questions_gives_no_verdict() -> None:
    comparison = {"diff": 0.375, "ci_low": -1.0, "ci_high": 1.0, "p_value": 0.125, "n_questions": 4}
    text = _comparison_text({**comparison, "spans_zero": True, "reliable": False})
    assert text.endswith("(too few questions: no verdict)")
