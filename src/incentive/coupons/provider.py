"""A third-party coupon provider, spoken to over "Incentive coupon provider API v1".

The protocol is `docs/coupon-provider-api.md`. Every call that changes something at the
provider answers with one of three things, and the caller acts on exactly that:

- `Done`: the provider did it (first time or an idempotent repeat of the same request number);
- `Refused`: a definitive no, a 4xx carrying an error code — never retry it;
- `Unclear`: timeout, connection error, 5xx, an answer we cannot read — it may or may not have
  happened, so the caller asks again with the same request number or looks it up (`find_*`).

Nothing here retries: whether and when to ask again is the caller's decision, made against
its own durable record of the request number. Webhook signatures are Standard Webhooks'.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote

import httpx

from incentive.kit.text import REFUSED_IN_LINE, refused_character, refused_message

COUPON_STATES = frozenset({"issued", "redeemed", "revoked"})
REDEMPTION_STATES = frozenset({"redeemed", "reversed"})
BATCH_STATES = frozenset({"running", "paused", "stopped", "exhausted"})
_BIGINT = 2**63 - 1
#: the longest id, code or request number a provider may send: what our columns hold
_ID_MAX_LENGTH = 64


@dataclass(frozen=True)
class ProviderBatch:
    id: str
    name: str
    state: str
    stock: int
    face_value_fen: int
    min_spend_fen: int
    valid_from: datetime | None
    valid_until: datetime | None


@dataclass(frozen=True)
class ProviderCoupon:
    """A coupon as the provider sees it; for a redemption, `request_no` is the redemption's
    and `state` is the redemption's (`redeemed` or `reversed`)."""

    request_no: str
    code: str
    batch_id: str
    state: str
    valid_until: datetime | None = None
    issued_at: datetime | None = None


@dataclass(frozen=True)
class ProviderFailure:
    """A ``coupon.failed`` webhook: nothing issued under ``request_no`` unless asked again."""

    request_no: str
    reason: str


@dataclass(frozen=True)
class Done:
    coupon: ProviderCoupon


@dataclass(frozen=True)
class Refused:
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Unclear:
    why: str


Answer = Done | Refused | Unclear
_Parse = Callable[[Any], ProviderCoupon]


class ProviderUnavailable(Exception):
    """The provider could not answer a read (batches, the coupon listing) right now."""


# Statuses that say nothing about the request itself: our credentials or the rate we call at.
# Refusing on them would fail coupons for good over a misconfiguration that an operator fixes.
_NOT_AN_ANSWER = frozenset({401, 403, 408, 429})


class ProviderClient:
    """One provider's API, over one pooled connection set. Never retries, never raises for a
    network problem from the calls that answer an `Answer`."""

    def __init__(
        self,
        base_url: str,
        credentials: str,
        *,
        timeout: float = 5.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {credentials}", "Accept": "application/json"}
        self._timeout = httpx.Timeout(timeout)
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=self._timeout)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def batches(self) -> list[ProviderBatch]:
        found: list[ProviderBatch] = []
        async for item in self._pages("/v1/batches", {}):
            try:
                found.append(parse_batch(item))
            except ValueError as exc:
                raise ProviderUnavailable(f"bad batch in listing: {exc}") from exc
        return found

    async def issue(self, request_no: str, batch_id: str, customer: str) -> Answer:
        body = {"request_no": request_no, "batch_id": batch_id, "customer": customer}
        return await self._change("/v1/coupons", body, parse_coupon)

    async def find_coupon(self, request_no: str) -> ProviderCoupon | None | Unclear:
        return await self._find(f"/v1/coupons/{_segment(request_no)}", parse_coupon)

    async def redeem(self, request_no: str, code: str, merchant: str, amount_fen: int) -> Answer:
        body = {
            "request_no": request_no,
            "code": code,
            "merchant": merchant,
            "amount_fen": amount_fen,
        }
        return await self._change("/v1/redemptions", body, _parse_redemption)

    async def find_redemption(self, request_no: str) -> ProviderCoupon | None | Unclear:
        return await self._find(f"/v1/redemptions/{_segment(request_no)}", _parse_redemption)

    async def reverse_redemption(self, request_no: str) -> Answer:
        path = f"/v1/redemptions/{_segment(request_no)}/reversal"
        return await self._change(path, {}, _parse_redemption)

    async def revoke(self, request_no: str, code: str, reason: str) -> Answer:
        path = f"/v1/coupons/{_segment(code)}/revocation"
        return await self._change(path, {"request_no": request_no, "reason": reason}, parse_coupon)

    async def coupons(
        self, *, batch_id: str | None = None, date: date | None = None
    ) -> AsyncIterator[ProviderCoupon]:
        wanted = {"batch_id": batch_id, "date": None if date is None else date.isoformat()}
        query = {name: value for name, value in wanted.items() if value is not None}
        async for item in self._pages("/v1/coupons", query):
            try:
                yield parse_coupon(item)
            except ValueError as exc:
                raise ProviderUnavailable(f"bad coupon in listing: {exc}") from exc

    async def _send(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, str] | None = None
    ) -> httpx.Response | Unclear:
        # Redirects stay unfollowed: a POST that is redirected is not a POST the provider took.
        try:
            return await self._client.request(
                method, self._base + path, json=json, params=params, headers=self._headers,
                timeout=self._timeout, follow_redirects=False,
            )  # fmt: skip
        except httpx.TimeoutException:
            return Unclear("timeout")
        except httpx.ConnectError:
            return Unclear("connect-error")
        except httpx.HTTPError:  # the connection broke mid-answer, a protocol error, ...
            return Unclear("network-error")

    async def _change(self, path: str, body: Mapping[str, Any], parse: _Parse) -> Answer:
        response = await self._send("POST", path, json=body)
        if isinstance(response, Unclear):
            return response
        status = response.status_code
        if status in (200, 201):
            try:
                return Done(parse(response.json()))
            except ValueError:  # json.JSONDecodeError is a ValueError
                return Unclear("bad-answer")
        error = _error_code(response)
        if 400 <= status < 500 and status not in _NOT_AN_ANSWER and error is not None:
            return Refused(error[0], error[1])
        return Unclear(f"http-{status}")

    async def _find(self, path: str, parse: _Parse) -> ProviderCoupon | None | Unclear:
        response = await self._send("GET", path)
        if isinstance(response, Unclear):
            return response
        if response.status_code == 200:
            try:
                return parse(response.json())
            except ValueError:
                return Unclear("bad-answer")
        # Only the provider's own "not-found" means it never happened; a bare 404 from a proxy
        # or a wrong base URL must not make the caller issue a second coupon.
        error = _error_code(response)
        if response.status_code == 404 and error is not None and error[0] == "not-found":
            return None
        return Unclear(f"http-{response.status_code}")

    async def _pages(self, path: str, query: Mapping[str, str]) -> AsyncIterator[Mapping[str, Any]]:
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            params = dict(query) if cursor is None else {**query, "cursor": cursor}
            response = await self._send("GET", path, params=params)
            if isinstance(response, Unclear):
                raise ProviderUnavailable(f"{path}: {response.why}")
            if response.status_code != 200:
                raise ProviderUnavailable(f"{path}: http-{response.status_code}")
            try:
                page = response.json()
                items = page["items"]
                cursor = page["next_cursor"]
                if not isinstance(items, list) or not (cursor is None or isinstance(cursor, str)):
                    raise ValueError("items or next_cursor")
            except (ValueError, KeyError, TypeError) as exc:
                raise ProviderUnavailable(f"{path}: bad-answer") from exc
            for item in items:
                if not isinstance(item, Mapping):
                    raise ProviderUnavailable(f"{path}: bad-answer (item not an object)")
                yield item
            if cursor is None:
                return
            if cursor in seen:  # a provider that loops would otherwise page forever
                raise ProviderUnavailable(f"{path}: cursor {cursor!r} came back twice")
            seen.add(cursor)


