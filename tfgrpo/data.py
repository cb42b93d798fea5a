"""Datasets: load queries from JSONL / JSON / CSV / Parquet / Arrow files, Hugging Face datasets, LangSmith
datasets, or generate them with reasoning_gym (docs/datasets.md).

Public API
----------
``load_dataset(spec, *, limit=None) -> list[Query]``
    ``spec`` is a file path ending in ``.jsonl``, ``.json`` (a JSON list of objects), ``.csv``,
    ``.parquet`` or ``.arrow`` (the last two through the ``datasets`` library), ``hf:NAME[:CONFIG][:SPLIT]``
    (a Hugging Face dataset: a hub name, a ``save_to_disk`` directory, a data file or folder),
    ``langsmith:NAME`` (a LangSmith dataset, with ``LANGSMITH_API_KEY``) or ``rg:NAME[:key=value...]`` to
    generate an offline dataset with ``reasoning_gym``. Any of them but ``rg:`` may end in
    ``?question=PATH&answer=PATH&id=PATH``: where each field is in a row (``inputs.question``: a nested key);
    :func:`with_fields` writes that suffix (``--question-field`` / ``--answer-field``).
``check_rows(rows, name, *, answers=True)``
    Validate in-memory rows, errors naming ``name`` and the row's 0-based index.
``dataset_fingerprint(queries) -> str``
    A stable 16-hex-char sha256 digest of ids, questions and answers in order.
``clear_cache()``
    Forget cached datasets (mostly for tests).

Rows
----
Each row needs ``question`` (a string) and ``answer`` (a string, or a JSON number which is turned into a
string: ``42 -> "42"``, ``1.5 -> "1.5"``), both non-empty after stripping; surrounding whitespace is
stripped. ``id`` is optional (string or integer, turned into a stripped string); rows without one (or with
a blank one) get ``<file stem>-<1-based row number>``. Extra fields are ignored. LangSmith-shaped rows
(``{"inputs": {...}, "outputs": {...}}``, as LangSmith exports them) are read without a mapping when
``inputs`` has ``question`` or ``input`` or one field only, and ``outputs`` has ``answer``, ``output`` or
one field only. Chat-shaped rows (``inputs.messages: [{"role", "content"}, ...]``, a chat app's dataset)
take the last user message as the question, and the reference output (``outputs.answer`` / ``output``,
or the last assistant message of ``outputs.message(s)``) as the answer.

Errors
------
Every problem is a one-line :class:`~tfgrpo.errors.DataError` of the form ``<file>: <where>: <what>``.
``<where>`` is ``line N`` for JSONL (1-based physical line; blank lines are skipped but counted),
``item N`` for a JSON list (1-based position in the list; ``line N`` for a JSON syntax error) and
``row N`` for CSV (1-based CSV record, the header being row 1, so row N is line N unless a quoted field
spans several lines). Examples::

    data/x.jsonl: file not found
    data/x.jsonl: empty file (no rows)
    data/x.jsonl: line 3: invalid JSON (Expecting value at column 1)
    data/x.jsonl: line 3: row is not a JSON object (got list)
    data/x.jsonl: line 3: field 'answr' is missing (the row has fields: answer, question; did you mean
        'answer'?): name the answer with --answer-field NAME
    data/x.jsonl: line 3: field 'question' is empty
    data/x.jsonl: line 5: duplicate id 'q1' (first used at line 2)
    data/x.csv: row 1 (header): missing required column(s) 'answer' (found: 'id', 'question'): name them
        with --question-field / --answer-field
    data/x.txt: unsupported extension '.txt' (expected .jsonl, .json, .csv, .parquet or .arrow)
    rg:nope: unknown reasoning_gym dataset 'nope' (did you mean: ...; available: ab, acre, ... (106 in all))
    rg:basic_arithmetic:foo=1: unknown option 'foo' for reasoning_gym dataset 'basic_arithmetic' (valid: ...)

reasoning_gym specs
-------------------
``rg:NAME:key=value:...`` calls ``reasoning_gym.create_dataset(NAME, **kwargs)``; values are parsed as
int, then float, then bool (``true``/``false``, any case), else kept as strings. Defaults ``size=20`` and
``seed=1``. Ids are ``rg-NAME-<seed>-<index>`` with the 0-based index of the item in the dataset.

Cache
-----
Loaded datasets are kept in a small LRU cache keyed by the file's absolute path, mtime and size (or the
``rg:`` spec); ``limit`` is applied on the way out. Each call returns a fresh list of fresh dicts, so
callers may mutate what they get without corrupting the cache.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import math
import os
import random
import re
import socket
import threading
import urllib.parse
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfgrpo.errors import DataError
from tfgrpo.state.types import Query

if TYPE_CHECKING:
    from tfgrpo.context import Context

__all__ = ["check_rows", "clear_cache", "dataset_fingerprint", "load_dataset", "rg_entry", "with_fields"]

RG_PREFIX = "rg:"
HF_PREFIX = "hf:"
LANGSMITH_PREFIX = "langsmith:"
RG_DEFAULTS: dict[str, Any] = {"size": 20, "seed": 1}
SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet", ".arrow")
HF_FILE_BUILDERS = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
}
HF_SPLITS = ("train", "test", "validation", "valid", "dev", "eval")  # hf:NAME:X with X one of these: a split
HF_HINT = "needs the datasets library: pip install 'tfgrpo[datasets]'"
REQUIRED_FIELDS = ("question", "answer")
FIELD_ROLES = ("question", "answer", "id")
# LangSmith-shaped rows: where the question and the answer are when no mapping says
SHAPED = {
    "question": ("inputs", ("question", "input", "messages")),  # messages: a chat app's conversation
    "answer": ("outputs", ("answer", "output", "message", "messages")),
}

_Row = tuple[str, str, str]  # (id, question, answer): immutable, safe to keep in the cache
_CACHE_MAX = 32
_cache: OrderedDict[tuple[Any, ...], tuple[_Row, ...]] = OrderedDict()
_cache_lock = threading.Lock()
# reasoning_gym datasets with their entries, by spec: a row's task scorer needs the dataset and the entry
_rg_loaded: OrderedDict[str, tuple[Any, list[dict[str, Any]]]] = OrderedDict()


# --------------------------------------------------------------------------- public API


def load_dataset(spec: str, *, limit: int | None = None, answers: bool = True) -> list[Query]:
    """Load queries from a file (``.jsonl``, ``.json``, ``.csv``) or an ``rg:NAME[:k=v...]`` spec.

    All rows are validated, then the first ``limit`` are returned (all when ``limit`` is None).
    ``answers=False`` accepts rows without an answer (their ``answer`` is ""): for rewards that need no
    ground truth (``majority``).
    Raises :class:`DataError` (one line, naming the file, row and field) on any problem.
    """
    spec, fields = _split_fields(str(spec))
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise DataError(f"{spec}: limit must be a non-negative integer, got {limit!r}")
    if spec.startswith(RG_PREFIX):
        if fields:
            raise DataError(f"{spec}: reasoning_gym items have question and answer: no field mapping applies")
        key: tuple[Any, ...] = ("rg", spec)
        rows = _cache_get(key)
        if rows is None:
            rows = _load_reasoning_gym(spec)
            _cache_put(key, rows)
    elif spec.startswith((HF_PREFIX, LANGSMITH_PREFIX)):
        key = ("source", spec, tuple(sorted(fields.items())), answers)
        rows = _cache_get(key)
        if rows is None:
            load = _hf_records if spec.startswith(HF_PREFIX) else _langsmith_records
            records, stem = load(spec)
            rows = _validate(spec, stem, records, answers, fields)
            _cache_put(key, rows)
    else:
        spec, rows_slice = _split_slice(spec)
        path = Path(spec)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise DataError(f"{spec}: file not found") from None
        except OSError as exc:
            raise DataError(f"{spec}: cannot access file ({_one_line(exc.strerror or exc)})") from None
        if not path.is_file():
            raise DataError(f"{spec}: not a regular file")
        ext = path.suffix.lower()
        if ext not in SUPPORTED_EXTENSIONS:
            shown = ext or "(none)"
            raise DataError(
                f"{spec}: unsupported extension '{shown}' (expected .jsonl, .json, .csv, .parquet or .arrow)"
            )
        key = (
            "file",
            os.path.abspath(spec),
            st.st_mtime_ns,
            st.st_size,
            answers,
            tuple(sorted(fields.items())),
        )
        rows = _cache_get(key)
        if rows is None:
            rows = _load_file(spec, path, ext, answers, fields)
            _cache_put(key, rows)
        if rows_slice is not None:
            rows = rows[rows_slice]
            if not rows:
                raise DataError(f"{spec}: the row range selects no rows")
    if limit is not None:
        rows = rows[:limit]
    if spec.startswith(RG_PREFIX):
        return [Query(id=i, question=q, answer=a, source=spec, index=n) for n, (i, q, a) in enumerate(rows)]
    return [Query(id=i, question=q, answer=a) for i, q, a in rows]


def with_fields(
    spec: str, question: str | None = None, answer: str | None = None, id: str | None = None
) -> str:
    """``spec`` with a field mapping (``--question-field`` ...): ``data.jsonl?question=inputs.q&answer=a``.
    Empty names leave a field where it is; nothing to map leaves ``spec`` as it is."""
    given = {"question": question, "answer": answer, "id": id}
    for role, path in given.items():
        if path is not None and not re.fullmatch(r"[^?&=\s]+", path.strip() or "-"):
            raise DataError(f"--{role}-field {path!r}: expected a field name such as inputs.{role}")
    if not spec:
        return spec
    source, mapped = _split_fields(spec)
    mapped.update({role: path.strip() for role, path in given.items() if path and path.strip()})
    if not mapped:
        return source
    return source + "?" + "&".join(f"{role}={mapped[role]}" for role in FIELD_ROLES if role in mapped)


def _split_fields(spec: str) -> tuple[str, dict[str, str]]:
    """``SOURCE?question=PATH&answer=PATH`` -> (SOURCE, {role: path}); a file whose name has a ``?`` and
    exists wins over the mapping reading."""
    source, sep, query = spec.rpartition("?")
    if not sep or Path(spec).exists():
        return spec, {}
    fields: dict[str, str] = {}
    for part in query.split("&"):
        role, eq, path = part.partition("=")
        if not eq or role not in FIELD_ROLES or not path:
            raise DataError(
                f"{source}: field mapping '?{query}': expected question=PATH, answer=PATH or id=PATH "
                "joined by '&'"
            )
        fields[role] = path
    return source, fields


def check_rows(rows: list[dict[str, Any]], name: str, *, answers: bool = True) -> None:
    """Validate rows given in memory (e.g. to ``tfgrpo.learn``), before they are saved anywhere: errors
    say ``NAME: row N: ...`` with the row's 0-based index in the list."""
    _validate(name, name, [(f"row {i}", i, row) for i, row in enumerate(rows)], answers)


