"""A pipeline worker as every stage sees it: the database, whose claims (``id``), how long a
lease lasts, the platform's OpenPGP key and the crash-point hooks.

``INCENTIVE_POINTS_CRASH_AT=<point>:<n>`` makes the process kill itself (SIGKILL) the n-th time
it passes ``<point>`` (one of ``CRASH_POINTS``); the crash-safety tests use it.
"""

from __future__ import annotations

import os
import signal
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from incentive.db import Database, utcnow
from incentive.points_files.crypto import PointsCrypto, default_gnupg_home, init_platform_key
from incentive.settings import Settings

CRASH_POINTS = (
    "received",  # a file stored and recorded, before it leaves the inbox
    "decrypted",  # decrypted to the work file, before the stage commits
    "staging",  # after the n-th staged chunk committed
    "staged",  # all records stored, before the stage commits
    "validated",  # in-file duplicates flagged, before the stage commits
    "batch_claimed",  # a batch claimed, nothing credited yet
    "batch_credited",  # inside a batch transaction: ledger written, not committed
    "batch_committed",  # the n-th batch committed
    "feedback_line",  # after the n-th chunk of feedback lines written
    "feedback_encrypted",  # feedback encrypted, before the stage commits
    "exception_written",  # exception file encrypted, before the stage commits
    "delivered",  # the answer is in the outbox, before the stage commits
)


class CrashPoints:
    """The test hook: SIGKILL this process at the n-th pass of one named point."""

    def __init__(self, spec: str | None) -> None:
        self.point: str | None = None
        self.n = 0
        self._seen: dict[str, int] = {}
        if spec:
            point, _, n = spec.partition(":")
            if point not in CRASH_POINTS:
                raise ValueError(f"unknown crash point {point!r}; one of {CRASH_POINTS}")
            self.point, self.n = point, int(n or "1")

    def hit(self, point: str) -> None:
        if self.point != point:
            return
        self._seen[point] = self._seen.get(point, 0) + 1
        if self._seen[point] >= self.n:
            os.kill(os.getpid(), signal.SIGKILL)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Worker:
    """What every stage function is given: claims are taken in the name of ``id`` for
    ``lease`` at a time."""

    db: Database
    settings: Settings
    id: str
    lease: timedelta
    crash: CrashPoints
    _crypto: PointsCrypto | None = field(default=None, init=False, repr=False)

    def crypto(self) -> PointsCrypto:
        """The platform key pair, created on first use."""
        if self._crypto is None:
            self._crypto = init_platform_key(
                default_gnupg_home(self.settings), "Incentive points files", "points@incentive"
            )
        return self._crypto

    def lease_until(self) -> datetime:
        return utcnow() + self.lease
