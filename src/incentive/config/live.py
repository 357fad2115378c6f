"""The in-process cache of live configuration, and the task that keeps it current.

``live_config.get(key)`` is a dictionary lookup: safe on hot paths, never touches the
database. Each process holds one ``LiveConfig`` (``app.state.config``); the refresher reloads
it when the global revision counter moves (polled every ``settings.config_refresh_seconds``)
and, with Redis configured, as soon as another process announces a change on the
``incentive:config`` channel. A change committed anywhere is therefore applied everywhere
within one poll interval (about one second by default), usually within milliseconds.

Before a process has loaded anything (a unit test calling a service directly, a script)
``live_config.get`` answers the registered defaults.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy import select

from incentive.config.errors import InvalidConfigValue
from incentive.config.models import REVISION_ROW_ID, ConfigEntry, ConfigRevision
from incentive.config.registry import ConfigKey, get_key
from incentive.db import Database
from incentive.kit.subscription import subscribed

log = logging.getLogger(__name__)

CHANNEL = "incentive:config"

CONFIG_REVISION = Gauge(
    "incentive_config_revision", "Live configuration revision applied in this process"
)
CONFIG_RELOADS = Counter("incentive_config_reloads_total", "Live configuration reloads")
CONFIG_REFRESH_FAILURES = Counter(
    "incentive_config_refresh_failures_total",
    "Failed live configuration refreshes (the last good values stay in force)",
)


class LiveConfig:
    """A snapshot of every overridden key, swapped atomically on reload."""

    def __init__(self, db: Database | None = None) -> None:
        self.db = db
        self.revision = 0
        self.loaded_at: datetime | None = None
        self._raw: dict[str, Any] = {}
        self._parsed: dict[str, Any] = {}
        self._wake = asyncio.Event()
        self._announce = False

    def get(self, key: str | ConfigKey) -> Any:
        """The current value of ``key``: the override if one is set, else the default.

        Values are shared by every caller: treat dicts and lists as read-only.
        """
        name = key if isinstance(key, str) else key.name
        parsed = self._parsed
        try:
            return parsed[name]
        except KeyError:
            pass
        spec = get_key(name)
        raw = self._raw
        value = spec.default
        if name in raw:
            try:
                value = spec.validate(raw[name])
            except InvalidConfigValue as exc:
                # A stored value the running code no longer accepts (the key's type changed
                # in a deploy) must not take the process down: the default applies, loudly.
                log.error(
                    "stored config value rejected, using default",
                    extra={"key": name, "problem": exc.detail},
                )
        # Benign race with a concurrent reload: the next get() after the swap re-resolves.
        parsed[name] = value
        return value

    def snapshot(self) -> Mapping[str, Any]:
        """The raw overrides as loaded (key -> JSON value)."""
        return dict(self._raw)

    def apply(self, revision: int, raw: dict[str, Any]) -> None:
        self._raw = raw
        self._parsed = {}
        self.revision = revision
        self.loaded_at = datetime.now(UTC)
        CONFIG_REVISION.set(revision)
        CONFIG_RELOADS.inc()

    async def current_revision(self) -> int:
        db = self._database()
        async with db.unit_of_work() as session:
            row = await session.get(ConfigRevision, REVISION_ROW_ID)
            return 0 if row is None else row.revision

    async def reload(self) -> None:
        """Load every override and the revision they belong to, unconditionally."""
        db = self._database()
        async with db.unit_of_work() as session:
            # Revision first: the entries read afterwards are at least that new, so a change
            # committed in between is seen now or by the next poll, never lost.
            row = await session.get(ConfigRevision, REVISION_ROW_ID)
            revision = 0 if row is None else row.revision
            entries = (await session.execute(select(ConfigEntry.key, ConfigEntry.value))).all()
        self.apply(revision, {k: v for k, v in entries})

    async def refresh(self) -> bool:
        """Reload if the global revision moved; ``True`` when something was reloaded."""
        if await self.current_revision() == self.revision and self.loaded_at is not None:
            return False
        await self.reload()
        return True

    def poke(self, *, local: bool = True) -> None:
        """Ask the refresher to reload now. ``local``: the change was committed by this
        process, so the refresher also announces it to the others."""
        self._announce = self._announce or local
        self._wake.set()

    async def wait_for_poke(self, seconds: float) -> bool:
        """Wait for a poke; ``True`` when a local change is to be announced."""
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            return False
        self._wake.clear()
        announce, self._announce = self._announce, False
        return announce

    def _database(self) -> Database:
        if self.db is None:
            raise RuntimeError("this LiveConfig has no database; it only answers defaults")
        return self.db


class _CurrentLiveConfig:
    """Module-level accessor: delegates to the process's ``LiveConfig`` once installed."""

    def __init__(self) -> None:
        self._defaults_only = LiveConfig()
        self._current: LiveConfig | None = None

    def install(self, config: LiveConfig | None) -> None:
        self._current = config

    @property
    def current(self) -> LiveConfig:
        return self._current or self._defaults_only

    def get(self, key: str | ConfigKey) -> Any:
        return (self._current or self._defaults_only).get(key)


live_config = _CurrentLiveConfig()
"""``live_config.get("flash_sale.buckets")`` from any service, worker or handler."""


async def announce(redis: Any, revision: int) -> None:
    """Tell every process subscribed on Redis that ``revision`` is committed."""
    await redis.publish(CHANNEL, str(revision))


async def run_refresher(config: LiveConfig, interval: float, redis: Any | None = None) -> None:
    """Keep ``config`` current until cancelled. Never raises for a transient failure."""
    listener = asyncio.create_task(_listen(config, redis, interval)) if redis else None
    try:
        while True:
            local_change = await config.wait_for_poke(interval)
            try:
                await config.refresh()
            except Exception:
                # Database briefly unavailable: keep serving the last good values.
                CONFIG_REFRESH_FAILURES.inc()
                log.warning("live config refresh failed", exc_info=True)
                continue
            if local_change and redis is not None:
                try:
                    await announce(redis, config.revision)
                except Exception:
                    log.warning("live config announce failed; peers will poll", exc_info=True)
    finally:
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)


async def _listen(config: LiveConfig, redis: Any, interval: float) -> None:
    while True:
        try:
            async with subscribed(redis, CHANNEL) as pubsub:
                while True:
                    message = await pubsub.get_message(timeout=interval)
                    if message is not None:
                        try:
                            revision = int(message["data"])
                        except (TypeError, ValueError):
                            revision = -1
                        if revision != config.revision:
                            config.poke(local=False)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Redis down: polling alone still applies changes; resubscribe when it is back.
            log.warning("live config subscription lost; retrying", exc_info=True)
            await asyncio.sleep(interval)


async def start(app: Any, db: Database, refresh_seconds: float) -> LiveConfig:
    """Process start-up: load the current values (fail fast if the database cannot answer),
    install them as ``live_config`` and ``app.state.config``, register the refresher."""
    config = LiveConfig(db)
    await config.reload()
    app.state.config = config
    live_config.install(config)

    async def _refresher(app: Any) -> None:
        await run_refresher(config, refresh_seconds, getattr(app.state, "redis", None))

    app.state.background_tasks.append(_refresher)
    return config


def stop(app: Any) -> None:
    config = getattr(app.state, "config", None)
    if config is not None and live_config.current is config:
        live_config.install(None)
