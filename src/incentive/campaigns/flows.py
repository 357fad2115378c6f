"""Campaign status flows: the guarded status machine, the kind's hooks on every change, and
the end of campaigns whose window closed.

Contract:

- A status changes only here: one conditional ``UPDATE ... WHERE id = :id AND status =
  :expected`` per change, so of two concurrent changes from the same status exactly one wins;
  the loser gets ``InvalidTransition`` naming the status it found. Each change writes a
  ``CampaignTransition`` row and publishes ``campaign.status_changed`` through the outbox in
  the caller's transaction.
- Then the campaign's kind is told, in the same transaction: ``on_transition`` always,
  ``on_activate`` on every move into ``active`` (whichever route made it), ``on_end`` on
  ``ended`` and ``cancelled``. A hook that raises rolls the whole change back.
- Then every registered ``Listener`` (domains that care about every campaign whatever its kind,
  such as ``review``: ``register_listener`` at import), in the same transaction; a listener
  may move the campaign on (the automated review approves a clean submission) or raise to
  refuse the change.
- Nothing here commits; the caller's unit of work does.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth.principal import Principal
from incentive.campaigns.errors import CampaignVersionConflict, InvalidTransition
from incentive.campaigns.kinds import get_kind
from incentive.campaigns.models import Campaign, CampaignTransition
from incentive.campaigns.service import facts, get_campaign, managed_campaign
from incentive.db import utcnow
from incentive.errors import Forbidden, InvalidField
from incentive.events import service as events
from incentive.kit.pagination import KeyInt, Keyset, Slice

log = logging.getLogger(__name__)

STATUS_CHANGED_TOPIC = "campaign.status_changed"

# from status -> statuses it may move to.
TRANSITIONS: Mapping[str, frozenset[str]] = {
    "draft": frozenset({"pending_review", "cancelled"}),
    "pending_review": frozenset({"approved", "rejected", "draft"}),
    # rejected -> approved: an operator overriding a rejection (the review listener records it)
    "rejected": frozenset({"draft", "cancelled", "approved"}),
    "approved": frozenset({"active", "cancelled"}),
    "active": frozenset({"paused", "ended"}),
    "paused": frozenset({"active", "ended"}),
    "ended": frozenset(),
    "cancelled": frozenset(),
}
# Review decisions belong to operators; the owning merchant's staff may make every other move.
OPERATOR_ONLY: frozenset[tuple[str, str]] = frozenset(
    {("pending_review", "approved"), ("pending_review", "rejected"), ("rejected", "approved")}
)
REASON_REQUIRED: frozenset[tuple[str, str]] = frozenset(
    {("pending_review", "rejected"), ("rejected", "approved")}
)
# Moves that put a campaign in front of customers need its window to be still open.
OPENING: frozenset[str] = frozenset({"active"})
# Moves after which the campaign never runs again: its kind's end hook runs.
ENDING: frozenset[str] = frozenset({"ended", "cancelled"})
SYSTEM_ACTOR = "system"
END_PAGE = 100


@dataclass(frozen=True)
class Move:
    """One status change, as a listener sees it (after the change and the kind's hooks)."""

    campaign: Campaign
    from_status: str
    to_status: str
    actor: str
    actor_role: str
    reason: str


Listener = Callable[[AsyncSession, Move], Awaitable[None]]
_LISTENERS: list[Listener] = []


def register_listener(listener: Listener) -> None:
    """Call ``listener`` after every status change (idempotent per function)."""
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)


def allowed_targets(status: str) -> frozenset[str]:
    return TRANSITIONS.get(status, frozenset())


async def transition(
    session: AsyncSession,
    principal: Principal,
    campaign_id: str,
    *,
    to_status: str,
    reason: str = "",
    version: int | None = None,
) -> Campaign:
    """Move the campaign to ``to_status`` if the machine and the caller allow it.

    Atomic: one conditional UPDATE on the status read (and ``version`` when given); of
    concurrent changes from the same status one wins and the others raise
    ``InvalidTransition`` (or ``CampaignVersionConflict``). The history row, the
    ``campaign.status_changed`` event and the kind's hooks run in the same transaction.
    """
    campaign = await managed_campaign(session, principal, campaign_id)
    from_status = campaign.status
    if to_status not in allowed_targets(from_status):
        raise InvalidTransition(
            from_status, to_status, allowed=sorted(allowed_targets(from_status))
        )
    if (from_status, to_status) in OPERATOR_ONLY and not principal.is_operator:
        raise Forbidden(f"only operators move a campaign from {from_status} to {to_status}")
    if (from_status, to_status) in REASON_REQUIRED and not reason.strip():
        raise InvalidField(
            "reason", "required", f"a reason is required to move a campaign to {to_status}"
        )
    if to_status in OPENING and campaign.ends_at <= utcnow():
        raise InvalidTransition(
            from_status,
            to_status,
            f"the campaign ended at {campaign.ends_at.isoformat()}; it cannot be {to_status}",
        )
    return await _move(
        session,
        campaign,
        to_status,
        actor=principal.id,
        actor_role=principal.role,
        reason=reason,
        version=version,
    )


