"""How long is a finished LLM response at risk of being paid for again after a kill?

A response is safe once it is committed to the run's store (``tfgrpo.models.cache``). This runs the CLI's
learning path (real HTTP through langchain-openai to the scripted fake server, search-domain agent
rollouts that make two calls each, one call at a time so responses and commits pair up in order) and
prints, per call, the time from the server's last byte to the commit of that response in store.sqlite:
the window in which a kill -9 would lose a response that had already been sent.

    python benchmarks/kill_window.py
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tfgrpo.context import Context
from tfgrpo.learner import run_learning
from tfgrpo.models.cache import StoreLLMCache
from tfgrpo.testing.fake_openai import FakeOpenAIServer
from tfgrpo.testing.responders import grpo_responder


def main() -> None:
    sent: list[float] = []
    committed: list[float] = []
    original_update = StoreLLMCache.update

    def update(self: StoreLLMCache, prompt: str, llm_string: str, return_val: Any) -> None:
        original_update(self, prompt, llm_string, return_val)
        committed.append(time.perf_counter())

    StoreLLMCache.update = update  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAIServer(grpo_responder) as server:
        original_finish = server._finish

        def finish(body: dict, *, completed: bool) -> None:
            if completed:
                sent.append(time.perf_counter())
            original_finish(body, completed=completed)

        server._finish = finish  # type: ignore[method-assign]
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"title": f"T{i}", "text": f"{i} + {i} = {2 * i}."}) + "\n"
                                  for i in range(50)))  # fmt: skip
        ctx = Context(
            dataset="rg:basic_arithmetic:size=8:seed=1", model="openai:fake", base_url=server.base_url,
            domain="search", corpus=str(corpus), reward="math", epochs=1, batch_size=4, group_size=4,
            max_concurrency=1,
        )  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):
            run_learning(ctx, run_dir=Path(tmp) / "run", seed=0, progress=False)  # a failure raises
    n = min(len(sent), len(committed))
    windows = sorted((committed[i] - sent[i]) * 1000 for i in range(n))
    print(f"calls: {len(sent)} responses sent, {len(committed)} committed to the store")
    print(
        f"response sent -> committed (ms): median {statistics.median(windows):.2f}  "
        f"p90 {windows[int(0.9 * (n - 1))]:.2f}  max {windows[-1]:.2f}"
    )


if __name__ == "__main__":
    main()
