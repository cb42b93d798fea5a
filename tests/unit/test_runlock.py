"""One writer per run directory (:mod:`tfgrpo.runs.runlock`): a second lock on a held directory is
refused in one line naming the holder, and released locks can be taken again. ``import tfgrpo`` works
where there is no ``fcntl`` (Windows): simulated here by blocking the module in a fresh interpreter,
where the exclusive-create fallback then keeps the same promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tfgrpo.runs.runlock import FileRunLock, RunLocked, lock_run_dir


def test_a_held_run_directory_is_refused_until_released(tmp_path: Path) -> None:
    with lock_run_dir(tmp_path), pytest.raises(RunLocked, match=f"in use by process {os.getpid()}"):
        FileRunLock(tmp_path).acquire()
    with lock_run_dir(tmp_path):  # released: free again
        pass


WITHOUT_FCNTL = """
import json, os, sys
sys.modules["fcntl"] = None  # import fcntl raises ImportError, as on Windows
sys.modules["msvcrt"] = None  # and no msvcrt either: the exclusive-create fallback
import tfgrpo, tfgrpo.cli, tfgrpo.learner
from tfgrpo.runs.runlock import HELD_FILE, FileRunLock, RunLocked

where = sys.argv[1]
first = FileRunLock(where)
first.acquire()
try:
    FileRunLock(where).acquire()
    second = "taken"
except RunLocked as exc:
    second = str(exc)
first.release()
again = FileRunLock(where)
again.acquire()
again.release()
# a holder that died without releasing: its file names a process that no longer exists
with open(os.path.join(where, HELD_FILE), "w") as f:
    f.write("999999999\\n")
stale = FileRunLock(where)
stale.acquire()
stale.release()
print(json.dumps({"second": second, "left": sorted(os.listdir(where))}))
"""


def test_tfgrpo_imports_and_locks_without_fcntl(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_FCNTL, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["second"].startswith(f"{tmp_path} is in use by process ")
    assert result["left"] == [".lock"]  # the held file goes with its lock
