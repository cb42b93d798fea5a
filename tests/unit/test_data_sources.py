"""Dataset sources beyond local JSONL/CSV: Hugging Face ``datasets`` (a ``save_to_disk`` directory, Parquet
and Arrow files; offline), LangSmith-shaped rows, ``langsmith:NAME``, and the question/answer field mapping.
Every error is one line naming the user's source."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

# no hub: a name that is not on disk must fail, not download (set before `datasets` is imported)
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

from tfgrpo.data import check_rows, clear_cache, load_dataset, with_fields  # noqa: E402
from tfgrpo.errors import DataError  # noqa: E402

ROWS = [{"problem": f"What is {i} + {i}?", "solution": 2 * i, "uid": f"p{i}"} for i in range(1, 5)]


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def hf() -> Any:
    return pytest.importorskip("datasets", reason="the datasets extra: pip install -e '.[datasets]'")


def error_of(spec: str, **kw: Any) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(spec, **kw)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def saved_dict(hf: Any, path: Path) -> Path:
    """A DatasetDict saved with ``save_to_disk``: train and test splits."""
    hf.DatasetDict(
        {"train": hf.Dataset.from_list(ROWS[:3]), "test": hf.Dataset.from_list(ROWS[3:])}
    ).save_to_disk(str(path))
    return path


def test_hf_saved_dataset_with_a_column_mapping(hf: Any, tmp_path: Path) -> None:
    path = saved_dict(hf, tmp_path / "saved")
    spec = with_fields(f"hf:{path}", "problem", "solution", "uid")
    assert spec == f"hf:{path}?question=problem&answer=solution&id=uid"
    train = load_dataset(spec)  # the train split by default
    assert [(q["id"], q["question"], q["answer"]) for q in train] == [
        ("p1", "What is 1 + 1?", "2"),
        ("p2", "What is 2 + 2?", "4"),
        ("p3", "What is 3 + 3?", "6"),
    ]
    test = load_dataset(with_fields(f"hf:{path}:test", "problem", "solution"))
    assert [(q["id"], q["answer"]) for q in test] == [("saved-0", "8")]  # no id field: NAME-index


def test_hf_errors_name_the_source(hf: Any, tmp_path: Path) -> None:
    path = saved_dict(hf, tmp_path / "saved")
    assert error_of(f"hf:{path}") == (  # a saved dataset without a mapping: which option to use
        f"hf:{path}: item 0: field 'question' is missing (the row has fields: problem, solution, uid): "
        "name the question with --question-field NAME"
    )
    msg = error_of(f"hf:{path}:nope:validation?question=problem&answer=solution")
    assert msg.startswith(f"hf:{path}:nope:validation: no split 'validation' (splits: train, test")
    missing = error_of("hf:no-such-user/no-such-set")
    assert missing.startswith("hf:no-such-user/no-such-set: cannot load it with the datasets library (")
    bad = error_of(f"hf:{path}?question=problem&anwser=solution")
    assert bad.startswith(f"hf:{path}: field mapping '?question=problem&anwser=solution': expected")


def test_parquet_and_arrow_files(hf: Any, tmp_path: Path) -> None:
    data = hf.Dataset.from_list(ROWS)
    parquet = tmp_path / "rows.parquet"
    data.to_parquet(str(parquet))
    for spec in (f"hf:{parquet}", str(parquet)):  # through hf: or as a plain file
        got = load_dataset(with_fields(spec, "problem", "solution"))
        assert [q["answer"] for q in got] == ["2", "4", "6", "8"]
        assert got[0]["id"] == "rows-0"
    data.save_to_disk(str(tmp_path / "one"))
    (arrow,) = (tmp_path / "one").glob("*.arrow")
    got = load_dataset(with_fields(str(arrow), "problem", "solution", "uid"))
    assert [q["id"] for q in got] == ["p1", "p2", "p3", "p4"]
    assert error_of(str(parquet)).startswith(f"{parquet}: item 0: field 'question' is missing (the row has")


def test_langsmith_shaped_rows(tmp_path: Path) -> None:
    path = tmp_path / "ls.jsonl"
    rows = [
        {"id": "e1", "inputs": {"question": "What is 1 + 1?"}, "outputs": {"answer": "2"}},
        {"id": "e2", "inputs": {"input": "What is 2 + 2?"}, "outputs": {"output": 4}},
        {"id": "e3", "inputs": {"q": "What is 3 + 3?"}, "outputs": {"expected": "6"}},  # one field each
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = load_dataset(str(path))
    assert [(q["id"], q["question"], q["answer"]) for q in got] == [
        ("e1", "What is 1 + 1?", "2"),
        ("e2", "What is 2 + 2?", "4"),
        ("e3", "What is 3 + 3?", "6"),
    ]
    # a JSON list too (LangSmith's export), and several input fields need a mapping
    listed = tmp_path / "ls.json"
    listed.write_text(
        json.dumps([{"inputs": {"q": "What is 5 + 5?", "topic": "sums"}, "outputs": {"a": 10}}])
    )
    assert error_of(str(listed)) == (
        f"{listed}: item 1: row has inputs fields q, topic: say which is the question with "
        "--question-field inputs.NAME"
    )
    (row,) = load_dataset(with_fields(str(listed), "inputs.q"))
    assert (row["question"], row["answer"]) == ("What is 5 + 5?", "10")
    missing = error_of(with_fields(str(path), "inputs.prompt"))
    assert missing == (  # the user's file, the user's path, what is there instead
        f"{path}: line 1: field 'inputs.prompt' is missing (the row has fields of inputs: question): name "
        "the question with --question-field NAME"
    )


def test_csv_header_check_follows_the_mapping(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("problem,solution\nWhat is 1 + 1?,2\n")
    assert load_dataset(with_fields(str(path), "problem", "solution"))[0]["answer"] == "2"
    msg = error_of(with_fields(str(path), "prob", "solution"))
    assert msg == (
        f"{path}: row 1 (header): missing required column(s) 'prob' (found: 'problem', 'solution'; did you "
        "mean 'problem'?): name them with --question-field / --answer-field"
    )


def test_rg_takes_no_mapping() -> None:
    msg = error_of("rg:basic_arithmetic:size=2?question=x")
    assert msg.endswith("size=2: reasoning_gym items have question and answer: no field mapping applies")


def test_in_memory_rows_errors_name_the_row() -> None:
    with pytest.raises(
        DataError, match=r"^dataset: row 1: field 'answer' is missing \(the row has fields: question\)"
    ):
        check_rows([{"question": "a", "answer": "1"}, {"question": "b"}], "dataset")
    check_rows([{"question": "b"}], "dataset", answers=False)


def test_langsmith_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LANGSMITH_API_KEY", raising=False)
    monkeypatch.delenv("LANGCHAIN_API_KEY", raising=False)
    assert (
        error_of("langsmith:my-set") == "langsmith:my-set: set LANGSMITH_API_KEY to read a LangSmith dataset"
    )


def test_langsmith_examples_become_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The LangSmith service is not reachable offline: its client is replaced by one that returns what
    ``Client.list_examples`` returns (objects with id, inputs, outputs), to test the rows made of them."""
    import uuid
    from types import SimpleNamespace

    import langsmith

    asked: list[str] = []

    class Client:
        def list_examples(self, *, dataset_name: str) -> list[Any]:
            asked.append(dataset_name)
            return [
                SimpleNamespace(
                    id=uuid.UUID(int=1), inputs={"question": "What is 1 + 1?"}, outputs={"answer": "2"}
                ),
                SimpleNamespace(id=uuid.UUID(int=2), inputs={"question": "What is 2 + 2?"}, outputs=None),
            ]

    monkeypatch.setenv("LANGSMITH_API_KEY", "lsv2-test")
    monkeypatch.setattr(langsmith, "Client", Client)
    assert error_of("langsmith:sums") == (
        "langsmith:sums: example 1: field 'outputs.answer' is missing: name the answer with "
        "--answer-field NAME"
    )
    got = load_dataset("langsmith:sums", answers=False)
    assert asked == ["sums", "sums"]
    assert [(q["id"], q["answer"]) for q in got] == [
        (str(uuid.UUID(int=1)), "2"),
        (str(uuid.UUID(int=2)), ""),
    ]


