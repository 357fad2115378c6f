"""The process's sensitive-word matcher, and the task that keeps it current.

Each process holds one ``Screen`` (``app.state.review`` and ``screen``): the matcher built from
every list at one revision. The refresher polls the one-row ``review_revision`` (every
``settings.review_refresh_seconds``, half a second by default) and, when it moved, loads the
words and builds the new matcher in a worker thread — requests go on being reviewed with the
old one meanwhile — then swaps it in with one assignment. A list changed anywhere is therefore
applied in every process within the poll interval plus the build (``bench/review.py``).

A submission does not wait for the refresher: it reads the revision in its own transaction
and, if the lists moved, builds the matcher then (``screen.snapshot(conn, fresh=True)``), so
it is always screened against every change committed before it. A process that started no
screen (a script, a unit test calling a service directly) builds it the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncConnection

from incentive.db import Database
from incentive.review import words
from incentive.review.matcher import Matcher

log = logging.getLogger(__name__)

REVISION = Gauge("incentive_review_words_revision", "Word-list revision this process matches")
WORDS = Gauge("incentive_review_words", "Sensitive words in this process's matcher")
BUILD_SECONDS = Histogram(
    "incentive_review_build_seconds",
    "Loading the word lists and building the matcher",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10),
)
REFRESH_FAILURES = Counter(
    "incentive_review_refresh_failures_total", "Word-list refreshes that failed (kept the old)"
)


@dataclass(frozen=True)
class Snapshot:
    """One matcher and what it was built from."""

    revision: int
    matcher: Matcher
    versions: dict[str, int] = field(default_factory=dict)
    words: int = 0


async def build(conn: AsyncConnection) -> Snapshot:
    started = time.perf_counter()
    loaded = await words.load(conn)
    matcher = await asyncio.to_thread(Matcher.build, loaded.words)
    BUILD_SECONDS.observe(time.perf_counter() - started)
    return Snapshot(loaded.revision, matcher, loaded.versions, len(loaded.words))


class Screen:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.snapshot: Snapshot | None = None

    async def refresh(self) -> bool:
        """Rebuild if the revision moved; ``True`` when a new matcher was swapped in."""
        async with self.db.reader() as conn:
            revision = await words.current_revision(conn)
            if self.snapshot is not None and self.snapshot.revision == revision:
                return False
            fresh = await build(conn)
        return self.offer(fresh)

    def offer(self, fresh: Snapshot) -> bool:
        """Swap ``fresh`` in unless a matcher as new is already there."""
        if self.snapshot is not None and self.snapshot.revision >= fresh.revision:
            return False
        self.snapshot = fresh
        REVISION.set(fresh.revision)
        WORDS.set(fresh.words)
        log.info(
            "sensitive words loaded",
            extra={"revision": fresh.revision, "words": fresh.words, "lists": fresh.versions},
        )
        return True


class _CurrentScreen:
    def __init__(self) -> None:
        self.current: Screen | None = None

    def install(self, value: Screen | None) -> None:
        self.current = value

    async def snapshot(self, conn: AsyncConnection, *, fresh: bool = False) -> Snapshot:
        """The installed screen's matcher; built now through ``conn`` when there is none, or
        with ``fresh`` when the lists ``conn`` sees are newer (one single-row read): a
        submission is screened against every list change committed before it, whether or
        not the refresher has seen it yet (the rebuild is then offered to the process)."""
        current = self.current.snapshot if self.current is not None else None
        if current is not None and not fresh:
            return current
        if current is not None and current.revision == await words.current_revision(conn):
            return current
        built = await build(conn)
        if self.current is not None:
            self.current.offer(built)
        return built


screen = _CurrentScreen()


async def run_refresher(value: Screen, interval: float) -> None:
    """Keep ``value`` current until cancelled; a failure keeps the last good matcher."""
    while True:
        await asyncio.sleep(interval)
        try:
            await value.refresh()
        except asyncio.CancelledError:
            raise
        except Exception:
            REFRESH_FAILURES.inc()
            log.warning(
                "sensitive-word refresh failed; matching with the last lists", exc_info=True
            )


async def start(app: Any) -> None:
    value = Screen(app.state.db)
    await value.refresh()
    app.state.review = value
    screen.install(value)
    interval = app.state.settings.review_refresh_seconds

    async def _refresher(app: Any) -> None:
        await run_refresher(value, interval)

    app.state.background_tasks.append(_refresher)


def stop(app: Any) -> None:
    if screen.current is getattr(app.state, "review", None):
        screen.install(None)
