"""Production transport: one Redis stream per topic, one consumer group per subscriber.

The relay XADDs committed outbox events to ``incentive:events:<topic>``. Every process runs a
``StreamConsumer`` per subscription: XREADGROUP hands each message to one consumer of the
subscriber's group, the handler runs (idempotently, see ``events.service.handle``) and the
message is XACKed only after the handler's transaction committed. A message whose handler
failed, or whose consumer died, stays pending and is taken over with XAUTOCLAIM once it has
been idle for ``events.stream_claim_idle_seconds``, by whichever consumer gets there first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from redis.exceptions import ResponseError

from incentive.config import live_config
from incentive.db import Database, new_id
from incentive.events.bus import Event, Subscription
from incentive.events.keys import STREAM_CLAIM_IDLE_SECONDS, STREAM_MAXLEN
from incentive.events.service import handle

log = logging.getLogger(__name__)

STREAM_PREFIX = "incentive:events:"


def stream_name(topic: str) -> str:
    return STREAM_PREFIX + topic


def encode(event: Event) -> dict[str, str]:
    return {
        "event_id": event.id,
        "topic": event.topic,
        "key": "" if event.key is None else event.key,
        "has_key": "1" if event.key is not None else "0",
        "payload": json.dumps(event.payload, separators=(",", ":"), ensure_ascii=False),
        "occurred_at": event.occurred_at.isoformat(),
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode(fields: dict[Any, Any]) -> Event:
    f = {_text(k): _text(v) for k, v in fields.items()}
    payload = json.loads(f["payload"])
    if not isinstance(payload, dict):
        raise ValueError("payload is not an object")
    occurred = datetime.fromisoformat(f["occurred_at"])
    if occurred.tzinfo is None:
        raise ValueError("naive occurred_at")
    return Event(
        f["event_id"], f["topic"], f["key"] if f.get("has_key") == "1" else None, payload, occurred
    )


class RedisStreamsTransport:
    name = "redis-streams"

    def __init__(self, redis: Any, maxlen: int | None = None) -> None:
        self.redis = redis
        self.maxlen = maxlen

    async def deliver(self, events: Sequence[Event]) -> dict[str, str | None]:
        if not events:
            return {}
        maxlen = self.maxlen or live_config.get(STREAM_MAXLEN)
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            pipe.xadd(stream_name(event.topic), encode(event), maxlen=maxlen, approximate=True)
        results = await pipe.execute(raise_on_error=False)
        return {
            event.id: (f"{type(r).__name__}: {r}" if isinstance(r, Exception) else None)
            for event, r in zip(events, results, strict=True)
        }


def consumer_name() -> str:
    """Unique per process run, so a restarted process never inherits a dead one's messages
    by name; they are reclaimed by idle time instead."""
    return f"{socket.gethostname()}-{os.getpid()}-{new_id()[:8]}"


class StreamConsumer:
    """Feeds one subscription from its topic stream until cancelled."""

    def __init__(
        self,
        db: Database,
        redis: Any,
        subscription: Subscription,
        *,
        consumer: str | None = None,
        block_ms: int = 1000,
        count: int = 100,
        claim_idle_seconds: float | None = None,
    ) -> None:
        self.db = db
        self.redis = redis
        self.subscription = subscription
        self.stream = stream_name(subscription.topic)
        self.group = subscription.name
        self.consumer = consumer or consumer_name()
        self.block_ms = block_ms
        self.count = count
        self._claim_idle_seconds = claim_idle_seconds

    @property
    def claim_idle_ms(self) -> int:
        seconds = self._claim_idle_seconds
        if seconds is None:
            seconds = float(live_config.get(STREAM_CLAIM_IDLE_SECONDS))
        return max(1, int(seconds * 1000))

    async def ensure_group(self) -> None:
        # Start at 0, not $: events relayed before this subscriber's first start are still
        # delivered (at least once beats "only what arrives after I exist").
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_new(self, block_ms: int | None = None) -> int:
        """Handle messages never delivered to this group; returns how many were handled."""
        response = await self.redis.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=self.count,
            block=self.block_ms if block_ms is None else block_ms,
        )
        handled = 0
        for _stream, messages in response or []:
            handled += await self._handle_all(messages)
        return handled

    async def claim_stale(self) -> int:
        """Take over messages pending (unacknowledged) longer than the idle threshold."""
        handled = 0
        start = "0-0"
        while True:
            reply = await self.redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id=start,
                count=self.count,
            )
            start = _text(reply[0])
            messages = [m for m in reply[1] if m is not None and m[1] is not None]
            handled += await self._handle_all(messages)
            if start == "0-0":
                return handled

    async def _handle_all(self, messages: Sequence[Any]) -> int:
        handled = 0
        for message_id, fields in messages:
            try:
                event = decode(fields)
            except (KeyError, ValueError) as exc:
                # Unreadable forever: acknowledge so it cannot block the group, and say so.
                log.error(
                    "undecodable stream message dropped",
                    extra={
                        "stream": self.stream,
                        "message_id": _text(message_id),
                        "error": str(exc),
                    },
                )
                await self.redis.xack(self.stream, self.group, message_id)
                continue
            try:
                await handle(self.db, self.subscription, event)
            except Exception:
                log.warning(
                    "event handler failed; stays pending for retry",
                    exc_info=True,
                    extra={"subscriber": self.subscription.name, "event_id": event.id},
                )
                continue
            await self.redis.xack(self.stream, self.group, message_id)
            handled += 1
        return handled

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_claim = 0.0
        while True:
            try:
                await self.ensure_group()
                while True:
                    if loop.time() >= next_claim:
                        await self.claim_stale()
                        next_claim = loop.time() + min(self.claim_idle_ms / 1000, 5.0)
                    await self.read_new()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis or the database unavailable: nothing is acknowledged, so nothing is
                # lost; back off and resume.
                log.warning(
                    "stream consumer error; retrying",
                    exc_info=True,
                    extra={"subscriber": self.subscription.name},
                )
                await asyncio.sleep(1.0)
