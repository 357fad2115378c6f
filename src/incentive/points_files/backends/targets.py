"""Where points are credited: one ``CreditingTarget`` protocol, two implementations.

- ``LedgerTarget`` (default): one ``ledger.batch_transfer`` per batch from the partner's
  funding account to each member's ``POINTS`` account (accounts opened set-based), idempotency
  key ``partner:<code>:<record_id>``; a refused batch is split until only the refused
  records fail (``_credit_isolating``). It runs inside the batch's own transaction
  (``in_transaction = True``), so the credit, the record states and the batch's completion
  commit together or not at all. On PostgreSQL a batch of staged records is credited
  set-based first (``credit_staged``: ``ledger.staged_credits``, no Python per record); only
  a batch the ledger refuses that way goes through ``credit`` and its splitting.
- ``HttpTarget``: an external loyalty system. ``POST <url>`` with JSON
  ``{"partner": code, "items": [{"key", "record_id", "member_id", "points", "txn_time",
  "memo"}]}``; the answer is ``200`` with ``{"results": [{"key", "status": "ok"|"rejected",
  "detail"}]}``, one per item. The system must treat ``key`` as an idempotency key (a key seen
  before is answered ``ok`` and not credited again): a batch is re-sent after a crash or a
  lost answer. A timeout, a connection failure, a 5xx or 429, or an answer that does not
  cover every item is ``TargetUnavailable`` (retried with backoff); any other status refuses
  the whole batch. It is called outside any database transaction.

``credit`` returns the refused items (``CREDIT_FAILED`` with the target's reason); every other
item was credited.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import httpx
from sqlalchemy import Select, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.errors import IncentiveError
from incentive.ledger import service as ledger
from incentive.ledger import staged_credits


class TargetUnavailable(Exception):
    """The target did not answer usefully (slow, down, throttled): retry the batch later."""


@dataclass(frozen=True, slots=True)
class CreditItem:
    line_no: int
    record_id: str
    member_id: str
    user_id: str
    points: int
    txn_time: datetime
    memo: str


@dataclass(frozen=True, slots=True)
class CreditPartner:
    partner_id: str
    code: str
    funding_account_id: int | None
    file_id: str


@dataclass(frozen=True, slots=True)
class CreditRefusal:
    line_no: int
    detail: str


CREDIT_KIND = "partner_points"


def idempotency_key(partner_code: str, record_id: str) -> str:
    return f"partner:{partner_code}:{record_id}"


class CreditingTarget(Protocol):
    name: str
    in_transaction: bool

    async def credit(
        self, partner: CreditPartner, items: Sequence[CreditItem], session: AsyncSession | None
    ) -> list[CreditRefusal]:
        """Credit ``items``; return the refused ones. ``session`` only for in-transaction
        targets. Raises ``TargetUnavailable`` for a failure worth retrying."""
        ...

    async def aclose(self) -> None: ...


class LedgerTarget:
    name = "ledger"
    in_transaction = True

    async def credit(
        self, partner: CreditPartner, items: Sequence[CreditItem], session: AsyncSession | None
    ) -> list[CreditRefusal]:
        if session is None:
            raise RuntimeError("the ledger target credits inside the batch's transaction")
        if not items:
            return []
        if partner.funding_account_id is None:
            return [CreditRefusal(i.line_no, "partner has no funding account") for i in items]
        accounts = await ledger.open_accounts(
            session, owner_type="user", owner_ids=(i.user_id for i in items), asset="POINTS"
        )
        transfers = [
            ledger.TransferItem(
                idempotency_key=idempotency_key(partner.code, i.record_id),
                debit_account_id=partner.funding_account_id,
                credit_account_id=accounts[i.user_id],
                amount=i.points,
                kind=CREDIT_KIND,
                reference=f"points_file:{partner.file_id}:{i.line_no}",
            )
            for i in items
        ]
        try:
            return await _credit_isolating(session, list(zip(items, transfers, strict=True)))
        except DBAPIError as exc:
            raise TargetUnavailable(f"database: {type(exc.orig).__name__}") from exc

    async def credit_staged(
        self, partner: CreditPartner, records: Select[Any], session: AsyncSession
    ) -> bool:
        """Credit, set-based and all or nothing, the staged records that ``records`` selects
        (columns ``record_id``, ``user_id``, ``points``, ``line_no``) with the same transfers
        as ``credit``. ``False`` with nothing written when the ledger refuses them or wants to
        look at them one by one: the caller then uses ``credit``, which isolates the refused
        records."""
        if partner.funding_account_id is None:
            return False
        r = records.subquery("staged")
        source = select(
            func.concat(f"partner:{partner.code}:", r.c.record_id).label("idempotency_key"),
            r.c.user_id.label("owner_id"),
            r.c.points.label("amount"),
            func.concat(f"points_file:{partner.file_id}:", r.c.line_no).label("reference"),
        )
        try:
            written = await staged_credits.credit_owners_from(
                session,
                source,
                debit_account_id=partner.funding_account_id,
                owner_type="user",
                asset="POINTS",
                kind=CREDIT_KIND,
            )
        except IncentiveError:
            return False
        except DBAPIError as exc:
            raise TargetUnavailable(f"database: {type(exc.orig).__name__}") from exc
        return written is not None

    async def aclose(self) -> None:
        return None


async def _credit_isolating(
    session: AsyncSession, pairs: list[tuple[CreditItem, ledger.TransferItem]]
) -> list[CreditRefusal]:
    """Credit ``pairs`` in one ledger batch; when the ledger refuses it (all or nothing: a key
    already taken with other content, an amount over a cap), split it in halves and retry each,
    down to the one record that is refused, so one bad record never fails its neighbours.

    The ledger's own detail names the idempotency key; the partner gets only the refusal's
    title (our internal keys stay out of its feedback file).
    """
    try:
        await ledger.batch_transfer(session, [t for _, t in pairs])
    except IncentiveError as exc:
        if len(pairs) == 1:
            return [CreditRefusal(pairs[0][0].line_no, f"refused by the ledger: {exc.title}")]
        middle = len(pairs) // 2
        return await _credit_isolating(session, pairs[:middle]) + await _credit_isolating(
            session, pairs[middle:]
        )
    return []


class HttpTarget:
    in_transaction = False

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url
        self.name = url
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def credit(
        self, partner: CreditPartner, items: Sequence[CreditItem], session: AsyncSession | None
    ) -> list[CreditRefusal]:
        if not items:
            return []
        by_key = {idempotency_key(partner.code, i.record_id): i for i in items}
        body = {
            "partner": partner.code,
            "items": [
                {
                    "key": key,
                    "record_id": i.record_id,
                    "member_id": i.member_id,
                    "points": i.points,
                    "txn_time": i.txn_time.isoformat(),
                    "memo": i.memo,
                }
                for key, i in by_key.items()
            ],
        }
        try:
            response = await self._client.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise TargetUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise TargetUnavailable(f"HTTP {response.status_code}")
        if response.status_code != 200:
            detail = f"HTTP {response.status_code}: {response.text[:200]}"
            return [CreditRefusal(i.line_no, detail) for i in items]
        try:
            results: list[dict[str, Any]] = response.json()["results"]
            answered = {str(r["key"]): r for r in results}
        except (ValueError, KeyError, TypeError) as exc:
            raise TargetUnavailable("answer is not the expected JSON") from exc
        if set(answered) != set(by_key):
            raise TargetUnavailable("answer does not cover every item")
        return [
            CreditRefusal(by_key[key].line_no, str(r.get("detail") or "rejected"))
            for key, r in answered.items()
            if r.get("status") != "ok"
        ]

    async def aclose(self) -> None:
        await self._client.aclose()