async def _move(
    session: AsyncSession,
    campaign: Campaign,
    to_status: str,
    *,
    actor: str,
    actor_role: str,
    reason: str,
    version: int | None = None,
) -> Campaign:
    """The status change itself: conditional UPDATE, history row, event, the kind's hooks."""
    campaign_id, from_status = campaign.id, campaign.status
    now = utcnow()
    conditions = [Campaign.id == campaign_id, Campaign.status == from_status]
    if version is not None:
        conditions.append(Campaign.version == version)
    won = (
        await session.execute(
            update(Campaign)
            .where(*conditions)
            .values(status=to_status, updated_at=now, version=Campaign.version + 1)
            .returning(Campaign.version)
            .execution_options(synchronize_session=False)
        )
    ).first()
    if won is None:
        current = await get_campaign(session, campaign_id)
        if current.status == from_status and version is not None:
            raise CampaignVersionConflict(
                f"campaign is at version {current.version}, not {version}",
                version=current.version,
            )
        raise InvalidTransition(
            current.status,
            to_status,
            f"the campaign moved to {current.status} meanwhile; "
            f"cannot move it from {current.status} to {to_status}",
        )
    session.add(
        CampaignTransition(
            campaign_id=campaign_id,
            from_status=from_status,
            to_status=to_status,
            actor=actor,
            actor_role=actor_role,
            reason=reason,
            at=now,
        )
    )
    await session.flush()
    await events.publish(
        session,
        STATUS_CHANGED_TOPIC,
        {
            "campaign_id": campaign_id,
            "kind": campaign.kind,
            "owner_type": campaign.owner_type,
            "merchant_id": campaign.merchant_id,
            "from": from_status,
            "to": to_status,
            "reason": reason,
            "actor": actor,
            "version": int(won[0]),
            "at": now.isoformat(),
            "rules": campaign.rules,
            "budget_account_id": campaign.budget_account_id,
        },
        key=campaign_id,
    )
    moved = await get_campaign(session, campaign_id)
    strategy, snapshot = get_kind(moved.kind), facts(moved)
    await strategy.on_transition(session, snapshot, from_status)
    if to_status == "active":
        await strategy.on_activate(session, snapshot)
    elif to_status in ENDING:
        await strategy.on_end(session, snapshot)
    move = Move(moved, from_status, to_status, actor, actor_role, reason)
    for listener in _LISTENERS:
        await listener(session, move)
    return await get_campaign(session, campaign_id) if _LISTENERS else moved


async def move_as_system(
    session: AsyncSession, campaign: Campaign, to_status: str, *, reason: str
) -> Campaign:
    """A change the platform itself decides (an automated review's verdict), through the
    same guarded move as a person's, recorded with the actor ``system``."""
    return await _move(
        session, campaign, to_status, actor=SYSTEM_ACTOR, actor_role=SYSTEM_ACTOR, reason=reason
    )


async def end_due(session: AsyncSession, *, limit: int = END_PAGE) -> list[str]:
    """End active and paused campaigns whose ``ends_at`` has passed (the worker job).

    Each is moved by the same guarded ``_move`` as a person's change, with the actor
    ``system`` and its kind's ``on_end`` hook; a campaign changed concurrently by someone else
    is skipped (its savepoint rolled back) and picked up on the next run if still due, and so
    is one whose kind's end hook fails (logged): it never holds the others back.
    Returns the ids ended.
    """
    due = (
        await session.execute(
            select(Campaign)
            .where(Campaign.status.in_(("active", "paused")), Campaign.ends_at <= utcnow())
            .order_by(Campaign.ends_at, Campaign.id)
            .limit(limit)
        )
    ).scalars()
    ended = []
    for campaign in list(due):
        try:
            async with session.begin_nested():
                await _move(
                    session,
                    campaign,
                    "ended",
                    actor=SYSTEM_ACTOR,
                    actor_role=SYSTEM_ACTOR,
                    reason="the campaign window closed",
                )
        except (InvalidTransition, CampaignVersionConflict):
            continue
        except Exception:
            # One kind's failing end hook must not keep every other campaign running: this
            # one stays as it was (savepoint rolled back) and is tried again next run.
            log.exception("ending a campaign failed", extra={"campaign_id": campaign.id})
            continue
        ended.append(campaign.id)
    return ended


HISTORY_ORDER = Keyset((CampaignTransition.id,), tuple[KeyInt], descending=False)


async def history(
    session: AsyncSession, campaign_id: str, *, cursor: str | None = None, limit: int = 50
) -> Slice[CampaignTransition]:
    """Status changes of one campaign, oldest first."""
    stmt = select(CampaignTransition).where(CampaignTransition.campaign_id == campaign_id)
    return await HISTORY_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)
