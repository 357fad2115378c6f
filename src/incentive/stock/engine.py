"""The stock engine: sharded integer stock that never goes below zero.

A *pool* (one flash sale, one reward's stock, one coupon quota) is split once into N
*buckets*. A deduction picks a bucket at random among those that can serve it and takes the
quantity atomically, so concurrent buyers spread over N keys instead of queueing on one hot
key. When no single bucket can serve a quantity but the buckets together can, the quantity
is taken across several buckets; ``SoldOut`` is raised only when the whole pool cannot serve
it. Per-user quotas ("at most 2 per customer") are kept next to the pool.

The stock store is never the only copy of what was sold: callers record every deduction in
the database, give it back with ``restore`` when their transaction fails, and ``rebuild`` a
pool from the database after the store lost its data.

Backends (see ``stock_engine_from_url``): embedded (in-process), Redis (one Lua round trip
per deduction) and Redis Cluster (buckets spread over nodes by hash tag).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from incentive.errors import InvalidField

MAX_BUCKETS = 1024
# Lua numbers are doubles: stay far below 2**53 so every value stays an exact integer.
MAX_STOCK = 10**15
_NAME = re.compile(r"[A-Za-z0-9_.:@-]{1,200}")


class Take(NamedTuple):
    """``quantity`` units taken from bucket number ``bucket``."""

    bucket: int
    quantity: int


@dataclass(frozen=True, slots=True)
class Deduction:
    """A successful deduction: the buckets it came from (one, or several when split)."""

    pool: str
    quantity: int
    takes: tuple[Take, ...]


@runtime_checkable
class StockEngine(Protocol):
    """One interface, three backends. All quantities are positive integers.

    Every method is atomic with respect to concurrent callers in any number of processes
    sharing the same store; no method ever leaves a bucket or a quota below zero.
    """

    backend: str

    async def split(self, pool: str, total: int, buckets: int) -> bool:
        """Create ``pool`` with ``total`` units split evenly over ``buckets`` buckets (the
        remainder one each to the first buckets). Exactly once: when the pool was already
        split, nothing changes and False is returned."""
        ...

    async def deduct(self, pool: str, quantity: int) -> Deduction:
        """Take ``quantity`` units from a random bucket that can serve it, else across
        buckets. Raises ``SoldOut`` (nothing taken) only when the whole pool holds less than
        ``quantity``; ``StockPoolMissing`` when the pool does not exist."""
        ...

    async def restore(self, pool: str, bucket: int, quantity: int) -> int:
        """Give ``quantity`` units back to ``bucket`` (a failed order, reconciliation);
        returns the bucket's new level."""
        ...

    async def remaining(self, pool: str) -> list[int]:
        """Units left per bucket (also refreshes the per-bucket gauge)."""
        ...

    async def rebuild(self, pool: str, buckets: Sequence[int]) -> None:
        """Overwrite the pool with these bucket levels (after the store lost its data, or to
        reconcile it with the database); marks the pool as split."""
        ...

    async def exists(self, pool: str) -> bool: ...

    async def drop(self, pool: str) -> None:
        """Remove the pool, its split marker and every user's quota for it."""
        ...

    async def reserve_quota(self, pool: str, user: str, quantity: int, limit: int) -> bool:
        """Add ``quantity`` to ``user``'s use of ``pool`` only if the result stays within
        ``limit``; atomic, so N concurrent calls never admit more than ``limit``."""
        ...

    async def take_within_quota(
        self, pool: str, user: str, quantity: int, limit: int
    ) -> Deduction | None:
        """``reserve_quota`` and ``deduct`` as one atomic step (one script, one round trip on
        Redis in the common case): None when the user's use would pass ``limit`` (nothing
        reserved, nothing taken); ``SoldOut`` when the pool cannot serve ``quantity`` (the
        quota left as it was); otherwise the deduction, with ``quantity`` added to the user's
        use. A caller whose order then fails undoes both: ``give_back`` and
        ``release_quota``."""
        ...

    async def release_quota(self, pool: str, user: str, quantity: int) -> int:
        """Give back up to ``quantity`` of the user's use (compensation); never below zero.
        Returns the amount actually released."""
        ...

    async def quota_used(self, pool: str, user: str) -> int: ...

    async def aclose(self) -> None: ...


