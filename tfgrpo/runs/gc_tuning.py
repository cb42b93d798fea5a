"""The cyclic garbage collector during a run: the long-lived heap is set aside, young collections are rarer.

A run's process holds some 300k long-lived objects before its first call (LangChain, LangGraph, pydantic
schemas, the openai SDK), and every LLM call allocates thousands of short-lived ones. With CPython's
default thresholds (a young collection every 700 net allocations) a learning step triggered hundreds of
young collections and, every few dozen, a full one that walks the whole heap again: measured at zero
latency, about 1 ms of CPU per LLM call, 15-20 % of what the engine spends on a call (see README,
Performance). ``gc.freeze()`` moves the heap that exists when the run starts to the permanent generation,
which no collection walks, and a higher young threshold makes the young collections fewer. Garbage
cycles made during the run are still collected; at the end the frozen objects go back to the collector.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 10_000  # net allocations between young collections (CPython's default: 700)

_depth = 0  # runs in progress in this process (nested or in threads): the first freezes, the last thaws
_lock = threading.Lock()
_saved: tuple[tuple[int, ...], bool] = ((), False)


@contextmanager
def quiet_gc() -> Iterator[None]:
    """Freeze the current heap and raise the young threshold for the ``with`` block (re-entrant, and
    safe for runs in several threads: the first block in freezes, the last one out restores)."""
    global _depth, _saved
    with _lock:
        if _depth == 0 and gc.isenabled():
            thresholds = gc.get_threshold()
            _saved = (thresholds, gc.get_freeze_count() > 0)
            gc.freeze()
            gc.set_threshold(max(thresholds[0], YOUNG_THRESHOLD), *thresholds[1:])
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved[0]:
                saved, frozen_by_caller = _saved
                _saved = ((), False)
                gc.set_threshold(*saved)
                if not frozen_by_caller:  # a caller's own freeze (e.g. before forking) is not undone
                    gc.unfreeze()
