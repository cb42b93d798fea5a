"""How big do the checkpoints of a learning run get, and does that depend on B x G?

Runs the CLI's learning path (SqliteSaver + SqliteStore in a run directory, real HTTP through
langchain-openai to the scripted fake server) for 3 epochs at several batch and group sizes, then prints
the checkpoint database's live bytes (rows the run keeps), its file size (SQLite's high-water mark within a
step), and the trajectory store's size, per step.

    python benchmarks/checkpoint_size.py
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
import sys
import tempfile
from pathlib import Path

from tfgrpo.context import Context
from tfgrpo.learner import run_learning
from tfgrpo.testing.fake_openai import FakeOpenAIServer
from tfgrpo.testing.responders import grpo_responder


def live_bytes(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        cp = conn.execute("SELECT COALESCE(SUM(LENGTH(checkpoint) + LENGTH(metadata)), 0) FROM checkpoints")
        wr = conn.execute("SELECT COALESCE(SUM(LENGTH(value)), 0) FROM writes")
        return int(cp.fetchone()[0]) + int(wr.fetchone()[0])
    finally:
        conn.close()


def main() -> None:
    print(f"{'B':>3} {'G':>3} {'steps':>5} {'ckpt live B':>11} {'ckpt file B':>11} {'file B/step':>11} "
          f"{'store B/step':>12}")  # fmt: skip
    with FakeOpenAIServer(grpo_responder) as server:
        for batch, group in ((4, 2), (4, 4), (8, 4), (8, 8), (16, 8)):
            with tempfile.TemporaryDirectory() as tmp:
                run_dir = Path(tmp) / "run"
                ctx = Context(
                    model="openai:fake",
                    base_url=server.base_url,
                    dataset="rg:basic_arithmetic:size=16:seed=1",
                    epochs=3,
                    batch_size=batch,
                    group_size=group,
                )
                with contextlib.redirect_stdout(io.StringIO()):
                    run_learning(ctx, run_dir=run_dir, seed=0, progress=False)
                steps = 3 * -(-16 // batch)
                db = run_dir / "checkpoints.sqlite"
                size = db.stat().st_size
                store = (run_dir / "store.sqlite").stat().st_size
                print(f"{batch:>3} {group:>3} {steps:>5} {live_bytes(db):>11} {size:>11} "
                      f"{size // steps:>11} {store // steps:>12}", flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
