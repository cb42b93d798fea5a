"""Unit tests for tfgrpo.evals.rewards (offline; math-verify runs in helper processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tfgrpo.errors import ConfigError
from tfgrpo.evals import math_verify_pool, rewards
from tfgrpo.evals.rewards import (
    exact_match_reward,
    extract_final_answer,
    f1_reward,
    get_reward,
    load_user_reward,
    majority_rewards,
    math_reward,
    normalize_answer,
    reward_stats,
    reward_timeouts,
    shutdown_math_workers,
)

REPO_ROOT = Path(rewards.__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _stop_helpers() -> Iterator[None]:
    yield
    shutdown_math_workers()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still "exists"; it is reaped by whoever waits on it
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


# --------------------------------------------------------------------------------------------------
# extract_final_answer
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (r"so the value is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"first \boxed{3}, then corrected: \boxed{4}", "4"),
        (r"\boxed{ 42 }", "42"),
        (r"the result \fbox{7}", "7"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{1} and a truncated \boxed{2", "1"),
        (r"\boxed{x^{2}} then Answer: 5", "x^{2}"),
        ("Let me think. 3 + 4 = 7.\n**Answer:** 42.\n", "42"),
        ("Reasoning...\nFinal answer: Paris\nThanks for asking!", "Paris"),
        ("ANSWER: blue\nanswer: green.", "green"),
        ("The answer:\n\n  Mount Everest\n", "Mount Everest"),
        ("line one\nline two  \n\n", "line two"),
        ("", ""),
        ("   \n  \n", ""),
    ],
)
def test_extract_final_answer(response: str, expected: str) -> None:
    assert extract_final_answer(response) == expected


# --------------------------------------------------------------------------------------------------
# exact match / F1
# --------------------------------------------------------------------------------------------------


def test_normalize_answer() -> None:
    assert normalize_answer("  The  Eiffel-Tower!! ") == "eiffeltower"
    assert normalize_answer("An apple, a pear and the plum.") == "apple pear and plum"


@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        ("The Cat!", "cat", 1.0),
        ("I think...\nAnswer: the  Eiffel Tower.", "Eiffel tower", 1.0),
        (r"so \boxed{Paris}", "paris", 1.0),
        ("Answer: Paris", "London", 0.0),
        ("Answer: cat sat", "cat sat down", 0.0),
        ("", "cat", 0.0),
    ],
)
def test_exact_match(response: str, answer: str, expected: float) -> None:
    assert exact_match_reward(response, answer) == expected


@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        # pred {cat, sat} vs gold {cat, sat, down}: P = 1, R = 2/3 -> F1 = 2 * (2/3) / (5/3) = 0.8
        ("Answer: the cat sat", "cat sat down", 0.8),
        # pred 4 tokens, gold 3, 2 shared: P = 1/2, R = 2/3 -> F1 = (2/3) / (7/6) = 4/7
        ("Answer: cat dog bird fish", "dog bird horse", 4 / 7),
        # repeated tokens count with multiplicity: pred {cat x2}, gold {cat}: P = 1/2, R = 1 -> 2/3
        ("Answer: cat cat", "the cat", 2 / 3),
        ("Answer: The Cat Sat.", "cat sat", 1.0),
        ("Answer: dog", "cat sat", 0.0),
        ("", "cat", 0.0),
        ("Answer: the", "a", 1.0),  # both normalise to nothing (SQuAD convention)
    ],
)
def test_f1(response: str, answer: str, expected: float) -> None:
    assert f1_reward(response, answer) == pytest.approx(expected)


# --------------------------------------------------------------------------------------------------
# math_reward
# --------------------------------------------------------------------------------------------------

MATH_CASES = [
    (r"\boxed{1/2}", "0.5", 1.0),
    (r"The answer is \boxed{0.5}", r"\frac{1}{2}", 1.0),
    (r"so we get \boxed{\frac{1}{2}}", "1/2", 1.0),
    (r"\boxed{3}", "0.5", 0.0),
    (r"\boxed{0.5001}", "0.5", 0.0),
    # whole-response parsing: other numbers in the reasoning do not matter, the boxed one does
    (r"We have 12 apples and 7 pears, so 12 - 7 = 5. The answer is \boxed{5}.", "5", 1.0),
    (r"We have 12 apples and 7 pears, so 12 - 7 = 5. The answer is \boxed{5}.", "12", 0.0),
    # integers with text, no box
    ("She has 3 hens laying 6 eggs each, so she has 18 eggs left.", "18", 1.0),
    ("She has 3 hens laying 6 eggs each, so she has 17 eggs left.", "18", 0.0),
    ("There are 3 cats.\nAnswer: 42", "42", 1.0),
    ("There are 3 cats.\nAnswer: 42", "3", 0.0),
    # gold answers with units / text
    (r"\boxed{18}", "18 eggs", 1.0),
    (r"\boxed{42}", "42 dollars", 1.0),
    (r"\boxed{41}", "42 dollars", 0.0),
    # gold already boxed, \fbox, thousands separator, algebra
    (r"\boxed{18}", r"\boxed{18}", 1.0),
    (r"final: \fbox{7}", "7", 1.0),
    (r"\boxed{1,000}", "1000", 1.0),
    (r"\boxed{x^2 + 1}", "1 + x^2", 1.0),
    # nothing to compare
    ("", "5", 0.0),
    ("no numbers here", "5", 0.0),
    (r"\boxed{5}", "", 0.0),
    # very long responses are cut to the last MAX_RESPONSE_CHARS characters
    ("blah 3 " * 5000 + r"so \boxed{7}", "7", 1.0),
]


@pytest.mark.parametrize(("response", "answer", "expected"), MATH_CASES)
def test_math_reward(response: str, answer: str, expected: float) -> None:
    assert math_reward(response, answer) == expected


def test_math_reward_from_eight_threads() -> None:
    cases = MATH_CASES * 2
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda case: math_reward(case[0], case[1]), cases))
    assert results == [expected for _, _, expected in cases]


def test_math_reward_timeout_kills_helper_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    assert math_reward(r"\boxed{2}", "2") == 1.0  # helper warm
    monkeypatch.setattr(rewards, "MATH_VERIFY_TIMEOUT_S", 1.0)
    before = reward_timeouts()
    # sympy tries to evaluate 9^(9^9) when comparing with 5: hangs far beyond the timeout
    assert math_reward(r"\boxed{9^{9^{9}}}", "5") == 0.0
    assert reward_timeouts() == before + 1
    assert reward_stats()["timeouts"] == before + 1
    assert math_reward(r"\boxed{5}", "5") == 1.0  # a fresh helper takes over


def test_in_thread_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rewards, "USE_WORKER_PROCESS", False)
    before = reward_stats()["in_thread_calls"]
    with ThreadPoolExecutor(max_workers=2) as pool:  # no signal-based timeouts in worker threads
        got = list(pool.map(lambda c: math_reward(*c), [(r"\boxed{1/2}", "0.5"), (r"\boxed{3}", "0.5")]))
    assert got == [1.0, 0.0]
    assert reward_stats()["in_thread_calls"] == before + 2


def test_shutdown_kills_helpers() -> None:
    assert math_reward(r"\boxed{1}", "1") == 1.0
    pool = math_verify_pool._pool_instance
    assert pool is not None
    pids = [w.proc.pid for w in pool._all]
    assert pids
    shutdown_math_workers()
    assert not any(_pid_alive(pid) for pid in pids)
    assert math_reward(r"\boxed{1}", "1") == 1.0  # restarts on demand


def test_pool_has_one_helper_per_core_and_warm_up_starts_them_without_a_check() -> None:
    shutdown_math_workers()
    assert max(1, min(8, len(os.sched_getaffinity(0)))) == math_verify_pool.POOL_SIZE
    rewards.warm_up("math")
    pool = math_verify_pool._pool_instance
    assert pool is not None
    deadline = time.monotonic() + 60
    while len(pool._idle) < math_verify_pool.POOL_SIZE and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(pool._idle) == math_verify_pool.POOL_SIZE  # all started, none used yet
    with ThreadPoolExecutor(max_workers=2 * math_verify_pool.POOL_SIZE) as threads:
        assert all(threads.map(lambda _: math_reward(r"\boxed{3}", "3") == 1.0, range(8)))
    assert len(pool._all) == math_verify_pool.POOL_SIZE  # concurrent checks never start more


def test_import_is_side_effect_free_and_exit_leaves_no_helper() -> None:
    code = textwrap.dedent(
        """
        import sys
        import tfgrpo.evals.math_verify_pool as pool
        import tfgrpo.evals.rewards as r
        assert pool._pool_instance is None
        assert "math_verify" not in sys.modules and "sympy" not in sys.modules
        assert r.math_reward(r"\\boxed{1/2}", "0.5") == 1.0
        assert "sympy" not in sys.modules
        print(*[w.proc.pid for w in pool._pool_instance._all])
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True
    )
    pids = [int(p) for p in out.stdout.split()]
    assert pids
    assert not any(_pid_alive(pid) for pid in pids)


