"""Evaluation metrics: Mean@k, Pass@k and paired library-vs-baseline statistics.

Pure functions over rewards in ``[0, 1]``; the only dependency is numpy. Questions are always
processed in sorted key order and all randomness comes from ``numpy.random.default_rng(seed)``, so
every result is deterministic for a given seed, whatever the mappings' insertion order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["arm_summary", "mean_at_k", "paired_comparison", "pass_at_k"]

FloatArray = npt.NDArray[np.float64]

# resample in chunks so memory stays bounded (~8 MB per chunk) for large question sets
_CHUNK_CELLS = 1_000_000


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k estimator ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021).

    ``n`` samples of which ``c`` are correct. Uses the product form
    ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, which never builds a large binomial coefficient.
    """
    if k < 1:
        raise ValueError(f"pass_at_k: k must be >= 1, got k={k}")
    if k > n:
        raise ValueError(f"pass_at_k: k must be <= n (number of samples), got k={k}, n={n}")
    if c < 0 or c > n:
        raise ValueError(f"pass_at_k: c (correct samples) must be in [0, n={n}], got c={c}")
    if c == 0:
        return 0.0
    # every size-k subset contains a correct sample (this also covers n == k with c > 0)
    if n - c < k:
        return 1.0
    terms = 1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)
    return float(1.0 - np.prod(terms))


def mean_at_k(rewards: Sequence[float]) -> float:
    """Mean reward over the k runs of one question."""
    if len(rewards) == 0:
        raise ValueError("mean_at_k: no rewards (a question needs at least one run)")
    return float(np.mean(_as_array(rewards, "mean_at_k")))


def arm_summary(
    rewards_by_question: Mapping[str, Sequence[float]],
    k: int,
    *,
    threshold: float = 1.0,
    n_resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float | int]:
    """Summarise one arm (e.g. "library" or "baseline") of an evaluation.

    ``rewards_by_question`` maps a question id to the rewards of its runs (normally ``k`` of them;
    failed runs may leave fewer). Questions with no run are excluded and counted in
    ``questions_without_runs``. A run is correct when its reward is ``>= threshold``.

    Returns ``mean_at_k`` (mean over questions of the per-question mean reward) with a percentile
    bootstrap CI over questions (``ci_low``, ``ci_high``), ``pass_at_1`` and ``pass_at_k`` (the
    unbiased estimator per question with ``n`` = its run count and ``k`` capped at ``n``, averaged),
    ``n_questions``, ``n_runs``, ``questions_without_runs`` and ``k``.
    """
    if k < 1:
        raise ValueError(f"arm_summary: k must be >= 1, got k={k}")
    _check_resampling(n_resamples, confidence, "arm_summary")
    with_runs = {q: _as_array(r, f"arm_summary[{q!r}]") for q, r in rewards_by_question.items() if len(r)}
    if not with_runs:
        raise ValueError(
            f"arm_summary: none of the {len(rewards_by_question)} questions has a run, nothing to summarise"
        )
    questions = sorted(with_runs)
    means = np.array([float(with_runs[q].mean()) for q in questions], dtype=np.float64)
    pass1: list[float] = []
    passk: list[float] = []
    for q in questions:
        runs = with_runs[q]
        n, c = len(runs), int(np.count_nonzero(runs >= threshold))
        pass1.append(pass_at_k(n, c, 1))
        passk.append(pass_at_k(n, c, min(k, n)))
    ci_low, ci_high = _bootstrap_ci(means, np.random.default_rng(seed), n_resamples, confidence)
    return {
        "mean_at_k": float(means.mean()),
        "ci_low": ci_low,
        "ci_high": ci_high,
        "pass_at_1": float(np.mean(pass1)),
        "pass_at_k": float(np.mean(passk)),
        "n_questions": len(questions),
        "n_runs": int(sum(len(r) for r in with_runs.values())),
        "questions_without_runs": len(rewards_by_question) - len(with_runs),
        "k": k,
    }


