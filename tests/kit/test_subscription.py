"""kit.subscription: a pub/sub subscription delivers and lets go, also when cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from incentive.kit.subscription import subscribed

pytestmark = pytest.mark.redis


async def test_a_subscription_delivers_and_a_cancelled_one_lets_go(redis: Any) -> None:
    got: list[bytes] = []
    ready = asyncio.Event()

    async def listen() -> None:
        async with subscribed(redis, "kit-test") as pubsub:
            ready.set()
            while True:
                message = await pubsub.get_message(timeout=5)
                if message is not None:
                    got.append(message["data"])

    task = asyncio.create_task(listen())
    await asyncio.wait_for(ready.wait(), 5)
    for _ in range(50):
        if await redis.publish("kit-test", b"hello"):
            break
        await asyncio.sleep(0.05)
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.02)
    assert got == [b"hello"]
    task.cancel()
    # The close is bounded: the task ends, and nothing is left subscribed.
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
    assert (await redis.pubsub_numsub("kit-test"))[0][1] == 0
