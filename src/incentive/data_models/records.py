"""An assembled record, its canonical JSON and hash, and what a target system receives.

An ``AssembledRecord`` is one source record after every field's rule: its values by field
``key``... per target system, under each field's ``mapped_field``. Its canonical JSON (sorted
keys, no spaces, UTF-8, datetimes as ISO-8601 text) is what the archive keeps and what its
SHA-256 ``hash`` is of, so the same record assembled twice has the same hash wherever it is.

A target writer (``targets/``) receives ``TargetRow`` s — the record's key, the model id and
version, the hash and the values of that target's system — and upserts them on the key:
writing the same rows again changes nothing (at least once in, exactly once in effect).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def canonical_json(value: Any) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default
    )


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class AssembledRecord:
    model_id: str
    version: int
    key: str
    campaign_id: str | None
    #: target system -> mapped field -> value (JSON values)
    systems: Mapping[str, Mapping[str, Any]]

    def document(self) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "version": self.version,
            "key": self.key,
            "campaign_id": self.campaign_id,
            "systems": self.systems,
        }

    def canonical(self) -> str:
        return canonical_json(self.document())

    @property
    def hash(self) -> str:
        return digest(self.canonical())

    def for_system(self, system: str) -> TargetRow:
        return TargetRow(
            key=self.key,
            model_id=self.model_id,
            version=self.version,
            hash=self.hash,
            values=self.systems.get(system, {}),
        )


@dataclass(frozen=True)
class TargetRow:
    """What one target system receives of one record."""

    key: str
    model_id: str
    version: int
    hash: str
    values: Mapping[str, Any]


class TargetWriter(Protocol):
    """Writes rows into one downstream store, upserting on the key (idempotent). Raises on
    failure (the delivery is retried): ``TargetRefused`` when retrying cannot help."""

    async def write(self, rows: Sequence[TargetRow]) -> None: ...

    async def close(self) -> None: ...


class TargetRefused(Exception):
    """The target will never take these rows as they are (its schema refuses them)."""
