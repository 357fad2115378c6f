"""Reading and changing live configuration. Changes are validated, versioned and audited.

Every change bumps the single ``config_revision`` counter in the same transaction, which is
what makes other processes reload; after the commit this process's cache is poked so the
change is applied (and announced over Redis) at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session as SyncSession

from incentive import db
from incentive.config.errors import ConfigVersionConflict
from incentive.config.live import live_config
from incentive.config.models import REVISION_ROW_ID, ConfigAudit, ConfigEntry, ConfigRevision
from incentive.config.registry import ConfigKey, get_key, registered_keys
from incentive.db import utcnow
from incentive.kit.pagination import KeyId, KeyInt, Keyset, Slice


@dataclass(frozen=True)
class ConfigValue:
    """The effective value of a key and where it comes from."""

    key: ConfigKey
    value: Any  # JSON form
    is_default: bool
    version: int  # 0 while the default applies and the key was never set
    updated_at: datetime | None
    updated_by: str | None


def _effective(key: ConfigKey, entry: ConfigEntry | None) -> ConfigValue:
    if entry is None:
        return ConfigValue(key, key.dump(key.default), True, 0, None, None)
    return ConfigValue(key, entry.value, False, entry.version, entry.updated_at, entry.updated_by)


async def get_value(session: AsyncSession, name: str) -> ConfigValue:
    """The committed value of one key, read from the database (not the process cache)."""
    key = get_key(name)
    return _effective(key, await session.get(ConfigEntry, name))


async def list_values(session: AsyncSession) -> list[ConfigValue]:
    """Every registered key with its effective value, sorted by name."""
    entries = {e.key: e for e in (await session.execute(select(ConfigEntry))).scalars()}
    return [_effective(k, entries.get(k.name)) for k in registered_keys()]


# The keys live in the process's registry, so their list is paged in memory, by name.
VALUE_ORDER = Keyset((), tuple[KeyId], descending=False)
AUDIT_ORDER = Keyset((ConfigAudit.id,), tuple[KeyInt])


async def value_page(
    session: AsyncSession, *, cursor: str | None, limit: int
) -> Slice[ConfigValue]:
    """One page of ``list_values``."""
    values = await list_values(session)
    return VALUE_ORDER.slice_sorted(values, cursor=cursor, limit=limit, key=lambda v: (v.key.name,))


async def set_value(
    session: AsyncSession,
    name: str,
    value: Any,
    *,
    actor: str,
    request_id: str | None = None,
    expected_version: int | None = None,
) -> ConfigValue:
    """Validate and store ``value`` for ``name``; audited; applied everywhere after commit.

    ``expected_version`` (optional) makes the write conditional on the key's current version
    (0 = still at its default): a concurrent change raises ``ConfigVersionConflict``. The row
    is locked for the rest of the transaction, so concurrent writers of one key serialise.
    Raises ``UnknownConfigKey`` / ``InvalidConfigValue`` with nothing written.
    """
    key = get_key(name)
    stored = key.dump(key.validate(value))
    entry = await _locked_entry(session, name)
    _check_version(name, entry, expected_version)
    old = _effective(key, entry).value
    now = utcnow()
    if entry is None:
        entry = ConfigEntry(key=name, value=stored, version=1, updated_at=now, updated_by=actor)
        session.add(entry)
    else:
        entry.value = stored
        entry.version += 1
        entry.updated_at = now
        entry.updated_by = actor
    await _record(session, key, "set", old, stored, entry.version, actor, request_id, now)
    await session.flush()
    return _effective(key, entry)


async def reset_value(
    session: AsyncSession,
    name: str,
    *,
    actor: str,
    request_id: str | None = None,
    expected_version: int | None = None,
) -> ConfigValue:
    """Remove the override of ``name`` so its default applies again (audited, idempotent)."""
    key = get_key(name)
    entry = await _locked_entry(session, name)
    _check_version(name, entry, expected_version)
    if entry is None:
        return _effective(key, None)
    old = entry.value
    default = key.dump(key.default)
    await _record(
        session, key, "reset", old, default, entry.version + 1, actor, request_id, utcnow()
    )
    await session.delete(entry)
    await session.flush()
    return _effective(key, None)


async def audit_trail(
    session: AsyncSession, name: str, *, cursor: str | None = None, limit: int = 50
) -> Slice[ConfigAudit]:
    """Changes of one key, newest first."""
    get_key(name)
    query = select(ConfigAudit).where(ConfigAudit.key == name)
    return await AUDIT_ORDER.fetch(session, query, cursor=cursor, limit=limit)


async def _locked_entry(session: AsyncSession, name: str) -> ConfigEntry | None:
    query = select(ConfigEntry).where(ConfigEntry.key == name).with_for_update()
    return (
        await session.execute(query.execution_options(populate_existing=True))
    ).scalar_one_or_none()


def _check_version(name: str, entry: ConfigEntry | None, expected: int | None) -> None:
    current = 0 if entry is None else entry.version
    if expected is not None and expected != current:
        raise ConfigVersionConflict(
            f"{name} is at version {current}, not {expected}; re-read and retry",
            key=name,
            current_version=current,
        )


async def _record(
    session: AsyncSession,
    key: ConfigKey,
    action: str,
    old: Any,
    new: Any,
    version: int,
    actor: str,
    request_id: str | None,
    at: datetime,
) -> None:
    session.add(
        ConfigAudit(
            key=key.name,
            action=action,
            old_value=old,
            new_value=new,
            version=version,
            actor=actor,
            at=at,
            request_id=request_id,
        )
    )
    await _bump_revision(session)
    _poke_after_commit(session)


async def _bump_revision(session: AsyncSession) -> int:
    # One atomic upsert on both engines: creates the counter row on a fresh database and
    # otherwise increments it, holding its row lock until commit so revisions are committed
    # in order (a poller that saw revision N has seen every change up to N).
    upsert = db.insert(session, ConfigRevision).values(id=REVISION_ROW_ID, revision=1)
    stmt = upsert.on_conflict_do_update(
        index_elements=[ConfigRevision.id],
        set_={"revision": ConfigRevision.revision + 1},
    ).returning(ConfigRevision.revision)
    return int((await session.execute(stmt)).scalar_one())


def _poke_after_commit(session: AsyncSession) -> None:
    # One listener per session until it fires; after a rollback it stays armed for the next
    # commit, which is harmless (a poke only makes the cache check the revision).
    sync_session = session.sync_session
    if sync_session.info.get("config_poke"):
        return
    sync_session.info["config_poke"] = True

    def _after_commit(s: SyncSession) -> None:
        s.info.pop("config_poke", None)
        live_config.current.poke()

    event.listen(sync_session, "after_commit", _after_commit, once=True)
