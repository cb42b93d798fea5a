"""The experience library E: ids, the ADD/UPDATE/DELETE/NONE algebra, provenance, rendering and diffs."""

from __future__ import annotations

import copy

from tfgrpo.state.library import (
    INJECTION_HEADER,
    Library,
    Operation,
    apply_operations,
    diff_libraries,
    empty_library,
    estimate_tokens,
    library_tokens,
    render_library,
)


def lib_with(*texts: str, step: int = 0) -> Library:
    """A library holding ``texts`` as G1, G2, ... (built through the public API)."""
    lib, applied, rejected = apply_operations(
        empty_library(), [{"op": "ADD", "content": t, "sources": ["q0"]} for t in texts], step=step
    )
    assert len(applied) == len(texts) and not rejected
    return lib


def ids(lib: Library) -> list[str]:
    return [item["id"] for item in lib["items"]]


def text_of(lib: Library, oid: str) -> str:
    return next(item["text"] for item in lib["items"] if item["id"] == oid)


# ------------------------------------------------------------------------------------------ ids


def test_add_assigns_sequential_g_ids_and_reports_them() -> None:
    lib, applied, rejected = apply_operations(
        empty_library(),
        [{"op": "ADD", "content": "Check signs."}, {"op": "ADD", "content": "Resolve parentheses first."}],
        step=0,
    )
    assert ids(lib) == ["G1", "G2"]
    assert [op["id"] for op in applied] == ["G1", "G2"]
    assert rejected == []
    assert lib["next_id"] == 3


def test_add_ignores_an_id_the_model_made_up() -> None:
    lib, applied, _ = apply_operations(empty_library(), [{"op": "ADD", "id": "G7", "content": "x"}], step=0)
    assert ids(lib) == ["G1"]
    assert applied[0]["id"] == "G1"


def test_deleted_id_is_never_reused() -> None:
    lib = lib_with("first lesson", "second lesson")
    lib, applied, _ = apply_operations(lib, [{"op": "DELETE", "id": "G1"}], step=1)
    assert ids(lib) == ["G2"]
    lib, applied, _ = apply_operations(lib, [{"op": "ADD", "content": "third lesson"}], step=2)
    assert ids(lib) == ["G2", "G3"]
    assert applied[0]["id"] == "G3"


def test_deleting_everything_then_adding_continues_numbering() -> None:
    lib = lib_with("a", "b")
    lib, _, _ = apply_operations(lib, [{"op": "DELETE", "id": "G1"}, {"op": "DELETE", "id": "G2"}], step=1)
    assert lib["items"] == []
    lib, _, _ = apply_operations(lib, [{"op": "ADD", "content": "c"}], step=2)
    assert ids(lib) == ["G3"]


# ------------------------------------------------------------------------------ unknown ids


def test_update_of_unknown_id_is_rejected_not_added() -> None:
    lib = lib_with("known lesson")
    new, applied, rejected = apply_operations(
        lib, [{"op": "UPDATE", "id": "G9", "content": "new text"}], step=1
    )
    assert applied == []
    assert len(rejected) == 1
    assert "G9" in rejected[0]["why"] and "unknown" in rejected[0]["why"]
    assert ids(new) == ["G1"]
    assert all(item["text"] != "new text" for item in new["items"])
    assert new["next_id"] == lib["next_id"]


def test_delete_of_unknown_id_is_rejected() -> None:
    lib = lib_with("known lesson")
    new, applied, rejected = apply_operations(lib, [{"op": "DELETE", "id": "G5"}], step=1)
    assert applied == []
    assert [r["operation"]["id"] for r in rejected] == ["G5"]
    assert ids(new) == ["G1"]


def test_update_and_delete_without_id_are_rejected() -> None:
    lib = lib_with("known lesson")
    new, applied, rejected = apply_operations(
        lib, [{"op": "UPDATE", "content": "text"}, {"op": "DELETE", "id": None}], step=1
    )
    assert applied == []
    assert len(rejected) == 2
    assert new["items"] == lib["items"]


def test_ids_are_matched_after_stripping_whitespace() -> None:
    lib = lib_with("a lesson")
    new, applied, _ = apply_operations(lib, [{"op": "UPDATE", "id": " G1 ", "content": "better"}], step=1)
    assert len(applied) == 1
    assert text_of(new, "G1") == "better"


# ------------------------------------------------------------------------- conflicting ops


def test_delete_beats_update_when_update_comes_first() -> None:
    lib = lib_with("a lesson", "another lesson")
    new, applied, rejected = apply_operations(
        lib, [{"op": "UPDATE", "id": "G1", "content": "changed"}, {"op": "DELETE", "id": "G1"}], step=1
    )
    assert ids(new) == ["G2"]
    assert [op["op"] for op in applied] == ["DELETE"]
    assert len(rejected) == 1 and rejected[0]["operation"]["op"] == "UPDATE"


