"""Unit tests for tfgrpo.evals.metrics (hand-computed cases, no network)."""

from __future__ import annotations

import itertools
import random
from math import comb

import numpy as np
import pytest

from tfgrpo.evals.metrics import arm_summary, mean_at_k, paired_comparison, pass_at_k

# ---------------------------------------------------------------------------------------------- pass@k


@pytest.mark.parametrize("n", [1, 3, 8])
def test_pass_at_k_with_n_equal_k_is_any_correct(n: int) -> None:
    assert pass_at_k(n, 0, n) == 0.0
    for c in range(1, n + 1):
        assert pass_at_k(n, c, n) == 1.0


def test_pass_at_k_with_no_correct_sample_is_zero() -> None:
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 0, 5) == 0.0


def test_pass_at_k_hand_computed() -> None:
    # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-12)
    # n - c < k: every pair contains a correct sample
    assert pass_at_k(5, 4, 2) == 1.0


@pytest.mark.parametrize("n", [1, 4, 7, 16])
def test_pass_at_1_is_fraction_correct(n: int) -> None:
    for c in range(n + 1):
        assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)


def test_pass_at_k_matches_binomial_formula() -> None:
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = 1 - comb(n - c, k) / comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_pass_at_k_large_n_is_finite_and_monotone_in_k() -> None:
    values = [pass_at_k(2000, 7, k) for k in (1, 10, 100, 1000)]
    assert values[0] == pytest.approx(7 / 2000)
    assert values == sorted(values)
    assert 0.0 < values[-1] < 1.0


