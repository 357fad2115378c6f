"""Target writers against real stores: a second PostgreSQL database (from
``INCENTIVE_TEST_DATABASE_URL``), MariaDB (``INCENTIVE_TEST_MARIADB_URL``: each run makes its own
database), Redis (``INCENTIVE_TEST_REDIS_URL``) and a webhook receiver on loopback that checks
the signature and fails on purpose. A store whose URL is unset is skipped; one that is set but
unreachable fails the test. Every assertion reads the store back."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from incentive.data_models.records import (
    TargetRefused,
    TargetRow,
    TargetWriter,
    canonical_json,
    digest,
)
from incentive.data_models.targets import (
    RedisTarget,
    SqlTarget,
    TargetConfig,
    TargetUnavailable,
    WebhookTarget,
    writer_for,
)
from tests.data_models.conftest import SECRET, Receiver, target_database
from tests.servers import free_port

PG_URL = os.environ.get("INCENTIVE_TEST_DATABASE_URL")
MARIADB_URL = os.environ.get("INCENTIVE_TEST_MARIADB_URL")


_open: list[TargetWriter] = []


def opened(config: SqlTarget | RedisTarget | WebhookTarget) -> TargetWriter:
    """``writer_for``, closed at the end of the test whatever happens in it."""
    writer = writer_for(config)
    _open.append(writer)
    return writer


@pytest.fixture(autouse=True)
async def _close_writers() -> AsyncIterator[None]:
    yield
    while _open:
        await _open.pop().close()


def row(key: str, version: int = 1, **values: Any) -> TargetRow:
    return TargetRow(key, "points_out", version, digest(canonical_json([key, values])), values)


# --------------------------------------------------------------------------- configuration


def test_configs_are_told_apart_by_kind_and_refuse_bad_fields_by_name() -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(TargetConfig)
    PG = "postgresql+asyncpg://h/db"
    sql = adapter.validate_python(
        {"kind": "sql", "url": "mysql+aiomysql://u:pw@db/x", "table": "orders"}
    )
    assert isinstance(sql, SqlTarget)
    assert sql.redacted() == "mysql+aiomysql://u:***@db/x"
    assert "pw" not in repr(sql)
    redis = adapter.validate_python({"kind": "redis", "url": "redis://:pw@r:6379/2", "prefix": "p"})
    assert isinstance(redis, RedisTarget)
    assert redis.redacted() == "redis://:***@r:6379/2"
    bad = [
        ({"kind": "sql", "url": "sqlite+aiosqlite:///x.db", "table": "t"}, "url"),
        ({"kind": "sql", "url": "postgresql://h/db", "table": "t"}, "url"),
        ({"kind": "sql", "url": "postgresql+asyncpg://h/db", "table": "t; drop"}, "table"),
        ({"kind": "sql", "url": PG, "table": "t", "key_column": "a b"}, "key_column"),
        ({"kind": "sql", "url": "postgresql+asyncpg://h/db", "table": "t", "extra": 1}, "extra"),
        ({"kind": "redis", "url": "http://r", "prefix": "p"}, "url"),
        ({"kind": "redis", "url": "redis://r", "prefix": "a b"}, "prefix"),
        ({"kind": "webhook", "url": "ftp://h/x", "secret": "s" * 16}, "url"),
        ({"kind": "webhook", "url": "https://h/x", "secret": "short"}, "secret"),
        ({"kind": "webhook", "url": "https://h/x", "secret": "whsec_!!!!" * 3}, "secret"),
        ({"kind": "webhook", "url": "https://h/x", "secret": "s" * 16, "timeout_seconds": 0},
         "timeout_seconds"),
        ({"kind": "ftp", "url": "x"}, "kind"),
    ]  # fmt: skip
    for given, name in bad:
        with pytest.raises(ValidationError) as caught:
            adapter.validate_python(given)
        named = {str(part) for e in caught.value.errors() for part in e["loc"]}
        assert name in named or f"'{name}'" in str(caught.value), given
    with pytest.raises(ValidationError, match="stream_maxlen"):
        RedisTarget(url="redis://r", prefix="p", stream_maxlen=5)
    with pytest.raises(ValidationError, match="must differ"):
        SqlTarget(url="postgresql+asyncpg://h/db", table="t", hash_column="record_key")


# --------------------------------------------------------------------------- SQL targets


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def sql_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of its own on the target server, dropped at the end."""
    with target_database(request.param) as url:
        yield url