_SLICE = re.compile(r"^(?P<path>.+)\[(?P<start>\d*):(?P<end>\d*)\]$")


def _split_slice(spec: str) -> tuple[str, slice | None]:
    """``data.jsonl[:100]`` -> the first 100 rows, ``data.jsonl[100:150]`` -> rows 100..149 (0-based).
    A file whose name really ends in brackets wins over the slice reading."""
    match = _SLICE.match(spec)
    if match is None or Path(spec).exists():
        return spec, None
    start = int(match["start"]) if match["start"] else None
    end = int(match["end"]) if match["end"] else None
    return match["path"], slice(start, end)


def dataset_fingerprint(queries: list[Query]) -> str:
    """A stable digest (16 hex chars of sha256) of ids, questions and answers, in order."""
    h = hashlib.sha256()
    for q in queries:
        line = json.dumps([q["id"], q["question"], q["answer"]], ensure_ascii=False, separators=(",", ":"))
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def clear_cache() -> None:
    """Forget every cached dataset."""
    with _cache_lock:
        _cache.clear()
        _rg_loaded.clear()


# --------------------------------------------------------------------------- cache


def _cache_get(key: tuple[Any, ...]) -> tuple[_Row, ...] | None:
    with _cache_lock:
        rows = _cache.get(key)
        if rows is not None:
            _cache.move_to_end(key)
        return rows


