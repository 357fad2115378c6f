"""Login throttling: moving-window ceilings kept in Redis (shared by every API process) or,
on the embedded deployment, in this process's memory.

Four ceilings, each over ``login_window_seconds``:

- failures of one username from one address (``login_max_failures``): a guesser is stopped
  without locking the owner out from their own address;
- failures of one username from anywhere (``login_max_failures_per_username``, higher):
  a guesser spread over many addresses;
- failures from one address, any username (``login_max_failures_per_address``): one address
  spraying many usernames;
- successful logins of one username (``login_max_per_username``): a stolen password cannot
  mint sessions without end (live sessions are capped separately, in ``auth.sessions``).

Sign-ups have their own ceiling per address (live ``auth.signup_max_per_address`` per
``auth.signup_window_seconds``), counted on every attempt.

Failures can only be added by whoever sends them, so a ceiling that locks a username needs
many addresses. The counters are contention state, not records: losing them (a Redis flush,
a restart of the embedded process) only forgets recent failures.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import ConnectionPool

from incentive.auth.errors import LoginThrottled, SignupThrottled
from incentive.auth.metrics import LOGINS
from incentive.settings import Settings

NAMESPACE = "incentive-login"
SIGNUP_NAMESPACE = "incentive-signup"


@dataclass(frozen=True)
class _Ceiling:
    name: str
    item: RateLimitItem
    refusal: str


@dataclass(frozen=True)
class _Counter:
    ceiling: _Ceiling
    subject: tuple[str, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        return (self.ceiling.name, *self.subject)


def _ceiling(name: str, amount: int, window_seconds: int, refusal: str) -> _Ceiling:
    return _Ceiling(name, RateLimitItemPerSecond(amount, window_seconds, NAMESPACE), refusal)


def _username_key(username: str) -> str:
    # Hashed: any text may arrive as a username, and the key must stay short and plain.
    return hashlib.sha256(username.lower().encode()).hexdigest()[:32]


class LoginThrottle:
    """The login ceilings of one deployment; one instance per process (``app.state``)."""

    def __init__(self, storage: Storage, settings: Settings) -> None:
        self._limiter = MovingWindowRateLimiter(storage)
        window = settings.login_window_seconds
        self._pair_failures = _ceiling(
            "pair-failures",
            settings.login_max_failures,
            window,
            "too many failed logins for this username from this address; retry later",
        )
        self._username_failures = _ceiling(
            "username-failures",
            settings.login_max_failures_per_username,
            window,
            "too many failed logins for this username; retry later",
        )
        self._address_failures = _ceiling(
            "address-failures",
            settings.login_max_failures_per_address,
            window,
            "too many failed logins from this address; retry later",
        )
        self._username_logins = _ceiling(
            "username-logins",
            settings.login_max_per_username,
            window,
            "too many logins for this username; retry later",
        )

    @classmethod
    def for_settings(cls, settings: Settings, redis_pool: ConnectionPool | None) -> LoginThrottle:
        """Redis when the deployment has one (``redis_pool``: the process's shared pool),
        else this process's memory."""
        storage: Storage
        if redis_pool is not None:
            options: dict[str, Any] = {"connection_pool": redis_pool}
            storage = RedisStorage("async+redis://", implementation="redispy", **options)
        else:
            storage = MemoryStorage()
        return cls(storage, settings)

    def _failures(self, username: str, address: str) -> list[_Counter]:
        user = _username_key(username)
        return [
            _Counter(self._pair_failures, (user, address)),
            _Counter(self._username_failures, (user,)),
            _Counter(self._address_failures, (address,)),
        ]

    def _logins(self, username: str) -> _Counter:
        return _Counter(self._username_logins, (_username_key(username),))

    async def admit(self, username: str, address: str) -> None:
        """Refuse (``LoginThrottled``) before any password work when a ceiling is reached."""
        for counter in [*self._failures(username, address), self._logins(username)]:
            if not await self._limiter.test(counter.ceiling.item, *counter.ids):
                await self._refuse(counter)

    async def count_failure(self, username: str, address: str) -> None:
        for counter in self._failures(username, address):
            await self._limiter.hit(counter.ceiling.item, *counter.ids)

    async def count_success(self, username: str, address: str) -> None:
        """Take one successful login of ``username``; refuses when the ceiling is reached,
        atomically, so concurrent logins never pass it together. Then forgets this
        address's failures for the username (the owner is back)."""
        logins = self._logins(username)
        if not await self._limiter.hit(logins.ceiling.item, *logins.ids):
            await self._refuse(logins)
        pair = self._failures(username, address)[0]
        await self._limiter.clear(pair.ceiling.item, *pair.ids)

    async def take_signup(self, address: str, amount: int, window_seconds: int) -> None:
        """Take one sign-up attempt of ``address`` (its ceiling comes from live config, so the
        item is made per call); ``SignupThrottled`` when the ceiling is reached, atomically."""
        item = _LiveCeiling(amount, window_seconds, SIGNUP_NAMESPACE)
        if not await self._limiter.hit(item, "signup-address", address):
            stats = await self._limiter.get_window_stats(item, "signup-address", address)
            raise SignupThrottled(
                "too many sign-ups from this address; retry later",
                retry_after=max(1, math.ceil(stats.reset_time - time.time())),
            )

    async def _refuse(self, counter: _Counter) -> None:
        stats = await self._limiter.get_window_stats(counter.ceiling.item, *counter.ids)
        LOGINS.labels("throttled").inc()
        raise LoginThrottled(
            counter.ceiling.refusal, retry_after=max(1, math.ceil(stats.reset_time - time.time()))
        )


class _LiveCeiling(RateLimitItemPerSecond):
    """A ceiling read from live config on each call. Its key leaves out the amount and the
    window (``limits`` puts them in by default), so changing the ceiling — lowering it during
    an attack — keeps every address's count instead of handing each a fresh budget."""

    def key_for(self, *identifiers: bytes | str | int | float) -> str:
        return "/".join([self.namespace, *(str(i) for i in identifiers), self.GRANULARITY.name])