def paired_comparison(
    a: Mapping[str, Sequence[float]],
    b: Mapping[str, Sequence[float]],
    *,
    n_resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float | int | bool]:
    """Paired comparison of arm ``a`` (with library) against arm ``b`` (baseline).

    Pairs the questions that have at least one run in both arms; ``d_i = mean(a_i) - mean(b_i)``.
    Returns ``diff`` (mean of d), a paired percentile bootstrap CI over questions (``ci_low``,
    ``ci_high``), ``p_value`` of a two-sided sign-flip randomization test on d, ``n_questions``,
    ``spans_zero`` and the ``wins`` / ``losses`` / ``ties`` counts of d > 0, d < 0, d == 0.
    """
    _check_resampling(n_resamples, confidence, "paired_comparison")
    shared = sorted(q for q in a.keys() & b.keys() if len(a[q]) and len(b[q]))
    if not shared:
        raise ValueError(
            "paired_comparison: no question has at least one run in both arms "
            f"({len(a)} questions in a, {len(b)} in b), nothing to compare"
        )
    d = np.array(
        [float(_as_array(a[q], f"a[{q!r}]").mean() - _as_array(b[q], f"b[{q!r}]").mean()) for q in shared],
        dtype=np.float64,
    )
    # one generator, drawn in a fixed order (bootstrap, then sign flips): deterministic per seed
    rng = np.random.default_rng(seed)
    ci_low, ci_high = _bootstrap_ci(d, rng, n_resamples, confidence)
    return {
        "diff": float(d.mean()),
        "ci_low": ci_low,
        "ci_high": ci_high,
        "p_value": _sign_flip_p_value(d, rng, n_resamples),
        "n_questions": len(shared),
        "spans_zero": bool(ci_low <= 0.0 <= ci_high),
        "wins": int(np.count_nonzero(d > 0)),
        "losses": int(np.count_nonzero(d < 0)),
        "ties": int(np.count_nonzero(d == 0)),
    }


def _as_array(rewards: Sequence[float], where: str) -> FloatArray:
    arr = np.asarray(rewards, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{where}: rewards must be a flat sequence of numbers")
    # a NaN would silently poison every mean and CI downstream
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{where}: rewards must be finite numbers, got {arr.tolist()}")
    return arr


def _check_resampling(n_resamples: int, confidence: float, where: str) -> None:
    if n_resamples < 1:
        raise ValueError(f"{where}: n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"{where}: confidence must be in (0, 1), got {confidence}")


def _chunks(n_resamples: int, width: int) -> list[int]:
    size = max(1, _CHUNK_CELLS // max(width, 1))
    return [min(size, n_resamples - start) for start in range(0, n_resamples, size)]


def _bootstrap_ci(
    values: FloatArray, rng: np.random.Generator, n_resamples: int, confidence: float
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``values.mean()``, resampling indices with replacement."""
    n = len(values)
    boot = np.concatenate(
        [values[rng.integers(0, n, size=(rows, n))].mean(axis=1) for rows in _chunks(n_resamples, n)]
    )
    alpha = 1.0 - confidence
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    # a resampled mean lies in [min, max] in exact arithmetic; clipping removes float drift so
    # constant values give an exactly degenerate interval
    lo, hi = float(values.min()), float(values.max())
    return float(min(max(low, lo), hi)), float(min(max(high, lo), hi))


def _sign_flip_p_value(d: FloatArray, rng: np.random.Generator, n_resamples: int) -> float:
    """Two-sided paired sign-flip randomization test of ``mean(d) == 0``.

    Under H0 each d_i is symmetric around 0, so flipping signs at random gives the null
    distribution of the mean. Uses the ``(count + 1) / (n_resamples + 1)`` correction so the
    p-value is never 0 (the observed assignment counts as one of the permutations).
    """
    if not np.any(d):
        return 1.0
    n = len(d)
    observed = abs(float(d.mean()))
    # relative tolerance so sign vectors giving the same |mean| up to rounding count as ties
    cutoff = observed - 1e-12 * max(observed, 1.0)
    count = 0
    for rows in _chunks(n_resamples, n):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(rows, n))
        count += int(np.count_nonzero(np.abs((signs * d).mean(axis=1)) >= cutoff))
    return (count + 1) / (n_resamples + 1)
