"""Stock engine on Redis Cluster: buckets spread over the nodes, no cross-slot script.

Each bucket key carries its own hash tag (``stock:b:{<pool>#<i>}``), so the N buckets of a
pool land on different nodes and a flash sale's load spreads over the whole cluster. A
script therefore touches one bucket only:

- the common case is one round trip: a bucket chosen at random among those this process
  believes can serve the quantity, taken by a conditional script (``TAKE``);
- a bucket that turns out too low is skipped for another; the levels seen are remembered;
- when no bucket can serve the quantity alone but the buckets together can, the engine
  opens a *hold* on the pool's metadata slot (one at a time per pool), takes what each
  bucket has (``TAKE_UPTO``) until the quantity is reached, and on failure gives every
  part back before closing the hold. No script ever takes more than a bucket holds.
- ``SoldOut`` is decided only on a quiet snapshot: no hold open before the buckets were
  read and none begun while they were, so stock that a failed cross-bucket take is about
  to give back is never mistaken for stock that is gone. A process that dies holding stock
  leaves its hold to expire (``HOLD_TTL_MS``); the parts it took are recovered by
  reconciliation with the database, like any deduction that was never recorded.

Per-user quotas live in the slot of the user's *home bucket* (``crc32(user) mod N``:
``stock:q:{<pool>#<home>}:<user>``), so ``take_within_quota`` checks the quota and takes from
the home bucket in one script, one round trip. Buyers spread over the buckets as evenly as
their names hash. When the home bucket cannot serve, that script reserves the quota alone and
the deduction goes on as ``deduct`` does (any bucket, or across buckets); if it then fails
the quota is released. A user's home moves with N: a pool is re-split with another bucket
count only after ``drop`` (as ``reconcile`` does), which forgets every quota.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
import zlib
from collections.abc import Sequence
from time import monotonic
from typing import Any

from redis.asyncio.cluster import RedisCluster

from incentive.stock.backends.redis import (
    RESTORE_LUA,
    RedisBackedEngine,
    as_int,
    bucket_key,
    holds_key,
    meta_key,
    missing,
    sold_out,
    split_key,
    store_errors,
)
from incentive.stock.engine import (
    Deduction,
    Take,
    check_levels,
    check_name,
    check_quantity,
    check_split,
    even_split,
)

log = logging.getLogger(__name__)


def home_bucket(user: str, buckets: int) -> int:
    """The bucket whose slot holds ``user``'s quota (stable across processes and runs)."""
    return zlib.crc32(user.encode()) % buckets


def home_quota_key(pool: str, home: int, user: str) -> str:
    return f"stock:q:{{{pool}#{home}}}:{user}"


HOLD_TTL_MS = 5_000
# How long a deduction waits for open holds to settle before it decides on what it sees.
SETTLE_SECONDS = 2 * HOLD_TTL_MS / 1000

# KEYS: bucket. ARGV: quantity. {1, new level} taken; {0, level} too low; {0, -1} missing.
TAKE_LUA = """
local v = redis.call('GET', KEYS[1])
if not v then return {0, -1} end
v = tonumber(v)
local q = tonumber(ARGV[1])
if v >= q then return {1, redis.call('DECRBY', KEYS[1], q)} end
return {0, v}
"""

# KEYS: bucket. ARGV: quantity wanted. {part taken, new level}; {0, -1} when missing.
TAKE_UPTO_LUA = """
local v = redis.call('GET', KEYS[1])
if not v then return {0, -1} end
v = tonumber(v)
local part = math.min(v, tonumber(ARGV[1]))
if part <= 0 then return {0, v} end
return {part, redis.call('DECRBY', KEYS[1], part)}
"""

# KEYS: quota (in the home bucket's slot), home bucket. ARGV: quantity, limit.
# {-1, 0} the quota refuses (nothing changed); otherwise the quota is reserved and
# {1, new level} the home bucket served; {0, level} it is too low; {0, -1} it is missing.
TAKE_HOME_LUA = """
local q = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + q > tonumber(ARGV[2]) then return {-1, 0} end
redis.call('INCRBY', KEYS[1], q)
local v = redis.call('GET', KEYS[2])
if not v then return {0, -1} end
v = tonumber(v)
if v >= q then return {1, redis.call('DECRBY', KEYS[2], q)} end
return {0, v}
"""

# KEYS: holds, meta. ARGV: token, ttl ms. 1 opened; 0 another hold is open; -1 no pool.
HOLD_BEGIN_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
if redis.call('ZCARD', KEYS[1]) > 0 then return 0 end
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
redis.call('HINCRBY', KEYS[2], 'started', 1)
return 1
"""

# KEYS: holds, meta. {N or -1, holds begun so far, holds open now}.
SNAPSHOT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('HGET', KEYS[2], 'buckets')
if not n then return {-1, 0, 0} end
return {tonumber(n), tonumber(redis.call('HGET', KEYS[2], 'started') or '0'),
        redis.call('ZCARD', KEYS[1])}
"""


