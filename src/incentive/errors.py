"""Domain errors and their RFC 9457 problem+json rendering.

Tree: the HTTP-shaped bases here, and under them each domain's leaves (``[domain]``,
defined in that domain's ``errors.py``). ``tests/test_architecture.py`` checks this drawing
against the real subclasses, their statuses and slugs::

    IncentiveError (500 internal)
    ├── PointsCryptoError (500 points-crypto-failed) [points_files]
    ├── BadRequest (400 bad-request)
    │   ├── MalformedBody (400 malformed-json)
    │   ├── FileRejected (422 points-file-rejected) [points_files]
    │   └── InvalidField (422 invalid-field)
    │       ├── InvalidConfigValue (422 invalid-config-value) [config]
    │       └── PartnerKeyInvalid (422 partner-key-invalid) [points_files]
    ├── Unauthorized (401 unauthorized)
    │   ├── InvalidCredentials (401 invalid-credentials) [auth]
    │   ├── InvalidRefreshToken (401 invalid-refresh-token) [auth]
    │   │   └── RefreshTokenReused (401 refresh-token-reused) [auth]
    │   └── BadWebhookSignature (401 bad-webhook-signature) [coupons]
    ├── Forbidden (403 forbidden)
    │   ├── SignupClosed (403 signup-closed) [auth]
    │   └── MayNotRefer (403 may-not-refer) [referrals]
    ├── NotFound (404 not-found)
    │   ├── AccountNotFound (404 account-not-found) [ledger]
    │   ├── JoinCodeNotFound (404 join-code-not-found) [join_codes]
    │   ├── ActivityNotFound (404 activity-not-found) [activities]
    │   ├── CouponNotFound (404 coupon-not-found) [coupons]
    │   ├── BatchNotFound (404 coupon-batch-not-found) [coupons]
    │   ├── ProviderNotFound (404 coupon-provider-not-found) [coupons]
    │   ├── UnknownConfigKey (404 config-key-unknown) [config]
    │   ├── PointsFileNotFound (404 points-file-not-found) [points_files]
    │   ├── RewardNotFound (404 reward-not-found) [rewards]
    │   ├── TemplateNotFound (404 template-not-found) [templates]
    │   ├── WordListNotFound (404 word-list-not-found) [review]
    │   ├── ShareNotFound (404 share-not-found) [sharing]
    │   ├── InviteNotFound (404 invite-not-found) [referrals]
    │   └── DataModelNotFound (404 data-model-not-found) [data_models]
    ├── Conflict (409 conflict)
    │   ├── NameTaken (409 name-taken) [auth]
    │   ├── IdempotencyConflict (409 idempotency-key-reused)
    │   │   └── TransferKeyReused (409 idempotency-key-reused) [ledger]
    │   ├── InsufficientFunds (409 insufficient-funds) [ledger]
    │   ├── BalanceLimit (409 balance-limit) [ledger]
    │   ├── AssetMismatch (409 asset-mismatch) [ledger]
    │   ├── ActivityIdReused (409 activity-id-reused) [activities]
    │   ├── CampaignClosed (409 campaign-conflict) [campaigns]
    │   ├── InvalidTransition (409 invalid-transition) [campaigns]
    │   ├── CampaignNotEditable (409 campaign-not-editable) [campaigns]
    │   ├── CampaignVersionConflict (409 campaign-version-conflict) [campaigns]
    │   ├── CodeUsed (409 code-used) [join_codes]
    │   ├── CodeVoid (409 code-void) [join_codes]
    │   ├── AlreadyJoined (409 already-joined) [join_codes]
    │   ├── ConfigVersionConflict (409 config-version-conflict) [config]
    │   ├── SoldOut (409 sold-out) [stock]
    │   ├── StockPoolMissing (409 stock-pool-missing) [stock]
    │   ├── AlreadyActivated (409 flash-sale-conflict) [flash_sales]
    │   ├── NotOnSale (409 not-on-sale) [flash_sales]
    │   ├── LimitExceeded (409 limit-exceeded) [flash_sales]
    │   ├── BatchClosed (409 coupon-batch-closed) [coupons]
    │   ├── CouponsExhausted (409 coupons-exhausted) [coupons]
    │   ├── ClaimLimitReached (409 claim-limit-reached) [coupons]
    │   ├── CouponNotUsable (409 coupon-not-usable) [coupons]
    │   ├── OtherMerchant (409 coupon-other-merchant) [coupons]
    │   ├── MinimumSpendNotMet (409 min-spend-not-met) [coupons]
    │   ├── UndoWindowPassed (409 undo-window-passed) [coupons]
    │   ├── ProviderTaken (409 coupon-provider-exists) [coupons]
    │   ├── ProviderDisabled (409 coupon-provider-disabled) [coupons]
    │   ├── NoRewardAvailable (409 no-reward-available) [rewards]
    │   ├── RewardLimitReached (409 reward-limit-reached) [rewards]
    │   ├── NotRewarding (409 not-rewarding) [rewards]
    │   ├── RewardTaken (409 reward-exists) [rewards]
    │   ├── SharingOff (409 sharing-off) [sharing]
    │   ├── ReferralsClosed (409 referrals-closed) [referrals]
    │   ├── PartnerNotConfigured (409 points-partner-not-configured) [points_files]
    │   ├── AnswerNotReady (409 points-answer-not-ready) [points_files]
    │   ├── TemplatePublished (409 template-published) [templates]
    │   ├── ReviewConflict (409 review-conflict) [review]
    │   └── DataModelExists (409 data-model-exists) [data_models]
    ├── UnsupportedMediaType (415 unsupported-media-type)
    ├── TooManyRequests (429 too-many-requests)
    │   ├── LoginThrottled (429 login-throttled) [auth]
    │   └── SignupThrottled (429 signup-throttled) [auth]
    └── ServiceUnavailable (503 unavailable)
        ├── TransportError (503 points-transport-unavailable) [points_files]
        ├── StorageFull (503 points-storage-full) [points_files]
        └── FlowClosed (503 flow-closed) [flash_sales]

Each domain's leaves also derive from one marker base of that domain, so ``except
<Marker>`` catches every refusal of the domain:

- AuthError [auth], LedgerError [ledger], ConfigError [config], CampaignError [campaigns],
- StockError [stock], FlashSaleError [flash_sales], PointsFileError [points_files],
- JoinCodeError [join_codes], ActivityError [activities], CouponError [coupons],
- RewardError [rewards], SharingError [sharing], ReferralError [referrals].

Only this module knows about HTTP status codes; services raise these and never see HTTP.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any, ClassVar

import redis.exceptions as redis_exc
import sqlalchemy.exc as sa_exc
from pydantic import BaseModel, ConfigDict

from incentive.kit.text import escape_refused

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)

PROBLEM_BASE = "https://incentive.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"
RFC9457_MEMBERS = frozenset({"type", "title", "status", "detail", "instance"})


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
        # Extras add members; they never replace the RFC 9457 ones (``status`` is the HTTP one).
        body.update({k: v for k, v in self.extra.items() if k not in RFC9457_MEMBERS})
        return body


class BadRequest(IncentiveError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class MalformedBody(BadRequest):
    """The request body is not JSON; ``line`` and ``column`` say where the parser stopped."""

    slug = "malformed-json"
    title = "Malformed JSON body"

    def __init__(self, problem: str, line: int, column: int) -> None:
        super().__init__(
            f"body: {problem} at line {line}, column {column}",
            errors=[
                {
                    "field": "body",
                    "in": "body",
                    "rule": "json_invalid",
                    "message": problem,
                    "line": line,
                    "column": column,
                }
            ],
        )


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


class UnsupportedMediaType(IncentiveError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"

    def __init__(self, detail: str) -> None:
        super().__init__(
            detail,
            errors=[{"field": "body", "in": "body", "rule": "content_type", "message": detail}],
        )


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


# ------------------------------------------------------------------ stores that cannot serve

# SQLSTATE classes and codes meaning "the server cannot take this now, retry": connection
# exceptions (08), insufficient resources (53: 53300 too many clients / too many connections
# for a role), and a server shutting down or starting up (57P01-57P03).
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53")
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


# The driver and pool errors that may mean a store cannot serve now; store_unavailable says
# which do. Lost or refused connections surface as the builtin ConnectionError (asyncpg's
# connect) or as redis-py's; a Redis pool with no free connection as redis-py's too.
STORE_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.TimeoutError,
    sa_exc.DBAPIError,
    ConnectionError,
    redis_exc.ConnectionError,
    redis_exc.TimeoutError,
)


def store_unavailable(exc: BaseException) -> ServiceUnavailable | None:
    """The 503 for a driver or pool error meaning the database or Redis cannot serve this
    request now (every connection in use, too many clients, starting up, refused, lost,
    SQLite busy), or None for any other error.

    Converted here once, for every route and whatever path reached the store (the request's
    unit of work, ``Database.reader()``, the purchase group commit): a client that sends more
    than the pools hold is told to retry, never answered with a 500.
    """
    if isinstance(exc, sa_exc.TimeoutError):
        return ServiceUnavailable("every database connection is in use, retry shortly")
    if isinstance(exc, sa_exc.DBAPIError):
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", ""))
        if exc.connection_invalidated or isinstance(exc, sa_exc.OperationalError):
            return ServiceUnavailable("database connection lost or busy, retry shortly")
        if sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES or sqlstate in _UNAVAILABLE_SQLSTATES:
            return ServiceUnavailable(
                "the database cannot take more work now, retry shortly", retry_after=2
            )
        return None  # a constraint, a syntax error...: not the store's capacity
    if isinstance(exc, STORE_ERRORS):
        return ServiceUnavailable(
            "a data store is unreachable or saturated, retry shortly", retry_after=2
        )
    return None


# --------------------------------------------------------------------------- HTTP rendering


class Problem(BaseModel):
    """RFC 9457 problem details; ``errors`` names each offending field and rule."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


