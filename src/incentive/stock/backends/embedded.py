"""In-process stock engine for the embedded deployment (one process, no services).

Atomicity comes from asyncio itself: no method awaits between reading and writing a level,
so a critical section never interleaves with another coroutine. Not for sharing between
threads or processes; the Redis backends are for that.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from incentive.stock.engine import (
    Deduction,
    Take,
    check_levels,
    check_name,
    check_quantity,
    check_split,
    even_split,
)
from incentive.stock.errors import SoldOut, StockPoolMissing
from incentive.stock.metrics import DeductionMetrics, forget_levels, record_levels


class EmbeddedStockEngine:
    backend = "embedded"

    def __init__(self) -> None:
        self._pools: dict[str, list[int]] = {}
        self._quota: dict[tuple[str, str], int] = {}
        self._metrics = DeductionMetrics(self.backend)
        self._random = random.random

    async def split(self, pool: str, total: int, buckets: int) -> bool:
        check_name("pool", pool)
        check_split(total, buckets)
        if pool in self._pools:
            return False
        self._pools[pool] = even_split(total, buckets)
        return True

    async def deduct(self, pool: str, quantity: int) -> Deduction:
        check_name("pool", pool)
        check_quantity(quantity)
        with self._metrics.attempt():
            takes = self._take(pool, quantity)
        return self._metrics.served(pool, quantity, takes)

    def _take(self, pool: str, quantity: int) -> tuple[Take, ...]:
        levels = self._pools.get(pool)
        if levels is None:
            raise StockPoolMissing(f"stock pool {pool!r} does not exist", pool=pool)
        n = len(levels)
        # A random bucket, taken when it can serve; otherwise a random one among those that
        # can. Together that is a uniform choice among the buckets able to serve.
        first = int(self._random() * n)
        if levels[first] >= quantity:
            levels[first] -= quantity
            return (Take(first, quantity),)
        able = [i for i, level in enumerate(levels) if level >= quantity]
        if able:
            chosen = able[int(self._random() * len(able))]
            levels[chosen] -= quantity
            return (Take(chosen, quantity),)
        if sum(levels) < quantity:
            raise SoldOut(
                f"stock pool {pool!r} cannot serve {quantity}", pool=pool, requested=quantity
            )
        takes: list[Take] = []
        need = quantity
        for step in range(n):
            i = (first + step) % n
            part = min(levels[i], need)
            if part > 0:
                levels[i] -= part
                takes.append(Take(i, part))
                need -= part
                if need == 0:
                    break
        return tuple(takes)

    async def restore(self, pool: str, bucket: int, quantity: int) -> int:
        check_name("pool", pool)
        check_quantity(quantity)
        levels = self._pools.get(pool)
        if levels is None or not 0 <= bucket < len(levels):
            raise StockPoolMissing(f"stock pool {pool!r} has no bucket {bucket}", pool=pool)
        levels[bucket] += quantity
        return levels[bucket]

    async def remaining(self, pool: str) -> list[int]:
        check_name("pool", pool)
        levels = self._pools.get(pool)
        if levels is None:
            raise StockPoolMissing(f"stock pool {pool!r} does not exist", pool=pool)
        out = list(levels)
        record_levels(pool, out)
        return out

    async def rebuild(self, pool: str, buckets: Sequence[int]) -> None:
        check_name("pool", pool)
        self._pools[pool] = check_levels(buckets)

    async def exists(self, pool: str) -> bool:
        check_name("pool", pool)
        return pool in self._pools

    async def drop(self, pool: str) -> None:
        check_name("pool", pool)
        self._pools.pop(pool, None)
        for key in [k for k in self._quota if k[0] == pool]:
            del self._quota[key]
        forget_levels(pool)

    async def reserve_quota(self, pool: str, user: str, quantity: int, limit: int) -> bool:
        key = (check_name("pool", pool), check_name("user", user))
        check_quantity(quantity)
        check_quantity(limit, "limit", 0)
        used = self._quota.get(key, 0)
        if used + quantity > limit:
            return False
        self._quota[key] = used + quantity
        return True

    async def take_within_quota(
        self, pool: str, user: str, quantity: int, limit: int
    ) -> Deduction | None:
        key = (check_name("pool", pool), check_name("user", user))
        check_quantity(quantity)
        check_quantity(limit, "limit", 0)
        used = self._quota.get(key, 0)
        if used + quantity > limit:
            return None
        with self._metrics.attempt():
            takes = self._take(pool, quantity)
        self._quota[key] = used + quantity
        return self._metrics.served(pool, quantity, takes)

    async def release_quota(self, pool: str, user: str, quantity: int) -> int:
        key = (check_name("pool", pool), check_name("user", user))
        check_quantity(quantity)
        used = self._quota.get(key, 0)
        released = min(used, quantity)
        if used - released == 0:
            self._quota.pop(key, None)
        else:
            self._quota[key] = used - released
        return released

    async def quota_used(self, pool: str, user: str) -> int:
        return self._quota.get((check_name("pool", pool), check_name("user", user)), 0)

    async def aclose(self) -> None:
        return None
