"""Dynamic sampling (``max_group_size``): a group whose rewards are all equal gets more attempts, G at a
time, until they differ or it holds the cap; the extra attempts are scored once, seeded apart, counted."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.memory import InMemoryStore

from tests.helpers import Fake
from tfgrpo.checks import check_context
from tfgrpo.context import Context
from tfgrpo.errors import ConfigError
from tfgrpo.graphs.step import compile_step_graph
from tfgrpo.runs.rundir import table_header, table_line
from tfgrpo.state.types import Query
from tfgrpo.testing.responders import rarely_right_responder

BATCH: list[Query] = [
    {"id": f"q{i}", "question": f"Calculate {i} + {2 * i + 1}.", "answer": str(3 * i + 1)} for i in range(12)
]


def run_step(**settings: Any) -> tuple[dict[str, Any], Fake]:
    fake = Fake(rollout=rarely_right_responder)
    options: dict[str, Any] = {"reward": "exact_match", "group_size": 4, "batch_size": len(BATCH), **settings}
    out = compile_step_graph(store=InMemoryStore()).invoke(
        {"batch": BATCH, "run_id": "run", "step": 0},
        context=Context(model=fake.spec, **options),
        config={"recursion_limit": 500},
    )
    return out, fake


def test_all_equal_groups_get_more_attempts_until_they_differ_or_reach_the_cap() -> None:
    alone, _ = run_step()
    grown, fake = run_step(max_group_size=16)
    assert alone["report"]["extra_rollouts"] == 0 and alone["report"]["groups_rescued"] == 0
    kept_alone, kept_grown = alone["report"]["groups_kept"], grown["report"]["groups_kept"]
    print(f"groups with contrast: G alone {kept_alone} of 12, cap 16 {kept_grown} of 12")
    assert kept_grown > kept_alone
    for group in grown["groups"]:
        n = len(group["keys"])
        assert group["keys"] == [f"{group['query_id']}#{g}" for g in range(n)]  # new g indices G, G+1, ...
        assert 4 <= n <= 16 and n % 4 == 0  # G at a time, within the cap
        assert group["extra_attempts"] == n - 4
        assert len(group["rewards"]) == len(group["reward_reasons"]) == n
        if not group["kept"]:
            assert n == 16  # only a group at the cap stays without contrast
        elif n > 4:
            assert len(set(group["rewards"][:-4])) == 1  # it grew only while its rewards were all equal
    report = grown["report"]
    extra = sum(g["extra_attempts"] for g in grown["groups"])
    assert report["extra_rollouts"] == extra > 0
    assert report["groups_rescued"] == sum(1 for g in grown["groups"] if g["kept"] and g["extra_attempts"])
    assert report["groups_rescued"] == kept_grown - kept_alone  # the first G of each group are the same
    assert report["rollouts"] == 12 * 4 + extra
    calls = fake.bodies("rollout")
    assert len(calls) == report["rollouts"]  # every attempt asked once
    assert len({body["seed"] for body in calls}) == len(calls)  # each with its own seed
    assert report["usage"]["rollout"]["calls"] == len(calls)  # and booked


def test_the_step_table_shows_the_extra_attempts_and_the_groups_they_rescued() -> None:
    out, _ = run_step(max_group_size=8)
    header, line = table_header().split(), table_line(out["report"]).split()
    row = dict(zip(header, line, strict=True))
    assert row["more"] == str(out["report"]["extra_rollouts"]) != "0"
    assert row["resc"] == str(out["report"]["groups_rescued"])


def test_extra_attempts_are_scored_once_each() -> None:
    """The reward node runs again after each round: what it scored (and booked) before is not redone."""
    out, fake = run_step(max_group_size=12, reward="judge")
    judged = fake.bodies("judge")
    assert len(judged) == out["report"]["rollouts"]
    assert out["report"]["usage"]["judge"]["calls"] == len(judged)


def test_same_seed_same_groups() -> None:
    first, _ = run_step(max_group_size=16)
    second, _ = run_step(max_group_size=16)
    assert [g["rewards"] for g in first["groups"]] == [g["rewards"] for g in second["groups"]]


@pytest.mark.parametrize(("group_size", "cap"), [(4, 3), (4, 1), (5, -1)])
def test_a_cap_below_g_is_refused(group_size: int, cap: int) -> None:
    with pytest.raises(ConfigError, match="--max-group-size") as info:
        check_context(Context(group_size=group_size, max_group_size=cap))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("cap", [0, 4, 16])
def test_zero_or_g_or_more_is_accepted(cap: int) -> None:
    check_context(Context(group_size=4, max_group_size=cap))


def test_the_benchmark_prints_the_share_of_groups_with_contrast_for_g_alone_and_the_cap(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "dynamic_sampling.py"
    spec = importlib.util.spec_from_file_location("dynamic_sampling_benchmark", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--questions", "12", "--caps", "4,16"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [row[0] for row in rows] == ["4", "16"]
    alone, grown = (int(row[1]) for row in rows)
    assert grown > alone
