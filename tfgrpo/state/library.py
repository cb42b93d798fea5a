"""The experience library E: stable ids, provenance, versioning, and the ADD/UPDATE/DELETE/NONE algebra.

Pure functions over plain dicts so the library checkpoints cleanly and renders in LangGraph Studio.
"""

from __future__ import annotations

import copy
import re
from typing import Literal, NotRequired, get_args

from typing_extensions import TypedDict

# The operations on E, spelled here only: schemas, checks and messages take them from OpName / OP_NAMES
OpName = Literal["ADD", "UPDATE", "DELETE", "NONE"]
OP_NAMES: tuple[OpName, ...] = get_args(OpName)


class Experience(TypedDict):
    """One lesson. ``id`` is given once (``G<n>``) and never reused or renumbered."""

    id: str
    text: str
    created_step: int
    updated_step: int
    sources: list[str]  # query ids whose groups produced or refined it


class Library(TypedDict):
    version: int  # bumped whenever an operation is applied
    next_id: int  # the number the next ADD gets
    items: list[Experience]


class Operation(TypedDict):
    op: OpName
    id: NotRequired[str | None]
    content: NotRequired[str | None]
    reason: NotRequired[str]
    sources: NotRequired[list[str]]


class RejectedOperation(TypedDict):
    operation: Operation
    why: str


def empty_library() -> Library:
    return {"version": 0, "next_id": 1, "items": []}


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


INJECTION_HEADER = (
    "Experiences learned from earlier problems. Read them and apply the ones that are relevant:"
)


def render_library(library: Library) -> str:
    """E as numbered lines (``[G3] text``) under a short instruction; empty string when E is empty."""
    if not library["items"]:
        return ""
    lines = [f"[{item['id']}] {item['text']}" for item in library["items"]]
    return INJECTION_HEADER + "\n" + "\n".join(lines)


REVIEW_HEADER = (
    "Experience library under review (the attempts were shown these lessons; judge them, do not follow them):"
)


def render_library_for_review(library: Library | None) -> str:
    """E as the learner sees it: the same ``[G3] text`` lines, labelled as the library under review
    (the policy's "read them and apply" header would address the learner as if it were the solver)."""
    return review_text(render_library(library) if library else "")


def review_text(rendered: str) -> str:
    """A policy rendering of E (:func:`render_library`) relabelled for the learner's prompts."""
    body = rendered.removeprefix(INJECTION_HEADER).strip("\n")
    return f"{REVIEW_HEADER}\n{body or '(empty)'}"


def library_markdown(library: Library, title: str = "Experience library") -> str:
    out = [f"# {title}", "", f"version {library['version']}, {len(library['items'])} experiences", ""]
    for item in library["items"]:
        src = ", ".join(item["sources"]) or "-"
        out.append(
            f"- **[{item['id']}]** {item['text']}  \n"
            f"  _created at step {item['created_step']}, last changed at step {item['updated_step']}; "
            f"from: {src}_"
        )
    if not library["items"]:
        out.append("_(empty)_")
    return "\n".join(out) + "\n"


def diff_libraries(before: Library, after: Library) -> list[str]:
    """Human-readable change between two libraries: ``+``, ``-`` and ``~`` lines by stable id."""
    old = {i["id"]: i for i in before["items"]}
    new = {i["id"]: i for i in after["items"]}
    lines: list[str] = []
    for item in after["items"]:
        if item["id"] not in old:
            lines.append(f"+ [{item['id']}] {item['text']}")
        elif old[item["id"]]["text"] != item["text"]:
            lines.append(f"~ [{item['id']}] {old[item['id']]['text']}")
            lines.append(f"  -> {item['text']}")
    for item in before["items"]:
        if item["id"] not in new:
            lines.append(f"- [{item['id']}] {item['text']}")
    return lines


def estimate_tokens(text: str) -> int:
    """Tokens of an experience as rendered (``[G12] text``): about 4 characters a token, no tokenizer
    needed; good enough for a budget on how much of every prompt E takes."""
    return (len(text) + 3) // 4 + 4


def library_tokens(library: Library) -> int:
    return sum(estimate_tokens(item["text"]) for item in library["items"])


