"""Stock engine on one Redis server: every operation is one Lua script, one round trip.

Key layout (shared with the cluster backend, so a data set reads the same on both)::

    stock:{<pool>}:split        split marker (SET NX), written once
    stock:{<pool>}:meta         hash: buckets (N), total, started (cross-bucket takes begun)
    stock:{<pool>}:holds        zset of in-flight cross-bucket takes (cluster only)
    stock:b:{<pool>#<i>}        level of bucket i, an integer >= 0
    stock:q:{<pool>#<user>}     units of the pool reserved by user (per-user quota)

Each bucket and each user's quota has its own hash tag, so on a cluster they spread over
the nodes; the pool's metadata sits under the pool's tag. Pool and user names never contain
``{``, ``}``, ``#`` or glob characters (``engine.check_name``).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from incentive.errors import ServiceUnavailable
from incentive.stock.engine import (
    Deduction,
    Take,
    check_levels,
    check_name,
    check_quantity,
    check_split,
)
from incentive.stock.errors import SoldOut, StockPoolMissing
from incentive.stock.metrics import DeductionMetrics, forget_levels, record_levels

P = ParamSpec("P")
R = TypeVar("R")


def split_key(pool: str) -> str:
    return f"stock:{{{pool}}}:split"


def meta_key(pool: str) -> str:
    return f"stock:{{{pool}}}:meta"


def holds_key(pool: str) -> str:
    return f"stock:{{{pool}}}:holds"


def bucket_key(pool: str, bucket: int) -> str:
    return f"stock:b:{{{pool}#{bucket}}}"


def quota_key(pool: str, user: str) -> str:
    return f"stock:q:{{{pool}#{user}}}"


def bucket_pattern(pool: str) -> str:
    return f"stock:b:{{{pool}#*"


def quota_pattern(pool: str) -> str:
    return f"stock:q:{{{pool}#*"


# KEYS: split marker, meta, bucket 0..N-1. ARGV: total, N.
SPLIT_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX') then return 0 end
local total = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local base = math.floor(total / n)
local rest = total - base * n
for i = 1, n do
  local level = base
  if i <= rest then level = level + 1 end
  redis.call('SET', KEYS[i + 2], level)
end
redis.call('HSET', KEYS[2], 'buckets', n, 'total', total, 'started', 0)
return 1
"""

# deduct(m): the meta key is KEYS[m], bucket i is KEYS[m + 1 + i]. ARGV: N (as the caller
# believes), quantity, random integer. Returns {bucket, part, bucket, part, ...} on success;
# {-1, total} sold out; {-2} no pool; {-3, N} when the caller's N is stale.
_DEDUCT_FUNCTION = """
local function deduct(m)
  local n = tonumber(ARGV[1])
  local q = tonumber(ARGV[2])
  local r = tonumber(ARGV[3])
  local actual = redis.call('HGET', KEYS[m], 'buckets')
  if not actual then return {-2} end
  actual = tonumber(actual)
  if actual ~= n then return {-3, actual} end
  local first = r % n
  local level = tonumber(redis.call('GET', KEYS[m + 1 + first]) or '0')
  if level >= q then
    redis.call('DECRBY', KEYS[m + 1 + first], q)
    return {first, q}
  end
  local levels = {}
  local able = {}
  local total = 0
  for i = 0, n - 1 do
    local v = tonumber(redis.call('GET', KEYS[m + 1 + i]) or '0')
    levels[i] = v
    total = total + v
    if v >= q then able[#able + 1] = i end
  end
  if #able > 0 then
    local chosen = able[(math.floor(r / n) % #able) + 1]
    redis.call('DECRBY', KEYS[m + 1 + chosen], q)
    return {chosen, q}
  end
  if total < q then return {-1, total} end
  local out = {}
  local need = q
  for step = 0, n - 1 do
    local i = (first + step) % n
    local part = math.min(levels[i], need)
    if part > 0 then
      redis.call('DECRBY', KEYS[m + 1 + i], part)
      out[#out + 1] = i
      out[#out + 1] = part
      need = need - part
      if need == 0 then break end
    end
  end
  return out
end
"""

# KEYS: meta, bucket 0..N-1. ARGV: N, quantity, random integer.
DEDUCT_LUA = _DEDUCT_FUNCTION + "return deduct(1)\n"

# KEYS: quota, meta, bucket 0..N-1. ARGV: N, quantity, random integer, limit. {-4} when the
# user's use would pass the limit (nothing changed); otherwise as DEDUCT, the quantity added
# to the user's use only when stock was taken.
TAKE_WITHIN_QUOTA_LUA = (
    _DEDUCT_FUNCTION
    + """
local q = tonumber(ARGV[2])
if tonumber(redis.call('GET', KEYS[1]) or '0') + q > tonumber(ARGV[4]) then return {-4} end
local out = deduct(2)
if out[1] >= 0 then redis.call('INCRBY', KEYS[1], q) end
return out
"""
)

# KEYS: bucket. ARGV: quantity. Returns the new level, or -1 when the bucket does not exist.
RESTORE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""