def test_delete_beats_update_when_delete_comes_first() -> None:
    lib = lib_with("a lesson", "another lesson")
    new, applied, rejected = apply_operations(
        lib, [{"op": "DELETE", "id": "G1"}, {"op": "UPDATE", "id": "G1", "content": "changed"}], step=1
    )
    assert ids(new) == ["G2"]
    assert [op["op"] for op in applied] == ["DELETE"]
    assert len(rejected) == 1 and rejected[0]["operation"]["op"] == "UPDATE"
    assert all(item["text"] != "changed" for item in new["items"])


def test_several_updates_of_one_id_last_wins() -> None:
    lib = lib_with("original")
    ops: list[Operation] = [
        {"op": "UPDATE", "id": "G1", "content": "first rewrite"},
        {"op": "UPDATE", "id": "G1", "content": "second rewrite"},
        {"op": "UPDATE", "id": "G1", "content": "third rewrite"},
    ]
    new, applied, rejected = apply_operations(lib, ops, step=1)
    assert text_of(new, "G1") == "third rewrite"
    assert [op["content"] for op in applied] == ["third rewrite"]
    assert sorted(r["operation"]["content"] for r in rejected) == ["first rewrite", "second rewrite"]
    assert all("superseded" in r["why"] for r in rejected)
    assert new["version"] == lib["version"] + 1


# ---------------------------------------------------------------------- content and limits


def test_add_and_update_without_content_are_rejected() -> None:
    lib = lib_with("original")
    new, applied, rejected = apply_operations(
        lib,
        [
            {"op": "ADD", "content": None},
            {"op": "ADD", "content": "   "},
            {"op": "UPDATE", "id": "G1", "content": ""},
        ],
        step=1,
    )
    assert applied == []
    assert len(rejected) == 3
    assert new["items"] == lib["items"]
    assert new["version"] == lib["version"]


def test_duplicate_add_is_rejected_ignoring_case_and_whitespace() -> None:
    lib = lib_with("Check the sign of the result.")
    new, applied, rejected = apply_operations(
        lib, [{"op": "ADD", "content": "  check   the SIGN of\nthe result. "}], step=1
    )
    assert applied == []
    assert len(rejected) == 1 and "duplicate" in rejected[0]["why"]
    assert ids(new) == ["G1"]


def test_duplicate_adds_within_one_batch_keep_only_the_first() -> None:
    new, applied, rejected = apply_operations(
        empty_library(),
        [{"op": "ADD", "content": "Same idea."}, {"op": "ADD", "content": "same IDEA."}],
        step=0,
    )
    assert ids(new) == ["G1"]
    assert len(applied) == 1 and len(rejected) == 1


def test_max_items_caps_adds() -> None:
    lib = lib_with("one", "two")
    new, applied, rejected = apply_operations(
        lib, [{"op": "ADD", "content": "three"}, {"op": "ADD", "content": "four"}], step=1, max_items=3
    )
    assert ids(new) == ["G1", "G2", "G3"]
    assert len(applied) == 1
    assert len(rejected) == 1 and "full" in rejected[0]["why"]


def test_max_items_does_not_block_updates_of_a_full_library() -> None:
    lib = lib_with("one", "two")
    new, applied, _ = apply_operations(
        lib, [{"op": "UPDATE", "id": "G2", "content": "2"}], step=1, max_items=2
    )
    assert len(applied) == 1 and text_of(new, "G2") == "2"


def test_token_budget_caps_adds_and_growing_updates() -> None:
    lib = lib_with("x" * 40, "y" * 40)  # 14 estimated tokens each
    assert library_tokens(lib) == 2 * estimate_tokens("x" * 40) == 28
    new, applied, rejected = apply_operations(
        lib,
        [
            {"op": "ADD", "content": "z" * 40},  # 42 <= 45
            {"op": "ADD", "content": "short"},  # 42 + 6 > 45
            {"op": "UPDATE", "id": "G1", "content": "x" * 80},  # grows G1 by 10: over
        ],
        step=1,
        max_tokens=45,
    )
    assert ids(new) == ["G1", "G2", "G3"] and text_of(new, "G1") == "x" * 40
    assert len(applied) == 1
    assert [r["why"] for r in rejected] == ["library token budget full (45 tokens)"] * 2
    shrunk, applied, _ = apply_operations(
        new, [{"op": "UPDATE", "id": "G1", "content": "x"}], step=2, max_tokens=45
    )
    assert len(applied) == 1 and library_tokens(shrunk) <= 45  # shrinking is always allowed


def test_unknown_operation_kind_is_rejected() -> None:
    lib = lib_with("one")
    new, applied, rejected = apply_operations(lib, [{"op": "MERGE", "id": "G1", "content": "x"}], step=1)  # type: ignore[typeddict-item]
    assert applied == [] and len(rejected) == 1
    assert new["items"] == lib["items"]


