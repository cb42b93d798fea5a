"""The learning loop: epochs x batches, seeded per-epoch shuffles, cleared step channels, resume checks."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from tests import helpers
from tests.helpers import Handler, question_of
from tfgrpo.context import Context
from tfgrpo.data import batches_per_epoch, dataset_fingerprint, epoch_order, load_dataset
from tfgrpo.errors import ConfigError, DataError
from tfgrpo.graphs.learn import compile_learn_graph
from tfgrpo.runs.rundir import check_resume, step_history
from tfgrpo.state.library import Library
from tfgrpo.state.types import Query
from tfgrpo.testing.fake_openai import message_text
from tfgrpo.testing.responders import solve_arithmetic

CONFIG: dict[str, Any] = {"recursion_limit": 500}

OPERANDS = [(2, 3), (7, 4), (6, 7), (9, 8), (12, 5), (3, 11), (15, 6), (8, 8), (21, 4), (5, 13)]


def write_dataset(path: Path, n: int, offset: int = 0) -> str:
    rows = [
        {"id": f"q{i}", "question": f"Calculate {a + offset} + {b}.", "answer": str(a + offset + b)}
        for i, (a, b) in enumerate(OPERANDS[:n])
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def always_right(body: dict) -> dict:
    return {"content": f"Answer: {solve_arithmetic(question_of(body))}"}


def alternating_policy() -> Handler:
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def policy(body: dict) -> dict:
        question = question_of(body)
        with lock:
            n = seen.get(question, 0)
            seen[question] = n + 1
        value = solve_arithmetic(question)
        return {"content": f"Answer: {value if n % 2 == 0 else str(value) + '0'}"}

    return policy


class Fake(helpers.Fake):
    """The shared fake provider; rollouts are always right unless a test says otherwise."""

    def __init__(self, **handlers: Handler) -> None:
        super().__init__(**{"rollout": always_right, **handlers})


def context(fake: Fake, dataset: str, **settings: Any) -> Context:
    options: dict[str, Any] = {
        "reward": "exact_match",
        "group_size": 2,
        "batch_size": 4,
        "epochs": 2,
        **settings,
    }
    return Context(model=fake.spec, dataset=dataset, **options)


def run_learn(
    fake: Fake, dataset: str, state: dict[str, Any] | None = None, **settings: Any
) -> tuple[dict[str, Any], list[list[Query]]]:
    """Run the learn graph; returns (final state plus its step ``history``, the batches select_batch
    chose, in order)."""
    store = InMemoryStore()
    graph = compile_learn_graph(store=store)
    batches: list[list[Query]] = []
    final: dict[str, Any] = {}
    for mode, chunk in graph.stream(
        state or {},
        context=context(fake, dataset, **settings),
        config=CONFIG,
        stream_mode=["updates", "values"],
    ):
        if mode == "updates" and "select_batch" in chunk:
            batches.append(chunk["select_batch"]["batch"])
        elif mode == "values":
            final = chunk
    return {**final, "history": step_history(store, final["run_id"])}, batches


# --------------------------------------------------------------------------- epochs x batches


def test_six_queries_batch_four_two_epochs_gives_four_steps_with_partial_batches() -> None:
    fake = Fake()
    final, batches = run_learn(fake, "rg:basic_arithmetic:size=6:seed=1")
    history = final["history"]
    assert len(history) == 4
    assert [h["queries"] for h in history] == [4, 2, 4, 2]
    assert [h["rollouts"] for h in history] == [8, 4, 8, 4]
    assert [(h["step"], h["epoch"], h["batch_index"]) for h in history] == [
        (0, 0, 0),
        (1, 0, 1),
        (2, 1, 0),
        (3, 1, 1),
    ]
    assert [len(b) for b in batches] == [4, 2, 4, 2]
    assert len(fake.bodies("rollout")) == 2 * 6 * 2  # epochs x N x G
    assert final["done"] is True
    assert final["epoch"] == 2 and final["step"] == 4


def test_each_query_appears_exactly_once_per_epoch(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "d.jsonl", 6)
    final, batches = run_learn(Fake(), dataset, {"seed": 3}, epochs=3)
    all_ids = sorted(q["id"] for q in load_dataset(dataset))
    assert len(batches) == 6
    for epoch in range(3):
        ids = [q["id"] for batch in batches[2 * epoch : 2 * epoch + 2] for q in batch]
        assert sorted(ids) == all_ids


def test_batches_per_epoch_rounds_up() -> None:
    assert batches_per_epoch(6, 4) == 2
    assert batches_per_epoch(8, 4) == 2
    assert batches_per_epoch(9, 4) == 3
    assert batches_per_epoch(3, 8) == 1


def first_seed_with_different_first_batches(queries: list[Query], batch_size: int) -> int:
    for seed in range(100):
        first = {q["id"] for q in epoch_order(queries, seed, 0)[:batch_size]}
        second = {q["id"] for q in epoch_order(queries, seed, 1)[:batch_size]}
        if first != second:
            return seed
    raise AssertionError("no seed in 0..99 gives different batches in epochs 0 and 1")


def test_epoch_order_differs_between_epochs_and_is_deterministic(tmp_path: Path) -> None:
    queries = load_dataset(write_dataset(tmp_path / "d.jsonl", 8))
    seed = first_seed_with_different_first_batches(queries, 4)
    order0, order1 = epoch_order(queries, seed, 0), epoch_order(queries, seed, 1)
    assert order0 != order1
    assert sorted(q["id"] for q in order0) == sorted(q["id"] for q in queries)
    assert epoch_order(queries, seed, 0) == order0
    assert epoch_order([dict(q) for q in queries], seed, 1) == order1  # type: ignore[misc]
    # the seed matters: some other seed orders epoch 0 differently
    assert any(epoch_order(queries, other, 0) != order0 for other in range(seed + 1, seed + 20))


def test_learn_loop_uses_the_seeded_order_of_each_epoch(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "d.jsonl", 8)
    queries = load_dataset(dataset)
    seed = first_seed_with_different_first_batches(queries, 4)
    _, batches = run_learn(Fake(), dataset, {"seed": seed})
    expected = []
    for epoch in range(2):
        order = epoch_order(queries, seed, epoch)
        expected += [order[:4], order[4:]]
    assert batches == expected
    assert {q["id"] for q in batches[0]} != {q["id"] for q in batches[2]}
    # same seed, new run: the same batches
    _, again = run_learn(Fake(), dataset, {"seed": seed})
    assert again == batches


# ------------------------------------------------------------------------ per-step channels


def test_per_step_channels_are_empty_after_the_run_and_do_not_accumulate(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "d.jsonl", 6)
    fake = Fake(rollout=alternating_policy())
    final, _ = run_learn(fake, dataset)
    for channel in ("rollouts", "summaries", "groups", "proposals", "batch", "dropped"):
        assert not final.get(channel), channel
    assert not final.get("calls") and not final.get("usage")
    history = final["history"]
    assert [h["rollouts"] for h in history] == [8, 4, 8, 4]
    assert [h["groups_kept"] + h["groups_skipped"] for h in history] == [4, 2, 4, 2]
    # each step reports its own calls, not the run's running total
    assert sum(h["calls"] for h in history) == len(fake.bodies())
    assert [h["library_size"] for h in history][-1] == len(final["library"]["items"]) > 0


def test_proposals_of_one_step_are_not_applied_again_in_a_later_step(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "d.jsonl", 4)
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def learns_once(body: dict) -> dict:
        # epoch 0: right then wrong (spread); epoch 1: always right (nothing to learn)
        question = question_of(body)
        with lock:
            n = seen.get(question, 0)
            seen[question] = n + 1
        value = solve_arithmetic(question)
        return {"content": f"Answer: {value if n != 1 else str(value) + '0'}"}

    fake = Fake(rollout=learns_once)
    final, _ = run_learn(fake, dataset, batch_size=2)
    history = final["history"]
    assert [h["groups_kept"] for h in history] == [2, 2, 0, 0]
    assert [h["operations_proposed"] for h in history[2:]] == [0, 0]
    assert [h["operations_applied"] + h["operations_rejected"] for h in history[2:]] == [0, 0]
    assert len(fake.bodies("update")) == 2  # one per learning step of epoch 0 only
    assert history[3]["library_version"] == history[1]["library_version"]


# ------------------------------------------------------------------------------ resume checks


def test_resume_with_changed_dataset_is_refused(tmp_path: Path) -> None:
    first = write_dataset(tmp_path / "a.jsonl", 4)
    other = write_dataset(tmp_path / "b.jsonl", 4, offset=100)
    fake = Fake()
    store = InMemoryStore()
    graph = compile_learn_graph(checkpointer=InMemorySaver(), store=store)
    config = {**CONFIG, "configurable": {"thread_id": "t1"}}
    done = graph.invoke({"seed": 1}, context=context(fake, first, epochs=1), config=config)
    assert len(step_history(store, done["run_id"])) == 1
    with pytest.raises(ConfigError, match="differs"):
        graph.invoke({}, context=context(fake, other, epochs=1), config=config)


def test_resume_after_dataset_file_was_edited_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    write_dataset(path, 4)
    fake = Fake()
    graph = compile_learn_graph(checkpointer=InMemorySaver(), store=InMemoryStore())
    config = {**CONFIG, "configurable": {"thread_id": "t2"}}
    graph.invoke({}, context=context(fake, str(path), epochs=1), config=config)
    write_dataset(path, 4, offset=1000)  # same file name, different questions
    with pytest.raises(ConfigError, match="differs"):
        graph.invoke({}, context=context(fake, str(path), epochs=1), config=config)


def test_resume_with_changed_group_size_is_refused(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "a.jsonl", 4)
    fake = Fake()
    graph = compile_learn_graph(checkpointer=InMemorySaver(), store=InMemoryStore())
    config = {**CONFIG, "configurable": {"thread_id": "t3"}}
    graph.invoke({}, context=context(fake, dataset, epochs=1), config=config)
    with pytest.raises(ConfigError, match="settings differ") as refused:
        graph.invoke({}, context=context(fake, dataset, epochs=1, group_size=3, reward="f1"), config=config)
    # the refusal names each setting that changed, with the run's value and the new one
    assert "group_size: 2 -> 3, reward: 'exact_match' -> 'f1'" in str(refused.value)
    assert "epochs" not in str(refused.value).split("(")[0]  # unchanged settings are not listed as changed


def test_resume_of_a_run_that_kept_no_settings_is_refused_with_the_generic_message(tmp_path: Path) -> None:
    queries = load_dataset(write_dataset(tmp_path / "a.jsonl", 4))
    ctx = Context(model="x:y", dataset="a.jsonl")
    old = {"settings_fingerprint": Context(model="x:y", dataset="a.jsonl", epochs=9).settings_fingerprint()}
    with pytest.raises(ConfigError) as refused:
        check_resume(old, ctx, queries)  # a run from before the settings were kept in state
    assert str(refused.value).startswith("settings differ from the ones this run started with (dataset, ")


def test_reinvoking_a_finished_run_with_same_settings_does_no_new_work(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "a.jsonl", 4)
    fake = Fake()
    store = InMemoryStore()
    graph = compile_learn_graph(checkpointer=InMemorySaver(), store=store)
    config = {**CONFIG, "configurable": {"thread_id": "t4"}}
    first = graph.invoke({}, context=context(fake, dataset, epochs=1), config=config)
    history = step_history(store, first["run_id"])
    calls = len(fake.bodies())
    again = graph.invoke({}, context=context(fake, dataset, epochs=1), config=config)
    assert len(fake.bodies()) == calls
    assert again["run_id"] == first["run_id"] and again["report"] == first["report"]
    assert step_history(store, first["run_id"]) == history and len(history) == 1


def test_reinvoking_an_interrupted_step_with_input_counts_each_rollout_once(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "a.jsonl", 4)
    fake = Fake(rollout=alternating_policy())
    store = InMemoryStore()
    graph = compile_learn_graph(checkpointer=InMemorySaver(), store=store)
    config = {**CONFIG, "configurable": {"thread_id": "t5"}}
    ctx = context(fake, dataset, epochs=1)
    graph.invoke({}, context=ctx, config=config, interrupt_before=["reward"])  # a breakpoint mid-step
    assert len(fake.bodies("rollout")) == 8
    final = graph.invoke({}, context=ctx, config=config)
    assert len(fake.bodies("rollout")) == 8  # the memo answered the repeated rollouts
    (report,) = step_history(store, final["run_id"])
    assert report["rollouts"] == 8
    assert report["calls"] == len(fake.bodies())


def test_check_resume_accepts_fresh_and_matching_state(tmp_path: Path) -> None:
    queries = load_dataset(write_dataset(tmp_path / "a.jsonl", 4))
    ctx = Context(model="x:y", dataset="a.jsonl")
    check_resume({}, ctx, queries)
    check_resume(
        {
            "dataset_fingerprint": dataset_fingerprint(queries),
            "settings_fingerprint": ctx.settings_fingerprint(),
        },
        ctx,
        queries,
    )
    with pytest.raises(ConfigError):
        check_resume({"dataset_fingerprint": dataset_fingerprint(queries[:3])}, ctx, queries)


# --------------------------------------------------------------------------- given library


def test_library_given_in_the_input_is_continued(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "d.jsonl", 4)
    library: Library = {
        "version": 3,
        "next_id": 5,
        "items": [
            {
                "id": "G2",
                "text": "Carry digits carefully.",
                "created_step": 0,
                "updated_step": 1,
                "sources": [],
            },
            {"id": "G4", "text": "Re-add to check.", "created_step": 2, "updated_step": 2, "sources": []},
        ],
    }

    def extract(body: dict) -> dict:
        question = question_of(body).split("\n")[1]

        def words(text: str) -> str:
            return text.translate(str.maketrans("0123456789", "abcdefghij"))

        return {
            "tool_calls": [
                {
                    "name": "ExtractedExperiences",
                    "arguments": {
                        "analysis": "a",
                        # distinct per problem, without its numbers (the lesson gate rejects those)
                        "operations": [
                            {
                                "op": "ADD",
                                "content": f"When a problem reads {words(question)}, go step by step.",
                            }
                        ],
                    },
                }
            ]
        }

    fake = Fake(rollout=alternating_policy(), extract=extract)
    final, _ = run_learn(fake, dataset, {"library": library}, epochs=1)
    items = final["library"]["items"]
    assert items[:2] == library["items"]
    new_ids = [item["id"] for item in items[2:]]
    assert new_ids == ["G5", "G6", "G7", "G8"]
    assert final["library"]["next_id"] == 9
    assert final["library"]["version"] == 4
    assert final["history"][0]["library_version"] == 4


# --------------------------------------------------------------------------- no ground truth


def test_majority_reward_learns_without_answers(tmp_path: Path) -> None:
    rows = [{"id": f"q{i}", "question": f"Calculate {a} + {b}."} for i, (a, b) in enumerate(OPERANDS[:3])]
    path = tmp_path / "unlabelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="line 1: field 'answer' is missing"):
        load_dataset(str(path))  # a ground-truth reward still needs the answers

    seen: dict[str, int] = {}
    lock = threading.Lock()

    def two_of_three_right(body: dict) -> dict:
        question = question_of(body)
        with lock:
            n = seen[question] = seen.get(question, 0) + 1
        value = solve_arithmetic(question)
        return {"content": f"Answer: {value if n % 3 else str(value) + '0'}"}  # rollouts 1, 2 right; 3 wrong

    fake = Fake(rollout=two_of_three_right)
    final, _ = run_learn(
        fake, str(path), reward="majority", group_size=3, batch_size=3, epochs=1, whole_attempt_tokens=0
    )
    (report,) = final["history"]
    assert report["mean_reward"] == pytest.approx(2 / 3, abs=1e-4)  # the majority (right) answer scores 1
    assert report["groups_kept"] == 3
    summarize_prompts = [b["messages"][-1]["content"] for b in fake.bodies("summarize")]
    assert summarize_prompts and all("Ground-truth answer: not given" in p for p in summarize_prompts)


def test_an_unknown_reward_fails_before_any_call(tmp_path: Path) -> None:
    from tfgrpo.learner import run_learning

    fake = Fake()
    ctx = context(fake, "rg:basic_arithmetic:size=4:seed=1", reward="exact_mtach")
    with pytest.raises(ConfigError, match="unknown reward 'exact_mtach'"):
        run_learning(ctx, run_dir=tmp_path / "run", seed=0, progress=False)
    assert fake.bodies() == []


# --------------------------------------------------------------------------- validation-gated updates


def validation_policy(validation_questions: set[str], *, experiences_help: bool) -> Handler:
    training = alternating_policy()  # training groups have reward spread: the learner proposes lessons

    def policy(body: dict) -> dict:
        question = question_of(body)
        if question not in validation_questions:
            return training(body)
        system = message_text(body["messages"][0]["content"])
        right = ("[G" in system) == experiences_help
        value = solve_arithmetic(question)
        return {"content": f"Answer: {value if right else str(value) + '1'}"}

    return policy


@pytest.mark.parametrize("experiences_help", [False, True], ids=["hurts-rolled-back", "helps-kept"])
def test_validation_gate_keeps_or_rolls_back_each_step(tmp_path: Path, experiences_help: bool) -> None:
    validation = write_dataset(tmp_path / "val.jsonl", 3, offset=100)
    questions = {q["question"] for q in load_dataset(validation)}
    fake = Fake(rollout=validation_policy(questions, experiences_help=experiences_help))
    final, _ = run_learn(
        fake, write_dataset(tmp_path / "train.jsonl", 4), validation=validation, validation_k=2, epochs=1
    )
    (report,) = final["history"]
    check = report["validation"]
    assert check["runs"] == 3 * 2 * 2 and check["failed"] == 0
    assert report["usage"]["validate"]["calls"] == 12  # counted in the step's calls and tokens
    assert report["calls"] == sum(u["calls"] for u in report["usage"].values())
    assert report["operations_applied"] > 0
    if experiences_help:
        assert (check["before"], check["after"], check["kept"]) == (0.0, 1.0, True)
        assert len(final["library"]["items"]) == report["operations_applied"] == report["library_size"]
    else:
        assert (check["before"], check["after"], check["kept"]) == (1.0, 0.0, False)
        assert "rolled back" in check["reason"]
        assert final["library"]["items"] == [] and report["library_size"] == 0
        assert final["library"]["next_id"] > 1  # the rejected ids are never given again


def test_validation_is_skipped_when_the_step_changed_nothing(tmp_path: Path) -> None:
    validation = write_dataset(tmp_path / "val.jsonl", 2, offset=100)
    fake = Fake()  # always right: no group passes the gate, E never changes
    final, _ = run_learn(fake, write_dataset(tmp_path / "train.jsonl", 2), validation=validation, epochs=1)
    assert "validation" not in final["history"][0]
    assert "validate" not in final["history"][0]["usage"]


# ------------------------------------------------------------------------------ checkpoint size


def test_checkpoint_does_not_grow_with_the_number_of_steps(tmp_path: Path) -> None:
    """The step history lives in the store: the checkpoint after 6 steps is as big as after 2."""
    dataset = write_dataset(tmp_path / "a.jsonl", 4)

    def last_checkpoint_bytes(epochs: int) -> tuple[int, int]:
        saver, store = InMemorySaver(), InMemoryStore()
        graph = compile_learn_graph(checkpointer=saver, store=store)
        config = {**CONFIG, "configurable": {"thread_id": f"size-{epochs}"}}
        final = graph.invoke({}, context=context(Fake(), dataset, epochs=epochs, batch_size=2), config=config)
        checkpoint = saver.get_tuple(config)
        assert checkpoint is not None
        size = len(saver.serde.dumps_typed(checkpoint.checkpoint)[1])
        return size, len(step_history(store, final["run_id"]))

    small, steps_small = last_checkpoint_bytes(1)
    big, steps_big = last_checkpoint_bytes(3)
    assert (steps_small, steps_big) == (2, 6)
    assert big <= small + 64  # counters gain a digit at most; no per-step record


@pytest.mark.parametrize(("started", "now"), [(1, 4), (4, 1), (2, 3)])
def test_resume_with_another_number_of_candidates_is_refused_naming_it(
    started: int, now: int, tmp_path: Path
) -> None:
    queries = load_dataset(write_dataset(tmp_path / "a.jsonl", 4))
    run = Context(model="x:y", dataset="a.jsonl", candidates=started)
    state = {"settings_fingerprint": run.settings_fingerprint(), "run_settings": run.run_defining()}
    with pytest.raises(ConfigError) as refused:
        check_resume(state, Context(model="x:y", dataset="a.jsonl", candidates=now), queries)
    assert f"candidates: {started} -> {now}" in str(refused.value)


def test_a_run_started_before_candidates_existed_still_resumes(tmp_path: Path) -> None:
    queries = load_dataset(write_dataset(tmp_path / "a.jsonl", 4))
    ctx = Context(model="x:y", dataset="a.jsonl")
    before = {k: v for k, v in ctx.run_defining().items() if k != "candidates"}
    # the fingerprint such a run stored: the run-defining settings it knew
    fingerprint = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    check_resume({"settings_fingerprint": fingerprint, "run_settings": before}, ctx, queries)
