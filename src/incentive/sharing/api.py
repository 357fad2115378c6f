"""Sharing over HTTP: a campaign's sharing settings, shares (token, link, QR code, sharer
coupon), their statistics, the sharer's own shares, and the public link ``/s/{token}`` that
counts a visit and redirects to the campaign."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import RedirectResponse
from starlette.responses import Response as StarletteResponse

from incentive.auth.principal import CurrentUser, Principal, bearer_principal
from incentive.campaigns import service as campaigns
from incentive.campaigns.errors import CampaignNotEditable
from incentive.deps import QrQuery, Session, database, link_qr, public_base
from incentive.errors import (
    AUTHENTICATED,
    VALIDATION,
    Forbidden,
    IdempotencyConflict,
    InvalidField,
    NotFound,
    Unauthorized,
    problems,
)
from incentive.kit.codes import is_public_token
from incentive.kit.idempotency import idempotent
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.kit.pagination import DEFAULT_LIMIT, Cursor, Limit
from incentive.settings import Settings
from incentive.sharing import service, stats
from incentive.sharing.errors import ShareNotFound, SharingOff
from incentive.sharing.models import Share, SharingSettings
from incentive.sharing.schemas import (
    ChannelStats,
    ShareIn,
    ShareOut,
    SharePage,
    SharerStats,
    SharerStatsPage,
    ShareStatsOut,
    SharingSettingsIn,
    SharingSettingsOut,
)

router = APIRouter(tags=["sharing"], route_class=JSONBodyRoute)
# Mounted at the root, not under /api/v1: the link people share.
public_router = APIRouter()

CampaignId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="campaign id")]
Token = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,32}$", description="a share's token")]
SEEING = (*AUTHENTICATED, *VALIDATION, NotFound)
MANAGED = (*SEEING, Forbidden)

VISITOR_COOKIE = "incentive_visitor"
VISITOR_VALUE = re.compile(r"^[0-9a-f]{32}$")
VISITOR_COOKIE_SECONDS = 365 * 24 * 3600


def _settings(request: Request) -> Settings:
    found: Settings = request.app.state.settings
    return found


def share_out(request: Request, share: Share) -> ShareOut:
    return ShareOut(
        id=share.id,
        token=share.token,
        campaign_id=share.campaign_id,
        sharer_id=share.sharer_id,
        channel=share.channel,
        link=f"{public_base(request)}/s/{share.token}",
        qr=f"/api/v1/shares/{share.token}/qr",
        coupon_id=share.coupon_id,
        coupon_refusal=share.coupon_refusal,
        created_at=share.created_at,
    )


def settings_out(campaign_id: str, found: SharingSettings | service.Defaults) -> SharingSettingsOut:
    return SharingSettingsOut(
        campaign_id=campaign_id,
        enabled=found.enabled,
        coupon_batch_id=found.coupon_batch_id,
        coupons_per_sharer=found.coupons_per_sharer,
        attribution_hours=found.attribution_hours,
        conversion_types=list(found.conversion_types),
        updated_at=found.updated_at,
    )


# --------------------------------------------------------------------------- settings


@router.get(
    "/campaigns/{campaign_id}/sharing",
    name="get_sharing_settings",
    response_model=SharingSettingsOut,
    responses=problems(*SEEING),
)
async def get_sharing(
    campaign_id: CampaignId, principal: CurrentUser, session: Session
) -> SharingSettingsOut:
    """The campaign's sharing settings (the defaults, sharing off, if never set)."""
    found_id, found = await service.read_settings(session, principal, campaign_id)
    return settings_out(found_id, found)


@router.put(
    "/campaigns/{campaign_id}/sharing",
    name="put_sharing_settings",
    response_model=SharingSettingsOut,
    responses=problems(*MANAGED, CampaignNotEditable),
)
async def put_sharing(
    campaign_id: CampaignId, body: SharingSettingsIn, principal: CurrentUser, session: Session
) -> SharingSettingsOut:
    """Set how the campaign is shared: enabled, the coupon batch a sharing customer gets a
    coupon of (a batch of the same owner's campaign; 422 `coupon_batch_id` otherwise), coupons
    per sharer, the attribution window and the activity types that convert. Only while the
    campaign is a draft or rejected (409 `campaign-not-editable`): what the reviewer approved
    is what runs. By its merchant's staff or an operator; audited."""
    row = await service.put_settings(session, principal, campaign_id, body)
    return settings_out(campaign_id, row)


# --------------------------------------------------------------------------- shares


@router.post(
    "/campaigns/{campaign_id}/shares",
    name="create_share",
    response_model=ShareOut,
    status_code=201,
    responses=problems(*MANAGED, SharingOff, IdempotencyConflict),
)
@idempotent(status_code=201)
async def create_share(
    campaign_id: CampaignId,
    body: ShareIn,
    principal: CurrentUser,
    session: Session,
    request: Request,
) -> ShareOut:
    """Share an active campaign whose sharing is enabled (409 `sharing-off`) on a channel:
    by a customer, the campaign's merchant's staff or an operator. Answers the share's token,
    its link (`/s/{token}`) and QR code; a customer also gets the campaign's sharer coupon
    (at most `coupons_per_sharer`), or `coupon_refusal` says why not — the share is stored
    either way. Requires `Idempotency-Key` (a retry answers the first share)."""
    shared = await service.share(session, principal, campaign_id, body.channel)
    return share_out(request, shared.share)