# ------------------------------------------------------------------------------- NONE, version


def test_none_is_neither_applied_nor_rejected() -> None:
    lib = lib_with("one")
    new, applied, rejected = apply_operations(lib, [{"op": "NONE"}, {"op": "NONE", "reason": "ok"}], step=1)
    assert applied == [] and rejected == []
    assert new == lib


def test_version_bumps_once_per_batch_only_when_something_applied() -> None:
    lib = empty_library()
    assert lib["version"] == 0
    lib, _, _ = apply_operations(lib, [{"op": "ADD", "content": "a"}, {"op": "ADD", "content": "b"}], step=0)
    assert lib["version"] == 1
    lib2, applied, rejected = apply_operations(
        lib, [{"op": "DELETE", "id": "G99"}, {"op": "ADD", "content": "A"}, {"op": "NONE"}], step=1
    )
    assert applied == [] and len(rejected) == 2
    assert lib2["version"] == 1
    lib3, _, _ = apply_operations(lib2, [{"op": "DELETE", "id": "G1"}], step=2)
    assert lib3["version"] == 2


# ------------------------------------------------------------------------------- provenance


def test_provenance_of_add_and_update() -> None:
    lib, _, _ = apply_operations(
        empty_library(), [{"op": "ADD", "content": "lesson", "sources": ["q2", "q1", "q2"]}], step=3
    )
    item = lib["items"][0]
    assert (item["created_step"], item["updated_step"]) == (3, 3)
    assert item["sources"] == ["q1", "q2"]

    lib, _, _ = apply_operations(
        lib, [{"op": "UPDATE", "id": "G1", "content": "sharper lesson", "sources": ["q7", "q1"]}], step=5
    )
    item = lib["items"][0]
    assert item["text"] == "sharper lesson"
    assert (item["created_step"], item["updated_step"]) == (3, 5)
    assert item["sources"] == ["q1", "q2", "q7"]


def test_input_library_is_not_mutated() -> None:
    lib = lib_with("one", "two")
    snapshot = copy.deepcopy(lib)
    apply_operations(
        lib,
        [
            {"op": "UPDATE", "id": "G1", "content": "changed", "sources": ["qx"]},
            {"op": "DELETE", "id": "G2"},
            {"op": "ADD", "content": "three"},
        ],
        step=9,
    )
    assert lib == snapshot


# --------------------------------------------------------------------------- render and diff


def test_render_library_empty_is_empty_string() -> None:
    assert render_library(empty_library()) == ""


def test_render_library_lists_ids_under_header() -> None:
    lib = lib_with("Check signs.", "Resolve parentheses first.")
    lib, _, _ = apply_operations(
        lib, [{"op": "DELETE", "id": "G1"}, {"op": "ADD", "content": "New."}], step=1
    )
    text = render_library(lib)
    lines = text.splitlines()
    assert lines[0] == INJECTION_HEADER
    assert lines[1:] == ["[G2] Resolve parentheses first.", "[G3] New."]


def test_diff_libraries_shows_added_removed_and_changed() -> None:
    before = lib_with("keep me", "change me", "drop me")
    after, _, _ = apply_operations(
        before,
        [
            {"op": "UPDATE", "id": "G2", "content": "changed"},
            {"op": "DELETE", "id": "G3"},
            {"op": "ADD", "content": "brand new"},
        ],
        step=1,
    )
    lines = diff_libraries(before, after)
    assert "+ [G4] brand new" in lines
    assert "- [G3] drop me" in lines
    i = lines.index("~ [G2] change me")
    assert lines[i + 1] == "  -> changed"
    assert not any("G1" in line for line in lines)
    assert len(lines) == 4


def test_diff_of_identical_libraries_is_empty() -> None:
    lib = lib_with("a", "b")
    assert diff_libraries(lib, copy.deepcopy(lib)) == []


def test_an_empty_last_update_does_not_void_an_earlier_valid_one() -> None:
    lib = lib_with("old")
    new, applied, rejected = apply_operations(
        lib,
        [{"op": "UPDATE", "id": "G1", "content": "better"}, {"op": "UPDATE", "id": "G1", "content": " "}],
        step=1,
    )
    assert text_of(new, "G1") == "better"
    assert len(applied) == 1 and [r["why"] for r in rejected] == ["UPDATE without content"]


def test_a_delete_later_in_the_batch_makes_room_for_an_add() -> None:
    lib = lib_with("a", "b")
    new, applied, rejected = apply_operations(
        lib, [{"op": "ADD", "content": "c"}, {"op": "DELETE", "id": "G1"}], step=1, max_items=2
    )
    assert rejected == []
    assert ids(new) == ["G2", "G3"]
