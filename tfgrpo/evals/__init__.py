"""Evaluation helpers: reward functions (see :mod:`tfgrpo.evals.rewards`)."""

from tfgrpo.evals.rewards import (
    RewardFn,
    exact_match_reward,
    extract_final_answer,
    f1_reward,
    get_reward,
    load_user_reward,
    math_reward,
    reward_stats,
    reward_timeouts,
    shutdown_math_workers,
)

__all__ = [
    "RewardFn",
    "exact_match_reward",
    "extract_final_answer",
    "f1_reward",
    "get_reward",
    "load_user_reward",
    "math_reward",
    "reward_stats",
    "reward_timeouts",
    "shutdown_math_workers",
]