def apply_operations(
    library: Library,
    operations: list[Operation],
    *,
    step: int,
    max_items: int | None = None,
    max_tokens: int | None = None,
) -> tuple[Library, list[Operation], list[RejectedOperation]]:
    """Apply a batch's final operations; returns (new library, applied, rejected).

    Rules (the reference code gets several of these wrong): DELETE beats UPDATE on the same id; of
    several UPDATEs on one id the last one with content wins; DELETEs are applied first (they free
    room); UPDATE/DELETE of an unknown id is rejected, never turned into an ADD; ADD/UPDATE need
    content; an ADD that repeats an existing text is rejected as a duplicate; ADDs beyond ``max_items``
    and ADDs / UPDATEs that would take E past ``max_tokens`` (see :func:`estimate_tokens`) are rejected.
    NONE is a no-op and is neither applied nor rejected.
    """
    lib = copy.deepcopy(library)
    by_id = {item["id"]: item for item in lib["items"]}
    applied: list[Operation] = []
    rejected: list[RejectedOperation] = []

    deleted = {
        (op.get("id") or "").strip()
        for op in operations
        if op["op"] == "DELETE" and (op.get("id") or "").strip() in by_id
    }
    last_update: dict[str, int] = {}
    for index, op in enumerate(operations):
        if op["op"] == "UPDATE" and (op.get("content") or "").strip():
            last_update[(op.get("id") or "").strip()] = index

    # DELETEs first so that they make room for this batch's ADDs under ``max_items``
    order = sorted(range(len(operations)), key=lambda i: operations[i]["op"] != "DELETE")
    for index in order:
        op = operations[index]
        kind = op["op"]
        oid = (op.get("id") or "").strip()
        content = (op.get("content") or "").strip()
        sources = list(op.get("sources") or [])
        if kind == "NONE":
            continue
        if kind not in OP_NAMES:
            rejected.append({"operation": op, "why": f"unknown operation {kind!r}"})
        elif kind == "ADD":
            if not content:
                rejected.append({"operation": op, "why": "ADD without content"})
            elif any(_norm(i["text"]) == _norm(content) for i in lib["items"]):
                rejected.append({"operation": op, "why": "duplicate of an existing experience"})
            elif max_items is not None and len(lib["items"]) >= max_items:
                rejected.append({"operation": op, "why": f"library is full ({max_items} items)"})
            elif max_tokens is not None and library_tokens(lib) + estimate_tokens(content) > max_tokens:
                rejected.append({"operation": op, "why": f"library token budget full ({max_tokens} tokens)"})
            else:
                new_id = f"G{lib['next_id']}"
                lib["next_id"] += 1
                item: Experience = {
                    "id": new_id,
                    "text": content,
                    "created_step": step,
                    "updated_step": step,
                    "sources": sorted(set(sources)),
                }
                lib["items"].append(item)
                by_id[new_id] = item
                applied.append({**op, "id": new_id})
        elif oid not in by_id:
            rejected.append({"operation": op, "why": f"{kind} of unknown id {oid or '(none)'}"})
        elif kind == "DELETE":
            lib["items"] = [i for i in lib["items"] if i["id"] != oid]
            del by_id[oid]
            applied.append(op)
        elif oid in deleted:
            rejected.append({"operation": op, "why": f"UPDATE of {oid} superseded by its DELETE"})
        elif not content:
            rejected.append({"operation": op, "why": "UPDATE without content"})
        elif last_update[oid] != index:
            rejected.append({"operation": op, "why": f"UPDATE of {oid} superseded by a later UPDATE"})
        elif (
            max_tokens is not None
            and estimate_tokens(content) > estimate_tokens(by_id[oid]["text"])  # shrinking always passes
            and library_tokens(lib) - estimate_tokens(by_id[oid]["text"]) + estimate_tokens(content)
            > max_tokens
        ):
            rejected.append({"operation": op, "why": f"library token budget full ({max_tokens} tokens)"})
        else:
            target = by_id[oid]
            target["text"] = content
            target["updated_step"] = step
            target["sources"] = sorted(set(target["sources"]) | set(sources))
            applied.append(op)

    if applied:
        lib["version"] += 1
    return lib, applied, rejected
