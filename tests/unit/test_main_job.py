"""The README's main job: with no model given, ``tfgrpo learn`` learns on one set and compares E with
the baseline on held-out questions of the same kind, in the issue's shape (paired, k >= 4, >= 50)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langgraph.store.memory import InMemoryStore

from tfgrpo import cli
from tfgrpo.context import Context
from tfgrpo.data import load_dataset
from tfgrpo.errors import TfgrpoError
from tfgrpo.models.ledger import use_llm_cache
from tfgrpo.models.spec import DEFAULT_MODEL
from tfgrpo.nodes._llm import learner_model
from tfgrpo.nodes.policy import run_policy
from tfgrpo.prompts import rendered_prompts


def test_held_out_questions_are_not_training_questions() -> None:
    train = {q["question"] for q in load_dataset(cli.EMBEDDED_TRAIN)}
    heldout = [q["question"] for q in load_dataset(cli.EMBEDDED_HELDOUT)]
    assert len(heldout) >= 50 and cli.HELDOUT_K >= 4
    assert not train & set(heldout)
    assert cli.EMBEDDED_TRAIN.split(":")[1] == cli.EMBEDDED_HELDOUT.split(":")[1]  # the same kind


def test_no_model_means_the_embedded_preset_and_the_held_out_comparison() -> None:
    args = cli.parse_args(["learn"])
    assert cli.is_embedded(args.model) and DEFAULT_MODEL == "local:qwen2.5-coder-0.5b-instruct"
    assert args.heldout is None  # filled in with EMBEDDED_HELDOUT because no model was given
    ctx = cli.context_from_args(args, preset="embedded")
    assert ctx.dataset == cli.EMBEDDED_TRAIN
    assert cli.is_embedded("local:smollm2-135m-instruct") and not cli.is_embedded("openai:gpt-4o-mini")


@pytest.mark.parametrize(
    "model", [[], ["--model", "local:qwen2.5-coder-1.5b-instruct"]], ids=["main", "1.5b"]
)
def test_the_embedded_learner_has_room_for_its_analysis_and_json(model: list[str]) -> None:
    """At 256 tokens a summary lost its diagnosis and the extractor's analysis and operations shared
    256 tokens of JSON (issue 27): the embedded learner gets at least 1024 unless told otherwise."""
    ctx = cli.context_from_args(cli.parse_args(["learn", *model]), preset="embedded")
    assert ctx.learner_max_tokens >= 1024
    args = cli.parse_args(["learn", *model, "--learner-max-tokens", "300"])
    assert cli.context_from_args(args, preset="embedded").learner_max_tokens == 300


def test_the_main_job_asks_for_terse_answers_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """The main job's policy prompt (one calculation per line, a worked example) and cap keep 400 held-out
    runs within the 15-minute goal; they apply only to the main job and yield to explicit flags."""
    monkeypatch.delenv("TFGRPO_MODEL", raising=False)
    args = cli.parse_args(["learn"])
    assert cli.apply_main_job_defaults(args)
    ctx = cli.context_from_args(args, preset="embedded")
    assert ctx.max_tokens == cli.MAIN_JOB_MAX_TOKENS < cli.PRESETS["embedded"]["max_tokens"]
    (policy,) = [p.text for p in rendered_prompts(ctx) if p.name == "policy_system"]
    assert "one step per line" in policy and "\\boxed{11}" in policy and "in \\boxed{}" in policy
    texts = {p.name: p.text for p in rendered_prompts(ctx)}
    assert "at most three short sentences" in texts["summarize_system"]
    assert "at most 2 item(s)" in texts["extract_system"] or "at most 1 item(s)" in texts["extract_system"]
    for other in (["--dataset", "rg:basic_arithmetic:size=4"], ["--model", "local:smollm2-135m-instruct"]):
        args = cli.parse_args(["learn", *other])
        assert not cli.apply_main_job_defaults(args) and not args.prompts and args.max_tokens is None
    args = cli.parse_args(["learn", "--prompts", "mine", "--max-tokens", "300"])
    assert cli.apply_main_job_defaults(args) and (args.prompts, args.max_tokens) == ("mine", 300)


def test_the_main_job_constrains_its_policy_answers_with_the_grammar(
    fake_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The main job's policy requests (rollouts and both held-out arms: one context) carry the answer
    grammar; its learner requests, a tool-offering rollout, other runs and ``--grammar ''`` do not."""
    monkeypatch.delenv("TFGRPO_MODEL", raising=False)
    grammar = Path(cli.MAIN_JOB_GRAMMAR).read_text(encoding="utf-8")
    assert "\\boxed{" in grammar and "root ::=" in grammar

    def context(*argv: str) -> Context:
        args = cli.parse_args(["learn", *argv])
        cli.apply_main_job_defaults(args)
        # the main job's context, only served by the fake server instead of the embedded one
        return replace(
            cli.context_from_args(args, preset="embedded"), model="openai:fake", base_url=fake_server.base_url
        )

    main = context()
    assert main.answer_grammar == grammar
    with use_llm_cache(InMemoryStore()):
        for experiences in ("", "- [G0] Check the sign."):  # the baseline arm and the library arm
            _, error, _ = run_policy(main, "Calculate 3 - 4 * -2.", experiences, seed=1)
            assert error is None
        sent = list(fake_server.requests)
        assert len(sent) == 2 and all(body.get("grammar") == grammar for body in sent)
        learner, _ = learner_model(main)
        learner.invoke([HumanMessage("Summarize the attempt.")])
        assert "grammar" not in fake_server.requests[-1]
        for ctx in (
            context("--dataset", "rg:basic_arithmetic:size=4"),
            context("--grammar", ""),
            replace(main, domain="math"),  # a grammar for answers would forbid the tool calls
        ):
            run_policy(ctx, "Calculate 5 - 7.", "", seed=2)
            assert "grammar" not in fake_server.requests[-1]
        assert "tools" in fake_server.requests[-1]