async def give_back(engine: StockEngine, deduction: Deduction) -> None:
    """Compensate a deduction whose order could not be recorded: restore every take."""
    for take in deduction.takes:
        await engine.restore(deduction.pool, take.bucket, take.quantity)


def even_split(total: int, buckets: int) -> list[int]:
    base, rest = divmod(total, buckets)
    return [base + 1 if i < rest else base for i in range(buckets)]


def check_name(field: str, value: str) -> str:
    # Pool and user names become Redis key parts inside a {hash tag}: braces, '#' (our
    # separator) and glob characters (used when dropping) must never appear in them.
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidField(field, "1-200 characters of A-Z a-z 0-9 _ . : @ -")
    return value


def check_quantity(value: int, field: str = "quantity", minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidField(field, "must be an integer")
    if not minimum <= value <= MAX_STOCK:
        raise InvalidField(field, f"must be between {minimum} and {MAX_STOCK}")
    return value


def check_split(total: int, buckets: int) -> None:
    check_quantity(total, "total", 0)
    if isinstance(buckets, bool) or not isinstance(buckets, int):
        raise InvalidField("buckets", "must be an integer")
    if not 1 <= buckets <= MAX_BUCKETS:
        raise InvalidField("buckets", f"must be between 1 and {MAX_BUCKETS}")


def check_levels(levels: Sequence[int]) -> list[int]:
    if not 1 <= len(levels) <= MAX_BUCKETS:
        raise InvalidField("buckets", f"must hold between 1 and {MAX_BUCKETS} levels")
    out = [check_quantity(v, "buckets", 0) for v in levels]
    check_quantity(sum(out), "buckets", 0)
    return out


def stock_engine_from_url(
    url: str | None, *, max_connections: int = 16, pool_timeout: float = 5.0
) -> StockEngine:
    """Build the engine for a deployment.

    - ``None`` → embedded, in-process engine (the zero-service default; one process only).
    - ``redis://host:port/db`` (or ``rediss://``, ``unix://``) → one Redis server.
    - ``redis+cluster://host:port`` or ``redis://host:port?cluster=1`` → Redis Cluster; the
      host is any node, the others are discovered.

    ``max_connections`` caps the connections (per node on a cluster) one engine opens;
    callers beyond it wait for a free connection (up to ``pool_timeout`` seconds on one
    server, then a ``ConnectionError`` answered as a 503) instead of failing. A few connections
    shared by many callers beat one per caller: the Python client, not Redis, is the limit
    (``bench/flash_sale.py``).
    """
    if url is None:
        from incentive.stock.backends.embedded import EmbeddedStockEngine

        return EmbeddedStockEngine()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = parse_qsl(parts.query, keep_blank_values=True)
    cluster = scheme.endswith("+cluster") or any(
        k == "cluster" and v.lower() in ("1", "true", "yes") for k, v in query
    )
    scheme = scheme.removesuffix("+cluster")
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"stock engine URL must be redis://, rediss:// or unix://, got {url!r}")
    plain = urlunsplit(
        (
            scheme,
            parts.netloc,
            parts.path,
            urlencode([(k, v) for k, v in query if k != "cluster"]),
            parts.fragment,
        )
    )
    if cluster:
        from incentive.stock.backends.cluster import ClusterStockEngine

        return ClusterStockEngine.from_url(plain, max_connections=max_connections)
    from incentive.stock.backends.redis import RedisStockEngine

    return RedisStockEngine.from_url(
        plain, max_connections=max_connections, pool_timeout=pool_timeout
    )