def _cache_put(key: tuple[Any, ...], rows: tuple[_Row, ...]) -> None:
    with _cache_lock:
        _cache[key] = rows
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_MAX:
            _cache.popitem(last=False)


# --------------------------------------------------------------------------- files


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def _read_text(spec: str, path: Path) -> str:
    try:
        # utf-8-sig: tolerate a byte-order mark (Excel writes one in CSV exports).
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{spec}: not valid UTF-8 (byte offset {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{spec}: cannot read file ({_one_line(exc.strerror or exc)})") from None


def _load_file(
    spec: str, path: Path, ext: str, answers: bool = True, fields: dict[str, str] | None = None
) -> tuple[_Row, ...]:
    fields = fields or {}
    if ext in (".parquet", ".arrow"):
        records = _hf_rows(
            spec,
            _hf_open(spec, lambda ds: ds.load_dataset(HF_FILE_BUILDERS[ext], data_files=str(path))),
            None,
        )
        return _validate(spec, path.stem, records, answers, fields)
    text = _read_text(spec, path)
    if ext == ".jsonl":
        records = _jsonl_records(spec, text)
    elif ext == ".json":
        records = _json_records(spec, text)
    else:
        required = [fields.get(f, f).split(".")[0] for f in REQUIRED_FIELDS if answers or f == "question"]
        records = _csv_records(spec, text, tuple(required))
    if not records:
        raise DataError(f"{spec}: empty file (no rows)")
    return _validate(spec, path.stem, records, answers, fields)


def _jsonl_records(spec: str, text: str) -> list[tuple[str, int, object]]:
    out: list[tuple[str, int, object]] = []
    # split on "\n" only: str.splitlines() would also split on U+2028 etc., legal inside JSON strings.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{spec}: line {lineno}: invalid JSON ({_one_line(exc.msg)} at column {exc.colno})"
            ) from None
        out.append((f"line {lineno}", lineno, obj))
    return out


def _json_records(spec: str, text: str) -> list[tuple[str, int, object]]:
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{spec}: line {exc.lineno}: invalid JSON ({_one_line(exc.msg)} at column {exc.colno})"
        ) from None
    if not isinstance(data, list):
        raise DataError(f"{spec}: expected a JSON list of objects, got {_type_name(data)}")
    return [(f"item {n}", n, obj) for n, obj in enumerate(data, start=1)]