TABLE = Table(
    "points_out",
    MetaData(),
    Column("record_key", String(64), primary_key=True),
    Column("model_version", Integer),
    Column("record_hash", String(100)),
    Column("customer", String(100), nullable=False),
    Column("amount_yuan", Numeric(12, 2)),
    Column("points", BigInteger),
    Column("paid_at", DateTime(timezone=True)),
    Column("tags", Text),
    Column("active", Boolean),
)


@pytest.fixture
async def store(sql_url: str) -> AsyncIterator[AsyncEngine]:
    """The target database with an empty ``points_out`` table."""
    engine = create_async_engine(sql_url)
    async with engine.begin() as conn:
        await conn.run_sync(TABLE.drop, checkfirst=True)
        await conn.run_sync(TABLE.create)
    yield engine
    await engine.dispose()


def sql_target(url: str, **overrides: Any) -> SqlTarget:
    given = {"url": url, "table": "points_out", "version_column": "model_version"}
    return SqlTarget(**(given | {"hash_column": "record_hash"} | overrides))


async def read_back(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(TABLE))).mappings().all()
    return {r["record_key"]: dict(r) for r in rows}


async def written(url: str, rows: list[TargetRow], **overrides: Any) -> None:
    writer = opened(sql_target(url, **overrides))
    try:
        await writer.write(rows)
    finally:
        await writer.close()


async def test_the_same_rows_twice_leave_one_row_per_key_and_a_change_updates_in_place(
    store: AsyncEngine, sql_url: str
) -> None:
    rows = [row(f"k{i}", customer=f"c{i}", points=i) for i in range(3)]
    writer = opened(sql_target(sql_url))
    await writer.write(rows)
    await writer.write(rows)
    changed = row("k1", version=2, customer="renamed", points="41", amount_yuan="12.30")
    await writer.write([changed])
    await writer.close()
    found = await read_back(store)
    assert sorted(found) == ["k0", "k1", "k2"]
    assert (found["k0"]["customer"], found["k0"]["model_version"]) == ("c0", 1)
    k1 = found["k1"]
    assert (k1["customer"], k1["points"], k1["amount_yuan"]) == ("renamed", 41, Decimal("12.30"))
    assert (k1["model_version"], k1["record_hash"]) == (2, changed.hash)


async def test_values_are_converted_to_their_columns_types(
    store: AsyncEngine, sql_url: str
) -> None:
    values = {"tags": ["vip", {"tier": 2}], "paid_at": "2026-03-01T08:30:00+08:00"}
    await written(sql_url, [row("k", customer=17, active=True, **values)])
    got = (await read_back(store))["k"]
    assert (got["tags"], got["customer"]) == ('["vip",{"tier":2}]', "17")
    assert got["active"] is True
    paid = got["paid_at"] if got["paid_at"].tzinfo else got["paid_at"].replace(tzinfo=UTC)
    assert paid == datetime(2026, 3, 1, 0, 30, tzinfo=UTC)


async def test_a_batch_repeating_a_key_keeps_its_last_row(store: AsyncEngine, sql_url: str) -> None:
    await written(sql_url, [row("k", customer="first"), row("k", customer="last")])
    assert (await read_back(store))["k"]["customer"] == "last"


async def test_a_thousand_rows_then_a_thousand_changes(store: AsyncEngine, sql_url: str) -> None:
    writer = opened(sql_target(sql_url))
    await writer.write([row(f"k{i:04}", customer="c", points=i) for i in range(1000)])
    await writer.write([row(f"k{i:04}", customer="d", points=i * 2) for i in range(1000)])
    await writer.close()
    async with store.connect() as conn:
        count, total, low, high = (
            await conn.execute(
                select(
                    func.count(),
                    func.sum(TABLE.c.points),
                    func.min(TABLE.c.customer),
                    func.max(TABLE.c.customer),
                )
            )
        ).one()
    assert (count, int(total), low, high) == (1000, 999 * 1000, "d", "d")


