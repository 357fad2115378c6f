"""Auth HTTP API: login, refresh, logout, and who am I."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from incentive.auth import sessions
from incentive.auth.errors import (
    InvalidCredentials,
    InvalidRefreshToken,
    LoginThrottled,
    RefreshTokenReused,
)
from incentive.auth.principal import CurrentUser, keyring
from incentive.auth.schemas import LoginIn, MeOut, RefreshIn, TokenPairOut
from incentive.deps import Session
from incentive.errors import (
    AUTHENTICATED,
    PROBLEM_CONTENT_TYPE,
    VALIDATION,
    IncentiveError,
    problems,
)
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.settings import Settings

router = APIRouter(tags=["auth"], route_class=JSONBodyRoute)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _refusal(request: Request, exc: IncentiveError) -> JSONResponse:
    # Returned, not raised: the refusal wrote security state (a counted login failure, a
    # revoked token family) that the request's unit of work must commit, and raising out
    # of the endpoint would roll it back.
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
    """Exchange username and password for an access token and a rotating refresh token."""
    client_address = request.client.host if request.client else None
    try:
        pair = await sessions.login(
            session,
            keyring(request),
            _settings(request),
            body.username,
            body.password,
            client_address,
        )
    except InvalidCredentials as exc:
        return _refusal(request, exc)
    return _pair_out(pair)


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
