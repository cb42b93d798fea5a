"""tfgrpo.learn(...) refuses a bad setting with one line before it builds a ledger or calls a model."""

from __future__ import annotations

from pathlib import Path

import pytest

import tfgrpo
from tfgrpo.errors import ConfigError, TfgrpoError

ROWS = [{"question": "What is 1 + 1?", "answer": "2"}]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"group_size": 1}, "--group-size must be at least 2, got 1"),
        ({"epochs": 0}, "--epochs must be at least 1, got 0"),
        ({"max_concurrency": 0}, "--max-concurrency must be at least 1, got 0"),
        ({"temperature": 3.0}, "--temperature must be between 0 and 2, got 3.0"),
        (
            {"group_size": 4, "max_group_size": 3},
            "--max-group-size must be at least --group-size (4) or 0 (no extra attempts), got 3",
        ),
    ],
)
def test_learn_refuses_a_bad_setting_before_any_work(
    tmp_path: Path, setting: dict[str, object], message: str
) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as refused:
        # Port 9 (discard) is never contacted: the check comes first.
        tfgrpo.learn(
            dataset=ROWS,
            model="openai:x",
            base_url="http://127.0.0.1:9",
            run_dir=run_dir,
            **setting,  # type: ignore[arg-type]
        )
    assert str(refused.value) == message
    assert "\n" not in str(refused.value)
    # Only the rows given inline were written (as the run's dataset file): no ledger, no checkpoints.
    assert sorted(p.name for p in run_dir.iterdir()) == ["dataset.jsonl"]


def test_learn_with_an_unreachable_model_raises_the_cause(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # nothing listens on port 9: every call fails; the exception says so, not "see the messages above"
    with pytest.raises(TfgrpoError) as failed:
        tfgrpo.learn(
            dataset=ROWS,
            model="openai:x",
            base_url="http://127.0.0.1:9/v1",
            run_dir=tmp_path / "run",
            epochs=1,
            batch_size=1,
            group_size=2,
            max_retries=0,
            progress=False,
            verbose=False,
        )
    message = str(failed.value)
    assert "every LLM call of this run failed" in message and "127.0.0.1:9" in message, message
    assert "\n" not in message
    # verbose=False: nothing on stdout, and the cause is in the exception rather than only on stderr
    out = capsys.readouterr()
    assert out.out == "" and "127.0.0.1:9" not in out.err