def _csv_records(
    spec: str, text: str, required: tuple[str, ...] = REQUIRED_FIELDS
) -> list[tuple[str, int, object]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    out: list[tuple[str, int, object]] = []
    rowno = 0
    try:
        for rowno, cells in enumerate(reader, start=1):
            if not any(c.strip() for c in cells):
                continue  # blank line
            if header is None:
                header = [c.strip() for c in cells]
                missing = [f for f in required if f not in header]
                if missing:
                    found = ", ".join(f"'{h}'" for h in header)
                    need = ", ".join(f"'{m}'" for m in missing)
                    near = [n for m in missing for n in difflib.get_close_matches(m, header, n=1, cutoff=0.7)]
                    hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
                    raise DataError(
                        f"{spec}: row {rowno} (header): missing required column(s) {need} (found: {found}"
                        f"{hint}): name them with --question-field / --answer-field"
                    )
                continue
            row = {name: (cells[i] if i < len(cells) else None) for i, name in enumerate(header)}
            out.append((f"row {rowno}", rowno, row))
    except csv.Error as exc:
        raise DataError(f"{spec}: row {rowno + 1}: invalid CSV ({_one_line(exc)})") from None
    return out


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "list", str: "string", bool: "bool", int: "int", float: "float"}.get(
        type(value), type(value).__name__
    )


