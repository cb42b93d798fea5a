"""The garbage collector during a run (tfgrpo.runs.gc_tuning): the run's calls see the long-lived heap
frozen and fewer young collections; the caller's collector is as it was afterwards, cycles made during the
run are still collected, and nested or concurrent runs restore it once, at the end of the last one."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path
from typing import Any

from tests.unit.test_learn_loop import Fake, always_right, context
from tfgrpo.runs.gc_tuning import YOUNG_THRESHOLD, quiet_gc


class Node:
    def __init__(self) -> None:
        self.other: Any = self


def test_quiet_gc_freezes_the_heap_and_restores_the_collector() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with quiet_gc():
        assert gc.get_freeze_count() > 0  # the heap that existed is set aside
        assert gc.get_threshold()[0] == max(before[0], YOUNG_THRESHOLD)
        cycle = Node()
        gone = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert gone() is None, "a cycle made during the run is still collected"
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_nested_and_concurrent_blocks_restore_once_at_the_end_of_the_last() -> None:
    before = gc.get_threshold()
    inside = threading.Event()
    leave = threading.Event()

    def other_run() -> None:
        with quiet_gc():
            inside.set()
            leave.wait(10)

    with quiet_gc():
        worker = threading.Thread(target=other_run)
        worker.start()
        assert inside.wait(10)
        with quiet_gc():
            pass
        assert gc.get_threshold()[0] == max(before[0], YOUNG_THRESHOLD), "the inner block restored early"
    assert gc.get_freeze_count() > 0, "the other run is still going"
    leave.set()
    worker.join(10)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_a_callers_own_freeze_is_not_undone() -> None:
    gc.freeze()
    try:
        with quiet_gc():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_learning_runs_calls_run_with_the_quiet_collector(tmp_path: Path) -> None:
    from tfgrpo.learner import run_learning

    seen: list[tuple[int, int]] = []

    def policy(body: dict) -> dict:
        seen.append((gc.get_freeze_count(), gc.get_threshold()[0]))
        return always_right(body)

    before = gc.get_threshold()
    fake = Fake(rollout=policy)
    ctx = context(fake, "rg:basic_arithmetic:size=4:seed=1", epochs=1)
    assert run_learning(ctx, run_dir=tmp_path / "run", seed=0, progress=False).steps
    assert seen and all(frozen > 0 and young >= YOUNG_THRESHOLD for frozen, young in seen)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