@pytest.mark.parametrize(
    ("n", "c", "k", "match"),
    [(3, 1, 4, "k must be <= n"), (3, 1, 0, "k must be >= 1"), (3, -1, 1, "c"), (3, 4, 1, "c")],
)
def test_pass_at_k_rejects_bad_arguments(n: int, c: int, k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


# --------------------------------------------------------------------------------------------- mean@k


def test_mean_at_k() -> None:
    assert mean_at_k([1.0, 0.0, 0.5, 0.5]) == pytest.approx(0.5)
    assert mean_at_k([0.25]) == 0.25


def test_mean_at_k_rejects_empty() -> None:
    with pytest.raises(ValueError, match="no rewards"):
        mean_at_k([])


# ----------------------------------------------------------------------------------------- arm_summary


def test_arm_summary_hand_made() -> None:
    rewards = {
        "q1": [1.0, 0.0, 1.0],  # mean 2/3, c=2 of 3
        "q2": [0.5, 0.5, 0.0],  # mean 1/3, c=0 at threshold 1.0
        "q3": [1.0],  # one run left (two failed): mean 1, c=1, k capped at 1
        "q4": [],  # no run at all: excluded, counted
    }
    s = arm_summary(rewards, 3, n_resamples=2000, seed=1)
    assert s["n_questions"] == 3
    assert s["n_runs"] == 7
    assert s["questions_without_runs"] == 1
    assert s["k"] == 3
    assert s["mean_at_k"] == pytest.approx((2 / 3 + 1 / 3 + 1.0) / 3)
    assert s["pass_at_1"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    # q1: n=k=3 with c>0 -> 1; q2: c=0 -> 0; q3: k capped to n=1, c=1 -> 1
    assert s["pass_at_k"] == pytest.approx(2 / 3)
    # the bootstrap CI of a mean of {1/3, 2/3, 1} lies in [1/3, 1] and brackets the point estimate
    assert 1 / 3 <= s["ci_low"] <= s["mean_at_k"] <= s["ci_high"] <= 1.0
    assert s["ci_low"] < s["ci_high"]


def test_arm_summary_threshold_counts_partial_rewards() -> None:
    rewards = {"q1": [0.5, 0.5, 0.0], "q2": [0.8, 0.2, 0.6]}
    strict = arm_summary(rewards, 2, threshold=1.0, n_resamples=100)
    lenient = arm_summary(rewards, 2, threshold=0.5, n_resamples=100)
    assert strict["pass_at_1"] == 0.0
    assert strict["pass_at_k"] == 0.0
    # q1: c=2 of 3 -> pass@1 2/3, pass@2 = 1 - C(1,2)/C(3,2) = 1; q2: c=2 of 3 -> same
    assert lenient["pass_at_1"] == pytest.approx(2 / 3)
    assert lenient["pass_at_k"] == pytest.approx(1.0)
    # the threshold never changes Mean@k
    assert strict["mean_at_k"] == lenient["mean_at_k"] == pytest.approx((1 / 3 + 1.6 / 3) / 2)


def test_arm_summary_is_deterministic_and_order_independent() -> None:
    rng = random.Random(3)
    rewards = {f"q{i}": [float(rng.random() < 0.4) for _ in range(4)] for i in range(25)}
    reversed_rewards = dict(reversed(list(rewards.items())))
    assert arm_summary(rewards, 4, seed=7) == arm_summary(reversed_rewards, 4, seed=7)


def test_arm_summary_rejects_arm_without_runs() -> None:
    with pytest.raises(ValueError, match="none of the 2 questions has a run"):
        arm_summary({"q1": [], "q2": []}, 4)


# ----------------------------------------------------------------------------------- paired_comparison


def _arm(seed: int, n_questions: int = 20, k: int = 4) -> dict[str, list[float]]:
    rng = random.Random(seed)
    # dyadic values so that shifting by 0.5 is exact in floating point
    return {f"q{i}": [rng.choice([0.0, 0.25, 0.5]) for _ in range(k)] for i in range(n_questions)}


def test_paired_identical_arms() -> None:
    b = _arm(0)
    r = paired_comparison(b, b)
    assert r["diff"] == 0.0
    assert r["ci_low"] == 0.0 and r["ci_high"] == 0.0
    assert r["p_value"] == 1.0
    assert r["spans_zero"] is True
    assert (r["wins"], r["losses"], r["ties"]) == (0, 0, 20)
    assert r["n_questions"] == 20


def test_paired_constant_shift() -> None:
    b = _arm(1)
    a = {q: [x + 0.5 for x in runs] for q, runs in b.items()}
    r = paired_comparison(a, b, n_resamples=5000, seed=3)
    assert r["diff"] == 0.5
    assert r["ci_low"] == 0.5 and r["ci_high"] == 0.5
    # only the two all-same-sign vectors reach |mean| = 0.5: p ~ 1/(n_resamples+1)
    assert r["p_value"] < 0.01
    assert r["spans_zero"] is False
    assert (r["wins"], r["losses"], r["ties"]) == (20, 0, 0)


def test_paired_noisy_ci_contains_true_diff() -> None:
    rng = random.Random(11)
    true_diff = 0.2
    b: dict[str, list[float]] = {}
    a: dict[str, list[float]] = {}
    for i in range(60):
        base = [rng.uniform(0.0, 0.6) for _ in range(4)]
        b[f"q{i}"] = base
        a[f"q{i}"] = [x + true_diff + rng.gauss(0.0, 0.1) for x in base]
    r = paired_comparison(a, b, seed=5)
    assert r["ci_low"] < true_diff < r["ci_high"]
    assert r["ci_low"] < r["diff"] < r["ci_high"]
    assert r["ci_high"] - r["ci_low"] < 0.1
    assert r["spans_zero"] is False
    assert r["p_value"] < 0.001


def test_paired_mixed_signs_counts_and_null_p() -> None:
    a = {"q1": [1.0], "q2": [0.0], "q3": [1.0, 1.0], "q4": [0.5]}
    b = {"q1": [0.0], "q2": [1.0], "q3": [1.0, 1.0], "q4": [0.5], "only_b": [1.0]}
    r = paired_comparison(a, b, n_resamples=4000)
    assert (r["wins"], r["losses"], r["ties"]) == (1, 1, 2)
    assert r["n_questions"] == 4
    assert r["diff"] == 0.0
    assert r["spans_zero"] is True
    # every sign vector gives |mean| >= 0 = observed, so p = 1
    assert r["p_value"] == pytest.approx(1.0)


def test_paired_skips_questions_without_runs_on_either_side() -> None:
    a = {"q1": [1.0], "q2": [], "q3": [1.0]}
    b = {"q1": [0.0], "q2": [0.0], "q3": []}
    r = paired_comparison(a, b)
    assert r["n_questions"] == 1
    assert r["diff"] == 1.0


def test_paired_is_deterministic_for_a_seed() -> None:
    a, b = _arm(2), _arm(3)
    assert paired_comparison(a, b, seed=9) == paired_comparison(a, b, seed=9)
    shuffled = dict(reversed(list(a.items())))
    assert paired_comparison(shuffled, b, seed=9) == paired_comparison(a, b, seed=9)
    other = paired_comparison(a, b, seed=10)
    assert other["diff"] == paired_comparison(a, b, seed=9)["diff"]


def test_paired_without_shared_questions_raises() -> None:
    with pytest.raises(ValueError, match="no question has at least one run in both arms"):
        paired_comparison({"q1": [1.0]}, {"q2": [1.0]})
    with pytest.raises(ValueError, match="no question"):
        paired_comparison({"q1": []}, {"q1": [1.0]})


# ------------------------------------------------------- one verdict: interval and p-value that agree


def test_paired_issue_example_four_questions_no_narrow_interval_beside_large_p() -> None:
    # issue 20: 4 questions, +0.375, percentile CI +0.125..+0.5 beside p = 0.245
    a = {"q1": [1.0, 1.0], "q2": [1.0, 0.5], "q3": [0.5, 0.5], "q4": [1.0, 0.5]}
    b = {"q1": [0.5, 0.5], "q2": [0.5, 0.5], "q3": [0.0, 0.0], "q4": [0.5, 0.5]}
    r = paired_comparison(a, b)
    assert r["n_questions"] == 4
    assert r["spans_zero"] is True  # p > 0.05: the interval must contain 0 too
    assert r["p_value"] > 0.05
    assert r["reliable"] is False  # below MIN_QUESTIONS: no verdict


Arm = dict[str, list[float]]


def _random_dataset(rng: np.random.Generator, n: int) -> tuple[Arm, Arm]:
    k = int(rng.integers(1, 5))
    p_b = rng.uniform(0.0, 1.0, n)
    p_a = np.clip(p_b + rng.normal(rng.choice([0.0, 0.1, 0.3]), 0.2, n), 0.0, 1.0)
    a = {f"q{i}": (rng.random(k) < p_a[i]).astype(float).tolist() for i in range(n)}
    b = {f"q{i}": (rng.random(k) < p_b[i]).astype(float).tolist() for i in range(n)}
    return a, b


def test_paired_interval_excludes_zero_exactly_when_p_at_most_alpha() -> None:
    """The interval is the inverted sign-flip test (same sign vectors), so 'CI excludes 0' and
    'p <= 1 - confidence' are one and the same statement, on every dataset."""
    rng = np.random.default_rng(2026)
    seen = {True: 0, False: 0}
    for trial in range(300):
        n = int(rng.choice([3, 6, 10, 14, 25, 60]))
        a, b = _random_dataset(rng, n)
        r = paired_comparison(a, b, n_resamples=2000, seed=trial)
        excludes = not r["spans_zero"]
        assert excludes == (r["p_value"] <= 0.05), (n, r)
        assert r["ci_low"] <= r["diff"] <= r["ci_high"]
        seen[excludes] += 1
    assert min(seen.values()) > 30  # both verdicts were exercised


def test_paired_interval_bounds_match_a_brute_force_inversion() -> None:
    from tfgrpo.evals.metrics import sign_flip_test

    rng = np.random.default_rng(4)
    d = rng.normal(0.1, 0.3, 9)
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=9)))
    lo, hi, p0 = sign_flip_test(d, signs, 0.05)

    def p_at(mu: float) -> float:
        x = d - mu
        return float(np.mean(np.abs((signs * x).mean(axis=1)) >= abs(x.mean()) - 1e-12))

    assert p0 == pytest.approx(p_at(0.0))
    assert p_at(lo + 1e-6) > 0.05 and p_at(hi - 1e-6) > 0.05
    assert p_at(lo - 1e-6) <= 0.05 and p_at(hi + 1e-6) <= 0.05


