"""The reference line of ``bench/flash_sale.py``: the same flash-sale purchase as Incentive's,
written as plainly as it can be (Starlette + asyncpg + redis-py, no framework around it).

Same guarantees as ``POST /api/v1/flash-sales/{id}/purchases``:

- a bearer EdDSA JWT verified by its ``kid`` against the key ring's public key (verified
  tokens cached; the expiry checked on every use);
- one Lua script checks the buyer's quota and deducts from a random one of the buckets (any
  able bucket when that one is empty), so neither the stock nor the quota is ever passed;
- the purchase row is group-committed (one ``INSERT … SELECT unnest(…)`` per batch) **before**
  the 201; a failed write gives the stock and the quota back and answers 503;
- the ``Idempotency-Key`` is kept: the row is unique per (sale, buyer, key), and a retry
  answers the recorded purchase (its deduction given back).

    LEAN_DATABASE_URL=postgresql://… LEAN_REDIS_URL=redis://… LEAN_PUBLIC_KEY=key.pem \\
    LEAN_SALE_ID=<32 hex> LEAN_STOCK=1000000 LEAN_LIMIT=1000000 \\
    uvicorn --app-dir bench lean_purchase:app --port 8001
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import jwt
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SALE = os.environ.get("LEAN_SALE_ID", "0" * 32)
BUCKETS = int(os.environ.get("LEAN_BUCKETS", "16"))
LIMIT = int(os.environ.get("LEAN_LIMIT", "1000000"))
KEY_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,200}")
TABLE = "lean_purchases"

# KEYS: quota, bucket 0..N-1. ARGV: quantity, limit, random. {-2} over the limit; {-1} sold
# out; else {bucket}. Both the quota and the bucket change, or neither.
BUY_LUA = """
local q = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + q > tonumber(ARGV[2]) then return {-2} end
local n = #KEYS - 1
local first = tonumber(ARGV[3]) % n
for step = 0, n - 1 do
  local k = KEYS[2 + (first + step) % n]
  if tonumber(redis.call('GET', k) or '0') >= q then
    redis.call('DECRBY', k, q)
    redis.call('INCRBY', KEYS[1], q)
    return {(first + step) % n}
  end
end
return {-1}
"""
GIVE_BACK_LUA = """
redis.call('INCRBY', KEYS[2], ARGV[1])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
redis.call('SET', KEYS[1], math.max(used - tonumber(ARGV[1]), 0))
"""
INSERT = f"""
INSERT INTO {TABLE} (id, sale_id, user_id, quantity, bucket, idempotency_key, created_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::int[], $6::text[],
                     $7::timestamptz[])
