"""Auth HTTP API: login, refresh, logout, who am I; partners' API keys (operators)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse

from incentive.auth import partner_keys, sessions, signup
from incentive.auth.errors import (
    InvalidCredentials,
    InvalidRefreshToken,
    LoginThrottled,
    NameTaken,
    RefreshTokenReused,
    SignupClosed,
    SignupThrottled,
)
from incentive.auth.identity import client_address, e164, pepper
from incentive.auth.keys import SIGNUP_ENABLED, SIGNUP_MAX_PER_ADDRESS, SIGNUP_WINDOW_SECONDS
from incentive.auth.models import Partner, PartnerApiKey
from incentive.auth.principal import CurrentUser, Operator, keyring
from incentive.auth.schemas import (
    InviteAnswerOut,
    IssuedKeyOut,
    KeyRotationIn,
    LoginIn,
    MeOut,
    PartnerKeyOut,
    PartnerOut,
    RefreshIn,
    SignupIn,
    SignupOut,
    TokenPairOut,
)
from incentive.auth.throttle import LoginThrottle
from incentive.config import live_config
from incentive.deps import Session
from incentive.errors import (
    AUTHENTICATED,
    PROBLEM_CONTENT_TYPE,
    VALIDATION,
    Conflict,
    Forbidden,
    IncentiveError,
    InvalidField,
    NotFound,
    problems,
)
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.settings import Settings

router = APIRouter(tags=["auth"], route_class=JSONBodyRoute)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _refusal(request: Request, exc: IncentiveError) -> JSONResponse:
    # Returned, not raised: the refusal wrote security state (a revoked token family) that
    # the request's unit of work must commit, and raising out of the endpoint would roll
    # it back.
    return JSONResponse(
        exc.to_problem(request.url.path),
        status_code=exc.status,
        headers=exc.headers(),
        media_type=PROBLEM_CONTENT_TYPE,
    )


def _pair_out(pair: sessions.TokenPair) -> TokenPairOut:
    return TokenPairOut(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
    )


@router.post(
    "/auth/token",
    name="create_token",
    response_model=TokenPairOut,
    responses=problems(*VALIDATION, InvalidCredentials, LoginThrottled),
)
async def login(body: LoginIn, request: Request, session: Session) -> TokenPairOut | Response:
    """Exchange username and password for an access token and a rotating refresh token.

    Throttled (429 with ``Retry-After``) per username and address, per username, per address,
    and for successful logins per username; the address is the peer's, or the
    ``X-Forwarded-For`` client when the peer is a trusted proxy
    (``INCENTIVE_FORWARDED_ALLOW_IPS``). A new session beyond the per-user cap revokes the
    least recently refreshed one."""
    throttle: LoginThrottle = request.app.state.login_throttle
    client_address = request.client.host if request.client else None
    pair = await sessions.login(
        session,
        keyring(request),
        _settings(request),
        throttle,
        body.username,
        body.password,
        client_address,
    )
    return _pair_out(pair)


@router.post(
    "/auth/signup",
    name="create_signup",
    status_code=201,
    response_model=SignupOut,
    responses=problems(*VALIDATION, SignupClosed, SignupThrottled, NameTaken, Conflict),
)
async def create_signup(body: SignupIn, request: Request, session: Session) -> SignupOut:
    """Create a customer login (then sign in with `POST /auth/token`). Off unless live config
    `auth.signup_enabled` is true (403 `signup-closed`); at most
    `auth.signup_max_per_address` attempts per client address (an IPv6 one by its /64) per
    `auth.signup_window_seconds` (429 `signup-throttled` with `Retry-After`). `phone` (E.164,
    a number without country code of the deployment's region; not a possible number: 422
    naming `phone`) and `device_id` are kept only as peppered hashes. `invite`: a referral
    invite's token, accepted for the new customer (`invite` in the answer: the referral,
    accepted or rejected with its reason; or `not-taken` with `invite-unknown`,
    `invite-expired` or `referrals-closed` — the account is made all the same)."""
    if not live_config.get(SIGNUP_ENABLED):
        raise SignupClosed("self-service sign-up is not enabled")
    peppered = pepper(request)
    if body.phone is not None and e164(body.phone, peppered.phone_region) is None:
        raise InvalidField("phone", "phone-number", "phone: not a possible phone number")
    throttle: LoginThrottle = request.app.state.login_throttle
    address = client_address(request)
    # No address known (no peer): one shared ceiling, failing closed; the referral's
    # per-address check is skipped instead (address_hash None).
    await throttle.take_signup(
        address or "unknown",
        live_config.get(SIGNUP_MAX_PER_ADDRESS),
        live_config.get(SIGNUP_WINDOW_SECONDS),
    )
    signals = peppered.signals((("phone", body.phone), ("device", body.device_id)))
    user, answer = await signup.signup(
        session,
        username=body.username,
        password=body.password,
        display_name=body.display_name,
        invite=body.invite,
        address_hash=None if address is None else peppered.hash("address", address),
        signals=signals,
    )
    invite = None if answer is None else InviteAnswerOut.model_validate(dict(answer))
    return SignupOut(id=user.id, username=user.username, invite=invite)


@router.post(
    "/auth/refresh",
    name="refresh_token",
    response_model=TokenPairOut,
    responses=problems(*VALIDATION, InvalidRefreshToken, RefreshTokenReused),
)
async def refresh(body: RefreshIn, request: Request, session: Session) -> TokenPairOut | Response:
    """Exchange a refresh token (once) for a new pair; a reused token ends the session."""
    try:
        pair = await sessions.refresh(
            session, keyring(request), _settings(request), body.refresh_token
        )
    except InvalidRefreshToken as exc:
        return _refusal(request, exc)
    return _pair_out(pair)


@router.post(
    "/auth/logout",
    name="revoke_token",
    status_code=204,
    response_class=Response,
    responses=problems(*AUTHENTICATED),
)
async def logout(principal: CurrentUser, request: Request, session: Session) -> Response:
    """Revoke this access token and every token of its session."""
    await sessions.logout(session, principal, _settings(request))
    return Response(status_code=204)


@router.get(
    "/me", name="get_current_user", response_model=MeOut, responses=problems(*AUTHENTICATED)
)
async def me(principal: CurrentUser) -> MeOut:
    """Who the bearer token speaks for: id, username, role and merchant."""
    return MeOut(
        id=principal.id,
        username=principal.name,
        role=principal.role,
        merchant_id=principal.merchant_id,
    )


PartnerCode = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{2,64}$")]
OPERATOR_ON_PARTNER = (*AUTHENTICATED, *VALIDATION, Forbidden, NotFound)


def _key_out(key: PartnerApiKey) -> PartnerKeyOut:
    return PartnerKeyOut(
        id=key.id, prefix=key.prefix, created_at=key.created_at, expires_at=key.expires_at
    )


async def _partner_out(session: Session, partner: Partner) -> PartnerOut:
    keys = await partner_keys.usable_keys(session, partner.id)
    return PartnerOut(
        id=partner.id,
        code=partner.code,
        name=partner.name,
        disabled=partner.disabled_at is not None,
        keys=[_key_out(k) for k in keys],
    )


@router.get("/partners/{code}", response_model=PartnerOut, responses=problems(*OPERATOR_ON_PARTNER))
async def get_partner(code: PartnerCode, _: Operator, session: Session) -> PartnerOut:
    """A partner, whether it is disabled, and its API keys that work now (operators)."""
    return await _partner_out(session, await partner_keys.partner_by_code(session, code))


@router.post(
    "/partners/{code}/api-keys",
    status_code=201,
    response_model=IssuedKeyOut,
    responses=problems(*OPERATOR_ON_PARTNER),
)
async def rotate_partner_key(
    code: PartnerCode, body: KeyRotationIn, principal: Operator, session: Session
) -> IssuedKeyOut:
    """Issue a new API key (shown once); the keys in use keep working for ``grace_seconds``
    (operators; audited)."""
    issued = await partner_keys.rotate_key(session, code, body.grace_seconds, actor=principal)
    return IssuedKeyOut(key=_key_out(issued.row), api_key=issued.api_key)


@router.delete(
    "/partners/{code}/api-keys/{key_id}",
    status_code=204,
    response_class=Response,
    responses=problems(*OPERATOR_ON_PARTNER),
)
async def revoke_partner_key(
    code: PartnerCode,
    key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")],
    principal: Operator,
    session: Session,
) -> Response:
    """Revoke one API key at once: its next request is a 401 (operators; audited)."""
    await partner_keys.revoke_key(session, code, key_id, actor=principal)
    return Response(status_code=204)


@router.post(
    "/partners/{code}/disable", response_model=PartnerOut, responses=problems(*OPERATOR_ON_PARTNER)
)
async def disable_partner(code: PartnerCode, principal: Operator, session: Session) -> PartnerOut:
    """Refuse every key of the partner (401) until enabled again (operators; audited)."""
    partner = await partner_keys.set_partner_disabled(session, code, True, actor=principal)
    return await _partner_out(session, partner)


@router.post(
    "/partners/{code}/enable", response_model=PartnerOut, responses=problems(*OPERATOR_ON_PARTNER)
)
async def enable_partner(code: PartnerCode, principal: Operator, session: Session) -> PartnerOut:
    """Accept the partner's working keys again (operators; audited)."""
    partner = await partner_keys.set_partner_disabled(session, code, False, actor=principal)
    return await _partner_out(session, partner)