@pytest.mark.parametrize("n", [10, 30, 100])
@pytest.mark.parametrize("effect", [0.0, 0.15])
def test_paired_interval_coverage_by_simulation(n: int, effect: float) -> None:
    """Nominal 95%, checked on 2000 simulated evaluations of the realistic kind: k = 4 Bernoulli runs
    per question, per-question difficulty, a library that helps some questions more than others (mean
    effect known). Measured (seeds as here): 97.9 / 95.4 % at n = 10 (no effect / effect; ties between
    discrete differences make the test conservative), 96.6 / 96.3 at 30, 95.6 / 95.4 at 100. The
    standard error of one figure is 0.5 point."""
    from tfgrpo.evals.metrics import sign_flip_intervals, sign_vectors

    rng = np.random.default_rng(n)
    reps, k = 2000, 4
    p_b = rng.uniform(0.05, 0.7, (reps, n))
    p_a = p_b + effect * rng.uniform(0.0, 2.0, (reps, n))
    true_mu = (p_a - p_b).mean(axis=1)  # the mean difference over these questions
    d = rng.binomial(k, p_a) / k - rng.binomial(k, p_b) / k
    signs = sign_vectors(n, np.random.default_rng(0), 2000)
    lo, hi, _ = sign_flip_intervals(d, signs, 0.05)
    coverage = float(np.mean((lo <= true_mu) & (true_mu <= hi)))
    assert 0.93 <= coverage <= 0.985, coverage


def test_paired_below_minimum_questions_gives_no_verdict() -> None:
    from tfgrpo.evals.metrics import MIN_QUESTIONS
    from tfgrpo.evals.report import verdict

    a = {f"q{i}": [1.0] for i in range(MIN_QUESTIONS - 1)}
    b = {f"q{i}": [0.0] for i in range(MIN_QUESTIONS - 1)}
    r = paired_comparison(a, b)
    assert r["reliable"] is False
    text = verdict(r)
    assert "not reliable" in text and "better" not in text
    r = paired_comparison({**a, "z": [1.0]}, {**b, "z": [0.0]})
    assert r["reliable"] is True and r["spans_zero"] is False
    assert "better" in verdict(r)