ON CONFLICT (sale_id, user_id, idempotency_key) DO NOTHING RETURNING id
"""


def problem(status: int, slug: str) -> JSONResponse:
    body = {"type": f"https://incentive.example/problems/{slug}", "title": slug, "status": status}
    return JSONResponse(body, status, media_type="application/problem+json")


class Tokens:
    """EdDSA JWTs of one public key; verified claims cached per token."""

    def __init__(self, pem: bytes, kid: str) -> None:
        self.key = load_pem_public_key(pem)
        self.kid = kid
        self.cache: dict[str, dict[str, Any]] = {}

    def user(self, authorization: str | None) -> str | None:
        if not authorization or not authorization.startswith("Bearer "):
            return None
        token = authorization[7:]
        claims = self.cache.get(token)
        if claims is None:
            try:
                if jwt.get_unverified_header(token).get("kid") != self.kid:
                    return None
                claims = jwt.decode(token, self.key, algorithms=["EdDSA"])
            except jwt.PyJWTError:
                return None
            if len(self.cache) > 100_000:
                self.cache.clear()
            self.cache[token] = claims
        if claims["exp"] <= time.time() or claims.get("role") != "customer":
            return None
        return str(claims["sub"])


class Recorder:
    """Group commit: every row queued while a batch is written goes into the next one."""

    def __init__(self, pg: asyncpg.Pool) -> None:
        self.pg = pg
        self.queue: asyncio.Queue[tuple[tuple[Any, ...], asyncio.Future[bool]]] = asyncio.Queue()

    async def record(self, row: tuple[Any, ...]) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((row, future))
        return await future

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < 500 and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                columns = zip(*(row for row, _ in batch), strict=True)
                async with self.pg.acquire() as conn, conn.transaction():
                    inserted = {r[0] for r in await conn.fetch(INSERT, *columns)}
            except Exception as exc:
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for row, future in batch:  # after the commit
                future.set_result(row[0] in inserted)


@asynccontextmanager
async def lifespan(app: Starlette) -> Any:
    pg = await asyncpg.create_pool(os.environ["LEAN_DATABASE_URL"], min_size=2, max_size=4)
    await pg.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLE} (id text PRIMARY KEY, sale_id text NOT NULL, "
        "user_id text NOT NULL, quantity bigint NOT NULL, bucket int NOT NULL, "
        "idempotency_key text NOT NULL, created_at timestamptz NOT NULL, "
        "UNIQUE (sale_id, user_id, idempotency_key))"
    )
    # Like the stock engine: a few shared connections, callers beyond them wait.
    r = aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool.from_url(os.environ["LEAN_REDIS_URL"], max_connections=16)
    )
    stock = int(os.environ.get("LEAN_STOCK", "1000000"))
    for i in range(BUCKETS):
        await r.set(f"lean:{SALE}:b:{i}", stock // BUCKETS + (i < stock % BUCKETS), nx=True)
    pem = Path(os.environ["LEAN_PUBLIC_KEY"]).read_bytes()  # noqa: ASYNC240 - start-up
    app.state.tokens = Tokens(pem, os.environ["LEAN_KID"])
    app.state.redis, app.state.pg = r, pg
    app.state.buy = r.register_script(BUY_LUA)
    app.state.give_back = r.register_script(GIVE_BACK_LUA)
    app.state.buckets = [f"lean:{SALE}:b:{i}" for i in range(BUCKETS)]
    app.state.recorder = Recorder(pg)
    writer = asyncio.create_task(app.state.recorder.run())
    yield
    writer.cancel()
    await r.aclose()
    await pg.close()


async def purchase(request: Request) -> Response:
    state = request.app.state
    user = state.tokens.user(request.headers.get("authorization"))
    if user is None:
        return problem(401, "unauthorized")
    if request.path_params["sale_id"] != SALE:
        return problem(404, "not-found")
    key = request.headers.get("idempotency-key")
    if key is None or not KEY_PATTERN.fullmatch(key):
        return problem(422, "invalid-field")
    try:
        quantity = json.loads(await request.body())["quantity"]
    except (ValueError, TypeError, KeyError):
        return problem(422, "invalid-field")
    if type(quantity) is not int or not 1 <= quantity <= LIMIT:
        return problem(422, "invalid-field")
    quota = f"lean:{SALE}:q:{user}"
    (bucket,) = await state.buy(
        keys=[quota, *state.buckets], args=[quantity, LIMIT, random.getrandbits(31)]
    )
    if bucket < 0:
        recorded = await _recorded(state.pg, user, key)
        if recorded is not None:
            return _answer(recorded, replayed=True)
        return problem(409, "limit-exceeded" if bucket == -2 else "sold-out")
    row = (uuid.uuid4().hex, SALE, user, quantity, bucket, key, datetime.now(UTC))
    try:
        inserted = await state.recorder.record(row)
    except Exception:
        await state.give_back(keys=[quota, state.buckets[bucket]], args=[quantity])
        return problem(503, "unavailable")
    if not inserted:  # the key was recorded by an earlier request: its answer, not ours
        await state.give_back(keys=[quota, state.buckets[bucket]], args=[quantity])
        recorded = await _recorded(state.pg, user, key)
        return _answer(recorded, replayed=True) if recorded else problem(503, "unavailable")
    return _answer(row, replayed=False)


async def _recorded(pg: asyncpg.Pool, user: str, key: str) -> tuple[Any, ...] | None:
    row = await pg.fetchrow(
        f"SELECT id, sale_id, user_id, quantity, bucket, idempotency_key, created_at FROM {TABLE} "
        "WHERE sale_id = $1 AND user_id = $2 AND idempotency_key = $3",
        SALE,
        user,
        key,
    )
    return None if row is None else tuple(row)


def _answer(row: tuple[Any, ...], *, replayed: bool) -> JSONResponse:
    body = {
        "id": row[0],
        "flash_sale_id": row[1],
        "quantity": row[3],
        "bucket": row[4],
        "takes": [{"bucket": row[4], "quantity": row[3]}],
        "created_at": row[6].isoformat(),
    }
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return JSONResponse(body, 201, headers=headers)


async def ready(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/api/v1/flash-sales/{sale_id}/purchases", purchase, methods=["POST"]),
        Route("/readyz", ready),
    ],
    lifespan=lifespan,
)