def _pick(obj: dict[str, Any], path: str) -> Any:
    """``obj[path]``, or for ``a.b`` ``obj["a"]["b"]`` (a key with a dot in it wins); None when absent."""
    if path in obj:
        return obj[path]
    head, dot, rest = path.partition(".")
    inner = obj.get(head) if dot else None
    return _pick(inner, rest) if isinstance(inner, dict) else None


def _shaped_path(obj: dict[str, Any], role: str) -> str:
    """Where ``role`` is in a row without a mapping: the plain field, else LangSmith's ``inputs`` /
    ``outputs`` (``question``/``input``, ``answer``/``output``, or its only field)."""
    if role in obj or role == "id":
        return role
    outer, names = SHAPED[role]
    inner = obj.get(outer)
    if not isinstance(inner, dict):
        return role
    for name in names:
        if name in inner:
            return f"{outer}.{name}"
    if len(inner) <= 1:  # its only field, or (none: e.g. a LangSmith example without outputs) "missing"
        return f"{outer}.{next(iter(inner), names[0])}"
    keys = ", ".join(sorted(inner))
    raise DataError(
        f"row has {outer} fields {keys}: say which is the {role} with --{role}-field {outer}.NAME"
    )


def _missing(where: str, obj: dict[str, Any], field: str, role: str) -> DataError:
    """``field '...' is missing`` with the fields the row has there, a near miss, and the option to
    name the right one (``--question-field`` / ``--answer-field``)."""
    head, _, last = field.rpartition(".")
    level = _pick(obj, head) if head else obj
    message = f"{where}: field '{field}' is missing"
    if isinstance(level, dict) and level:
        names = sorted(str(k) for k in level)
        near = difflib.get_close_matches(last, names, n=1, cutoff=0.7)
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        message += f" (the row has {'fields of ' + head if head else 'fields'}: {shown}"
        message += f"; did you mean '{(head + '.' if head else '') + near[0]}'?)" if near else ")"
    option = "id" if role == "id" else role
    return DataError(f"{message}: name the {role} with --{option}-field NAME")


def _chat_text(value: Any, role: str) -> Any:
    """A chat-shaped field as text: the last user message of a conversation (``[{"role", "content"}]``,
    LangChain's ``{"type": "human", ...}`` too) for the question, the last assistant message (or the
    message itself) for the reference answer; anything else unchanged."""
    if isinstance(value, dict) and "content" in value:
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        return value
    wanted = ("user", "human") if role == "question" else ("assistant", "ai")
    said = [m for m in value if str(m.get("role", m.get("type", ""))) in wanted]
    if not said:
        return value
    content = said[-1].get("content")
    if isinstance(content, list):  # content blocks: their text parts
        content = "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict)).strip()
    return content


def _text_field(where: str, obj: dict[str, Any], field: str, *, numbers: bool, role: str = "") -> str:
    value = _chat_text(_pick(obj, field), role)
    if value is None:
        raise _missing(where, obj, field, role or "question")
    if isinstance(value, str):
        text = value.strip()
    elif numbers and isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise DataError(f"{where}: field '{field}' must be a finite number, got {value!r}")
        text = str(value)
    else:
        expected = "a string or a number" if numbers else "a string"
        raise DataError(f"{where}: field '{field}' must be {expected}, got {_type_name(value)}")
    if not text:
        raise DataError(f"{where}: field '{field}' is empty")
    return _valid_text(where, field, text)