async def test_a_column_the_table_lacks_or_a_value_it_cannot_hold_refuses_the_whole_write(
    store: AsyncEngine, sql_url: str
) -> None:
    good = row("k0", customer="c")
    with pytest.raises(TargetRefused, match="no column 'nickname'"):
        await written(sql_url, [good, row("k1", customer="c", nickname="x")])
    with pytest.raises(TargetRefused, match=r"points_out\.points"):
        await written(sql_url, [good, row("k1", customer="c", points="many")])
    assert await read_back(store) == {}


async def test_a_column_added_after_a_refusal_takes_the_rows(
    store: AsyncEngine, sql_url: str
) -> None:
    writer = opened(sql_target(sql_url))
    await writer.write([row("k0", customer="c")])
    with pytest.raises(TargetRefused, match="no column 'nickname'"):
        await writer.write([row("k1", customer="c", nickname="nick")])
    async with store.begin() as conn:
        await conn.exec_driver_sql("ALTER TABLE points_out ADD COLUMN nickname VARCHAR(20)")
    await writer.write([row("k1", customer="c", nickname="nick")])
    await writer.close()
    async with store.connect() as conn:
        found = (await conn.exec_driver_sql("SELECT record_key, nickname FROM points_out")).all()
    assert sorted(tuple(r) for r in found) == [("k0", None), ("k1", "nick")]


async def test_one_transaction_per_write(store: AsyncEngine, sql_url: str) -> None:
    # Two sets of fields: two statements; the second breaks NOT NULL, the first is undone.
    rows = [row("k0", customer="c"), row("k1", customer=None, points=1)]
    with pytest.raises(TargetRefused, match="points_out"):
        await written(sql_url, rows)
    assert await read_back(store) == {}


async def test_a_key_column_that_is_not_unique_is_refused(store: AsyncEngine, sql_url: str) -> None:
    with pytest.raises(TargetRefused, match="not the table's primary key or a unique column"):
        await written(sql_url, [row("k", customer="c")], key_column="customer")
    with pytest.raises(TargetRefused, match="no column 'missing'"):
        await written(sql_url, [row("k", customer="c")], hash_column="missing")


@pytest.mark.parametrize("scheme", ["postgresql+asyncpg", "mysql+aiomysql"])
async def test_an_unreachable_database_is_unavailable(scheme: str) -> None:
    url = f"{scheme}://u:secret@127.0.0.1:{free_port()}/db"
    with pytest.raises(TargetUnavailable) as caught:
        await written(url, [row("k", customer="c")])
    assert "secret" not in str(caught.value)


# --------------------------------------------------------------------------- Redis targets


def redis_target(redis_url: str | None, **config: Any) -> RedisTarget:
    assert redis_url is not None
    return RedisTarget(url=redis_url, **({"prefix": "pts"} | config))


async def test_redis_hashes_hold_each_record_once_and_whole(redis: Any, redis_url: str) -> None:
    writer = opened(redis_target(redis_url))
    rows = [row(f"k{i}", customer=f"c{i}", tags=["a", i]) for i in range(3)]
    await writer.write(rows)
    await writer.write(rows)
    changed = row("k1", version=2, customer="renamed")  # tags no longer mapped
    await writer.write([changed])
    await writer.close()
    assert sorted(await redis.keys("pts:*")) == [b"pts:k0", b"pts:k1", b"pts:k2"]
    assert await redis.hgetall("pts:k0") == {
        b"customer": b'"c0"',
        b"tags": b'["a",0]',
        b"_version": b"1",
        b"_hash": rows[0].hash.encode(),
    }
    assert await redis.hgetall("pts:k1") == {
        b"customer": b'"renamed"',
        b"_version": b"2",
        b"_hash": changed.hash.encode(),
    }


