"""What only the Redis backends have: a store that can lose its data, and a cluster whose
nodes must really share the buckets."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from incentive.stock.backends.cluster import ClusterStockEngine, home_bucket, home_quota_key
from incentive.stock.backends.embedded import EmbeddedStockEngine
from incentive.stock.backends.redis import RedisStockEngine, bucket_key, meta_key
from incentive.stock.engine import stock_engine_from_url
from incentive.stock.errors import SoldOut, StockPoolMissing
from tests.servers import free_port
from tests.stock.conftest import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own: the machine's shared Redis is never shut down."""
    server = RedisServer(free_port(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def test_store_loses_its_data_and_is_rebuilt(own_redis: RedisServer) -> None:
    engine = stock_engine_from_url(own_redis.url)
    pool = "flash-restart"
    try:
        assert await engine.split(pool, 100, 4)
        taken = [await engine.deduct(pool, 3) for _ in range(5)]
        levels = await engine.remaining(pool)
        assert sum(levels) == 85

        admin = aioredis.Redis(port=own_redis.port)
        await admin.shutdown(nosave=True)
        await admin.aclose()
        await asyncio.to_thread(own_redis.wait_stopped)
        await asyncio.to_thread(own_redis.start)  # same port, empty

        assert not await engine.exists(pool)
        with pytest.raises(StockPoolMissing):
            await engine.deduct(pool, 1)
        # The database knows what was sold; the store is rebuilt from it.
        await engine.rebuild(pool, levels)
        assert await engine.exists(pool)
        assert await engine.remaining(pool) == levels
        assert await engine.split(pool, 100, 4) is False  # still split exactly once
        more = await asyncio.gather(*(engine.deduct(pool, 1) for _ in range(85)))
        assert sum(d.quantity for d in taken + list(more)) == 100
        assert await engine.remaining(pool) == [0, 0, 0, 0]
    finally:
        await engine.aclose()


async def test_store_down_is_a_503(own_redis: RedisServer) -> None:
    from incentive.errors import ServiceUnavailable

    engine = stock_engine_from_url(own_redis.url)
    try:
        await engine.split("p", 10, 2)
        await asyncio.to_thread(own_redis.stop)
        with pytest.raises(ServiceUnavailable):
            await engine.deduct("p", 1)
    finally:
        await engine.aclose()


async def test_cluster_buckets_land_on_several_nodes(redis_cluster: list[RedisServer]) -> None:
    engine = stock_engine_from_url(f"redis+cluster://127.0.0.1:{redis_cluster[0].port}")
    assert isinstance(engine, ClusterStockEngine)
    pool = f"spread-{uuid.uuid4().hex[:8]}"
    try:
        await engine.split(pool, 1600, 16)
        await engine.reserve_quota(pool, "u1", 1, 5)
        holders: dict[str, int] = {}
        slots: set[int] = set()
        for node in redis_cluster:
            with redis.Redis(port=node.port) as client:
                for i in range(16):
                    key = bucket_key(pool, i)
                    slots.add(int(client.cluster("KEYSLOT", key)))
                    # A node answers EXISTS only for keys in its own slots (else MOVED).
                    try:
                        if client.exists(key):
                            holders[key] = node.port
                    except redis.ResponseError:
                        continue
                for key in (meta_key(pool), home_quota_key(pool, home_bucket("u1", 16), "u1")):
                    try:
                        if client.exists(key):
                            holders[key] = node.port
                    except redis.ResponseError:
                        continue
        assert len(holders) == 18  # every key found, on exactly the node owning its slot
        bucket_nodes = {holders[bucket_key(pool, i)] for i in range(16)}
        assert len(bucket_nodes) >= 2
        assert len(slots) == 16  # each bucket has a hash slot of its own
        assert sum(await engine.remaining(pool)) == 1600
    finally:
        await engine.drop(pool)
        await engine.aclose()


async def test_factory_picks_the_backend(
    redis_cluster: list[RedisServer], stock_redis_url: str
) -> None:
    assert isinstance(stock_engine_from_url(None), EmbeddedStockEngine)
    single = stock_engine_from_url(stock_redis_url)
    assert isinstance(single, RedisStockEngine)
    port = redis_cluster[0].port
    for url in (f"redis://127.0.0.1:{port}?cluster=1", f"redis+cluster://127.0.0.1:{port}"):
        engine = stock_engine_from_url(url)
        assert isinstance(engine, ClusterStockEngine)
        assert not await engine.exists("nothing-here")
        await engine.aclose()
    await single.aclose()
    with pytest.raises(ValueError, match="redis://"):
        stock_engine_from_url("http://127.0.0.1:1")


async def test_fresh_cluster_engine_serves_concurrent_first_calls(
    redis_cluster: list[RedisServer],
) -> None:
    # redis-py's async cluster client fails when its very first commands run concurrently;
    # the engine discovers the cluster once before letting them through.
    engine = stock_engine_from_url(f"redis://127.0.0.1:{redis_cluster[0].port}?cluster=1")
    pool = f"fresh-{uuid.uuid4().hex[:8]}"
    try:
        results = await asyncio.gather(*(engine.split(pool, 100 + i, 4) for i in range(50)))
        assert results.count(True) == 1
    finally:
        await engine.drop(pool)
        await engine.aclose()


# What the scripts call inside Redis (counted there too, but no round trip of their own).
IN_SCRIPT = {"cmdstat_get", "cmdstat_hget", "cmdstat_incrby", "cmdstat_decrby"}


def _round_trips(client: redis.Redis) -> int:
    """Commands the engine sent since the last CONFIG RESETSTAT (scripts as one each)."""
    stats = client.info("commandstats")
    sent = {k for k in stats if not k.startswith(("cmdstat_config", "cmdstat_info"))}
    assert sent <= IN_SCRIPT | {"cmdstat_evalsha"}
    return int(stats.get("cmdstat_evalsha", {"calls": 0})["calls"])


async def test_quota_and_deduction_are_one_round_trip(own_redis: RedisServer) -> None:
    engine = stock_engine_from_url(own_redis.url)
    pool = "one-trip"
    try:
        await engine.split(pool, 1000, 16)
        await engine.take_within_quota(pool, "u0", 1, 5)  # the bucket layout is cached now
        with redis.Redis(port=own_redis.port) as client:
            client.config_resetstat()
            for i in range(20):
                assert await engine.take_within_quota(pool, f"u{i}", 1, 5) is not None
            assert _round_trips(client) == 20
    finally:
        await engine.aclose()


async def test_cluster_quota_and_home_bucket_are_one_round_trip(
    redis_cluster: list[RedisServer],
) -> None:
    engine = stock_engine_from_url(f"redis+cluster://127.0.0.1:{redis_cluster[0].port}")
    pool = f"trip-{uuid.uuid4().hex[:8]}"
    clients = [redis.Redis(port=node.port) for node in redis_cluster]
    try:
        await engine.split(pool, 1600, 16)
        await engine.take_within_quota(pool, "warm", 1, 5)
        for client in clients:
            client.config_resetstat()
        for i in range(20):
            assert await engine.take_within_quota(pool, f"u{i}", 1, 5) is not None
        assert sum(_round_trips(c) for c in clients) == 20
        # Each user's quota shares a slot with the bucket served: one script, no cross-slot.
        for i in range(20):
            home = home_bucket(f"u{i}", 16)
            key = home_quota_key(pool, home, f"u{i}")
            slot = int(clients[0].cluster("KEYSLOT", key))
            assert slot == int(clients[0].cluster("KEYSLOT", bucket_key(pool, home)))
            assert await engine.quota_used(pool, f"u{i}") == 1
    finally:
        for client in clients:
            client.close()
        await engine.drop(pool)
        await engine.aclose()


async def test_cluster_home_bucket_empty_falls_back_and_keeps_the_quota_exact(
    redis_cluster: list[RedisServer],
) -> None:
    engine = stock_engine_from_url(f"redis+cluster://127.0.0.1:{redis_cluster[0].port}")
    pool = f"home-{uuid.uuid4().hex[:8]}"
    try:
        home = home_bucket("eve", 4)
        levels = [3, 3, 3, 3]
        levels[home] = 0
        await engine.rebuild(pool, levels)  # eve's home bucket is empty
        first = await engine.take_within_quota(pool, "eve", 2, 4)
        assert first is not None
        assert home not in {t.bucket for t in first.takes}
        assert await engine.quota_used(pool, "eve") == 2
        # Not enough anywhere: sold out, and the quota the script reserved is given back.
        with pytest.raises(SoldOut):
            await engine.take_within_quota(pool, "frank", 20, 40)
        assert await engine.quota_used(pool, "frank") == 0
        assert await engine.take_within_quota(pool, "eve", 3, 4) is None
        assert sum(await engine.remaining(pool)) == 7
    finally:
        await engine.drop(pool)
        await engine.aclose()
