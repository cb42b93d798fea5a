"""Test helper: the ``tfgrpo`` command line, SIGKILLed at an exact point of the checkpoint protocol.

    TFGRPO_TEST_KILL_AFTER_WRITES=NODE[:N] python -m tests.crash learn ...

runs ``tfgrpo ...`` with the SQLite saver patched so that the process kills itself (SIGKILL: no
clean-up, no flush) right after the N-th (default 1st) ``put_writes`` of a task of node NODE has been
stored -- before the checkpoint that follows it. The product has no code path for this; only tests
import this module.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from langgraph.checkpoint.sqlite import SqliteSaver

KILL_ENV = "TFGRPO_TEST_KILL_AFTER_WRITES"


def kill_after_writes(node: str, nth: int = 1) -> None:
    """Patch ``SqliteSaver.put_writes`` (and so every subclass that does not override it)."""
    original = SqliteSaver.put_writes
    seen = 0

    def put_writes(self: SqliteSaver, config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
        nonlocal seen
        original(self, config, writes, task_id, task_path)
        # a node's own task has the path "~__pregel_pull, NODE"; map branches "~__pregel_push, ..."
        if task_path.split(", ")[-1] == node or (node in task_path and "__pregel_pull" in task_path):
            seen += 1
            if seen == nth:
                os.kill(os.getpid(), signal.SIGKILL)

    SqliteSaver.put_writes = put_writes  # type: ignore[method-assign]


def main() -> int:
    node, _, nth = os.environ[KILL_ENV].partition(":")
    kill_after_writes(node, int(nth or 1))
    from tfgrpo.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