class ClusterStockEngine(RedisBackedEngine):
    backend = "redis-cluster"

    def __init__(self, client: RedisCluster, *, max_in_flight: int = 16) -> None:
        super().__init__(client)
        register = client.register_script
        self._take_script = register(TAKE_LUA)
        self._take_upto_script = register(TAKE_UPTO_LUA)
        self._hold_begin_script = register(HOLD_BEGIN_LUA)
        self._snapshot_script = register(SNAPSHOT_LUA)
        self._take_home_script = register(TAKE_HOME_LUA)
        self._give_script = register(RESTORE_LUA)
        # pool -> levels last seen per bucket (a hint: other processes move them too).
        self._hints: dict[str, list[int]] = {}
        # The async cluster client fails rather than waits when a node's connections run
        # out; this keeps callers waiting instead.
        self._gate = asyncio.Semaphore(max_in_flight)
        # redis-py's async cluster client breaks when its first commands run concurrently
        # (connections closed under them during discovery): discover once, up front.
        self._initialised = False
        self._initialising = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, *, max_connections: int = 16) -> ClusterStockEngine:
        client = RedisCluster.from_url(url, max_connections=max_connections)
        return cls(client, max_in_flight=max_connections)

    def _forget(self, pool: str) -> None:
        self._hints.pop(pool, None)

    async def _ready(self) -> None:
        if self._initialised:
            return
        async with self._initialising:
            if not self._initialised:
                await self._redis.initialize()
                self._initialised = True

    async def _call(self, script: Any, keys: Sequence[str | bytes], args: list[Any]) -> Any:
        if not self._initialised:
            await self._ready()
        async with self._gate:
            return await script(keys=keys, args=args)

    async def _command(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if not self._initialised:
            await self._ready()
        async with self._gate:
            return await getattr(self._redis, name)(*args, **kwargs)

    async def _levels(self, keys: list[str]) -> list[int]:
        return [as_int(v) for v in await self._command("mget_nonatomic", keys)]

    async def _delete(self, keys: Sequence[str]) -> None:
        for key in keys:  # one slot per key: no multi-key DEL across slots
            await self._command("delete", key)

    @store_errors
    async def split(self, pool: str, total: int, buckets: int) -> bool:
        """Exactly once through the split marker; the pool exists (``meta``) only after every
        bucket is written, so no deduction ever sees a half-split pool."""
        check_name("pool", pool)
        check_split(total, buckets)
        if not await self._command("set", split_key(pool), 1, nx=True):
            return False
        await self._write(pool, even_split(total, buckets))
        return True

    async def _write(self, pool: str, levels: list[int]) -> None:
        for i, level in enumerate(levels):
            await self._command("set", bucket_key(pool, i), level)
        await self._command(
            "hset",
            meta_key(pool),
            mapping={"buckets": len(levels), "total": sum(levels), "started": 0},
        )

    @store_errors
    async def rebuild(self, pool: str, buckets: Sequence[int]) -> None:
        check_name("pool", pool)
        levels = check_levels(buckets)
        old = await self._bucket_count(pool) or 0
        await self._command("set", split_key(pool), 1)
        await self._command("delete", holds_key(pool))
        await self._write(pool, levels)
        await self._delete([bucket_key(pool, i) for i in range(len(levels), old)])
        self._forget(pool)

    @store_errors
    async def deduct(self, pool: str, quantity: int) -> Deduction:
        check_name("pool", pool)
        check_quantity(quantity)
        with self._metrics.attempt():
            takes = await self._deduct(pool, quantity)
        return self._metrics.served(pool, quantity, takes)

    async def _hints_for(self, pool: str, quantity: int) -> list[int]:
        hints = self._hints.get(pool)
        if hints is None:
            n = await self._bucket_count(pool)
            if n is None:
                raise missing(pool)
            # Unknown levels are assumed able, so the first tries go straight to a bucket.
            hints = self._hints[pool] = [quantity] * n
        return hints

    async def _quota_key(self, pool: str, user: str) -> str:
        hints = self._hints.get(pool)
        n = len(hints) if hints is not None else await self._bucket_count(pool)
        # No pool, no quota: a key no pool's bucket shares (nothing is ever found there).
        return home_quota_key(pool, home_bucket(user, n) if n else 0, user)

    @store_errors
    async def take_within_quota(
        self, pool: str, user: str, quantity: int, limit: int
    ) -> Deduction | None:
        check_name("pool", pool)
        check_name("user", user)
        check_quantity(quantity)
        check_quantity(limit, "limit", 0)
        with self._metrics.attempt():
            hints = await self._hints_for(pool, quantity)
            home = home_bucket(user, len(hints))
            quota = home_quota_key(pool, home, user)
            served, level = await self._call(
                self._take_home_script, [quota, bucket_key(pool, home)], [quantity, limit]
            )
            if int(served) < 0:
                return None
            hints[home] = max(int(level), 0)
            if int(served) == 1:
                takes: tuple[Take, ...] = (Take(home, quantity),)
            else:
                try:
                    takes = await self._deduct(pool, quantity)
                except BaseException:
                    await asyncio.shield(self._call(self._release_script, [quota], [quantity]))
                    raise
        return self._metrics.served(pool, quantity, takes)

    async def _deduct(self, pool: str, quantity: int) -> tuple[Take, ...]:
        hints = await self._hints_for(pool, quantity)
        deadline = monotonic() + SETTLE_SECONDS
        while True:
            able = [i for i, level in enumerate(hints) if level >= quantity]
            while able:
                bucket = able.pop(random.randrange(len(able)))
                ok, level = await self._call(
                    self._take_script, [bucket_key(pool, bucket)], [quantity]
                )
                hints[bucket] = int(level)
                if ok:
                    return (Take(bucket, quantity),)
            # Every bucket this process knows of is too low: look at all of them.
            n, begun, open_holds = await self._snapshot(pool)
            if n != len(hints):
                hints = self._hints[pool] = [quantity] * n
                continue
            levels = await self._levels([bucket_key(pool, i) for i in range(n)])
            hints[:] = levels
            if max(levels) >= quantity:
                continue
            if sum(levels) >= quantity:
                takes = await self._take_across(pool, quantity, hints)
                if takes is not None:
                    return takes
                await asyncio.sleep(random.uniform(0.0005, 0.002))
                continue
            n_after, begun_after, open_after = await self._snapshot(pool)
            quiet = open_holds == 0 and open_after == 0 and begun_after == begun
            if (quiet and n_after == n) or monotonic() > deadline:
                raise sold_out(pool, quantity)
            await asyncio.sleep(random.uniform(0.0005, 0.002))

    async def _snapshot(self, pool: str) -> tuple[int, int, int]:
        reply = await self._call(self._snapshot_script, [holds_key(pool), meta_key(pool)], [])
        n, begun, open_holds = (int(v) for v in reply)
        if n < 0:
            self._forget(pool)
            raise missing(pool)
        return n, begun, open_holds

    async def _take_across(
        self, pool: str, quantity: int, hints: list[int]
    ) -> tuple[Take, ...] | None:
        """Take ``quantity`` from several buckets under the pool's hold; None when another
        hold is open or the parts ran out (everything taken was given back)."""
        token = uuid.uuid4().hex
        opened = int(
            await self._call(
                self._hold_begin_script,
                [holds_key(pool), meta_key(pool)],
                [token, HOLD_TTL_MS],
            )
        )
        if opened < 0:
            self._forget(pool)
            raise missing(pool)
        if opened == 0:
            return None
        taken: list[Take] = []
        try:
            need = quantity
            n = len(hints)
            first = random.randrange(n)
            for step in range(n):
                bucket = (first + step) % n
                if hints[bucket] <= 0:
                    continue
                part, level = await self._call(
                    self._take_upto_script, [bucket_key(pool, bucket)], [need]
                )
                hints[bucket] = max(int(level), 0)
                if int(part) > 0:
                    taken.append(Take(bucket, int(part)))
                    need -= int(part)
                    if need == 0:
                        return tuple(taken)
            await self._give_back(pool, taken)
            return None
        except BaseException:
            await asyncio.shield(self._give_back(pool, taken))
            raise
        finally:
            await asyncio.shield(self._end_hold(pool, token))

    async def _give_back(self, pool: str, taken: list[Take]) -> None:
        for take in taken:
            for attempt in range(5):
                try:
                    await self._call(
                        self._give_script, [bucket_key(pool, take.bucket)], [take.quantity]
                    )
                    break
                except Exception:
                    if attempt == 4:
                        # Stock is not lost for good: reconciliation with the database
                        # restores it. Say loudly which parts that is.
                        log.exception(
                            "stock give-back failed",
                            extra={"pool": pool, "bucket": take.bucket, "quantity": take.quantity},
                        )
                        break
                    await asyncio.sleep(0.05 * (attempt + 1))
            if take.bucket < len(hints := self._hints.get(pool, [])):
                hints[take.bucket] += take.quantity

    async def _end_hold(self, pool: str, token: str) -> None:
        try:
            await self._command("zrem", holds_key(pool), token)
        except Exception:
            # The hold expires by itself after HOLD_TTL_MS.
            log.warning("stock hold release failed", extra={"pool": pool})
