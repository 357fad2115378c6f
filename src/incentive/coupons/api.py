"""Coupons over HTTP: providers and their webhooks, batches and claims, the customer's
wallet, revocation, and the merchant's till."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from incentive.auth.principal import Principal, require_roles
from incentive.campaigns import service as campaigns
from incentive.coupons import batches, providers, service, till_api
from incentive.coupons.errors import (
    BadWebhookSignature,
    BatchClosed,
    BatchNotFound,
    ClaimLimitReached,
    CouponNotFound,
    CouponNotUsable,
    CouponsExhausted,
    ProviderDisabled,
    ProviderNotFound,
    ProviderTaken,
)
from incentive.coupons.metrics import CLAIMS, WEBHOOKS
from incentive.coupons.models import Coupon, CouponBatch, CouponProvider
from incentive.coupons.provider import ProviderUnavailable
from incentive.coupons.schemas import (
    BatchOut,
    BatchPage,
    CodesIn,
    CodesOut,
    CouponOut,
    CouponPage,
    CouponState,
    ProviderChange,
    ProviderIn,
    ProviderOut,
    ProviderPage,
    ProviderRegistered,
    RevokeIn,
    SyncedOut,
    TransitionOut,
    TransitionPage,
    WebhookOut,
)
from incentive.deps import Session, database
from incentive.errors import (
    AUTHENTICATED,
    VALIDATION,
    Forbidden,
    IdempotencyConflict,
    NotFound,
    ServiceUnavailable,
    problems,
)
from incentive.kit import qr
from incentive.kit.idempotency import idempotent
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.kit.pagination import DEFAULT_LIMIT, Cursor, Limit

router = APIRouter(tags=["coupons"], route_class=JSONBodyRoute)

Id = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
ProviderPath = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{1,39}$")]
Operator = Annotated[Principal, require_roles("operator")]
Customer = Annotated[Principal, require_roles("customer")]
Anyone = Annotated[Principal, require_roles("customer", "merchant", "operator")]
Staff = Annotated[Principal, require_roles("merchant")]
SEEING = (*AUTHENTICATED, *VALIDATION, Forbidden)


# --------------------------------------------------------------------------- providers


def _provider(row: CouponProvider) -> ProviderOut:
    shown = {c: getattr(row, c) for c in ProviderOut.model_fields if c != "webhook_url"}
    return ProviderOut(**shown, webhook_url=f"/api/v1/coupon-providers/{row.code}/webhooks")


@router.post(
    "/coupon-providers",
    name="register_coupon_provider",
    response_model=ProviderRegistered,
    status_code=201,
    responses=problems(*SEEING, ProviderTaken),
)
async def register_provider(
    body: ProviderIn, principal: Operator, session: Session
) -> ProviderRegistered:
    """Register a third-party coupon provider: where to call it and with which credentials.
    The webhook secret (generated unless given) is shown in this answer only. Audited."""
    row, secret = await providers.register(
        session,
        code=body.code,
        name=body.name,
        base_url=str(body.base_url),
        credentials=body.credentials,
        webhook_secret=body.webhook_secret,
        actor=principal,
    )
    return ProviderRegistered(**_provider(row).model_dump(), webhook_secret=secret)


@router.get(
    "/coupon-providers",
    name="list_coupon_providers",
    response_model=ProviderPage,
    responses=problems(*SEEING),
)
async def list_providers(
    principal: Operator, session: Session, cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT
) -> ProviderPage:
    """The registered providers, newest first, with when their batches were last synced."""
    page = await providers.list_providers(session, cursor=cursor, limit=limit)
    return ProviderPage.of(page, _provider)


@router.patch(
    "/coupon-providers/{code}",
    name="change_coupon_provider",
    response_model=ProviderOut,
    responses=problems(*SEEING, ProviderNotFound),
)
async def change_provider(
    code: ProviderPath, body: ProviderChange, principal: Operator, session: Session
) -> ProviderOut:
    """Change a provider's name, address, credentials, webhook secret or state. Audited."""
    changes = body.model_dump(exclude_unset=True)
    if "base_url" in changes:
        changes["base_url"] = str(changes["base_url"]).rstrip("/")
    return _provider(await providers.change(session, code, changes, principal))


@router.post(
    "/coupon-providers/{code}/sync",
    name="sync_coupon_provider",
    response_model=SyncedOut,
    responses=problems(*SEEING, ProviderNotFound, ServiceUnavailable),
)
async def sync_provider(code: ProviderPath, principal: Operator, request: Request) -> SyncedOut:
    """Pull the provider's batches now (workers do it every
    `coupons.provider_sync_seconds`). 503 when the provider cannot be reached."""
    try:
        n = await providers.sync(database(request), code)
    except ProviderUnavailable as exc:
        raise ServiceUnavailable(f"provider {code} did not answer: {exc}") from None
    return SyncedOut(provider=code, batches=n)


