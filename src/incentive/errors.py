"""Domain errors and their RFC 9457 problem+json rendering.

Tree (each domain adds its own leaves under these)::

    IncentiveError (500 internal)
    ├── PointsCryptoError (500 points-crypto-failed: gpg itself failed) [points_files]
    ├── BadRequest (400 bad-request)
    │   ├── FileRejected (422 points-file-rejected: a whole-file reason) [points_files]
    │   └── InvalidField (422 invalid-field: names the field and the rule)
    │       ├── InvalidConfigValue (422 invalid-config-value)   [config]
    │       └── PartnerKeyInvalid (422 partner-key-invalid)     [points_files]
    ├── Unauthorized (401 unauthorized, WWW-Authenticate: Bearer)
    │   ├── InvalidCredentials (401 invalid-credentials)  [auth]
    │   └── InvalidRefreshToken (401 invalid-refresh-token) [auth]
    │       └── RefreshTokenReused (401 refresh-token-reused: the family was revoked)
    ├── Forbidden (403 forbidden)
    ├── NotFound (404 not-found)
    │   ├── AccountNotFound (404 account-not-found)       [ledger]
    │   └── UnknownConfigKey (404 config-key-unknown)     [config]
    ├── Conflict (409 conflict)
    │   ├── NameTaken (409 name-taken: username, merchant or partner code) [auth]
    │   ├── IdempotencyConflict (409 idempotency-key-reused)   [kit/idempotency]
    │   │   └── TransferKeyReused (409 idempotency-key-reused) [ledger]
    │   ├── InsufficientFunds (409 insufficient-funds)    [ledger]
    │   ├── AssetMismatch (409 asset-mismatch)            [ledger]
    │   ├── CampaignError (409 campaign-conflict)         [campaigns]
    │   │   ├── InvalidTransition (409 invalid-transition: names from and to)
    │   │   ├── CampaignNotEditable (409 campaign-not-editable)
    │   │   └── CampaignVersionConflict (409 campaign-version-conflict)
    │   ├── ConfigVersionConflict (409 config-version-conflict) [config]
    │   ├── StockError (409 stock-conflict)               [stock]
    │   │   ├── SoldOut (409 sold-out)
    │   │   └── StockPoolMissing (409 stock-pool-missing)
    │   └── FlashSaleError (409 flash-sale-conflict)      [flash_sales]
    │       ├── NotOnSale (409 not-on-sale: not active, not split, or outside the window)
    │       └── LimitExceeded (409 limit-exceeded: the per-user limit)
    ├── TooManyRequests (429 too-many-requests, Retry-After)
    │   └── LoginThrottled (429 login-throttled)          [auth]
    └── ServiceUnavailable (503 unavailable, Retry-After)
        ├── TransportError (503 points-transport-unavailable) [points_files]
        └── FlowClosed (503 flow-closed: the sale's flow-control switch is off) [flash_sales]

Ledger leaves also derive from the marker ``ledger.errors.LedgerError``; config leaves from
``ConfigError`` below (``except ConfigError`` catches every refusal of the config centre);
auth leaves from ``auth.errors.AuthError``.

Only this module knows about HTTP status codes; services raise these and never see HTTP.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "https://incentive.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"


class IncentiveError(Exception):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug

    def headers(self) -> dict[str, str]:
        return {}

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class BadRequest(IncentiveError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class InvalidField(BadRequest):
    """A value breaks a business rule; ``field`` and ``rule`` tell the caller which."""

    status = 422
    slug = "invalid-field"
    title = "Invalid field"

    def __init__(self, field: str, rule: str, detail: str | None = None) -> None:
        super().__init__(
            detail or f"{field}: {rule}",
            errors=[{"field": field, "rule": rule, "message": detail or rule}],
        )
        self.field = field
        self.rule = rule


class Unauthorized(IncentiveError):
    status = 401
    slug = "unauthorized"
    title = "Unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="incentive", error="invalid_token"'}


class Forbidden(IncentiveError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class NotFound(IncentiveError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(IncentiveError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class IdempotencyConflict(Conflict):
    slug = "idempotency-key-reused"
    title = "Idempotency key reused with a different request"


class CampaignError(Conflict):
    slug = "campaign-conflict"
    title = "Campaign refused the change"


class InvalidTransition(CampaignError):
    """The campaign's status cannot move from ``from`` to ``to`` (now, or by this caller)."""

    slug = "invalid-transition"
    title = "Invalid status transition"

    def __init__(
        self, from_status: str, to_status: str, detail: str | None = None, **extra: Any
    ) -> None:
        super().__init__(
            detail or f"cannot move a campaign from {from_status} to {to_status}",
            **{"from": from_status, "to": to_status, **extra},
        )
        self.from_status = from_status
        self.to_status = to_status


class CampaignNotEditable(CampaignError):
    """Only draft and rejected campaigns can be edited."""

    slug = "campaign-not-editable"
    title = "Campaign cannot be edited in its status"


class CampaignVersionConflict(CampaignError):
    """The caller's ``version`` is not the campaign's current one (someone changed it)."""

    slug = "campaign-version-conflict"
    title = "Campaign changed since it was read"


class StockError(Conflict):
    slug = "stock-conflict"
    title = "Stock refused the operation"


class SoldOut(StockError):
    """The whole pool (every bucket together) cannot serve the quantity; nothing was taken."""

    slug = "sold-out"
    title = "Sold out"


class StockPoolMissing(StockError):
    """The pool was never split, was dropped, or was lost with the stock store (rebuild it)."""

    slug = "stock-pool-missing"
    title = "Stock pool does not exist"


class TooManyRequests(IncentiveError):
    status = 429
    slug = "too-many-requests"
    title = "Too many requests"

    def __init__(self, detail: str | None = None, retry_after: int = 1, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ServiceUnavailable(IncentiveError):
    status = 503
    slug = "unavailable"
    title = "Service unavailable"

    def __init__(self, detail: str | None = None, retry_after: int = 1, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ConfigError(IncentiveError):
    """Marker base of the live config centre's refusals (combined with an HTTP-shaped base)."""


class UnknownConfigKey(ConfigError, NotFound):
    slug = "config-key-unknown"
    title = "Unknown configuration key"

    def __init__(self, key: str) -> None:
        super().__init__(f"no configuration key {key!r} is registered", key=key)
        self.key = key


class InvalidConfigValue(ConfigError, InvalidField):
    """The value breaks the key's type or constraint; ``field`` is ``value`` (or a sub-path)."""

    slug = "invalid-config-value"
    title = "Invalid configuration value"


class ConfigVersionConflict(ConfigError, Conflict):
    """``expected_version`` did not match: someone else changed the key in between."""

    slug = "config-version-conflict"
    title = "Configuration changed concurrently"