# KEYS: quota. ARGV: quantity, limit. 1 when reserved, 0 when it would pass the limit.
RESERVE_LUA = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local q = tonumber(ARGV[1])
if used + q > tonumber(ARGV[2]) then return 0 end
redis.call('INCRBY', KEYS[1], q)
return 1
"""

# KEYS: quota. ARGV: quantity. Returns the amount released (never more than was used).
RELEASE_LUA = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local q = math.min(used, tonumber(ARGV[1]))
if q <= 0 then return 0 end
if used == q then redis.call('DEL', KEYS[1]) else redis.call('DECRBY', KEYS[1], q) end
return q
"""


def store_errors(
    fn: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Convert a lost Redis connection into a 503 at the boundary of the stock domain."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise ServiceUnavailable("stock store unreachable", retry_after=1) from exc

    return wrapper


def missing(pool: str) -> StockPoolMissing:
    return StockPoolMissing(f"stock pool {pool!r} does not exist", pool=pool)


def sold_out(pool: str, quantity: int) -> SoldOut:
    return SoldOut(f"stock pool {pool!r} cannot serve {quantity}", pool=pool, requested=quantity)


def as_int(value: Any) -> int:
    return 0 if value is None else int(value)


class RedisBackedEngine:
    """What both Redis backends share: quotas, restore, levels, existence, drop."""

    backend = "redis"

    def __init__(self, client: Any) -> None:
        self._redis = client
        register = client.register_script
        self._restore_script = register(RESTORE_LUA)
        self._reserve_script = register(RESERVE_LUA)
        self._release_script = register(RELEASE_LUA)
        self._metrics = DeductionMetrics(self.backend)

    def _forget(self, pool: str) -> None:
        """Drop whatever this process caches about the pool (its bucket count)."""

    async def _ready(self) -> None:
        """Make the client usable by concurrent callers (the cluster client needs it)."""

    async def _call(self, script: Any, keys: Sequence[str | bytes], args: list[Any]) -> Any:
        return await script(keys=keys, args=args)

    async def _command(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await getattr(self._redis, name)(*args, **kwargs)

    async def _bucket_count(self, pool: str) -> int | None:
        n = await self._command("hget", meta_key(pool), "buckets")
        return None if n is None else int(n)

    async def _levels(self, keys: list[str]) -> list[int]:
        values = await self._command("mget", keys)
        return [as_int(v) for v in values]

    async def _delete(self, keys: Sequence[str]) -> None:
        if keys:
            await self._command("delete", *keys)

    async def _quota_key(self, pool: str, user: str) -> str:
        return quota_key(pool, user)

    @store_errors
    async def restore(self, pool: str, bucket: int, quantity: int) -> int:
        check_name("pool", pool)
        check_quantity(quantity)
        if isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < 0:
            raise missing(pool)
        level = int(await self._call(self._restore_script, [bucket_key(pool, bucket)], [quantity]))
        if level < 0:
            raise StockPoolMissing(f"stock pool {pool!r} has no bucket {bucket}", pool=pool)
        return level

    @store_errors
    async def remaining(self, pool: str) -> list[int]:
        check_name("pool", pool)
        n = await self._bucket_count(pool)
        if n is None:
            raise missing(pool)
        levels = await self._levels([bucket_key(pool, i) for i in range(n)])
        record_levels(pool, levels)
        return levels

    @store_errors
    async def exists(self, pool: str) -> bool:
        check_name("pool", pool)
        return bool(await self._command("exists", meta_key(pool)))

    @store_errors
    async def drop(self, pool: str) -> None:
        check_name("pool", pool)
        self._forget(pool)
        n = await self._bucket_count(pool) or 0
        await self._delete([meta_key(pool), split_key(pool), holds_key(pool)])
        await self._delete([bucket_key(pool, i) for i in range(n)])
        # Buckets beyond N (left by an interrupted rebuild) and every user's quota.
        await self._ready()
        for pattern in (bucket_pattern(pool), quota_pattern(pool)):
            batch: list[str] = []
            async for key in self._redis.scan_iter(match=pattern, count=1000):
                batch.append(key.decode() if isinstance(key, bytes) else key)
                if len(batch) >= 500:
                    await self._delete(batch)
                    batch = []
            await self._delete(batch)
        self._forget(pool)
        forget_levels(pool)

    @store_errors
    async def reserve_quota(self, pool: str, user: str, quantity: int, limit: int) -> bool:
        key = await self._quota_key(check_name("pool", pool), check_name("user", user))
        check_quantity(quantity)
        check_quantity(limit, "limit", 0)
        return bool(int(await self._call(self._reserve_script, [key], [quantity, limit])))

    @store_errors
    async def release_quota(self, pool: str, user: str, quantity: int) -> int:
        key = await self._quota_key(check_name("pool", pool), check_name("user", user))
        check_quantity(quantity)
        return int(await self._call(self._release_script, [key], [quantity]))

    @store_errors
    async def quota_used(self, pool: str, user: str) -> int:
        key = await self._quota_key(check_name("pool", pool), check_name("user", user))
        return as_int(await self._command("get", key))

    async def aclose(self) -> None:
        await self._redis.aclose()


class RedisStockEngine(RedisBackedEngine):
    """One Redis server. A deduction is one EVALSHA whatever the path: a random bucket, a
    random able bucket, or a take across buckets all happen inside the same script."""

    backend = "redis"

    def __init__(self, client: aioredis.Redis) -> None:
        super().__init__(client)
        self._split_script = client.register_script(SPLIT_LUA)
        self._deduct_script = client.register_script(DEDUCT_LUA)
        self._take_script = client.register_script(TAKE_WITHIN_QUOTA_LUA)
        # pool -> [meta key, bucket keys...]; N changes only by drop/rebuild, and the script
        # refuses a stale N, so caching it keeps a deduction at one round trip.
        # Kept as bytes: the client passes them through instead of encoding 1 + N strings
        # on every call.
        self._keys: dict[str, list[bytes]] = {}

    @classmethod
    def from_url(
        cls, url: str, *, max_connections: int = 16, pool_timeout: float = 5.0
    ) -> RedisStockEngine:
        # Reconnect and resend on a dropped connection (a restarted server), never on a
        # timeout. A script resent after its reply was lost can take stock without a
        # deduction to show for it: an undersell that reconciliation gives back, never an
        # oversell.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), 3),
            retry_on_error=[RedisConnectionError],
        )
        return cls(aioredis.Redis.from_pool(pool))

    def _forget(self, pool: str) -> None:
        self._keys.pop(pool, None)

    def _layout(self, pool: str, n: int) -> list[bytes]:
        keys = [meta_key(pool).encode()] + [bucket_key(pool, i).encode() for i in range(n)]
        self._keys[pool] = keys
        return keys

    @store_errors
    async def split(self, pool: str, total: int, buckets: int) -> bool:
        check_name("pool", pool)
        check_split(total, buckets)
        keys = [split_key(pool), meta_key(pool)] + [bucket_key(pool, i) for i in range(buckets)]
        return bool(int(await self._split_script(keys=keys, args=[total, buckets])))

    @store_errors
    async def deduct(self, pool: str, quantity: int) -> Deduction:
        check_name("pool", pool)
        check_quantity(quantity)
        with self._metrics.attempt():
            takes = await self._deduct(self._deduct_script, pool, quantity, (), ())
        assert takes is not None  # only a quota refuses
        return self._metrics.served(pool, quantity, takes)

    @store_errors
    async def take_within_quota(
        self, pool: str, user: str, quantity: int, limit: int
    ) -> Deduction | None:
        key = quota_key(check_name("pool", pool), check_name("user", user))
        check_quantity(quantity)
        check_quantity(limit, "limit", 0)
        with self._metrics.attempt():
            takes = await self._deduct(self._take_script, pool, quantity, (key,), (limit,))
        if takes is None:
            return None
        return self._metrics.served(pool, quantity, takes)

    async def _deduct(
        self,
        script: Any,
        pool: str,
        quantity: int,
        before: tuple[str, ...],
        after: tuple[int, ...],
    ) -> tuple[Take, ...] | None:
        """Run a deduction ``script`` with ``before`` ahead of the pool's keys and ``after``
        behind its arguments; None when it answers -4 (the quota refused)."""
        keys = self._keys.get(pool)
        if keys is None:
            n = await self._bucket_count(pool)
            if n is None:
                raise missing(pool)
            keys = self._layout(pool, n)
        # A concurrent drop + split with another N can make the cached N stale more than
        # once in a row only by repeated re-splitting; three tries cover any sane history.
        for _ in range(3):
            reply = await script(
                keys=[*before, *keys],
                args=[len(keys) - 1, quantity, random.getrandbits(31), *after],
            )
            code = int(reply[0])
            if code >= 0:
                return tuple(
                    Take(int(reply[i]), int(reply[i + 1])) for i in range(0, len(reply), 2)
                )
            if code == -1:
                raise sold_out(pool, quantity)
            if code == -2:
                self._forget(pool)
                raise missing(pool)
            if code == -4:
                return None
            keys = self._layout(pool, int(reply[1]))
        raise ServiceUnavailable("stock pool is being re-split; retry", retry_after=1)

    @store_errors
    async def rebuild(self, pool: str, buckets: Sequence[int]) -> None:
        check_name("pool", pool)
        levels = check_levels(buckets)
        meta = meta_key(pool)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(meta)
                    old = as_int(await pipe.hget(meta, "buckets"))
                    pipe.multi()
                    for i in range(len(levels), old):
                        pipe.delete(bucket_key(pool, i))
                    for i, level in enumerate(levels):
                        pipe.set(bucket_key(pool, i), level)
                    pipe.set(split_key(pool), 1)
                    pipe.delete(holds_key(pool))
                    pipe.hset(
                        meta,
                        mapping={"buckets": len(levels), "total": sum(levels), "started": 0},
                    )
                    await pipe.execute()
                    break
                except WatchError:
                    continue
        self._forget(pool)
