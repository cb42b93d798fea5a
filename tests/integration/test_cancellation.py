"""Cancelling concurrent ``ainvoke`` calls of the public API gives back the run-wide concurrency permits."""

from __future__ import annotations

import asyncio
import time

import pytest

from tfgrpo.api import experienced_agent
from tfgrpo.models.ledger import current_ledger
from tfgrpo.testing.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.integration


async def _wait_held(server: FakeOpenAIServer, n: int) -> None:
    deadline = time.time() + 30
    while server.held_count() < n:
        assert time.time() < deadline, "timed out waiting for held requests"
        await asyncio.sleep(0.05)


def test_cancelled_ainvoke_calls_release_their_permits(fake_server: FakeOpenAIServer) -> None:
    # a concurrency level of its own, so the shared default ledger is not one other tests touch
    agent = experienced_agent(None, model="openai:fake", base_url=fake_server.base_url, max_concurrency=7)
    ledger = current_ledger(7)

    async def scenario() -> str:
        fake_server.hold(lambda body: True)
        tasks = [asyncio.create_task(agent.ainvoke(f"Calculate {i} + 1.")) for i in range(12)]
        await _wait_held(fake_server, 7)  # 7 calls in flight, 5 waiting for a permit
        await asyncio.sleep(0.3)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        fake_server.hold(None)
        fake_server.release()
        await asyncio.sleep(0.5)  # a permit taken by a leaked waiter thread would show up by now
        # every later call of the process still runs
        out = await asyncio.wait_for(agent.ainvoke("Calculate 2 + 2."), timeout=30)
        return str(out["answer"])

    assert asyncio.run(scenario()) in {"4", "5"}
    assert ledger.semaphore._value == 7, "cancelled calls kept concurrency permits"  # type: ignore[attr-defined]