def _valid_text(where: str, field: str, text: str) -> str:
    """``text`` if it can be sent (UTF-8): a lone surrogate escape in JSON (a truncated emoji) cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(
            f"{where}: field '{field}' holds invalid text ({text[exc.start]!r} at character {exc.start}: "
            "half of an emoji or other character, cut off by the export); fix or drop the row"
        ) from None
    return text


def _validate(
    spec: str,
    stem: str,
    records: list[tuple[str, int, object]],
    answers: bool = True,
    fields: dict[str, str] | None = None,
) -> tuple[_Row, ...]:
    rows: list[_Row] = []
    seen: dict[str, str] = {}
    fields = fields or {}
    for loc, number, obj in records:
        where = f"{spec}: {loc}"
        if not isinstance(obj, dict):
            raise DataError(f"{where}: row is not a JSON object (got {_type_name(obj)})")
        try:
            paths = {role: fields.get(role) or _shaped_path(obj, role) for role in FIELD_ROLES}
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        question = _text_field(where, obj, paths["question"], numbers=False, role="question")
        given = _pick(obj, paths["answer"]) not in (None, "")
        answer = (
            _text_field(where, obj, paths["answer"], numbers=True, role="answer") if answers or given else ""
        )
        raw_id = _pick(obj, paths["id"])
        if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
            qid = f"{stem}-{number}"
        elif isinstance(raw_id, str):
            qid = _valid_text(where, paths["id"], raw_id.strip())
        elif isinstance(raw_id, int) and not isinstance(raw_id, bool):
            qid = str(raw_id)
        else:
            raise DataError(
                f"{where}: field '{paths['id']}' must be a string or an integer, got {_type_name(raw_id)}"
            )
        if qid in seen:
            raise DataError(f"{where}: duplicate id '{qid}' (first used at {seen[qid]})")
        seen[qid] = loc
        rows.append((qid, question, answer))
    return tuple(rows)


# --------------------------------------------------------------------------- Hugging Face, LangSmith


def _hf_open(spec: str, load: Any) -> Any:
    """``load(datasets)``, its errors as one line naming ``spec``."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{spec}: {HF_HINT}") from None
    try:
        return load(datasets)
    except Exception as exc:  # FileNotFoundError, offline ConnectionError, DatasetNotFoundError, ...
        raise DataError(
            f"{spec}: cannot load it with the datasets library ({_one_line(exc)[:300]})"
        ) from None


def _hf_rows(spec: str, data: Any, split: str | None) -> list[tuple[str, int, object]]:
    """The rows of a ``Dataset``, or of ``split`` of a ``DatasetDict`` (default ``train``, or its only
    split), located as ``item N`` (0-based, as ``dataset[N]``)."""
    if isinstance(data, dict):  # a DatasetDict (a dict of splits)
        names = list(data.keys())
        if split is None:
            split = "train" if "train" in names or len(names) != 1 else names[0]
        if split not in names:
            raise DataError(f"{spec}: no split '{split}' (splits: {', '.join(names)}; hf:NAME:CONFIG:SPLIT)")
        data = data[split]
    rows = data.to_list()
    if not rows:
        raise DataError(f"{spec}: empty dataset (no rows)")
    return [(f"item {i}", i, row) for i, row in enumerate(rows)]


def _hf_records(spec: str) -> tuple[list[tuple[str, int, object]], str]:
    """``hf:NAME[:CONFIG][:SPLIT]``: a ``save_to_disk`` directory, a data file (``.parquet``, ``.arrow``,
    ``.csv``, ``.json(l)``), a folder of them, or a hub name (cached, or downloaded unless
    ``HF_DATASETS_OFFLINE=1``). One part after NAME is a split when it is a usual split name, else a
    config."""
    parts = spec[len(HF_PREFIX) :].split(":")
    name, config, split = parts[0].strip(), None, None
    if not name or len(parts) > 3:
        raise DataError(f"{spec}: expected hf:NAME, hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT")
    if len(parts) == 2:
        config, split = (None, parts[1]) if parts[1] in HF_SPLITS or "[" in parts[1] else (parts[1], None)
    elif len(parts) == 3:
        config, split = parts[1] or None, parts[2] or None
    path = Path(name)
    saved = ("dataset_info.json", "state.json", "dataset_dict.json")
    if path.is_dir() and any((path / f).exists() for f in saved):
        data = _hf_open(spec, lambda ds: ds.load_from_disk(name))
    elif path.is_file():
        builder = HF_FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(
                f"{spec}: unsupported file '{path.suffix}' (.parquet, .arrow, .csv, .json, .jsonl)"
            )
        data = _hf_open(spec, lambda ds: ds.load_dataset(builder, data_files=name))
    else:
        _check_hub_reachable(spec)
        data = _hf_open(spec, lambda ds: ds.load_dataset(name, config, split=split))
    return _hf_rows(spec, data, split), (path.stem if path.is_file() else path.name) or name


