"""The Redis target: a hash per record, or a stream of deliveries.

- ``hash``: the record ``key`` at ``prefix:key`` is a hash of its mapped fields (each value
  as canonical JSON) plus ``_version`` (the model version) and ``_hash`` (the record's hash).
  A write replaces each record's hash whole (``DEL`` then ``HSET``, so a field the record no
  longer has goes too), all the write's records in one ``MULTI``/``EXEC``: idempotent, and a
  reader sees each record before or after, never half-written.
- ``stream``: ``XADD prefix`` one entry per row with ``key``, ``model``, ``version``, ``hash``
  and ``record`` (the mapped fields as canonical JSON), trimmed to about ``stream_maxlen``
  entries when set. Delivery is **at least once**: a write retried after a lost answer adds
  its entries again, so a consumer dedupes by ``key`` and ``hash`` (an entry whose hash is
  the one it last applied for that key changes nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from incentive.data_models.records import TargetRefused, TargetRow, canonical_json
from incentive.data_models.targets import RedisTarget, TargetUnavailable


def hash_fields(row: TargetRow) -> dict[str, str]:
    fields = {name: canonical_json(value) for name, value in row.values.items()}
    fields["_version"] = str(row.version)
    fields["_hash"] = row.hash
    return fields


def stream_fields(row: TargetRow) -> dict[str, str]:
    return {
        "key": row.key,
        "model": row.model_id,
        "version": str(row.version),
        "hash": row.hash,
        "record": canonical_json(row.values),
    }


class RedisWriter:
    """Writes ``TargetRow`` s as hashes or stream entries (see the module's docstring)."""

    def __init__(self, config: RedisTarget) -> None:
        self.config = config
        self._client: Any = None

    def _connect(self) -> Any:
        if self._client is None:
            self._client = aioredis.from_url(
                self.config.url, socket_timeout=10, socket_connect_timeout=5
            )
        return self._client

    async def write(self, rows: Sequence[TargetRow]) -> None:
        if not rows:
            return
        prefix = self.config.prefix
        for row in rows:
            if self.config.mode == "hash" and any(n in ("_version", "_hash") for n in row.values):
                raise TargetRefused(f"record {row.key!r}: _version and _hash are the target's")
        pipe = self._connect().pipeline(transaction=True)
        for row in rows:
            if self.config.mode == "hash":
                name = f"{prefix}:{row.key}"
                pipe.delete(name)
                pipe.hset(name, mapping=hash_fields(row))
            else:
                pipe.xadd(
                    prefix,
                    stream_fields(row),
                    maxlen=self.config.stream_maxlen,
                    approximate=True,
                )
        try:
            await pipe.execute()
        except redis_errors.ResponseError as exc:  # e.g. WRONGTYPE: the key holds something else
            raise TargetRefused(f"{self.config.redacted()}: {exc}"[:500]) from exc
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            raise TargetUnavailable(f"{self.config.redacted()}: {exc}"[:500]) from exc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