@router.post(
    "/coupon-providers/{code}/webhooks",
    name="receive_coupon_provider_webhook",
    response_model=WebhookOut,
    responses=problems(*VALIDATION, ProviderNotFound, ProviderDisabled, BadWebhookSignature),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "security": [],
    },
)
async def receive_webhook(code: ProviderPath, request: Request, session: Session) -> WebhookOut:
    """A provider's signed webhook (`batch.updated`, `coupon.issued`, `coupon.failed`; see
    docs/coupon-provider-api.md). Signed the Standard Webhooks way with the provider's secret
    (401 otherwise, nothing applied). Late, repeated or out-of-order webhooks are harmless."""
    body = await request.body()
    try:
        kind = await providers.receive_webhook(session, code, request.headers, body)
    except BadWebhookSignature:
        WEBHOOKS.labels(code, "bad-signature").inc()
        raise
    WEBHOOKS.labels(code, "applied").inc()
    return WebhookOut(type=kind)


# --------------------------------------------------------------------------- batches


async def _batch_out(
    session: Session, batch: CouponBatch, principal: Principal, *, with_counts: bool
) -> BatchOut:
    out = BatchOut.model_validate(batch)
    if batch.provider_id is not None:
        provider = await session.get(CouponProvider, batch.provider_id)
        out.provider = provider.code if provider else None
    if with_counts and await _manages(session, principal, batch):
        out.counts = await batches.counts(session, batch.id)
    return out


async def _manages(session: Session, principal: Principal, batch: CouponBatch) -> bool:
    if principal.is_operator:
        return True
    if batch.campaign_id is None or principal.role != "merchant":
        return False
    campaign = await campaigns.campaign_facts(session, batch.campaign_id)
    return campaigns.can_manage(principal, campaign)


async def _visible_batch(session: Session, principal: Principal, batch_id: str) -> CouponBatch:
    batch = await batches.get_batch(session, batch_id)
    if batch.open or await _manages(session, principal, batch):
        return batch
    raise BatchNotFound(f"coupon batch {batch_id} does not exist", batch_id=batch_id)


@router.get(
    "/coupon-batches",
    name="list_coupon_batches",
    response_model=BatchPage,
    responses=problems(*SEEING, NotFound),
)
async def list_batches(
    principal: Anyone,
    session: Session,
    campaign_id: Annotated[str | None, Query(pattern=r"^[0-9a-f]{32}$")] = None,
    provider: Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9_-]{1,39}$")] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> BatchPage:
    """Coupon batches, newest first: customers and merchants see those open for claims (and
    merchants their own campaign's with `campaign_id`); operators every batch, also a
    provider's batches not yet used by a campaign (`provider`)."""
    open_only = not principal.is_operator
    campaign_ids = None
    if campaign_id is not None:
        campaign_ids = [campaign_id]
        if principal.role == "merchant":
            await campaigns.managed_campaign(session, principal, campaign_id)
            open_only = False
    provider_id = None
    if provider is not None:
        if not principal.is_operator:
            raise Forbidden("only operators list a provider's batches")
        provider_id = (await providers.by_code(session, provider)).id
    page = await batches.list_batches(
        session,
        campaign_ids=campaign_ids,
        open_only=open_only,
        provider_id=provider_id,
        cursor=cursor,
        limit=limit,
    )
    items = [await _batch_out(session, b, principal, with_counts=False) for b in page.items]
    return BatchPage(items=items, next_cursor=page.next_cursor)


@router.get(
    "/coupon-batches/{batch_id}",
    name="get_coupon_batch",
    response_model=BatchOut,
    responses=problems(*SEEING, BatchNotFound),
)
async def get_batch(batch_id: Id, principal: Anyone, session: Session) -> BatchOut:
    """One batch; operators and the owning merchant also see its coupons counted by state
    (claimed = every coupon; locked = `received`; then usable, redeemed, expired, failed …)."""
    batch = await _visible_batch(session, principal, batch_id)
    return await _batch_out(session, batch, principal, with_counts=True)


@router.post(
    "/coupon-batches/{batch_id}/codes",
    name="import_coupon_codes",
    response_model=CodesOut,
    responses=problems(*SEEING, BatchNotFound),
)
async def import_codes(
    batch_id: Id, body: CodesIn, principal: Operator, session: Session
) -> CodesOut:
    """Import codes for a batch whose rules say `codes: imported`: each new code adds one
    coupon to the stock (up to the approved quantity); codes already known are counted as
    duplicates and skipped."""
    added, duplicates = await batches.import_codes(session, batch_id, body.codes, principal)
    return CodesOut(batch_id=batch_id, added=added, duplicates=duplicates)