HUB_PROBE_SECONDS = 3.0


def _check_hub_reachable(spec: str) -> None:
    """A hub name in online mode: one TCP connect to the hub first, so that a machine without network
    fails in one line within seconds instead of after the datasets library's retries (half a minute).
    In offline mode (``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE``) the library reads its cache: no probe."""
    offline = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in offline):
        return
    endpoint = os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co"
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=HUB_PROBE_SECONDS).close()
    except OSError as exc:
        why = _one_line(exc.strerror or exc)
        raise DataError(
            f"{spec}: the Hugging Face hub ({endpoint}) cannot be reached ({why}): "
            "connect to the network, set HF_DATASETS_OFFLINE=1 to read the local cache, or give a local "
            "file or save_to_disk directory"
        ) from None


def _langsmith_records(spec: str) -> tuple[list[tuple[str, int, object]], str]:
    """``langsmith:NAME``: the examples of a LangSmith dataset, as ``{"id", "inputs", "outputs"}`` rows."""
    name = spec[len(LANGSMITH_PREFIX) :].strip()
    if not name:
        raise DataError(f"{spec}: expected langsmith:DATASET_NAME")
    if not (os.environ.get("LANGSMITH_API_KEY") or os.environ.get("LANGCHAIN_API_KEY")):
        raise DataError(f"{spec}: set LANGSMITH_API_KEY to read a LangSmith dataset")
    try:
        from langsmith import Client

        examples = list(Client().list_examples(dataset_name=name))
    except Exception as exc:
        raise DataError(f"{spec}: cannot read it from LangSmith ({_one_line(exc)[:300]})") from None
    if not examples:
        raise DataError(f"{spec}: the LangSmith dataset has no examples")
    rows = [{"id": str(ex.id), "inputs": ex.inputs or {}, "outputs": ex.outputs or {}} for ex in examples]
    return [(f"example {i}", i, row) for i, row in enumerate(rows)], name


# --------------------------------------------------------------------------- reasoning_gym


def _parse_value(raw: str) -> Any:
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        pass
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw


def _parse_rg_spec(spec: str) -> tuple[str, dict[str, Any]]:
    parts = spec[len(RG_PREFIX) :].split(":")
    name = parts[0].strip()
    if not name:
        raise DataError(f"{spec}: missing reasoning_gym dataset name (expected rg:NAME[:key=value...])")
    kwargs: dict[str, Any] = {}
    for part in parts[1:]:
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise DataError(f"{spec}: expected key=value after the dataset name, got '{part}'")
        if key in kwargs:
            raise DataError(f"{spec}: option '{key}' given twice")
        kwargs[key] = _parse_value(raw.strip())
    return name, {**RG_DEFAULTS, **kwargs}


def _rg_registry() -> dict[str, Any]:
    try:
        import reasoning_gym  # noqa: F401 - importing registers every dataset (slow: keep it lazy)
        from reasoning_gym.factory import DATASETS
    except ImportError as exc:
        raise DataError(f"reasoning_gym is not available ({_one_line(exc)})") from None
    return dict(DATASETS)


def _expected_type(default: object) -> type | None:
    """The scalar type a config field wants, judged from its default (None: do not check)."""
    for t in (bool, int, float):  # bool first: it is a subclass of int
        if isinstance(default, t):
            return t
    return None


def _matches(value: object, expected: type) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, int | float) and not isinstance(value, bool)  # float accepts ints


