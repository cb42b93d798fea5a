"""Unit tests for tfgrpo.data: file loaders, error messages, reasoning_gym specs, fingerprint, cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tfgrpo.data import clear_cache, dataset_fingerprint, load_dataset
from tfgrpo.errors import DataError, TfgrpoError

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def write(path: Path, text: str, encoding: str = "utf-8") -> str:
    path.write_text(text, encoding=encoding)
    return str(path)


def jsonl(path: Path, rows: list[object]) -> str:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def data_error(spec: str, **kw: object) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(spec, **kw)  # type: ignore[arg-type]
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    assert isinstance(info.value, TfgrpoError)
    return msg


# ----------------------------------------------------------------------------- good files


def test_jsonl_with_and_without_ids_and_numeric_answers(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "mix.jsonl",
        '{"id": "a", "question": "Q1", "answer": "x", "extra": [1, 2]}\n'
        "\n"  # blank lines are skipped (but counted)
        '{"question": "  Q2  ", "answer": 42}\n'
        '{"id": 7, "question": "Q3", "answer": 1.5}\n'
        "   \n",
    )
    assert load_dataset(spec) == [
        {"id": "a", "question": "Q1", "answer": "x"},
        {"id": "mix-3", "question": "Q2", "answer": "42"},
        {"id": "7", "question": "Q3", "answer": "1.5"},
    ]


def test_json_list(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "list.json",
        json.dumps([{"question": "Q1", "answer": 3}, {"id": "b", "question": "Q2", "answer": "y", "z": 0}]),
    )
    assert load_dataset(spec) == [
        {"id": "list-1", "question": "Q1", "answer": "3"},
        {"id": "b", "question": "Q2", "answer": "y"},
    ]


def test_csv_with_bom_ids_and_extra_columns(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "t.csv",
        'id,question,answer,notes\nq1,"What is 1+1, really?",2,n\n,"multi\nline",3,\n',
        encoding="utf-8-sig",
    )
    assert load_dataset(spec) == [
        {"id": "q1", "question": "What is 1+1, really?", "answer": "2"},
        {"id": "t-3", "question": "multi\nline", "answer": "3"},
    ]


def test_csv_without_id_column(tmp_path: Path) -> None:
    spec = write(tmp_path / "noid.csv", "answer,question\n4,Q1\n\n5,Q2\n")
    assert load_dataset(spec) == [
        {"id": "noid-2", "question": "Q1", "answer": "4"},
        {"id": "noid-4", "question": "Q2", "answer": "5"},
    ]


def test_limit_keeps_first_rows_after_validating_all(tmp_path: Path) -> None:
    spec = jsonl(tmp_path / "d.jsonl", [{"question": f"Q{i}", "answer": str(i)} for i in range(5)])
    assert [q["id"] for q in load_dataset(spec, limit=2)] == ["d-1", "d-2"]
    assert load_dataset(spec, limit=0) == []
    assert len(load_dataset(spec, limit=99)) == 5
    bad = jsonl(tmp_path / "late.jsonl", [{"question": "Q", "answer": "1"}, {"question": "Q"}])
    assert "line 2" in data_error(bad, limit=1)
    assert "limit" in data_error(spec, limit=-1)


# ----------------------------------------------------------------------------- error cases


def test_file_not_found(tmp_path: Path) -> None:
    msg = data_error(str(tmp_path / "nope.jsonl"))
    assert "nope.jsonl" in msg and "not found" in msg


@pytest.mark.parametrize(
    "name, text",
    [
        ("e.jsonl", ""),
        ("e.jsonl", "\n  \n"),
        ("e.json", "[]"),
        ("e.json", ""),
        ("e.csv", ""),
        ("e.csv", "question,answer\n"),
    ],
)
def test_empty_file(tmp_path: Path, name: str, text: str) -> None:
    msg = data_error(write(tmp_path / name, text))
    assert name in msg and "no rows" in msg


def test_invalid_json_line(tmp_path: Path) -> None:
    spec = write(tmp_path / "bad.jsonl", '{"question": "Q", "answer": "1"}\n\n{"question": \n')
    msg = data_error(spec)
    assert "bad.jsonl" in msg and "line 3" in msg and "invalid JSON" in msg


def test_invalid_json_file(tmp_path: Path) -> None:
    msg = data_error(write(tmp_path / "bad.json", '[\n{"question": "Q",\n'))
    assert "bad.json" in msg and "invalid JSON" in msg and "line " in msg


def test_json_top_level_not_a_list(tmp_path: Path) -> None:
    msg = data_error(write(tmp_path / "obj.json", '{"question": "Q", "answer": "1"}'))
    assert "obj.json" in msg and "list" in msg


@pytest.mark.parametrize("row, kind", [([1, 2], "list"), ("text", "string"), (3, "int")])
def test_row_not_an_object(tmp_path: Path, row: object, kind: str) -> None:
    spec = jsonl(tmp_path / "rows.jsonl", [{"question": "Q", "answer": "1"}, row])
    msg = data_error(spec)
    assert "rows.jsonl" in msg and "line 2" in msg and "not a JSON object" in msg and kind in msg


def test_json_item_not_an_object(tmp_path: Path) -> None:
    msg = data_error(write(tmp_path / "items.json", json.dumps([{"question": "Q", "answer": "1"}, "x"])))
    assert "items.json" in msg and "item 2" in msg and "not a JSON object" in msg


@pytest.mark.parametrize(
    "row, field, problem",
    [
        ({"answer": "1"}, "question", "missing"),
        ({"question": "Q"}, "answer", "missing"),
        ({"question": "   ", "answer": "1"}, "question", "empty"),
        ({"question": "Q", "answer": ""}, "answer", "empty"),
        ({"question": "Q", "answer": None}, "answer", "missing"),
        ({"question": 5, "answer": "1"}, "question", "must be a string"),
        ({"question": "Q", "answer": True}, "answer", "must be a string or a number"),
        ({"question": "Q", "answer": ["1"]}, "answer", "must be a string or a number"),
        ({"id": [1], "question": "Q", "answer": "1"}, "id", "must be a string or an integer"),
        # a lone surrogate escape (a truncated emoji in some exports) crashed learn and eval (issue 30)
        ({"question": "Truncated emoji \ud83d", "answer": "1"}, "question", "invalid text"),
        ({"question": "Q", "answer": "\udc00 1"}, "answer", "invalid text"),
        ({"id": "q\ud83d", "question": "Q", "answer": "1"}, "id", "invalid text"),
    ],
)
def test_bad_fields_jsonl(tmp_path: Path, row: dict, field: str, problem: str) -> None:
    spec = jsonl(tmp_path / "f.jsonl", [{"question": "ok", "answer": "1"}, row])
    msg = data_error(spec)
    assert "f.jsonl" in msg and "line 2" in msg and f"'{field}'" in msg and problem in msg


def test_bad_field_csv_row_number_counts_header(tmp_path: Path) -> None:
    spec = write(tmp_path / "f.csv", "question,answer\nQ1,1\nQ2,\n")
    msg = data_error(spec)
    assert msg == f"{spec}: row 3: field 'answer' is empty"
    short = write(tmp_path / "short.csv", "question,answer\nQ1\n")
    msg = data_error(short)
    assert "short.csv" in msg and "row 2" in msg and "'answer'" in msg and "missing" in msg


def test_duplicate_id_names_both_rows(tmp_path: Path) -> None:
    spec = jsonl(
        tmp_path / "dup.jsonl",
        [
            {"id": "x", "question": "Q", "answer": "1"},
            {"id": "y", "question": "Q", "answer": "1"},
            {"id": "x", "question": "Q", "answer": "2"},
        ],
    )
    msg = data_error(spec)
    assert msg == f"{spec}: line 3: duplicate id 'x' (first used at line 1)"
    # an explicit id colliding with a generated one is caught as well; ints and strings compare as str
    csv_spec = write(tmp_path / "dup.csv", "id,question,answer\ndup-3,Q,1\n,Q,2\n")
    msg = data_error(csv_spec)
    assert "dup.csv" in msg and "row 3" in msg and "row 2" in msg and "'dup-3'" in msg
    mixed = jsonl(
        tmp_path / "m.jsonl",
        [{"id": 1, "question": "Q", "answer": "1"}, {"id": "1", "question": "Q", "answer": "1"}],
    )
    assert "line 2" in data_error(mixed) and "line 1" in data_error(mixed)


def test_csv_missing_required_columns(tmp_path: Path) -> None:
    spec = write(tmp_path / "cols.csv", "\ufeffid,prompt,answer\n1,Q,1\n")
    msg = data_error(spec)
    assert (
        "cols.csv" in msg
        and "row 1" in msg
        and "'question'" in msg
        and "'answer'" not in msg.split("(found")[0]
    )


def test_unsupported_extension(tmp_path: Path) -> None:
    msg = data_error(write(tmp_path / "data.txt", "question,answer\nQ,1\n"))
    assert "data.txt" in msg and "unsupported extension '.txt'" in msg


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"question": "caf\xe9", "answer": "1"}\n')
    msg = data_error(str(path))
    assert "latin.jsonl" in msg and "UTF-8" in msg


# ----------------------------------------------------------------------------- cache


def test_cache_returns_copies_and_sees_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    spec = jsonl(path, [{"question": "Q1", "answer": "1"}, {"question": "Q2", "answer": "2"}])
    first = load_dataset(spec)
    first[0]["answer"] = "corrupted"
    first.append({"id": "z", "question": "z", "answer": "z"})
    assert load_dataset(spec) == [
        {"id": "c-1", "question": "Q1", "answer": "1"},
        {"id": "c-2", "question": "Q2", "answer": "2"},
    ]
    assert load_dataset(spec) is not load_dataset(spec)

    jsonl(path, [{"question": "Q1", "answer": "changed"}])
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # make sure mtime moves
    assert load_dataset(spec) == [{"id": "c-1", "question": "Q1", "answer": "changed"}]


# ----------------------------------------------------------------------------- reasoning_gym


def test_rg_basic_arithmetic_deterministic() -> None:
    a = load_dataset("rg:basic_arithmetic:size=5:seed=3")
    clear_cache()
    b = load_dataset("rg:basic_arithmetic:size=5:seed=3")
    assert len(a) == 5 and a == b
    assert len({q["id"] for q in a}) == 5
    assert all(q["id"].startswith("rg-basic_arithmetic-3-") for q in a)
    assert all(q["question"] and isinstance(q["answer"], str) and q["answer"] for q in a)
    other = load_dataset("rg:basic_arithmetic:size=5:seed=4")
    assert [q["question"] for q in other] != [q["question"] for q in a]
    assert load_dataset("rg:basic_arithmetic:size=5:seed=3", limit=2) == a[:2]


def test_rg_defaults() -> None:
    qs = load_dataset("rg:basic_arithmetic")
    assert len(qs) == 20 and qs[0]["id"] == "rg-basic_arithmetic-1-0"


def test_rg_unknown_generator() -> None:
    msg = data_error("rg:basic_arithmetc")
    assert "unknown reasoning_gym dataset 'basic_arithmetc'" in msg and "basic_arithmetic" in msg


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("rg:basic_arithmetic:bogus=1", "'bogus'"),
        ("rg:basic_arithmetic:size=abc", "'size'"),
        ("rg:basic_arithmetic:allow_negation=1", "'allow_negation'"),
        ("rg:basic_arithmetic:size", "key=value"),
        ("rg:", "dataset name"),
        ("rg:basic_arithmetic:min_terms=9:max_terms=2", "max_terms"),
    ],
)
def test_rg_bad_options(spec: str, needle: str) -> None:
    msg = data_error(spec)
    assert msg.startswith(spec + ":") and needle in msg


# ----------------------------------------------------------------------------- fingerprint


def test_fingerprint() -> None:
    qs = [{"id": "1", "question": "Q1", "answer": "a"}, {"id": "2", "question": "Q2", "answer": "b"}]
    fp = dataset_fingerprint(qs)  # type: ignore[arg-type]
    assert len(fp) == 16 and all(c in "0123456789abcdef" for c in fp)
    assert dataset_fingerprint([dict(q) for q in qs]) == fp  # type: ignore[misc]
    changed = [dict(q) for q in qs]
    changed[1]["answer"] = "c"
    assert dataset_fingerprint(changed) != fp  # type: ignore[arg-type]
    assert dataset_fingerprint(list(reversed(qs))) != fp  # type: ignore[arg-type]
    # field boundaries matter: ("ab", "c") must differ from ("a", "bc")
    assert dataset_fingerprint([{"id": "1", "question": "ab", "answer": "c"}]) != dataset_fingerprint(
        [{"id": "1", "question": "a", "answer": "bc"}]
    )


def test_fingerprint_of_loaded_rg_dataset_is_stable() -> None:
    a = dataset_fingerprint(load_dataset("rg:basic_arithmetic:size=5:seed=3"))
    clear_cache()
    assert dataset_fingerprint(load_dataset("rg:basic_arithmetic:size=5:seed=3")) == a


# ----------------------------------------------------------------------------- shared benchmark data


def _shared(name: str) -> str:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip("../shared/data not present (benchmark data lives outside the repo)")
    return str(path)


def test_shared_gsm8k() -> None:
    qs = load_dataset(_shared("gsm8k_test.jsonl"), limit=10)
    assert len(qs) == 10
    assert len({q["id"] for q in qs}) == 10
    assert all(q["question"] and q["answer"] for q in qs)
    assert set(qs[0]) == {"id", "question", "answer"}


def test_shared_hotpotqa_extra_fields_ignored() -> None:
    qs = load_dataset(_shared("hotpotqa_distractor_train100.jsonl"))
    assert len(qs) == 100
    assert len({q["id"] for q in qs}) == 100
    assert all(set(q) == {"id", "question", "answer"} for q in qs)