@router.post(
    "/coupon-batches/{batch_id}/claims",
    name="claim_coupon",
    response_model=CouponOut,
    status_code=201,
    responses=problems(
        *SEEING,
        BatchNotFound,
        BatchClosed,
        CouponsExhausted,
        ClaimLimitReached,
        IdempotencyConflict,
    ),
)
@idempotent(status_code=201)
async def claim(batch_id: Id, principal: Customer, session: Session) -> CouponOut:
    """Claim one coupon of the batch into the caller's wallet. Requires `Idempotency-Key`
    (the same key again answers the first result). Atomic against the stock and the
    per-customer limit (409 `coupons-exhausted`, `claim-limit-reached`,
    `coupon-batch-closed`). With a task the coupon is `received` (locked) until the task is
    done; otherwise ours is `usable` at once and a provider's `activating`."""
    try:
        coupon = await service.claim(session, batch_id, principal)
    except Exception as exc:
        CLAIMS.labels(getattr(exc, "slug", "error")).inc()
        raise
    CLAIMS.labels("claimed").inc()
    return coupon_out(coupon)


# --------------------------------------------------------------------------- wallet


SHOWN = ("usable", "held", "redeemed")


def coupon_out(coupon: Coupon) -> CouponOut:
    shown = coupon.state in SHOWN
    return CouponOut(
        id=coupon.id,
        batch_id=coupon.batch_id,
        campaign_id=coupon.campaign_id,
        state=coupon.state,
        code=coupon.code if shown else None,
        provider_code=coupon.provider_code if shown else None,
        face_value_fen=coupon.face_value_fen,
        rate_bp=coupon.rate_bp,
        max_discount_fen=coupon.max_discount_fen,
        min_spend_fen=coupon.min_spend_fen,
        claimed_at=coupon.claimed_at,
        task_due_at=coupon.task_due_at,
        valid_from=coupon.valid_from,
        valid_until=coupon.valid_until,
        reason=coupon.reason,
        qr=f"/api/v1/me/coupons/{coupon.id}/qr" if shown else None,
    )


@router.get(
    "/me/coupons",
    name="list_my_coupons",
    response_model=CouponPage,
    responses=problems(*SEEING),
)
async def my_coupons(
    principal: Customer,
    session: Session,
    state: Annotated[list[CouponState] | None, Query()] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> CouponPage:
    """The caller's coupons, newest claim first (`state` may be repeated to filter): state,
    value, validity, and for a usable coupon its code and a QR code of it for the till."""
    page = await service.wallet(session, principal.id, states=state, cursor=cursor, limit=limit)
    return CouponPage.of(page, coupon_out)


@router.get(
    "/me/coupons/{coupon_id}",
    name="get_my_coupon",
    response_model=CouponOut,
    responses=problems(*SEEING, CouponNotFound),
)
async def my_coupon(coupon_id: Id, principal: Customer, session: Session) -> CouponOut:
    """One of the caller's coupons."""
    return coupon_out(await service.customer_coupon(session, principal.id, coupon_id))


@router.get(
    "/me/coupons/{coupon_id}/qr",
    name="get_my_coupon_qr",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/svg+xml": {}}},
        **problems(*SEEING, CouponNotFound, CouponNotUsable),
    },
)
async def my_coupon_qr(
    coupon_id: Id,
    principal: Customer,
    session: Session,
    format: Annotated[Literal["png", "svg"], Query()] = "png",
) -> Response:
    """A QR code of the coupon's code for the till to scan (usable coupons only)."""
    coupon = await service.customer_coupon(session, principal.id, coupon_id)
    if coupon.state not in SHOWN:
        raise CouponNotUsable(
            f"coupon {coupon_id} is {coupon.state}: it has no code to show yet",
            state=coupon.state,
        )
    image, media_type = qr.render(coupon.code, format)
    return Response(image, media_type=media_type)


@router.get(
    "/coupons/{coupon_id}/transitions",
    name="list_coupon_transitions",
    response_model=TransitionPage,
    responses=problems(*SEEING, CouponNotFound),
)
async def coupon_transitions(
    coupon_id: Id,
    principal: Anyone,
    session: Session,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> TransitionPage:
    """Every state change of a coupon with actor, time and reason (its holder and
    operators)."""
    if principal.is_operator:
        await service.get_coupon(session, coupon_id)
    else:
        await service.customer_coupon(session, principal.id, coupon_id)
    page = await service.transitions(session, coupon_id, cursor=cursor, limit=limit)
    return TransitionPage.of(page, TransitionOut.model_validate)


@router.post(
    "/coupons/{coupon_id}/revocation",
    name="revoke_coupon",
    response_model=CouponOut,
    responses=problems(*SEEING, CouponNotFound, CouponNotUsable),
)
async def revoke(coupon_id: Id, body: RevokeIn, principal: Operator, session: Session) -> CouponOut:
    """Withdraw a coupon that is not used (the provider is told, for a coupon it issued).
    409 `coupon-not-usable` for one being activated, used, expired or revoked."""
    return coupon_out(await service.revoke(session, coupon_id, principal, body.reason))


router.include_router(till_api.router)