def test_eval_takes_the_grammar_too() -> None:
    """``tfgrpo eval --grammar`` reproduces the main job's held-out arms."""
    args = cli.parse_args(["eval", "--dataset", cli.EMBEDDED_HELDOUT, "--grammar", cli.MAIN_JOB_GRAMMAR])
    assert cli.agent_context(args).answer_grammar == Path(cli.MAIN_JOB_GRAMMAR).read_text(encoding="utf-8")
    assert cli.agent_context(cli.parse_args(["eval", "--dataset", cli.EMBEDDED_HELDOUT])).answer_grammar == ""


def test_a_bad_grammar_file_is_one_line() -> None:
    with pytest.raises(TfgrpoError, match="cannot read the --grammar file"):
        cli.context_from_args(cli.parse_args(["learn", "--grammar", "/nonexistent.gbnf"]), preset="embedded")


def test_the_main_jobs_last_line_says_plainly_whether_this_run_showed_an_effect(tmp_path) -> None:
    """Issue 19 s.3: a main job whose interval spans zero says so and points to the study; one that
    excludes zero says which way, and that one run is not a confirmed effect."""
    report = tmp_path / "report.json"
    report.write_text(
        '{"comparison": {"diff": 0.01, "ci_low": -0.04, "ci_high": 0.07, "p_value": 0.7, '
        '"spans_zero": true, "reliable": true, "n_questions": 50}}'
    )
    line = cli.main_job_closing(report)
    assert line.startswith("This run showed no effect of learning") and "docs/learning-effect.md" in line
    report.write_text(
        '{"comparison": {"diff": 0.2, "ci_low": 0.1, "ci_high": 0.3, "p_value": 0.001, '
        '"spans_zero": false, "reliable": true, "n_questions": 50}}'
    )
    line = cli.main_job_closing(report)
    assert "better than the baseline" in line and "not a confirmed effect" in line
    assert "no usable comparison" in cli.main_job_closing(tmp_path / "missing.json")
