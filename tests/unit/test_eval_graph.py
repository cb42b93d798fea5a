"""The evaluation graph (k runs per question and arm, paired seeds) and the report built from it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from tfgrpo.context import Context
from tfgrpo.errors import ConfigError
from tfgrpo.evals.report import build_eval_report, eval_markdown, rewards_by_question
from tfgrpo.graphs.evaluate import compile_eval_graph
from tfgrpo.models.spec import register_provider
from tfgrpo.nodes.attempt import attempt_seed
from tfgrpo.state.library import Library
from tfgrpo.testing.responders import eval_responder
from tfgrpo.testing.scripted import ScriptedChatModel

DATASET = "rg:basic_arithmetic:size=6:seed=3"


def write_library(path: Path) -> Path:
    library: Library = {
        "version": 1,
        "next_id": 2,
        "items": [
            {
                "id": "G1",
                "text": "Add digit by digit.",
                "created_step": 0,
                "updated_step": 0,
                "sources": ["q"],
            }
        ],
    }
    path.write_text(json.dumps(library))
    return path


@pytest.fixture
def model() -> ScriptedChatModel:
    built = ScriptedChatModel(responder=eval_responder)
    name = f"eval{uuid.uuid4().hex[:6]}"
    register_provider(name, lambda _n, _s: built)
    built.model_name = name
    return built


def run(model: ScriptedChatModel, tmp_path: Path, **given: Any) -> dict[str, Any]:
    ctx = Context(
        model=f"{model.model_name}:x", dataset=DATASET, library=str(write_library(tmp_path / "lib.json"))
    )
    graph = compile_eval_graph(checkpointer=InMemorySaver(), store=InMemoryStore())
    config: Any = {"configurable": {"thread_id": "t"}, "max_concurrency": 4}
    return dict(graph.invoke({"k": 4, "seed": 7, **given}, config, context=ctx))


def test_k_runs_per_question_and_arm_with_paired_seeds(model: ScriptedChatModel, tmp_path: Path) -> None:
    out = run(model, tmp_path)
    results = out["results"]
    assert out["arms"] == ["library", "baseline"]  # a library given: both arms by default
    assert len(out["questions"]) == 6 and len(results) == 6 * 4 * 2
    assert {(r["arm"], r["query_id"], r["i"]) for r in results} == {
        (arm, q["id"], i) for arm in ("library", "baseline") for q in out["questions"] for i in range(4)
    }
    assert all(r["error"] is None and r["reward"] in (0.0, 1.0) for r in results)
    # E reaches the system prompt of the library arm only; run i shares its seed across the arms
    seeds: dict[tuple[str, bool], int] = {}
    for body in model.calls:
        system = body["messages"][0]["content"]
        question = body["messages"][-1]["content"]
        seeds[(question + str(body["seed"]), "[G1] Add digit by digit." in system)] = body["seed"]
    with_e = {key[0] for key in seeds if key[1]}
    without_e = {key[0] for key in seeds if not key[1]}
    assert with_e == without_e and len(with_e) == 24
    q0 = out["questions"][0]["id"]
    assert attempt_seed(7, q0, 0) != attempt_seed(7, q0, 1) != attempt_seed(8, q0, 1)

    report = build_eval_report(
        {"dataset": DATASET, "arms": out["arms"], "k": 4, "seed": 7}, out["questions"], results
    )
    lib, base = report["arms"]["library"], report["arms"]["baseline"]
    by_hand = rewards_by_question(results, "library", [q["id"] for q in out["questions"]])
    assert lib["mean_at_k"] == pytest.approx(sum(sum(v) / 4 for v in by_hand.values()) / 6)
    # the scripted library helps (right 3 in 4 vs 1 in 2 by seed): the paired difference sees it
    assert lib["mean_at_k"] > base["mean_at_k"]
    assert report["comparison"]["diff"] == pytest.approx(lib["mean_at_k"] - base["mean_at_k"])
    assert lib["runs_failed"] == 0 and lib["n_runs"] == 24 and lib["calls"] == 24
    text = eval_markdown(report)
    assert "| library |" in text and "| baseline |" in text and "Per question" in text
    assert all(q["id"] in text for q in out["questions"])


def test_one_arm_reaches_the_model_after_the_other(model: ScriptedChatModel, tmp_path: Path) -> None:
    """Runs one at a time come arm by arm, a question's k runs together: a server keeping the previous
    prompt's KV prefix (llama.cpp) then reads E once per arm, not once per run."""
    ctx = Context(
        model=f"{model.model_name}:x", dataset=DATASET, library=str(write_library(tmp_path / "lib.json"))
    )
    graph = compile_eval_graph(checkpointer=InMemorySaver(), store=InMemoryStore())
    config: Any = {"configurable": {"thread_id": "t"}, "max_concurrency": 1}
    graph.invoke({"k": 2, "seed": 7}, config, context=ctx)
    seen = [
        ("E" if "Add digit by digit." in c["messages"][0]["content"] else "-", c["messages"][-1]["content"])
        for c in model.calls
    ]
    assert [arm for arm, _ in seen] == ["E"] * 12 + ["-"] * 12
    questions = [question for _, question in seen]
    assert all(questions[i] == questions[i + 1] for i in range(0, 24, 2))