def _segment(value: str) -> str:
    return quote(value, safe="")


def _error_code(response: httpx.Response) -> tuple[str, str] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, Mapping):
        return None
    error, message = body.get("error"), body.get("message", "")
    if not isinstance(error, str) or not error:
        return None
    return error, message if isinstance(message, str) else ""


def parse_batch(data: Mapping[str, Any]) -> ProviderBatch:
    return ProviderBatch(
        id=_text(data, "id"),
        name=_text(data, "name", allow_empty=True, max_length=None),
        state=_text(data, "state", allowed=BATCH_STATES),
        stock=_count(data, "stock"),
        face_value_fen=_count(data, "face_value_fen"),
        min_spend_fen=_count(data, "min_spend_fen"),
        valid_from=_time(data, "valid_from"),
        valid_until=_time(data, "valid_until"),
    )


def parse_coupon(data: Mapping[str, Any]) -> ProviderCoupon:
    return _coupon(data, COUPON_STATES)


def parse_failure(data: Mapping[str, Any]) -> ProviderFailure:
    reason = data.get("reason", "failed") if isinstance(data, Mapping) else None
    return ProviderFailure(
        request_no=_text(data, "request_no"),
        reason=_text({"reason": reason}, "reason", max_length=None)[:200],
    )


def _parse_redemption(data: Mapping[str, Any]) -> ProviderCoupon:
    return _coupon(data, REDEMPTION_STATES)


def _coupon(data: Mapping[str, Any], states: frozenset[str]) -> ProviderCoupon:
    return ProviderCoupon(
        request_no=_text(data, "request_no"),
        code=_text(data, "code"),
        batch_id=_text(data, "batch_id"),
        state=_text(data, "state", allowed=states),
        valid_until=_time(data, "valid_until"),
        issued_at=_time(data, "issued_at"),
    )


def _text(
    data: Mapping[str, Any],
    field: str,
    *,
    allow_empty: bool = False,
    allowed: frozenset[str] | None = None,
    max_length: int | None = _ID_MAX_LENGTH,
) -> str:
    if not isinstance(data, Mapping):
        raise ValueError("not an object")
    value = data.get(field)
    if not isinstance(value, str) or not (value or allow_empty):
        raise ValueError(f"{field}: a non-empty string is required")
    # What we store (ids, codes, request numbers, names): nothing PostgreSQL cannot keep or a
    # column cannot hold, whichever engine this is.
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"{field}: at most {max_length} characters")
    char = refused_character(value, REFUSED_IN_LINE)
    if char is not None:
        raise ValueError(f"{field}: {refused_message(char)}")
    if allowed is not None and value not in allowed:
        raise ValueError(f"{field}: {value[:40]!r} is not one of {sorted(allowed)}")
    return value


def _count(data: Mapping[str, Any], field: str) -> int:
    value = data.get(field)
    # bool is an int in Python; `true` from a provider is not a count.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _BIGINT:
        raise ValueError(f"{field}: an integer from 0 to 2^63-1 is required")
    return value


def _time(data: Mapping[str, Any], field: str) -> datetime | None:
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{field}: an ISO 8601 time or null is required")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{field}: {value[:40]!r} is not an ISO 8601 time") from exc
    if moment.tzinfo is None:
        raise ValueError(f"{field}: {value[:40]!r} has no UTC offset")
    try:  # 0001-01-01T00:00+14:00 is a valid time that is before year 1 in UTC
        return moment.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(f"{field}: {value[:40]!r} is out of range in UTC") from exc