# What a route with parameters or a body, or behind a bearer token, can always answer.
VALIDATION: tuple[type[IncentiveError], ...] = (InvalidField,)
AUTHENTICATED: tuple[type[IncentiveError], ...] = (Unauthorized,)


def problems(*errors: type[IncentiveError]) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that can answer ``errors``: one problem+json response per
    status, its description listing the problem types (slugs) of that status."""
    by_status: dict[int, list[type[IncentiveError]]] = defaultdict(list)
    for error in errors:
        if error not in by_status[error.status]:
            by_status[error.status].append(error)
    return {
        status: {
            "description": "; ".join(f"{e.slug}: {e.title}" for e in found),
            "model": Problem,
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status, found in sorted(by_status.items())
    }


def install_handlers(app: FastAPI) -> None:
    """Every error leaves as ``application/problem+json``: domain errors with their own status,
    validation as 422 naming each field and rule, a database or Redis that cannot serve now
    (``store_unavailable``) as 503 with ``Retry-After``. Anything unexpected is answered by
    ``observability.RequestContextMiddleware`` (a 500 with the request id, one log line)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    def respond(
        status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> JSONResponse:
        return JSONResponse(
            body, status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE
        )

    @app.exception_handler(IncentiveError)
    async def _domain(request: Request, exc: IncentiveError) -> JSONResponse:
        if exc.status == 503:
            # An answer by design (flow control closed, a store down, retry later): one line,
            # no traceback — a paused flash sale would otherwise log thousands of them a second.
            log.warning("unavailable", extra={"problem": exc.detail, "path": request.url.path})
        elif exc.status >= 500:
            log.error("domain error", exc_info=exc)
        return respond(exc.status, exc.to_problem(request.url.path), exc.headers())

    async def _store(request: Request, exc: Exception) -> JSONResponse:
        unavailable = store_unavailable(exc)
        if unavailable is None:
            raise exc  # not a store that is full or away: a real failure, answered as a 500
        # One line, no traceback: under overload there are many, and each is an answer.
        log.warning(
            "store unavailable",
            extra={"error": f"{type(exc).__name__}: {exc}"[:300], "path": request.url.path},
        )
        return respond(503, unavailable.to_problem(request.url.path), unavailable.headers())

    for store_error in STORE_ERRORS:
        app.add_exception_handler(store_error, _store)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            # A refused key is part of the path: escaped so the answer itself stays valid text.
            loc = [escape_refused(str(p)) for p in err.get("loc", ())]
            if loc and loc[0] in ("body", "query", "path", "header"):
                where, field = loc[0], ".".join(loc[1:])
            else:
                where, field = "body", ".".join(loc)
            errors.append(
                {
                    "field": field or where,
                    "in": where,
                    "rule": err.get("type", "invalid"),
                    "message": err.get("msg", ""),
                }
            )
        first = errors[0] if errors else {"field": "body", "message": "invalid"}
        body = {
            "type": PROBLEM_BASE + "validation",
            "title": "Request validation failed",
            "status": 422,
            "detail": f"{first['field']}: {first['message']}",
            "instance": request.url.path,
            "errors": errors,
        }
        return respond(422, body)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client hung up before its body arrived (a route reading it late, such as an
        # idempotent one without a body): nothing was done, and nobody reads this answer.
        log.info("client disconnected", extra={"path": request.url.path})
        body = {
            "type": PROBLEM_BASE + "client-disconnected",
            "title": "Client disconnected",
            "status": 400,
            "detail": "the client closed the connection before its request arrived",
            "instance": request.url.path,
        }
        return respond(400, body)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {
            "type": "about:blank",
            "title": str(exc.detail) if exc.detail else "HTTP error",
            "status": exc.status_code,
            "detail": str(exc.detail),
            "instance": request.url.path,
        }
        return respond(exc.status_code, body, dict(exc.headers or {}))


def internal_problem(instance: str | None) -> dict[str, Any]:
    """The body of a 500: nothing about the failure itself, which is in the log under the
    request id the response carries."""
    return {
        "type": PROBLEM_BASE + "internal",
        "title": "Internal error",
        "status": 500,
        "detail": "internal error; see logs with this request id",
        "instance": instance,
    }