async def test_a_redis_stream_gets_an_entry_per_row_and_delivery(
    redis: Any, redis_url: str
) -> None:
    writer = opened(redis_target(redis_url, mode="stream"))
    rows = [row(f"k{i}", customer=f"c{i}") for i in range(3)]
    await writer.write(rows)
    await writer.write(rows)  # at least once: the consumer dedupes by key and hash
    await writer.close()
    entries = [fields for _, fields in await redis.xrange("pts")]
    assert len(entries) == 6
    assert entries[0] == {
        b"key": b"k0",
        b"model": b"points_out",
        b"version": b"1",
        b"hash": rows[0].hash.encode(),
        b"record": b'{"customer":"c0"}',
    }
    assert {(e[b"key"], e[b"hash"]) for e in entries} == {
        (r.key.encode(), r.hash.encode()) for r in rows
    }
    trimmed = opened(redis_target(redis_url, prefix="short", mode="stream", stream_maxlen=10))
    await trimmed.write([row(f"k{i}", customer="c") for i in range(1000)])
    await trimmed.close()
    assert 10 <= await redis.xlen("short") < 1000


async def test_redis_refuses_a_key_of_another_type_and_is_unavailable_when_down(
    redis: Any, redis_url: str
) -> None:
    await redis.set("pts", "a string")
    writer = opened(redis_target(redis_url, mode="stream"))
    with pytest.raises(TargetRefused, match="WRONGTYPE"):
        await writer.write([row("k", customer="c")])
    await writer.close()
    down = opened(RedisTarget(url=f"redis://127.0.0.1:{free_port()}/0", prefix="p"))
    with pytest.raises(TargetUnavailable):
        await down.write([row("k", customer="c")])
    await down.close()


# --------------------------------------------------------------------------- webhook targets
# (the receiver, checking each signature and answering a script: tests/data_models/conftest.py)


def hook(receiver: Receiver, **config: Any) -> TargetWriter:
    return opened(WebhookTarget(**({"url": receiver.url, "secret": SECRET} | config)))


async def test_a_webhook_retried_after_a_500_is_signed_and_keeps_its_id(
    receiver: Receiver,
) -> None:
    receiver.script = [500]
    writer = hook(receiver)
    rows = [row("k0", customer="c0"), row("k1", customer="c1", points=5)]
    with pytest.raises(TargetUnavailable, match="500"):
        await writer.write(rows)
    await writer.write(rows)
    await writer.write([row("k0", customer="changed")])
    await writer.close()
    (first, _), (retry, body), (other, _) = receiver.posts  # each verified by the receiver
    assert first["webhook-id"] == retry["webhook-id"] != other["webhook-id"]
    assert json.loads(body) == {
        "model": "points_out",
        "version": 1,
        "records": [
            {"key": "k0", "hash": rows[0].hash, "values": {"customer": "c0"}},
            {"key": "k1", "hash": rows[1].hash, "values": {"customer": "c1", "points": 5}},
        ],
    }


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (400, TargetRefused),
        (404, TargetRefused),
        (408, TargetUnavailable),
        (429, TargetUnavailable),
        (503, TargetUnavailable),
        ("slow", TargetUnavailable),
    ],
)
async def test_a_webhook_answer_is_refused_or_retryable(
    receiver: Receiver, answer: int | str, error: type[Exception]
) -> None:
    receiver.script = [answer]
    writer = hook(receiver, timeout_seconds=0.5)
    with pytest.raises(error):
        await writer.write([row("k", customer="c")])
    await writer.close()
    assert len(receiver.posts) == 1


async def test_a_webhook_signed_with_another_secret_is_refused_by_the_receiver(
    receiver: Receiver,
) -> None:
    writer = hook(receiver, secret="whsec_" + "b3RoZXItc2VjcmV0LW9mLXNpeHRlZW4=")
    with pytest.raises(TargetRefused, match="401"):
        await writer.write([row("k", customer="c")])
    await writer.close()
    down = opened(WebhookTarget(url=f"http://127.0.0.1:{free_port()}/h", secret=SECRET))
    with pytest.raises(TargetUnavailable):
        await down.write([row("k", customer="c")])
    await down.close()
    assert receiver.posts == []