# --------------------------------------------------------------------------------------------------
# user rewards and the registry
# --------------------------------------------------------------------------------------------------

USER_MODULE = """
def contains(response, answer):
    return 1.0 if answer in response else 0.0

def too_big(response, answer):
    return 1.5

def negative(response, answer):
    return -0.1

def nan(response, answer):
    return float("nan")

def text(response, answer):
    return "1"

def flag(response, answer):
    return answer in response

def zero(response, answer):
    return 0

def explained(response, answer):
    if answer in response:
        return (1.0, "said " + answer)
    return (0.0, "read " + repr(response) + "\\nno " + answer)

def reason_not_text(response, answer):
    return (1.0, 42)

def pair_nan(response, answer):
    return (float("nan"), "why")

def triple(response, answer):
    return (1.0, "why", "more")

class Scorer:
    @staticmethod
    def half(response, answer):
        return 0.5

NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    name = f"tfgrpo_test_reward_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.py"
    path.write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return path, name


def test_user_reward_from_file(user_module: tuple[Path, str]) -> None:
    path, _ = user_module
    fn = load_user_reward(f"{path}:contains")
    assert fn("the answer is 42", "42") == 1.0
    assert fn("the answer is 41", "42") == 0.0
    assert get_reward(f"{path}:contains")("x 7", "7") == 1.0
    assert load_user_reward(f"{path}:Scorer.half")("", "") == 0.5


def test_user_reward_from_module(user_module: tuple[Path, str]) -> None:
    _, name = user_module
    fn = get_reward(f"{name}:contains")
    assert fn("the answer is 42", "42") == 1.0
    assert fn("nothing", "42") == 0.0
    assert load_user_reward(f"{name}:flag")("42", "42") == 1.0
    assert load_user_reward(f"{name}:flag")("41", "42") == 0.0
    zero = load_user_reward(f"{name}:zero")("", "")
    assert zero == 0.0 and isinstance(zero, float)


def test_user_reward_may_say_why(user_module: tuple[Path, str]) -> None:
    path, _ = user_module
    fn = load_user_reward(f"{path}:explained")
    right, wrong = fn("it is 42", "42"), fn("it is\n41", "42")
    assert right == 1.0 and right.reason == "said 42"
    assert wrong == 0.0 and wrong.reason == "read 'it is\\n41' no 42"  # one line
    assert load_user_reward(f"{path}:contains")("42", "42").reason == ""  # a plain float: no reason


@pytest.mark.parametrize(
    "func", ["too_big", "negative", "nan", "text", "reason_not_text", "pair_nan", "triple"]
)
def test_user_reward_bad_values(user_module: tuple[Path, str], func: str) -> None:
    _, name = user_module
    spec = f"{name}:{func}"
    fn = load_user_reward(spec)
    with pytest.raises(ValueError) as info:
        fn("response", "answer")
    message = str(info.value)
    assert "\n" not in message
    assert spec in message


def _config_error(spec: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_user_reward(spec)
    message = str(info.value)
    assert "\n" not in message
    assert spec in message
    return message


def test_user_reward_config_errors(user_module: tuple[Path, str], tmp_path: Path) -> None:
    path, name = user_module
    assert "expected 'module:function'" in _config_error("no_colon_here")
    assert "expected 'module:function'" in _config_error(":contains")
    assert "expected 'module:function'" in _config_error(f"{name}:")
    assert "expected 'module:function'" in _config_error(f"{name}:not-a-name")
    assert "file not found" in _config_error(f"{tmp_path / 'missing.py'}:contains")
    assert "cannot import module" in _config_error("tfgrpo_no_such_module_xyz:contains")
    assert "no attribute" in _config_error(f"{name}:missing")
    assert "no attribute" in _config_error(f"{path}:missing")
    assert "not callable" in _config_error(f"{name}:NOT_CALLABLE")

    broken = tmp_path / "broken_reward.py"
    broken.write_text('raise RuntimeError("boom\\nsecond line")\n')
    message = _config_error(f"{broken}:contains")
    assert "cannot import" in message and "boom second line" in message


def test_get_reward_registry() -> None:
    assert get_reward("math") is math_reward
    assert get_reward("exact_match") is exact_match_reward
    assert get_reward("em") is exact_match_reward
    assert get_reward(" EM ") is exact_match_reward
    assert get_reward("f1") is f1_reward
    with pytest.raises(ConfigError) as info:
        get_reward("bleu")
    message = str(info.value)
    assert "\n" not in message
    assert "'bleu'" in message
    for valid in ("math", "exact_match", "em", "f1"):
        assert valid in message


@pytest.mark.parametrize(
    ("responses", "rewards", "top"),
    [
        (["Answer: 5", "So the result is \\boxed{5}.", "Answer: 6", None], [1.0, 1.0, 0.0, None], "5"),
        (["\\boxed{The Beatles}", "Answer: the beatles", "Answer: Queen"], [1.0, 1.0, 0.0], "beatles"),
        (["Answer: 5", "Answer: 6"], [0.0, 0.0], None),  # a tie has no majority
        (["Answer: 5", "Answer: 6", "Answer: 7"], [0.0, 0.0, 0.0], None),  # nor do all-different answers
        (["Answer: 4", "Answer: 4", "Answer: 4"], [1.0, 1.0, 1.0], "4"),  # unanimous: no spread, skipped
        ([None, None], [None, None], None),
    ],
)
def test_majority_rewards(responses: list[str | None], rewards: list[float | None], top: str | None) -> None:
    assert majority_rewards(responses) == (rewards, top)


# --------------------------------------------------------------------------------------------------
# every built-in reward says why: what it read, what it expected, why they differ
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reward", "response", "answer", "score", "reason"),
    [
        (
            exact_match_reward,
            "So.\nAnswer: 147 minutes",
            "2.45",
            0.0,
            "read '147 minutes'; expected '2.45': a different answer",
        ),
        (
            exact_match_reward,
            "Answer: The Beatles.",
            "the beatles",
            1.0,
            "read 'The Beatles'; expected 'the beatles': the same answer",
        ),
        (
            exact_match_reward,
            "Answer: 2.45 hours",
            "2.45",
            0.0,
            "read '2.45 hours'; expected '2.45': the expected answer with extra words",
        ),
        (exact_match_reward, "", "7", 0.0, "no final answer found (empty reply); expected '7'"),
        (
            f1_reward,
            "Answer: Paris France",
            "Paris",
            2 / 3,
            "read 'Paris France'; expected 'Paris': token F1 0.67 (1 of 1 expected words, 1 other)",
        ),
        (f1_reward, "Answer: Lyon", "Paris", 0.0, "read 'Lyon'; expected 'Paris': no word in common"),
        (
            math_reward,
            "So \\boxed{\\frac{1}{2}}",
            "0.5",
            1.0,
            "read '\\frac{1}{2}'; expected '0.5': mathematically equal",
        ),
        (math_reward, "Answer: 147", "2.45", 0.0, "read '147'; expected '2.45': not mathematically equal"),
    ],
)
def test_builtin_rewards_give_a_reason(
    reward: rewards.RewardFn, response: str, answer: str, score: float, reason: str
) -> None:
    scored = reward(response, answer)
    assert scored == pytest.approx(score)
    assert isinstance(scored, rewards.Scored) and scored.reason.startswith(reason)


def test_majority_rewards_say_why() -> None:
    responses = ["Answer: 5", "Answer: 6", "Answer: 5", None]
    _, top = majority_rewards(responses)
    assert rewards.majority_reasons(responses, top) == [
        "read '5': the group's majority answer",
        "read '6'; the group's majority answer is '5'",
        "read '5': the group's majority answer",
        "",
    ]
    assert "no majority" in rewards.majority_reasons(["Answer: 5", "Answer: 6"], None)[0]