def test_baseline_only_without_a_library(model: ScriptedChatModel) -> None:
    ctx = Context(model=f"{model.model_name}:x", dataset=DATASET)
    graph = compile_eval_graph(store=InMemoryStore())
    out = graph.invoke({"k": 2}, context=ctx)
    assert out["arms"] == ["baseline"] and len(out["results"]) == 12
    assert all("[G" not in body["messages"][0]["content"] for body in model.calls)


def test_library_arm_without_library_is_refused(model: ScriptedChatModel) -> None:
    graph = compile_eval_graph(store=InMemoryStore())
    ctx = Context(model=f"{model.model_name}:x", dataset=DATASET)
    with pytest.raises(ConfigError, match="library arm needs a library"):
        graph.invoke({"k": 2, "arms": ["library"]}, context=ctx)
    assert model.calls == []


def test_failed_runs_are_counted_and_scored_zero(tmp_path: Path) -> None:
    def flaky(body: dict[str, Any]) -> dict[str, Any]:
        if body.get("seed", 0) % 3 == 0:
            raise ValueError("model exploded")
        return eval_responder(body)

    built = ScriptedChatModel(responder=flaky)
    register_provider("flakyeval", lambda _n, _s: built)
    ctx = Context(model="flakyeval:x", dataset=DATASET, library=str(write_library(tmp_path / "l.json")))
    out = compile_eval_graph(store=InMemoryStore()).invoke({"k": 3, "seed": 1}, context=ctx)
    failed = [r for r in out["results"] if r["reward"] is None]
    assert failed and all("model exploded" in (r["error"] or "") for r in failed)
    report = build_eval_report(
        {"dataset": DATASET, "arms": out["arms"], "k": 3, "seed": 1}, out["questions"], out["results"]
    )
    total_failed = sum(a["runs_failed"] for a in report["arms"].values())
    assert total_failed == len(failed)
    # every planned run is scored (failed ones as 0) ...
    assert sum(a["n_runs"] for a in report["arms"].values()) == len(out["results"])
    assert "Failed runs (scored 0)" in eval_markdown(report) and "model exploded" in eval_markdown(report)
    # ... unless excluded
    settings = {"dataset": DATASET, "arms": out["arms"], "k": 3, "seed": 1, "failed_runs": "excluded"}
    excluded = build_eval_report(settings, out["questions"], out["results"])
    assert sum(a["n_runs"] for a in excluded["arms"].values()) == len(out["results"]) - len(failed)


