"""reasoning_gym rows are scored as their authors do: the task's own ``score_answer`` (issue 19).

Offline: reasoning_gym generates its rows locally.
"""

from __future__ import annotations

import json

import pytest

from tfgrpo import cli
from tfgrpo.checks import check_context
from tfgrpo.context import Context
from tfgrpo.data import clear_cache, load_dataset
from tfgrpo.errors import ConfigError
from tfgrpo.evals.rewards import exact_match_reward, get_reward, score_row
from tfgrpo.nodes.reward import score_response
from tfgrpo.python_api import _context
from tfgrpo.state.types import Query

JUMBLE = "rg:letter_jumble:size=3:seed=5"


def _half_unscrambled(query: Query) -> str:
    words = query["answer"].split()
    words[0] = words[0][::-1]  # one word of the sentence left scrambled
    return "Answer: " + " ".join(words)


@pytest.mark.parametrize(
    "spec", ["rg:letter_counting:size=4:seed=5", "rg:basic_arithmetic:size=4:seed=5", JUMBLE]
)
def test_task_scorer_rewards_right_answers_and_not_wrong_ones(spec: str) -> None:
    rg = get_reward("rg")
    for query in load_dataset(spec):
        assert score_row(rg, f"I think so.\nAnswer: {query['answer']}", query) == 1.0
        assert score_row(rg, "\\boxed{" + query["answer"] + "}", query) == 1.0
        assert score_row(rg, "Answer: 7 apples", query) == 0.0


def test_partial_credit_where_the_task_gives_it() -> None:
    query = load_dataset(JUMBLE)[0]
    response = _half_unscrambled(query)
    ctx = Context(dataset=JUMBLE, reward="rg")
    outcome = score_response(ctx, get_reward(ctx.reward), query, response)
    assert outcome.error is None and outcome.calls == []
    assert outcome.value is not None and 0.8 < outcome.value < 1.0  # 10 of 11 words right
    assert outcome.reason.startswith(f"read '{response.removeprefix('Answer: ')[:40]}")
    assert outcome.reason.endswith(f"the task's scorer gave {outcome.value:.3g}")
    assert exact_match_reward(response, query["answer"]) == 0.0  # what the row got before


def test_rows_stay_json_and_score_in_a_fresh_process() -> None:
    """What is checkpointed is JSON; a resumed process regenerates the entry from the row's spec."""
    query = json.loads(json.dumps(load_dataset(JUMBLE)[1]))
    clear_cache()  # as in a new process that has not loaded the dataset
    assert score_row(get_reward("rg"), "Answer: " + query["answer"], query) == 1.0


def test_rg_reward_on_a_row_without_an_entry_is_a_one_line_error(tmp_path: object) -> None:
    ctx = Context(reward="rg")
    query = Query(id="q1", question="2+2?", answer="4")
    outcome = score_response(ctx, get_reward("rg"), query, "Answer: 4")
    error = outcome.error
    assert outcome.value is None and error is not None and "'q1'" in error and "reasoning_gym" in error
    with pytest.raises(ConfigError, match="reward 'rg' scores reasoning_gym datasets"):
        check_context(Context(reward="rg", dataset="data/train.jsonl"))
    with pytest.raises(ConfigError, match="data/val.jsonl"):
        check_context(Context(reward="rg", validation="data/val.jsonl"))


def test_rg_datasets_default_to_their_own_scorer_and_reward_overrides() -> None:
    learn = cli.parse_args(["learn", "--model", "openai:x", "--dataset", JUMBLE])
    assert cli.context_from_args(learn, preset="model").reward == "rg"
    learn = cli.parse_args(["learn", "--model", "openai:x"])  # the preset's rg: dataset
    assert cli.context_from_args(learn, preset="model").reward == "rg"
    learn = cli.parse_args(["learn", "--model", "openai:x", "--dataset", JUMBLE, "--reward", "em"])
    assert cli.context_from_args(learn, preset="model").reward == "em"
    learn = cli.parse_args(["learn", "--model", "openai:x", "--dataset", "data/x.jsonl"])
    assert cli.context_from_args(learn, preset="model").reward == "math"
    # a validation set of plain rows cannot be scored by a task: the domain's reward for both
    learn = cli.parse_args(["learn", "--model", "openai:x", "--dataset", JUMBLE, "--validation", "v.jsonl"])
    assert cli.context_from_args(learn, preset="model").reward == "math"
    assert cli.reward_of(cli.parse_args(["eval", "--dataset", JUMBLE]), JUMBLE) == "rg"
    assert _context({}, dataset=JUMBLE).reward == "rg"
    assert _context({}, dataset=JUMBLE, reward="f1").reward == "f1"
    assert _context({}, dataset="data/x.jsonl").reward == "math"
    assert _context({}, dataset=JUMBLE, validation="v.jsonl").reward == "math"


def test_main_job_keeps_math_verify() -> None:
    """The main job's prompt, grammar and README figures are built on boxed answers and math-verify."""
    args = cli.parse_args(["learn"])
    cli.apply_main_job_defaults(args)
    assert cli.context_from_args(args, preset="embedded").reward == "math"
