"""Identity service rules: who may exist, how secrets are kept, what is audited."""

from __future__ import annotations

from datetime import timedelta

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select, update

from incentive.auth import service, sessions
from incentive.auth.errors import NameTaken
from incentive.auth.keyring import KeyRing
from incentive.auth.models import (
    AuditEntry,
    Merchant,
    Partner,
    PartnerApiKey,
    RefreshToken,
    RevokedToken,
    User,
)
from incentive.auth.partner_keys import hash_api_key
from incentive.auth.principal import Principal
from incentive.auth.throttle import LoginThrottle
from incentive.db import Database, utcnow
from incentive.errors import InvalidField, NotFound
from incentive.observability import request_id_var
from incentive.settings import Settings
from tests.auth.conftest import RowCounter, TableCounts

GOOD_PASSWORD = "s3cret-enough"


async def test_create_user_hashes_with_argon2_and_audits(
    db: Database, count_rows: RowCounter
) -> None:
    async with db.unit_of_work() as s:
        user = await service.create_user(s, "alice.b-1_x", GOOD_PASSWORD, "customer")
    assert user.password_hash.startswith("$argon2id$")
    assert GOOD_PASSWORD not in user.password_hash
    assert PasswordHasher().verify(user.password_hash, GOOD_PASSWORD)
    assert user.display_name == "alice.b-1_x"
    assert user.blocked is False
    async with db.unit_of_work() as s:
        entry = (await s.execute(select(AuditEntry))).scalar_one()
    assert (entry.action, entry.target, entry.actor_role) == (
        "user.create",
        f"user:{user.id}",
        "system",
    )
    assert entry.detail == {"username": "alice.b-1_x", "role": "customer"}


async def test_merchant_staff_belong_to_an_existing_merchant(db: Database) -> None:
    async with db.unit_of_work() as s:
        merchant = await service.create_merchant(s, "SHOP-1", "Corner shop")
        clerk = await service.create_user(
            s, "clerk", GOOD_PASSWORD, "merchant", merchant_code="SHOP-1"
        )
    assert clerk.merchant_id == merchant.id


@pytest.mark.parametrize(
    ("username", "password", "role", "merchant_code", "field", "rule"),
    [
        ("ab", GOOD_PASSWORD, "customer", None, "username", "3-64 characters"),
        ("x" * 65, GOOD_PASSWORD, "customer", None, "username", "3-64 characters"),
        ("bad name", GOOD_PASSWORD, "customer", None, "username", "3-64 characters"),
        ("bad/name", GOOD_PASSWORD, "customer", None, "username", "3-64 characters"),
        ("émile", GOOD_PASSWORD, "customer", None, "username", "3-64 characters"),
        ("alice", "short77", "customer", None, "password", "at least 8"),
        ("alice", "x" * 1025, "customer", None, "password", "at most 1024"),
        ("alice", GOOD_PASSWORD, "partner", None, "role", "one of"),
        ("alice", GOOD_PASSWORD, "root", None, "role", "one of"),
        ("alice", GOOD_PASSWORD, "merchant", None, "merchant", "required"),
        ("alice", GOOD_PASSWORD, "merchant", "NOPE", "merchant", "existing merchant"),
        ("alice", GOOD_PASSWORD, "customer", "SHOP-1", "merchant", "only role merchant"),
        ("alice", GOOD_PASSWORD, "operator", "SHOP-1", "merchant", "only role merchant"),
    ],
)
async def test_create_user_refusals_name_field_and_rule_and_write_nothing(
    db: Database,
    table_counts: TableCounts,
    username: str,
    password: str,
    role: str,
    merchant_code: str | None,
    field: str,
    rule: str,
) -> None:
    async with db.unit_of_work() as s:
        await service.create_merchant(s, "SHOP-1", "Corner shop")
    before = await table_counts()

    with pytest.raises(InvalidField) as refused:
        async with db.unit_of_work() as s:
            await service.create_user(s, username, password, role, merchant_code=merchant_code)

    assert refused.value.field == field
    assert rule in refused.value.rule
    assert refused.value.status == 422
    assert await table_counts() == before


async def test_usernames_are_unique_ignoring_case(db: Database, count_rows: RowCounter) -> None:
    async with db.unit_of_work() as s:
        await service.create_user(s, "alice", GOOD_PASSWORD, "customer")
    for name in ("alice", "ALICE", "Alice"):
        with pytest.raises(NameTaken) as refused:
            async with db.unit_of_work() as s:
                await service.create_user(s, name, GOOD_PASSWORD, "customer")
        assert refused.value.status == 409
        assert refused.value.field == "username"
    assert await count_rows(User) == 1
    assert await count_rows(AuditEntry) == 1


@pytest.mark.parametrize(
    ("code", "name", "field"),
    [
        ("x", "Shop", "code"),
        ("a b", "Shop", "code"),
        ("OK1", "  ", "name"),
        ("OK1", "n" * 201, "name"),
    ],
)
async def test_merchant_and_partner_refusals(
    db: Database, table_counts: TableCounts, code: str, name: str, field: str
) -> None:
    before = await table_counts()
    with pytest.raises(InvalidField) as merchant_refusal:
        async with db.unit_of_work() as s:
            await service.create_merchant(s, code, name)
    with pytest.raises(InvalidField) as partner_refusal:
        async with db.unit_of_work() as s:
            await service.create_partner(s, code, name)
    assert merchant_refusal.value.field == partner_refusal.value.field == field
    assert await table_counts() == before


