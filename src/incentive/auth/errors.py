"""Auth errors. ``except AuthError`` catches every refusal of the identity domain."""

from __future__ import annotations

from typing import Any

from incentive.errors import Conflict, Forbidden, IncentiveError, TooManyRequests, Unauthorized


class AuthError(IncentiveError):
    """Marker base of the identity domain's refusals (combined with an HTTP-shaped base)."""


class InvalidCredentials(AuthError, Unauthorized):
    """Unknown username, wrong password or blocked user: deliberately one answer for all."""

    slug = "invalid-credentials"
    title = "Invalid username or password"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="incentive"'}


class LoginThrottled(AuthError, TooManyRequests):
    """Too many failed logins for this username or from this address in the window."""

    slug = "login-throttled"
    title = "Too many failed login attempts"


class InvalidRefreshToken(AuthError, Unauthorized):
    """Unknown, expired or revoked refresh token; log in again."""

    slug = "invalid-refresh-token"
    title = "Invalid refresh token"


class RefreshTokenReused(InvalidRefreshToken):
    """An already used refresh token came back: the whole family was revoked."""

    slug = "refresh-token-reused"
    title = "Refresh token reused; session revoked"


class NameTaken(AuthError, Conflict):
    """A username, merchant code or partner code is already in use."""

    slug = "name-taken"
    title = "Name already taken"

    def __init__(self, field: str, value: str, **extra: Any) -> None:
        super().__init__(f"{field} {value!r} is already taken", field=field, **extra)
        self.field = field


class SignupClosed(AuthError, Forbidden):
    """Self-service sign-up is off (live config ``auth.signup_enabled``)."""

    slug = "signup-closed"
    title = "Sign-up is closed"


class SignupThrottled(AuthError, TooManyRequests):
    """Too many sign-ups from this address in the window (``auth.signup_max_per_address``)."""

    slug = "signup-throttled"
    title = "Too many sign-ups from this address"
