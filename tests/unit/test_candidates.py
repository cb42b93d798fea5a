"""One step with ``--candidates N``: a candidate that changed nothing is not scored, candidates with the
same E are scored once, the kept one must beat the current E by more than the margin, and every call is
booked under its candidate."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Fake, Handler, question_of, tool_reply
from tests.unit.test_step_graph import BATCH, run_step
from tfgrpo.nodes.candidates import candidate_seed
from tfgrpo.testing.responders import solve_arithmetic

RIGHT = "When the expression has several operators, apply precedence rules strictly before adding terms."
JUNK = "When a problem looks long, restate it in your own words and keep a calm pace throughout."


def extractor() -> Handler:
    """Candidate 0 (no seed) proposes junk, candidate 1 nothing, candidates 2 and 3 the right lesson."""
    seeds = {
        candidate_seed({"step": 0}, query["id"], c): c for query in BATCH for c in range(1, 4)
    }  # the run's seed is 0

    def extract(body: dict) -> dict:
        c = seeds.get(body.get("seed"), 0) if body.get("seed") is not None else 0
        op = {"op": "NONE"} if c == 1 else {"op": "ADD", "content": RIGHT if c >= 2 else JUNK, "reason": "r"}
        return tool_reply("ExtractedExperiences", {"analysis": "a", "operations": [op]})

    return extract


def policy(body: dict) -> dict:
    """Right with the right lesson in E, else when its seed is even (so groups have contrast)."""
    value = solve_arithmetic(question_of(body))
    right = RIGHT in " ".join(str(m.get("content")) for m in body["messages"]) or body["seed"] % 2 == 0
    return {"content": f"Answer: {value if right else str(value) + '0'}"}


def step_with_candidates(**settings: Any) -> tuple[Fake, dict[str, Any]]:
    fake = Fake(extract=extractor(), rollout=policy)
    out = run_step(fake, candidates=4, **settings)
    return fake, out


def test_unchanged_candidates_are_not_scored_and_equal_ones_once() -> None:
    fake, out = step_with_candidates()
    selection = out["report"]["selection"]
    status = {c["candidate"]: c["status"] for c in selection["candidates"]}
    assert status == {0: "scored", 1: "unchanged", 2: "scored", 3: "duplicate of c2"}
    runs = len(selection["questions"]) * selection["k"]
    assert runs > 0
    # rollouts, then one selection run per question and i for c0 and c2 only
    assert fake.count("rollout") == 3 * 4 + 2 * runs
    assert [c["runs"] for c in selection["candidates"]] == [runs, 0, runs, 0]
    assert selection["chosen"] == 2
    assert [item["text"] for item in out["library"]["items"]] == [RIGHT]
    # every candidate's calls are booked under its own node names, and counted in its row
    usage = out["report"]["usage"]
    assert usage["select"]["calls"] == usage["select@c2"]["calls"] == runs and "select@c3" not in usage
    assert {c["candidate"]: c["calls"] for c in selection["candidates"]}[1] == usage["extract@c1"]["calls"]
    assert out["report"]["calls"] == sum(u["calls"] for u in usage.values())


@pytest.mark.parametrize(
    ("margin", "kept"),
    [(0.0, True), (1.0, False)],  # a gain in reward cannot exceed 1
)
def test_a_candidate_is_kept_only_when_it_beats_the_current_e_by_more_than_the_margin(
    margin: float, kept: bool
) -> None:
    _, out = step_with_candidates(candidate_margin=margin)
    selection = out["report"]["selection"]
    assert (selection["chosen"] is not None) is kept
    if not kept:
        assert out["library"]["items"] == [] and out["report"]["applied"] == []
        assert out["report"]["operations_applied"] == 0
        assert "E stays" in selection["reason"]


def test_one_candidate_makes_no_selection() -> None:
    fake = Fake(extract=extractor(), rollout=policy)
    out = run_step(fake)
    assert "selection" not in out["report"]
    assert [item["text"] for item in out["library"]["items"]] == [JUNK]
    assert fake.count("rollout") == 3 * 4 and all(b.get("seed") is None for b in fake.bodies("extract"))