@router.get(
    "/me/shares",
    name="list_my_shares",
    response_model=SharePage,
    responses=problems(*AUTHENTICATED, *VALIDATION),
)
async def my_shares(
    principal: CurrentUser,
    session: Session,
    request: Request,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> SharePage:
    """The caller's shares of every campaign, newest first."""
    page = await service.shares_of(session, principal.id, cursor=cursor, limit=limit)
    return SharePage.of(page, lambda s: share_out(request, s))


@router.get(
    "/shares/{token}/qr",
    name="get_share_qr",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/svg+xml": {}}},
        **problems(*SEEING, ShareNotFound),
    },
)
async def share_qr(
    token: Token,
    principal: CurrentUser,
    session: Session,
    request: Request,
    options: QrQuery,
) -> Response:
    """A QR code of the share's link, for any signed-in user (the token is public: it is in
    the link itself)."""
    found = await service.by_token(session, token)
    return link_qr(request, f"/s/{found.token}", options)


# --------------------------------------------------------------------------- statistics


def _counts(c: stats.Counts) -> dict[str, int]:
    return {
        "shares": c.shares,
        "visits": c.visits,
        "unique_visitors": c.unique_visitors,
        "conversions": c.conversions,
        "coupons": c.coupons,
    }


@router.get(
    "/campaigns/{campaign_id}/shares/stats",
    name="get_share_stats",
    response_model=ShareStatsOut,
    responses=problems(*MANAGED),
)
async def share_stats(
    campaign_id: CampaignId, principal: CurrentUser, session: Session
) -> ShareStatsOut:
    """The campaign's shares, visits (one per visitor, share and day), unique visitors,
    conversions and sharer coupons, in all and by channel. For its merchant's staff and
    operators."""
    await campaigns.managed_campaign(session, principal, campaign_id)
    found = await stats.campaign_stats(session, campaign_id)
    return ShareStatsOut(
        campaign_id=campaign_id,
        **_counts(found.total),
        channels=[ChannelStats(channel=k, **_counts(v)) for k, v in found.channels.items()],
    )


@router.get(
    "/campaigns/{campaign_id}/shares/stats/sharers",
    name="list_sharer_stats",
    response_model=SharerStatsPage,
    responses=problems(*MANAGED),
)
async def sharer_stats(
    campaign_id: CampaignId,
    principal: CurrentUser,
    session: Session,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> SharerStatsPage:
    """Each sharer of the campaign with their shares, visits, unique visitors, conversions
    and coupons, by sharer id. For its merchant's staff and operators."""
    await campaigns.managed_campaign(session, principal, campaign_id)
    page = await stats.sharer_stats(session, campaign_id, cursor=cursor, limit=limit)
    return SharerStatsPage.of(
        page,
        lambda r: SharerStats(
            sharer_id=r.sharer_id, sharer_role=r.sharer_role, **_counts(r.counts)
        ),
    )


# --------------------------------------------------------------------------- the public link


async def _visitor(request: Request) -> tuple[str, str | None, str | None]:
    """(visitor key, the customer if signed in, a cookie value to set): a bearer token's
    user, else our first-party cookie, else a hash of address and user agent (also set as the
    cookie, so a browser keeps its key when its address changes)."""
    authorization = request.headers.get("authorization")
    if authorization:
        try:
            principal: Principal | None = await bearer_principal(request, authorization)
        except Unauthorized:
            principal = None  # a stale token on a public link: an anonymous visit
        if principal is not None:
            customer = principal.id if principal.role == "customer" else None
            return f"u:{principal.id}", customer, None
    cookie = request.cookies.get(VISITOR_COOKIE, "")
    if VISITOR_VALUE.match(cookie):
        return f"c:{cookie}", None, None
    address = request.client.host if request.client else ""
    agent = request.headers.get("user-agent", "")
    key = hashlib.sha256(f"visitor\n{address}\n{agent}".encode()).hexdigest()[:32]
    return f"c:{key}", None, key


def landing(request: Request, campaign_id: str, token: str) -> str:
    url = _settings(request).share_landing_url
    url = url.replace("{campaign_id}", campaign_id).replace("{token}", token)
    return url if "://" in url else public_base(request) + url


async def visit_share(request: Request) -> StarletteResponse:
    """Count a visit of the share (once per visitor and day) and redirect (302) to the
    campaign. Not an API operation: any query string is accepted (social apps add theirs,
    e.g. WeChat's `from=` and `isappinstalled=`)."""
    token = request.path_params["token"]
    if not is_public_token(token):
        raise InvalidField("token", "pattern", "token: 1-32 URL-safe characters")
    visitor, customer, new_cookie = await _visitor(request)
    async with database(request).unit_of_work() as session:
        found, _ = await service.visit(session, token, visitor, customer)
        campaign_id = found.campaign_id
    response = RedirectResponse(landing(request, campaign_id, token), status_code=302)
    response.headers["Cache-Control"] = "no-store"
    if new_cookie is not None:
        response.set_cookie(
            VISITOR_COOKIE,
            new_cookie,
            max_age=VISITOR_COOKIE_SECONDS,
            path="/s/",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
    return response


public_router.add_route("/s/{token}", visit_share, methods=["GET"], include_in_schema=False)