def test_a_misspelt_field_lists_the_columns_with_the_near_miss(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert error_of(with_fields(str(path), "problm", "solution")) == (
        f"{path}: line 1: field 'problm' is missing (the row has fields: problem, solution, uid; did you "
        "mean 'problem'?): name the question with --question-field NAME"
    )


def test_chat_shaped_rows_take_the_last_user_message_and_the_reference_output(tmp_path: Path) -> None:
    """A chat app's LangSmith dataset: ``inputs.messages`` is the conversation."""
    convo = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "And 2 + 2?"},
    ]
    rows = [
        {"id": "c1", "inputs": {"messages": convo}, "outputs": {"output": "4"}},
        {"id": "c2",
         "inputs": {"messages": [{"type": "human", "content": [{"type": "text", "text": "3 + 3?"}]}]},
         "outputs": {"message": {"role": "assistant", "content": "6"}}},
        {"id": "c3", "inputs": {"messages": convo[:2]},
         "outputs": {"messages": [{"role": "assistant", "content": "2"}]}},
    ]  # fmt: skip
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = load_dataset(str(path))
    assert [(q["id"], q["question"], q["answer"]) for q in got] == [
        ("c1", "And 2 + 2?", "4"),
        ("c2", "3 + 3?", "6"),
        ("c3", "What is 1 + 1?", "2"),
    ]


def test_an_offline_hub_name_fails_fast_in_one_line(hf: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Online mode with no way to reach the hub (here: nothing listens at HF_ENDPOINT): one line within
    seconds, not the datasets library's half-minute of retries."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connecting is refused
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    msg = error_of("hf:someone/some-set")
    assert time.monotonic() - started < 5
    assert msg.startswith(
        f"hf:someone/some-set: the Hugging Face hub (http://127.0.0.1:{port}) cannot be reached"
    )
    assert "HF_DATASETS_OFFLINE=1" in msg
