"""Evaluation helpers: rewards (:mod:`tfgrpo.evals.rewards`), metrics (:mod:`tfgrpo.evals.metrics`), reports
and plots (:mod:`tfgrpo.evals.report`, :mod:`tfgrpo.evals.plots`)."""

from tfgrpo.evals.rewards import (
    GROUP_REWARDS,
    RewardFn,
    Scored,
    check_reward_value,
    exact_match_reward,
    extract_final_answer,
    f1_reward,
    get_reward,
    load_user_reward,
    majority_rewards,
    math_reward,
    reward_stats,
    reward_timeouts,
    shutdown_math_workers,
)

__all__ = [
    "GROUP_REWARDS",
    "RewardFn",
    "Scored",
    "check_reward_value",
    "exact_match_reward",
    "extract_final_answer",
    "f1_reward",
    "get_reward",
    "load_user_reward",
    "majority_rewards",
    "math_reward",
    "reward_stats",
    "reward_timeouts",
    "shutdown_math_workers",
]
