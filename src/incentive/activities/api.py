"""Activities over HTTP: partners (by API key) and operators send them; customers see theirs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.activities import service
from incentive.activities.errors import ActivityIdReused, ActivityNotFound
from incentive.activities.models import Activity
from incentive.activities.schemas import (
    ActivityBatchIn,
    ActivityBatchOut,
    ActivityIn,
    ActivityOut,
    ActivityPage,
    ActivityType,
    OutcomeOut,
    SenderId,
)
from incentive.auth.principal import Customer, PartnerOrOperator, Principal
from incentive.deps import Session
from incentive.errors import AUTHENTICATED, VALIDATION, Forbidden, problems
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.kit.pagination import DEFAULT_LIMIT, Cursor, Limit

router = APIRouter(tags=["activities"], route_class=JSONBodyRoute)

SENDING = (*AUTHENTICATED, *VALIDATION, Forbidden, ActivityIdReused)
Prefer = Annotated[
    str | None,
    Header(
        max_length=200,
        pattern=r"^[\x20-\x7e]*$",
        description="`respond-async`: store, answer 202 and leave the evaluation to workers",
    ),
]
ExternalId = Annotated[str, Path(pattern=r"^[\x21-\x7e]{1,64}$")]


def sender_of(principal: Principal) -> str:
    """Whose namespace an activity id lives in: each partner's, each operator's."""
    return f"{principal.role}:{principal.id}"


def _async(prefer: str | None) -> bool:
    return prefer is not None and "respond-async" in prefer.lower().replace(" ", "")


async def _shaped(session: AsyncSession, rows: list[Activity]) -> list[ActivityOut]:
    outcomes = await service.outcomes_of(session, [a.id for a in rows])
    referred = await service.external_ids(session, [a.refers_to for a in rows if a.refers_to])
    return [_out(a, outcomes[a.id], referred) for a in rows]


def _out(
    a: service.AnyActivity, outcomes: Sequence[service.AnyOutcome], referred: dict[int, str]
) -> ActivityOut:
    return ActivityOut(
        id=a.external_id,
        type=a.type,
        occurred_at=a.occurred_at,
        customer=a.customer,
        merchant=a.merchant,
        staff=a.staff,
        amount_fen=a.amount_fen,
        refers_to=referred.get(a.refers_to) if a.refers_to else None,
        attributes=dict(a.attributes),
        state=a.state,
        received_at=a.received_at,
        evaluated_at=a.evaluated_at,
        outcomes=[
            OutcomeOut(
                campaign_id=o.campaign_id,
                kind=o.kind,
                status=o.status,
                reason=o.reason,
                detail=o.detail,
                decided_at=o.decided_at,
            )
            for o in outcomes
        ],
    )


async def _receive(
    session: AsyncSession,
    principal: Principal,
    items: list[ActivityIn],
    prefer: str | None,
    *,
    batch: bool,
) -> tuple[list[ActivityOut], int]:
    queued = _async(prefer)
    sender = sender_of(principal)
    recorded = await service.record(session, sender, items, batch=batch, inline=not queued)
    outcomes: dict[int, Sequence[service.AnyOutcome]] = {}
    if queued:
        await service.queue(session, recorded)
    else:
        new = [r.activity for r in recorded if r.new]
        outcomes.update(await service.evaluate(session, new, claimed=True))
    replayed = [r.activity.id for r in recorded if not r.new]
    outcomes.update(await service.outcomes_of(session, replayed))
    refers = {r.activity.refers_to for r in recorded if r.activity.refers_to}
    referred = {r.activity.id: r.activity.external_id for r in recorded if r.activity.id in refers}
    referred.update(await service.external_ids(session, [i for i in refers if i not in referred]))
    shaped = [_out(r.activity, outcomes.get(r.activity.id, []), referred) for r in recorded]
    if not any(r.new for r in recorded):
        return shaped, 200
    return shaped, 202 if queued else 201


@router.post(
    "/activities",
    name="send_activity",
    response_model=ActivityOut,
    status_code=201,
    responses={
        200: {
            "description": "a replay of an id sent before: its first outcome",
            "model": ActivityOut,
        },
        202: {"description": "stored and queued (`Prefer: respond-async`)", "model": ActivityOut},
        **problems(*SENDING),
    },
)
async def send_activity(
    body: ActivityIn, principal: PartnerOrOperator, session: Session, prefer: Prefer = None
) -> JSONResponse:
    """Report one business fact (a payment, refund, completed task, sign-up, custom event).

    Stored durably before the answer. By default it is evaluated at once against every active
    campaign that listens to its type and the answer (201) carries each campaign's outcome;
    with `Prefer: respond-async` the answer is 202 and workers evaluate it. The id is the
    sender's idempotency key: sending it again answers what was stored (200) and changes
    nothing; the same id with another body is a 409 `activity-id-reused`.
    """
    shaped, status = await _receive(session, principal, [body], prefer, batch=False)
    return JSONResponse(shaped[0].model_dump(mode="json"), status_code=status)


@router.post(
    "/activities/batch",
    name="send_activity_batch",
    response_model=ActivityBatchOut,
    status_code=201,
    responses={
        200: {"description": "every activity was sent before", "model": ActivityBatchOut},
        202: {
            "description": "stored and queued (`Prefer: respond-async`)",
            "model": ActivityBatchOut,
        },
        **problems(*SENDING),
    },
)
async def send_activity_batch(
    body: ActivityBatchIn, principal: PartnerOrOperator, session: Session, prefer: Prefer = None
) -> JSONResponse:
    """Report up to 1,000 activities at once, all or nothing: an invalid one (named by its
    position, `activities.<i>.<field>`) or a reused id refuses the batch and stores none.
    Each id keeps its own idempotency: ids sent before answer what was stored. The answer
    lists the activities in the order sent."""
    shaped, status = await _receive(session, principal, body.activities, prefer, batch=True)
    out = ActivityBatchOut(activities=shaped)
    return JSONResponse(out.model_dump(mode="json"), status_code=status)


@router.get(
    "/activities/{activity_id}",
    name="get_activity",
    response_model=ActivityOut,
    responses=problems(*AUTHENTICATED, *VALIDATION, Forbidden, ActivityNotFound),
)
async def get_activity(
    activity_id: ExternalId,
    principal: PartnerOrOperator,
    session: Session,
    sender: Annotated[
        str | None,
        Query(
            pattern=r"^(partner|operator):[0-9a-f]{32}$",
            description="operators: another sender's activity (`partner:<id>`)",
        ),
    ] = None,
) -> ActivityOut:
    """An activity by the id its sender gave it, with each campaign's outcome. Partners see
    their own; operators their own, or another sender's with `sender`."""
    if sender is not None and not principal.is_operator:
        raise Forbidden("only operators read another sender's activities")
    found = await service.sent_activity(session, sender or sender_of(principal), activity_id)
    return (await _shaped(session, [found]))[0]