async def test_duplicate_merchant_and_partner_codes(db: Database, count_rows: RowCounter) -> None:
    async with db.unit_of_work() as s:
        await service.create_merchant(s, "M1", "One")
        await service.create_partner(s, "BANK", "Bank")
    with pytest.raises(NameTaken):
        async with db.unit_of_work() as s:
            await service.create_merchant(s, "M1", "Again")
    with pytest.raises(NameTaken):
        async with db.unit_of_work() as s:
            await service.create_partner(s, "BANK", "Again")
    assert await count_rows(Merchant) == 1
    assert await count_rows(Partner) == 1


async def test_partner_api_key_is_shown_once_and_stored_as_sha256(db: Database) -> None:
    async with db.unit_of_work() as s:
        partner, api_key = await service.create_partner(s, "AIRLINE", "Air Co")
        _, other_key = await service.create_partner(s, "BANK", "Bank")
    assert api_key.startswith("inc_")
    assert len(api_key) >= 4 + 43
    assert api_key != other_key
    async with db.unit_of_work() as s:
        stored = (
            await s.execute(select(PartnerApiKey).where(PartnerApiKey.partner_id == partner.id))
        ).scalar_one()
        audit = list((await s.execute(select(AuditEntry.detail))).scalars())
    assert stored.key_hash == hash_api_key(api_key)
    assert api_key not in stored.key_hash
    assert stored.prefix == api_key[:12]
    assert all(api_key not in str(detail) for detail in audit)


async def test_record_audit_takes_actor_and_request_id(db: Database) -> None:
    actor = Principal("u1", "op", "operator")
    token = request_id_var.set("req-42")
    try:
        async with db.unit_of_work() as s:
            implicit = await service.record_audit(
                s, actor, "ledger.transfer", "account:7", {"points": 5}
            )
            explicit = await service.record_audit(s, None, "job.run", request_id="job-1")
    finally:
        request_id_var.reset(token)
    async with db.unit_of_work() as s:
        rows = {e.id: e for e in (await s.execute(select(AuditEntry))).scalars()}
    first, second = rows[implicit.id], rows[explicit.id]
    assert (first.actor_id, first.actor_role, first.request_id) == ("u1", "operator", "req-42")
    assert first.detail == {"points": 5}
    assert first.at.tzinfo is not None
    assert (second.actor_id, second.actor_role, second.request_id) == (None, "system", "job-1")


async def test_audit_entry_rolls_back_with_the_failed_change(
    db: Database, count_rows: RowCounter
) -> None:
    async def transfer_that_fails_after_auditing() -> None:
        async with db.unit_of_work() as s:
            await service.record_audit(s, None, "ledger.transfer", "account:7")
            raise RuntimeError("the value-moving call failed after auditing")

    with pytest.raises(RuntimeError):
        await transfer_that_fails_after_auditing()
    assert await count_rows(AuditEntry) == 0


async def test_block_user_revokes_sessions_and_unblock_allows_login(
    db: Database, settings: Settings, throttle: LoginThrottle
) -> None:
    ring = KeyRing.load(settings.data_dir / "keys")
    async with db.unit_of_work() as s:
        await service.create_user(s, "alice", GOOD_PASSWORD, "customer")
        pair = await sessions.login(
            s, ring, settings, throttle, "alice", GOOD_PASSWORD, "127.0.0.1"
        )
    async with db.unit_of_work() as s:
        await sessions.set_user_blocked(s, "alice", True, settings)
    async with db.unit_of_work() as s:
        assert await s.get(RevokedToken, pair.access_jti) is not None
        tokens = list((await s.execute(select(RefreshToken))).scalars())
        assert all(t.revoked_at is not None for t in tokens)
        await sessions.set_user_blocked(s, "alice", False, settings)
    async with db.unit_of_work() as s:
        await sessions.login(s, ring, settings, throttle, "alice", GOOD_PASSWORD, "127.0.0.1")
    with pytest.raises(NotFound):
        async with db.unit_of_work() as s:
            await sessions.set_user_blocked(s, "nobody", True, settings)


async def test_purge_expired_deletes_only_rows_that_can_no_longer_matter(
    db: Database, settings: Settings, throttle: LoginThrottle, count_rows: RowCounter
) -> None:
    ring = KeyRing.load(settings.data_dir / "keys")
    async with db.unit_of_work() as s:
        await service.create_user(s, "alice", GOOD_PASSWORD, "customer")
        stale = await sessions.login(
            s, ring, settings, throttle, "alice", GOOD_PASSWORD, "10.0.0.1"
        )
        await sessions.login(s, ring, settings, throttle, "alice", GOOD_PASSWORD, "10.0.0.1")
    async with db.unit_of_work() as s:
        await sessions.logout(
            s, Principal("x", "alice", "customer", None, stale.access_jti), settings
        )
    long_ago = utcnow() - timedelta(days=365)
    async with db.unit_of_work() as s:
        await s.execute(
            update(RefreshToken)
            .where(RefreshToken.access_jti == stale.access_jti)
            .values(expires_at=long_ago)
        )
        await s.execute(update(RevokedToken).values(expires_at=long_ago))
    async with db.unit_of_work() as s:
        counts = await sessions.purge_expired(s)
    assert counts == sessions.PurgeCounts(revoked_tokens=1, refresh_tokens=1)
    assert await count_rows(RefreshToken) == 1
    assert await count_rows(RevokedToken) == 0
