"""Third-party coupon providers: the registry, their batches synced into ours (pulled by
workers, pushed by signed webhooks), and what their webhooks tell us about coupons.

The provider's stock is the authority: a synced batch's claimable ``stock`` is the
provider's stock less our claims it has not issued yet, so we never promise more than it
has. Webhooks may arrive late, twice or out of order; applying one is idempotent.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from incentive import events
from incentive.auth.audit import record_audit
from incentive.campaigns import service as campaigns
from incentive.campaigns.kinds import CampaignFacts
from incentive.config import live_config
from incentive.coupons import service
from incentive.coupons.errors import (
    BadWebhookSignature,
    ProviderDisabled,
    ProviderNotFound,
    ProviderTaken,
)
from incentive.coupons.keys import CALL_TIMEOUT_SECONDS
from incentive.coupons.models import Coupon, CouponBatch, CouponProvider, ProviderCall
from incentive.coupons.provider import (
    ProviderBatch,
    ProviderClient,
    ProviderCoupon,
    parse_batch,
    parse_coupon,
    parse_failure,
)
from incentive.coupons.rules import CouponRules
from incentive.db import Database, new_id, utcnow
from incentive.db import insert as db_insert
from incentive.errors import InvalidField
from incentive.kit.idempotency import Caller
from incentive.kit.pagination import KeyId, Keyset, KeyTime, Slice
from incentive.kit.webhooks import BadSignature, verify

#: our claims a provider has not issued yet: they hold a place in its stock
OUTSTANDING = ("received", "activating", "unknown")


# --------------------------------------------------------------------------- registry


async def by_code(session: AsyncSession, code: str) -> CouponProvider:
    provider = await session.scalar(select(CouponProvider).where(CouponProvider.code == code))
    if provider is None:
        raise ProviderNotFound(f"coupon provider {code} is not registered", provider=code)
    return provider


PROVIDER_ORDER = Keyset((CouponProvider.created_at, CouponProvider.id), tuple[KeyTime, KeyId])


#: published when a provider's coupon becomes usable (issued there): who gave it, as a reward
#: waiting on the provider, knows it was delivered
USABLE_TOPIC = "coupon.usable"


async def list_providers(
    session: AsyncSession, *, cursor: str | None = None, limit: int = 50
) -> Slice[CouponProvider]:
    return await PROVIDER_ORDER.fetch(session, select(CouponProvider), cursor=cursor, limit=limit)


async def register(
    session: AsyncSession,
    *,
    code: str,
    name: str,
    base_url: str,
    credentials: str,
    webhook_secret: str | None,
    actor: Caller | None,
) -> tuple[CouponProvider, str]:
    """Register a provider; returns it and its webhook secret (generated when not given:
    the one time it is shown). 409 ``ProviderTaken`` for a code in use. Audited."""
    # Standard Webhooks' form, so a provider using one of its libraries takes it as it is.
    secret = webhook_secret or "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    row = (
        await session.execute(
            db_insert(session, CouponProvider)
            .values(
                id=new_id(),
                code=code,
                name=name,
                base_url=base_url.rstrip("/"),
                credentials=credentials,
                webhook_secret=secret,
                state="active",
                created_at=utcnow(),
                updated_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["code"])
            .returning(CouponProvider.id)
        )
    ).first()
    if row is None:
        raise ProviderTaken(f"coupon provider {code} is registered already", provider=code)
    await record_audit(
        session, actor, "coupons.provider_registered", code, {"name": name, "base_url": base_url}
    )
    return await by_code(session, code), secret


async def change(
    session: AsyncSession, code: str, changes: Mapping[str, Any], actor: Caller | None
) -> CouponProvider:
    """Change a provider's name, address, credentials, webhook secret or state. Audited
    (the secrets are named, never recorded)."""
    provider = await by_code(session, code)
    if changes:
        await session.execute(
            update(CouponProvider)
            .where(CouponProvider.id == provider.id)
            .values(**changes, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        await session.refresh(provider)
        if "state" in changes:
            await _open_batches(session, provider)
    shown = {
        k: ("(changed)" if k in ("credentials", "webhook_secret") else v)
        for k, v in changes.items()
    }
    await record_audit(session, actor, "coupons.provider_changed", code, shown)
    return provider


async def _open_batches(session: AsyncSession, provider: CouponProvider) -> None:
    """A disabled provider's batches take no claims; enabled again, those of active
    campaigns do."""
    linked = await session.scalars(
        select(CouponBatch).where(
            CouponBatch.provider_id == provider.id, CouponBatch.campaign_id.is_not(None)
        )
    )
    for batch in linked:
        active = False
        if provider.state == "active" and batch.campaign_id is not None:
            active = (await campaigns.campaign_facts(session, batch.campaign_id)).status == "active"
        batch.open = active
    await session.flush()


def client_for(base_url: str, credentials: str) -> ProviderClient:
    return ProviderClient(
        base_url, credentials, timeout=float(live_config.get(CALL_TIMEOUT_SECONDS))
    )


async def check_rules(session: AsyncSession, campaign: CampaignFacts) -> None:
    """A campaign naming a provider must name a registered one (422 at ``rules.provider``)."""
    rules = campaign.rules
    assert isinstance(rules, CouponRules)
    if rules.provider is None:
        return
    found = await session.scalar(
        select(CouponProvider.id).where(CouponProvider.code == rules.provider)
    )
    if found is None:
        raise InvalidField(
            "rules.provider", "registered", f"no coupon provider {rules.provider!r} is registered"
        )


# --------------------------------------------------------------------------- batches


async def apply_batch(
    session: AsyncSession, provider: CouponProvider, seen: ProviderBatch, as_of: datetime
) -> CouponBatch:
    """Store what the provider said of one batch at ``as_of`` (a webhook's signed timestamp,
    or when a pull began): inserted, or updated unless what we hold is newer (webhooks may
    arrive out of order). Its claimable stock becomes the provider's stock less our claims it
    has not issued yet."""
    # The batch's row is locked before our outstanding claims are counted: a claim that took
    # stock and has not committed yet holds it, so the count (a statement after the lock)
    # includes that claim instead of overwriting the stock it took.
    existing = await session.scalar(
        select(CouponBatch)
        .where(CouponBatch.provider_id == provider.id, CouponBatch.external_id == seen.id)
        .with_for_update()
    )
    if existing is not None and existing.synced_at is not None and existing.synced_at > as_of:
        return existing  # an older word than the one applied
    outstanding = 0
    if existing is not None:
        outstanding = int(
            await session.scalar(
                select(func.count())
                .select_from(Coupon)
                .where(Coupon.batch_id == existing.id, Coupon.state.in_(OUTSTANDING))
            )
            or 0
        )
    terms = {
        "provider_state": seen.state,
        "quantity": seen.stock,
        "stock": max(seen.stock - outstanding, 0),
        "face_value_fen": seen.face_value_fen,
        "min_spend_fen": seen.min_spend_fen,
        "valid_from": seen.valid_from,
        "valid_until": seen.valid_until,
        "synced_at": as_of,
    }
    if existing is None:
        batch = CouponBatch(
            id=new_id(),
            provider_id=provider.id,
            external_id=seen.id,
            name=seen.name[:200],
            open=False,
            codes_imported=False,
            claimed=0,
            per_customer_limit=1,
            **terms,
        )
        session.add(batch)
        await session.flush()
        return batch
    await session.execute(
        update(CouponBatch)
        .where(CouponBatch.id == existing.id)
        .values(**terms)
        .execution_options(synchronize_session=False)
    )
    await session.refresh(existing)
    return existing


async def sync(db: Database, code: str) -> int:
    """Pull every batch of provider ``code`` (outside any transaction), then store them;
    returns how many. A provider that cannot be reached keeps its batches as they were
    and records why (``sync_error``); ``ProviderUnavailable`` is raised to the caller."""
    async with db.unit_of_work() as session:
        provider = await by_code(session, code)
    client = client_for(provider.base_url, provider.credentials)
    # Whole seconds, as webhook timestamps are: a webhook sent in the second the pull began
    # is applied after it rather than lost.
    began = utcnow().replace(microsecond=0)
    try:
        seen = await client.batches()
    except Exception as exc:
        async with db.unit_of_work() as session:
            await session.execute(
                update(CouponProvider)
                .where(CouponProvider.id == provider.id)
                .values(sync_error=f"{type(exc).__name__}: {exc}"[:2000])
            )
        raise
    finally:
        await client.aclose()
    async with db.unit_of_work() as session:
        for batch in seen:
            await apply_batch(session, provider, batch, began)
        await session.execute(
            update(CouponProvider)
            .where(CouponProvider.id == provider.id)
            .values(synced_at=utcnow(), sync_error=None)
        )
    return len(seen)


# --------------------------------------------------------------------------- webhooks


async def receive_webhook(
    session: AsyncSession, code: str, headers: Mapping[str, str], body: bytes
) -> str:
    """Verify and apply one webhook of provider ``code``; returns its type. 401
    ``BadWebhookSignature`` (nothing applied) unless signed with the provider's secret;
    422 for a body that is not one of the documented events."""
    provider = await by_code(session, code)
    if provider.state != "active":
        raise ProviderDisabled(f"coupon provider {code} is disabled", provider=code)
    try:
        verify(provider.webhook_secret, headers, body)
    except (BadSignature, ValueError) as exc:  # ValueError: a whsec_ secret that is not base64
        raise BadWebhookSignature(str(exc), provider=code) from None
    try:
        event = json.loads(body)
        kind = event["type"]
        if not isinstance(kind, str):
            raise TypeError("type: a string is required")
        data = event["data"]
        if kind == "batch.updated":
            sent_at = datetime.fromtimestamp(int(_header(headers, "webhook-timestamp")), UTC)
            await apply_batch(session, provider, parse_batch(data), sent_at)
        elif kind == "coupon.issued":
            await issued(session, provider.id, parse_coupon(data), reason="provider webhook")
        elif kind == "coupon.failed":
            failure = parse_failure(data)
            await failure_told(session, provider.id, failure.request_no, failure.reason)
        else:
            raise InvalidField("type", "known", f"unknown webhook type {kind!r}")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        # RecursionError: JSON nested deeper than the parser goes is no webhook either.
        raise InvalidField("data", "webhook-shape", f"webhook body: {exc!s:.200}") from None
    return str(kind)


def _header(headers: Mapping[str, str], name: str) -> str:
    return next(v for k, v in headers.items() if k.lower() == name)


async def issued(
    session: AsyncSession, provider_id: str, coupon: ProviderCoupon, *, reason: str
) -> bool:
    """The provider says it issued the coupon asked under ``coupon.request_no``: ours becomes
    ``usable`` with its code — from ``activating`` or ``unknown``, or from ``failed`` when
    the word comes after we gave up (the provider holds it: so must the customer). A
    duplicate or late word about a coupon already usable changes nothing. Returns whether
    the coupon moved."""
    await _lock_call(session, coupon.request_no)
    ours = await session.scalar(
        select(Coupon).where(
            Coupon.request_no == coupon.request_no, Coupon.provider_id == provider_id
        )
    )
    if ours is None:
        return False
    actor = service.Actor(f"provider:{provider_id}", "provider")
    # The provider's own end of validity, when it gives one, if sooner than ours.
    until = min(ours.valid_until, coupon.valid_until or ours.valid_until)
    for state in ("activating", "unknown", "failed"):
        if await service.move(
            session,
            ours.id,
            state,
            "usable",
            actor,
            reason,
            provider_code=coupon.code,
            reason=None,
            valid_until=until,
        ):
            await _settle_call(session, coupon.request_no, "done")
            await _issued_from_stock(session, ours.batch_id)
            await events.publish(
                session,
                USABLE_TOPIC,
                {"coupon_id": ours.id, "batch_id": ours.batch_id, "customer_id": ours.customer_id},
                key=ours.id,
            )
            return True
    return False


async def failure_told(session: AsyncSession, provider_id: str, request_no: str, why: str) -> bool:
    """A ``coupon.failed`` webhook: the provider did not issue under ``request_no`` *unless
    we send it again* — a hint, not a refusal. While our issue call is still due or in
    flight, its retries and their answers decide (failing the coupon now would drop the
    retries, and a success answered meanwhile); only a coupon no call will settle fails."""
    open_call = await session.scalar(
        select(ProviderCall.id)
        .where(
            ProviderCall.request_no == request_no,
            ProviderCall.provider_id == provider_id,
            ProviderCall.state.in_(("pending", "in_flight")),
        )
        .with_for_update()
    )
    if open_call is not None:
        return False
    return await refused(session, provider_id, request_no, why)


async def refused(session: AsyncSession, provider_id: str, request_no: str, why: str) -> bool:
    """The provider will not issue the coupon asked under ``request_no``: ours ``failed``
    (from ``activating`` or ``unknown`` only: a refusal never undoes an issued coupon)."""
    await _lock_call(session, request_no)
    ours = await session.scalar(
        select(Coupon).where(Coupon.request_no == request_no, Coupon.provider_id == provider_id)
    )
    if ours is None:
        return False
    actor = service.Actor(f"provider:{ours.provider_id}", "provider")
    for state in ("activating", "unknown"):
        if await service.move(session, ours.id, state, "failed", actor, why, reason=why[:200]):
            await _settle_call(session, request_no, "failed")
            await events.publish(
                session,
                service.FAILED_TOPIC,
                {
                    "coupon_id": ours.id,
                    "batch_id": ours.batch_id,
                    "customer_id": ours.customer_id,
                    "reason": why[:200],
                },
                key=ours.id,
            )
            return True
    return False


async def _lock_call(session: AsyncSession, request_no: str) -> None:
    # The call's row before the coupon's, as the worker recording an answer takes them: a
    # webhook and the worker settling one coupon at once wait for each other, never deadlock.
    await session.execute(
        select(ProviderCall.id).where(ProviderCall.request_no == request_no).with_for_update()
    )


async def _settle_call(session: AsyncSession, request_no: str, state: str) -> None:
    await session.execute(
        update(ProviderCall)
        .where(ProviderCall.request_no == request_no, ProviderCall.state != "done")
        .values(state=state, finished_at=utcnow(), leased_until=None)
        .execution_options(synchronize_session=False)
    )


async def _issued_from_stock(session: AsyncSession, batch_id: str) -> None:
    # The provider's stock fell by one for this coupon, and it no longer counts as our
    # outstanding claim: the synced quantity follows until the next sync says otherwise.
    await session.execute(
        update(CouponBatch)
        .where(CouponBatch.id == batch_id, CouponBatch.quantity >= 1)
        .values(quantity=CouponBatch.quantity - 1)
        .execution_options(synchronize_session=False)
    )
