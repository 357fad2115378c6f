"""Event transports behind one interface: in-process (embedded default) and Redis Streams."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from incentive.events.bus import Event


class Transport(Protocol):
    """Where the relay hands committed outbox events.

    ``deliver`` returns, per event id, ``None`` when the transport has durably taken the
    event (the outbox row may then be marked published) or the error text when it has not
    (the row is retried later). It may take an event twice across retries; subscribers are
    idempotent.
    """

    name: str

    async def deliver(self, events: Sequence[Event]) -> dict[str, str | None]: ...
