"""Callers resolved a moment ago, kept for a few seconds so that a request needs no lookup.

Every authenticated request would otherwise read the user and the token's revocation (or the
partner and its key) from the database. ``PrincipalCache`` keeps what such a read found, per
credential, for ``INCENTIVE_PRINCIPAL_CACHE_SECONDS`` (default 5; 0 turns it off), never past
the credential's own expiry. Changes that take a credential away drop its entries:

- **in the process that commits the change**: at the commit (``forget_after_commit``), so
  the next request is refused;
- **in every other process, with Redis**: the change is announced on ``incentive:principals``
  right after the commit and each process drops the entries when it arrives (milliseconds);
  a process whose subscription broke empties its cache when it subscribes again;
- **without Redis** (the embedded deployment: ``incentive users block`` run beside a server on
  SQLite), and if an announcement is lost: after at most the TTL.

What drops: an access token revoked (logout, a reused refresh token, sessions beyond the cap),
a user blocked (every token of the user), a partner key revoked or rotated and a partner
disabled or enabled (every key of the partner). A change of a user's row made by hand in the
database drops nothing: the TTL bounds it.

A read that began before a drop may not fill the cache after it (``generation``), so a
request racing a revocation cannot put the old state back for another TTL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from weakref import WeakSet

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.kit.subscription import subscribed

log = logging.getLogger(__name__)

CHANNEL = "incentive:principals"
MAX_ENTRIES = 65_536

V = TypeVar("V")


@dataclass(frozen=True)
class Dropped:
    """What a committed change took away: credential ids (access-token ``jti``s, partner key
    hashes) and subjects (user ids, partner ids: every credential of theirs)."""

    credentials: frozenset[str] = frozenset()
    subjects: frozenset[str] = frozenset()

    def to_json(self) -> str:
        return json.dumps(
            {"credentials": sorted(self.credentials), "subjects": sorted(self.subjects)}
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Dropped:
        data = json.loads(text)
        return cls(frozenset(map(str, data["credentials"])), frozenset(map(str, data["subjects"])))


@dataclass
class _Entry(Generic[V]):
    value: V
    until: float  # time.monotonic() deadline
    credential: str
    subject: str


@dataclass
class PrincipalCache(Generic[V]):
    """Values by presented credential (the raw token or key), with a TTL and drop indexes."""

    ttl: float
    max_entries: int = MAX_ENTRIES
    generation: int = 0  # moves at every drop: a read begun before it may not fill the cache
    _entries: dict[str, _Entry[V]] = field(default_factory=dict)
    _by_credential: dict[str, set[str]] = field(default_factory=dict)
    _by_subject: dict[str, set[str]] = field(default_factory=dict)

    def get(self, presented: str) -> V | None:
        entry = self._entries.get(presented)
        if entry is None:
            return None
        if entry.until <= time.monotonic():
            self._remove(presented)
            return None
        return entry.value

    def put(
        self,
        presented: str,
        value: V,
        *,
        credential: str,
        subject: str,
        expires_at: float | None,
        generation: int,
    ) -> None:
        """Keep ``value`` unless a drop happened since ``generation`` was read; ``expires_at``
        (epoch seconds) caps the TTL at the credential's own expiry."""
        if self.ttl <= 0 or generation != self.generation:
            return
        now = time.monotonic()
        until = now + self.ttl
        if expires_at is not None:
            until = min(until, now + (expires_at - time.time()))
        if until <= now:
            return
        if presented not in self._entries and len(self._entries) >= self.max_entries:
            self._evict(now)
        self._remove(presented)
        self._entries[presented] = _Entry(value, until, credential, subject)
        self._by_credential.setdefault(credential, set()).add(presented)
        self._by_subject.setdefault(subject, set()).add(presented)

    def drop(self, dropped: Dropped) -> None:
        self.generation += 1
        for index, ids in (
            (self._by_credential, dropped.credentials),
            (self._by_subject, dropped.subjects),
        ):
            for id_ in ids:
                for presented in list(index.get(id_, ())):
                    self._remove(presented)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._by_credential.clear()
        self._by_subject.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _remove(self, presented: str) -> None:
        entry = self._entries.pop(presented, None)
        if entry is None:
            return
        for index, id_ in (
            (self._by_credential, entry.credential),
            (self._by_subject, entry.subject),
        ):
            keys = index.get(id_)
            if keys is not None:
                keys.discard(presented)
                if not keys:
                    del index[id_]

    def _evict(self, now: float) -> None:
        for presented in [p for p, e in self._entries.items() if e.until <= now]:
            self._remove(presented)
        while len(self._entries) >= self.max_entries:  # still full: the oldest go first
            self._remove(next(iter(self._entries)))