def _load_reasoning_gym(spec: str) -> tuple[_Row, ...]:
    name, kwargs = _parse_rg_spec(spec)
    registry = _rg_registry()
    if name not in registry:
        names = sorted(registry)
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean: {', '.join(close)}; " if close else ""
        raise DataError(
            f"{spec}: unknown reasoning_gym dataset '{name}' "
            f"({hint}available: {', '.join(names[:8])}, ... ({len(names)} in all))"
        )
    import dataclasses

    import reasoning_gym

    config_cls = registry[name][1]
    if dataclasses.is_dataclass(config_cls):
        fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
        for key, value in kwargs.items():
            if key not in fields:
                raise DataError(
                    f"{spec}: unknown option '{key}' for reasoning_gym dataset '{name}' "
                    f"(valid: {', '.join(sorted(fields))})"
                )
            expected = int if key in RG_DEFAULTS else _expected_type(fields[key].default)
            if expected is not None and not _matches(value, expected):
                raise DataError(
                    f"{spec}: option '{key}' must be {expected.__name__} for reasoning_gym dataset "
                    f"'{name}', got {value!r}"
                )
    user_opts = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    try:
        dataset = reasoning_gym.create_dataset(name, **kwargs)
        entries = [dataset[i] for i in range(len(dataset))]
    except Exception as exc:  # config validation is plain asserts / TypeErrors / ValueErrors
        msg = _one_line(exc) or type(exc).__name__
        raise DataError(
            f"{spec}: invalid options for reasoning_gym dataset '{name}' ({user_opts}): {msg}"
        ) from None
    with _cache_lock:
        _rg_loaded[spec] = (dataset, entries)
        _rg_loaded.move_to_end(spec)
        while len(_rg_loaded) > _CACHE_MAX:
            _rg_loaded.popitem(last=False)
    seed = kwargs.get("seed")
    rows: list[_Row] = []
    for index, entry in enumerate(entries):
        question = str(entry.get("question") or "").strip()
        answer_raw = entry.get("answer")
        answer = "" if answer_raw is None else str(answer_raw).strip()
        if not question:
            raise DataError(f"{spec}: item {index}: field 'question' is empty")
        if not answer:
            raise DataError(f"{spec}: item {index}: field 'answer' is empty (no reference answer)")
        rows.append((f"rg-{name}-{seed}-{index}", question, answer))
    if not rows:
        raise DataError(f"{spec}: generated no items (size={kwargs.get('size')!r})")
    return tuple(rows)


def rg_entry(query: Query) -> tuple[Any, dict[str, Any]]:
    """The reasoning_gym dataset and entry a row came from (regenerated from its spec when this process
    has not loaded it yet: entries are seeded, so the same spec gives the same entry). One-line
    DataError for a row that did not come from an ``rg:`` spec."""
    spec, index = query.get("source", ""), query.get("index")
    if not spec.startswith(RG_PREFIX) or not isinstance(index, int):
        raise DataError(
            f"row {query['id']!r} is not from a reasoning_gym dataset (rg:NAME): no entry to score"
        )
    with _cache_lock:
        loaded = _rg_loaded.get(spec)
    if loaded is None:
        _load_reasoning_gym(spec)
        with _cache_lock:
            loaded = _rg_loaded[spec]
    dataset, entries = loaded
    if not 0 <= index < len(entries):
        raise DataError(f"{spec}: row {query['id']!r}: no item {index} (the dataset has {len(entries)})")
    return dataset, entries[index]


# --- the training set of a run, and its order (the outer loop of the paper's Algorithm 1) ---


def training_queries(ctx: Context) -> list[Query]:
    """The training set; without ground truth (the ``majority`` reward) rows need no answer."""
    return load_dataset(ctx.dataset, answers=ctx.reward != "majority")


def epoch_order(queries: list[Query], seed: int, epoch: int) -> list[Query]:
    order = list(queries)
    random.Random(f"tfgrpo:{seed}:{epoch}").shuffle(order)
    return order


def batches_per_epoch(n_queries: int, batch_size: int) -> int:
    return math.ceil(n_queries / max(1, batch_size))