@router.get(
    "/activities",
    name="list_activities",
    response_model=ActivityPage,
    responses=problems(*AUTHENTICATED, *VALIDATION, Forbidden),
)
async def list_activities(
    principal: PartnerOrOperator,
    session: Session,
    type: ActivityType | None = None,
    customer: SenderId | None = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> ActivityPage:
    """Activities newest first: a partner's own; an operator's view is every sender's."""
    page = await service.list_activities(
        session,
        sender=None if principal.is_operator else sender_of(principal),
        customer=customer,
        type=type,
        cursor=cursor,
        limit=limit,
    )
    return ActivityPage(items=await _shaped(session, page.items), next_cursor=page.next_cursor)


@router.get(
    "/me/activities",
    name="list_my_activities",
    response_model=ActivityPage,
    responses=problems(*AUTHENTICATED, *VALIDATION, Forbidden),
)
async def list_my_activities(
    principal: Customer,
    session: Session,
    type: Literal["payment", "refund", "task_completed", "signup", "custom"] | None = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> ActivityPage:
    """The calling customer's activities, newest first, with what each campaign gave."""
    page = await service.list_activities(
        session, customer=principal.id, type=type, cursor=cursor, limit=limit
    )
    return ActivityPage(items=await _shaped(session, page.items), next_cursor=page.next_cursor)