@dataclass(eq=False)
class Caches:
    """One process's (one app's) caches: bearer callers and partner keys."""

    bearer: PrincipalCache[Any]
    partner: PrincipalCache[Any]

    def drop(self, dropped: Dropped) -> None:
        self.bearer.drop(dropped)
        self.partner.drop(dropped)

    def clear(self) -> None:
        self.bearer.clear()
        self.partner.clear()


# Every app's caches in this process (tests run several apps in one process): a commit here
# drops from all of them at once; announcements reach the other processes.
_live: WeakSet[Caches] = WeakSet()
_unannounced: list[Dropped] = []
_announcers: set[asyncio.Event] = set()
_collecting = False  # a command-line process: keep drops for announce_collected()


def register(caches: Caches) -> None:
    _live.add(caches)


def unregister(caches: Caches) -> None:
    _live.discard(caches)


def forget_after_commit(
    session: AsyncSession, *, credentials: Iterable[str] = (), subjects: Iterable[str] = ()
) -> None:
    """When ``session``'s transaction commits: drop these credentials and subjects from every
    cache of this process and announce it to the others. Nothing happens on rollback."""
    dropped = Dropped(frozenset(credentials), frozenset(subjects))
    if not dropped.credentials and not dropped.subjects:
        return

    def on_commit(_: Any) -> None:
        dropped_now(dropped)

    event.listen(session.sync_session, "after_commit", on_commit, once=True)


def dropped_now(dropped: Dropped) -> None:
    """Drop from this process's caches now and queue the announcement (if anyone announces)."""
    for caches in list(_live):
        caches.drop(dropped)
    if _announcers or _collecting:
        _unannounced.append(dropped)
        for wake in _announcers:
            wake.set()


async def announce(redis: Any, dropped: Dropped) -> None:
    """Tell every process subscribed on Redis to drop ``dropped`` (a command-line change)."""
    await redis.publish(CHANNEL, dropped.to_json())


def collect_drops() -> None:
    """In a process without an announcer (a command): keep drops for ``announce_collected``."""
    global _collecting
    _collecting = True


async def announce_collected(redis_url: str | None) -> None:
    """Announce the drops this command committed to every server (nothing without Redis:
    the servers drop them within the TTL)."""
    drops, _unannounced[:] = list(_unannounced), []
    if not redis_url or not drops:
        return
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    try:
        for dropped in drops:
            await announce(client, dropped)
    except Exception:
        log.warning("principal drop not announced; servers drop it at TTL", exc_info=True)
    finally:
        await client.aclose()


async def run_announcer(caches: Caches, redis: Any) -> None:
    """Until cancelled: publish this process's drops, and apply the other processes' ones."""
    wake = asyncio.Event()
    _announcers.add(wake)
    listener = asyncio.create_task(_listen(caches, redis))
    try:
        while True:
            await wake.wait()
            wake.clear()
            while _unannounced:
                dropped = _unannounced.pop(0)
                try:
                    await announce(redis, dropped)
                except Exception:
                    log.warning("principal drop not announced; peers drop it at TTL", exc_info=True)
    finally:
        _announcers.discard(wake)
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def _listen(caches: Caches, redis: Any) -> None:
    while True:
        try:
            async with subscribed(redis, CHANNEL) as pubsub:
                # Whatever was announced while not subscribed is lost: start afresh.
                caches.clear()
                while True:
                    message = await pubsub.get_message(timeout=30)
                    if message is not None:
                        try:
                            caches.drop(Dropped.from_json(message["data"]))
                        except (ValueError, KeyError, TypeError):
                            log.warning("malformed principal drop announcement ignored")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("principal drop subscription lost; resubscribing", exc_info=True)
            await asyncio.sleep(1)