def test_an_empty_library_is_still_evaluated_against_the_baseline(
    model: ScriptedChatModel, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"version": 0, "next_id": 1, "items": []}))
    ctx = Context(model=f"{model.model_name}:x", dataset=DATASET, library=str(empty))
    out = compile_eval_graph(store=InMemoryStore()).invoke({"k": 2, "seed": 3}, context=ctx)
    assert out["arms"] == ["library", "baseline"] and len(out["results"]) == 24
    by_arm = {
        arm: sorted((r["query_id"], r["i"], r["reward"]) for r in out["results"] if r["arm"] == arm)
        for arm in out["arms"]
    }
    assert by_arm["library"] == by_arm["baseline"]  # same prompt, same seeds: the same answers
    report = build_eval_report({"dataset": DATASET, "arms": out["arms"], "k": 2, "seed": 3}, out["questions"],
                               out["results"])  # fmt: skip
    assert report["comparison"]["diff"] == 0 and report["comparison"]["p_value"] == 1.0
    assert "not reliable: no verdict" in eval_markdown(report)  # 6 questions: too few for one


def _result(arm: str, qid: str, i: int, reward: float | None) -> Any:
    return {
        "arm": arm, "query_id": qid, "i": i, "reward": reward, "answer": "" if reward is None else "x",
        "error": "APIError: server said no" if reward is None else None,
        "calls": 1, "input_tokens": 1, "output_tokens": 1, "cost_usd": 0.0,
    }  # fmt: skip


def _failing_results() -> tuple[list[dict[str, Any]], list[Any]]:
    """q1: library 1, FAIL, 0, 0 / baseline 0, 1, 1, 1; q2: 1, 1, 1, 1 / 0, 0, FAIL, 0."""
    questions = [{"id": "q1", "answer": "1"}, {"id": "q2", "answer": "2"}]
    rows = {
        ("library", "q1"): [1.0, None, 0.0, 0.0],
        ("baseline", "q1"): [0.0, 1.0, 1.0, 1.0],
        ("library", "q2"): [1.0, 1.0, 1.0, 1.0],
        ("baseline", "q2"): [0.0, 0.0, None, 0.0],
    }
    results = [_result(arm, q, i, r) for (arm, q), rewards in rows.items() for i, r in enumerate(rewards)]
    return questions, results


def test_failed_runs_score_zero_by_default_and_are_shown() -> None:
    questions, results = _failing_results()
    settings = {"dataset": "d.jsonl", "arms": ["library", "baseline"], "k": 4, "seed": 0}
    report = build_eval_report(settings, questions, results)
    lib, base = report["arms"]["library"], report["arms"]["baseline"]
    assert report["settings"]["failed_runs"] == "scored 0"
    # every planned run counts: the failed one is a 0, not left out
    assert lib["mean_at_k"] == pytest.approx((0.25 + 1.0) / 2)
    assert base["mean_at_k"] == pytest.approx((0.75 + 0.0) / 2)
    assert lib["n_runs"] == base["n_runs"] == 8
    assert lib["runs_failed"] == base["runs_failed"] == 1
    assert lib["pass_at_1"] == pytest.approx((0.25 + 1.0) / 2)
    assert report["comparison"]["diff"] == pytest.approx(lib["mean_at_k"] - base["mean_at_k"])
    text = eval_markdown(report)
    assert "failed runs scored 0" in text and "--exclude-failed" in text
    assert "## Failed runs (scored 0)" in text


def test_exclude_failed_leaves_them_out_and_pairs_the_same_run_indices() -> None:
    questions, results = _failing_results()
    settings = {"dataset": "d.jsonl", "arms": ["library", "baseline"], "k": 4, "seed": 0}
    report = build_eval_report({**settings, "failed_runs": "excluded"}, questions, results)
    lib, base = report["arms"]["library"], report["arms"]["baseline"]
    assert report["settings"]["failed_runs"] == "excluded"
    assert lib["mean_at_k"] == pytest.approx((1 / 3 + 1.0) / 2)  # today's behaviour per arm
    assert lib["n_runs"] == base["n_runs"] == 7
    # paired on run indices usable in both arms: q1 runs 0, 2, 3 (1,0,0 vs 0,1,1); q2 runs 0, 1, 3
    assert report["comparison"]["diff"] == pytest.approx(((1 / 3 - 2 / 3) + 1.0) / 2)
    assert "failed runs excluded" in eval_markdown(report)
