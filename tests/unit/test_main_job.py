"""The README's main job: with no model given, ``tfgrpo learn`` learns on one set and compares E with
the baseline on held-out questions of the same kind, in the issue's shape (paired, k >= 4, >= 50)."""

from __future__ import annotations

from tfgrpo import cli
from tfgrpo.data import load_dataset
from tfgrpo.models import DEFAULT_MODEL


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
