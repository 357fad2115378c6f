"""Activities: stored once per sender id, then offered to the campaigns that consume them.

Contract:

- ``record`` stores a sender's activities in the caller's transaction (so they are durable
  when it commits, before the acknowledgement). ``(sender, id)`` is the idempotency key: the
  same id with the same body is a replay (nothing written, the stored activity answered); with
  another body it is ``ActivityIdReused`` (409) and nothing of the request is written. A refund
  names the sender's payment in ``refers_to``; a payment this sender never sent (neither
  before nor earlier in the same batch) is a 422 naming the field.
- ``evaluate`` offers stored activities to their campaigns exactly once: their state moves
  from ``received`` to ``evaluated`` with one conditional UPDATE (the claim: a concurrent
  evaluator waits on the rows and then finds nothing to do), then each campaign's kind answers
  and the answer is written as an ``activity_outcomes`` row (primary key: activity, campaign).
  Inline and queued evaluation (``activities.received`` events, run by workers) are this one
  function. Within one call, payments and other first facts are answered before follow-ups.
- The campaigns offered are every *active* campaign whose kind consumes the activity's type —
  one whose window does not hold ``occurred_at`` answers ``outside-window`` without its kind
  being asked — and, for a follow-up (a refund), every campaign that rewarded the activity it
  refers to, whatever its status now.
- Then every observer (``observers.py``: domains that watch activities without being a
  kind, such as sharing's conversions) sees the activities this call evaluated, once.
- Nothing here commits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.activities.errors import ActivityIdReused, ActivityNotFound
from incentive.activities.metrics import OUTCOMES, RECEIVED
from incentive.activities.models import Activity, ActivityOutcome
from incentive.activities.observers import notify, observing
from incentive.activities.schemas import ActivityIn
from incentive.campaigns import service as campaigns
from incentive.campaigns.kinds import (
    ActivityFacts,
    CampaignFacts,
    Outcome,
    get_kind,
    kinds_consuming,
)
from incentive.db import insert, one_of, utcnow
from incentive.errors import InvalidField
from incentive.events import service as events
from incentive.kit.pagination import KeyInt, Keyset, Slice

RECEIVED_TOPIC = "activities.received"


@dataclass(slots=True)
class NewActivity:
    """An activity this transaction stored, as the columns hold it (a plain object: an ORM
    instance per row cost 0.05 ms, half of storing a batch)."""

    id: int
    sender: str
    external_id: str
    fingerprint: str
    type: str
    occurred_at: datetime
    customer: str
    merchant: str | None
    staff: str | None
    amount_fen: int | None
    refers_to: int | None
    attributes: dict[str, Any]
    state: str
    received_at: datetime
    evaluated_at: datetime | None


@dataclass(slots=True)
class NewOutcome:
    """An outcome this transaction wrote (plain, like ``NewActivity``)."""

    activity_id: int
    campaign_id: str
    kind: str
    status: str
    reason: str | None
    detail: dict[str, Any] | None
    decided_at: datetime


AnyActivity = Activity | NewActivity
AnyOutcome = ActivityOutcome | NewOutcome


@dataclass
class Recorded:
    activity: AnyActivity
    new: bool  # False: a replay of what the sender sent before


def fingerprint(item: ActivityIn) -> str:
    """The body as sent, canonical (key order, spacing and time zone do not matter)."""
    canonical = json.dumps(item.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def record(
    session: AsyncSession,
    sender: str,
    items: Sequence[ActivityIn],
    *,
    batch: bool = False,
    inline: bool = True,
) -> list[Recorded]:
    """Store ``items`` for ``sender`` (see the module contract); in the order given.

    Set-based: one multi-row ``INSERT … ON CONFLICT DO NOTHING RETURNING`` per round (a refund
    whose payment is in the same batch waits for the next round); ids sent before are read
    once. ``inline``: the new activities are stored already claimed for evaluation by this
    transaction (``evaluate(..., claimed=True)`` next; no one else sees them before it
    commits); otherwise they wait, ``received``, for ``queue``.
    """
    prints = [fingerprint(item) for item in items]
    position: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.id in position:
            raise InvalidField(_field(batch, i, "id"), "unique", "an id repeats in the batch")
        position[item.id] = i
    referred = sorted({i.refers_to for i in items if i.refers_to and i.refers_to not in position})
    stored = await _stored(session, sender, referred)
    ids = {a.external_id: a.id for a in stored.values()}
    pending = list(range(len(items)))
    now = utcnow()
    fresh: dict[str, NewActivity] = {}
    while pending:
        ready = [i for i in pending if items[i].refers_to is None or items[i].refers_to in ids]
        if not ready:
            i = pending[0]
            raise InvalidField(
                _field(batch, i, "refers_to"),
                "known-payment",
                f"refers_to: this sender sent no payment {items[i].refers_to!r}",
            )
        rows = {
            items[i].id: _row(sender, items[i], prints[i], ids, now, inline)
            for i in sorted(ready, key=lambda i: items[i].id)
        }
        # Many parameter sets for one statement built once (SQLAlchemy's "insertmanyvalues"
        # batches them): a multi-row VALUES built per request cost 0.3 s per 1,000 rows to
        # compile.
        stmt = (
            insert(session, Activity.__table__)
            .on_conflict_do_nothing(index_elements=["sender", "external_id"])
            .returning(Activity.__table__.c.id, Activity.__table__.c.external_id)
        )
        for activity_id, external_id in (await session.execute(stmt, list(rows.values()))).all():
            ids[external_id] = activity_id
            fresh[external_id] = NewActivity(id=activity_id, **rows[external_id])
        sent_before = [external_id for external_id in rows if external_id not in fresh]
        if sent_before:
            stored.update(await _stored(session, sender, sent_before))
            ids.update({external_id: stored[external_id].id for external_id in sent_before})
        pending = [i for i in pending if items[i].id not in ids]
    for external_id, activity in stored.items():
        at = position.get(external_id)
        if at is not None and activity.fingerprint != prints[at]:
            raise ActivityIdReused(
                f"activity {external_id!r} was sent before with another body",
                id=external_id,
            )
    for i, item in enumerate(items):
        if item.refers_to is not None:
            target = fresh.get(item.refers_to) or stored[item.refers_to]
            if target.type != "payment":
                raise InvalidField(
                    _field(batch, i, "refers_to"),
                    "known-payment",
                    f"refers_to: {item.refers_to!r} is not a payment",
                )
    out = []
    for item in items:
        new = fresh.get(item.id)
        out.append(Recorded(new or stored[item.id], new is not None))
        if new is not None:
            RECEIVED.labels(item.type, "inline" if inline else "queued").inc()
    return out


def _field(batch: bool, i: int, name: str) -> str:
    """The field an error names: ``activities.<i>.<name>`` in a batch, ``<name>`` alone."""
    return f"activities.{i}.{name}" if batch else name


def _row(
    sender: str, item: ActivityIn, print_: str, ids: dict[str, int], now: Any, inline: bool
) -> dict[str, Any]:
    return {
        "sender": sender,
        "external_id": item.id,
        "fingerprint": print_,
        "type": item.type,
        "occurred_at": item.occurred_at,
        "customer": item.customer,
        "merchant": item.merchant,
        "staff": item.staff,
        "amount_fen": item.amount_fen,
        "refers_to": ids[item.refers_to] if item.refers_to else None,
        "attributes": item.attributes,
        "state": "evaluated" if inline else "received",
        "received_at": now,
        "evaluated_at": now if inline else None,
    }


async def _stored(
    session: AsyncSession, sender: str, external_ids: Sequence[str]
) -> dict[str, Activity]:
    if not external_ids:
        return {}
    rows = await session.scalars(
        select(Activity).where(
            Activity.sender == sender,
            one_of(session, Activity.external_id, sorted(set(external_ids))),
        )
    )
    return {a.external_id: a for a in rows}


async def _by_ids(session: AsyncSession, ids: Sequence[int]) -> dict[int, Activity]:
    if not ids:
        return {}
    rows = await session.scalars(select(Activity).where(one_of(session, Activity.id, list(ids))))
    return {a.id: a for a in rows}


async def queue(session: AsyncSession, recorded: Sequence[Recorded]) -> None:
    """Leave the new activities to the workers (one outbox event for the lot)."""
    ids = [r.activity.id for r in recorded if r.new]
    if ids:
        await events.publish(session, RECEIVED_TOPIC, {"activity_ids": ids})


# --------------------------------------------------------------------------- evaluation


def facts(activity: AnyActivity) -> ActivityFacts:
    return ActivityFacts(
        id=activity.id,
        sender=activity.sender,
        external_id=activity.external_id,
        type=activity.type,
        occurred_at=activity.occurred_at,
        customer=activity.customer,
        merchant=activity.merchant,
        staff=activity.staff,
        amount_fen=activity.amount_fen,
        refers_to=activity.refers_to,
        attributes=dict(activity.attributes),
    )


async def evaluate(
    session: AsyncSession, activities: Sequence[AnyActivity], *, claimed: bool = False
) -> dict[int, list[AnyOutcome]]:
    """Offer ``activities`` to their campaigns, each once (see the module contract): the
    outcomes written, by activity id, for those this call evaluated (others were claimed by
    another evaluation). ``claimed``: stored by this transaction already claimed
    (``record(..., inline=True)``).

    Set-based: the activities of one type are offered to each campaign together (its kind's
    ``on_activities``: the rebate kind pays a whole batch in one ledger batch); follow-ups
    (refunds) come after, one by one, in the order given. The outcome rows are written with
    one statement.
    """
    now = utcnow()
    if not claimed and activities:
        won = set(
            await session.scalars(
                update(Activity)
                .where(
                    one_of(session, Activity.id, [a.id for a in activities]),
                    Activity.state == "received",
                )
                .values(state="evaluated", evaluated_at=now)
                .returning(Activity.id)
            )
        )
        # (The objects are not changed to match: dirty objects would be flushed again.)
        activities = [a for a in activities if a.id in won]
    answers: dict[int, list[AnyOutcome]] = {a.id: [] for a in activities}
    by_type: dict[str, list[ActivityFacts]] = {}
    for activity in activities:
        if activity.refers_to is None:
            by_type.setdefault(activity.type, []).append(facts(activity))
    for type_, group in by_type.items():
        for campaign in await campaigns.campaigns_for_activity(session, kinds_consuming(type_)):
            await _offer(session, campaign, group, answers, now, follow_up=False)
    for activity in activities:
        if activity.refers_to is None:
            continue
        followed = list(
            await session.scalars(
                select(ActivityOutcome.campaign_id).where(
                    ActivityOutcome.activity_id == activity.refers_to,
                    ActivityOutcome.status == "rewarded",
                )
            )
        )
        offered = await campaigns.campaigns_for_activity(
            session, kinds_consuming(activity.type), followed
        )
        for campaign in offered:
            follow_up = campaign.id in followed
            await _offer(session, campaign, [facts(activity)], answers, now, follow_up=follow_up)
    rows = [
        {
            "activity_id": o.activity_id,
            "campaign_id": o.campaign_id,
            "kind": o.kind,
            "status": o.status,
            "reason": o.reason,
            "detail": o.detail,
            "decided_at": o.decided_at,
        }
        for found in answers.values()
        for o in found
    ]
    if rows:
        await session.execute(insert(session, ActivityOutcome.__table__), rows)
    if observing():
        await notify(session, [facts(a) for a in activities])
    return answers


async def _offer(
    session: AsyncSession,
    campaign: CampaignFacts,
    group: list[ActivityFacts],
    answers: dict[int, list[AnyOutcome]],
    now: datetime,
    *,
    follow_up: bool,
) -> None:
    """``campaign``'s answers to ``group`` (outside its window: ``outside-window`` without
    asking the kind, unless a follow-up of what it rewarded)."""
    kind = get_kind(campaign.kind)
    inside = [
        a
        for a in group
        if kind.listens_to(campaign, a.type)
        and (follow_up or campaign.starts_at <= a.occurred_at < campaign.ends_at)
    ]
    asked = dict(
        zip(
            (a.id for a in inside), await kind.on_activities(session, campaign, inside), strict=True
        )
    )
    for activity in group:
        if not kind.listens_to(campaign, activity.type):
            continue
        outcome = asked.get(activity.id) or Outcome.refused("outside-window")
        OUTCOMES.labels(campaign.kind, outcome.status, outcome.reason or "").inc()
        answers[activity.id].append(
            NewOutcome(
                activity_id=activity.id,
                campaign_id=campaign.id,
                kind=campaign.kind,
                status=outcome.status,
                reason=outcome.reason,
                detail=dict(outcome.detail) if outcome.detail else None,
                decided_at=now,
            )
        )


async def evaluate_queued(session: AsyncSession, activity_ids: Sequence[int]) -> int:
    """Evaluate the queued activities among ``activity_ids`` (those not evaluated yet)."""
    queued = (await _by_ids(session, sorted(activity_ids))).values()
    return len(await evaluate(session, [a for a in queued if a.state == "received"]))


# --------------------------------------------------------------------------- reading


async def outcomes_of(
    session: AsyncSession, activity_ids: Sequence[int]
) -> dict[int, list[ActivityOutcome]]:
    found: dict[int, list[ActivityOutcome]] = {i: [] for i in activity_ids}
    if not activity_ids:
        return found
    rows = await session.scalars(
        select(ActivityOutcome)
        .where(one_of(session, ActivityOutcome.activity_id, list(activity_ids)))
        .order_by(ActivityOutcome.activity_id, ActivityOutcome.campaign_id)
    )
    for row in rows:
        found[row.activity_id].append(row)
    return found


async def sent_activity(session: AsyncSession, sender: str, external_id: str) -> Activity:
    """The activity ``sender`` sent as ``external_id`` (404 for anyone else's)."""
    found = (await _stored(session, sender, [external_id])).get(external_id)
    if found is None:
        raise ActivityNotFound(f"no activity {external_id!r} from this sender", id=external_id)
    return found


async def external_ids(session: AsyncSession, ids: Sequence[int]) -> dict[int, str]:
    """The sender's ids of our activity ids (to show what a refund refers to)."""
    if not ids:
        return {}
    rows = await session.execute(
        select(Activity.id, Activity.external_id).where(one_of(session, Activity.id, list(ids)))
    )
    return {row.id: row.external_id for row in rows}


ACTIVITY_ORDER = Keyset((Activity.id,), tuple[KeyInt])


async def list_activities(
    session: AsyncSession,
    *,
    sender: str | None = None,
    customer: str | None = None,
    type: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Slice[Activity]:
    """Newest first; of one sender and/or one customer."""
    stmt = select(Activity)
    if sender is not None:
        stmt = stmt.where(Activity.sender == sender)
    if customer is not None:
        stmt = stmt.where(Activity.customer == customer)
    if type is not None:
        stmt = stmt.where(Activity.type == type)
    return await ACTIVITY_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)


@dataclass(frozen=True)
class OutcomeCount:
    type: str
    status: str
    reason: str | None
    activities: int


async def outcome_counts(session: AsyncSession, campaign_id: str) -> list[OutcomeCount]:
    """How a campaign answered the activities offered to it, by type, status and reason."""
    o = ActivityOutcome
    rows = await session.execute(
        select(Activity.type, o.status, o.reason, func.count())
        .join(Activity, Activity.id == o.activity_id)
        .where(o.campaign_id == campaign_id)
        .group_by(Activity.type, o.status, o.reason)
        .order_by(Activity.type, o.status, o.reason)
    )
    return [OutcomeCount(type_, status, reason, int(n)) for type_, status, reason, n in rows]
