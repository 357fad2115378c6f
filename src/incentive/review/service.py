"""Review of submitted campaigns: the automated verdict on submission, a person's decision,
and the queue of campaigns waiting for one.

Contract:

- ``on_move`` listens to every campaign status change (``flows.register_listener``). A move
  into ``pending_review`` is screened at once, in the submitter's transaction: every reviewed
  text (the name, the description, and the template's reviewed fields) is matched against the
  process's word lists (``screen.py``). A hit on a ``reject`` list rejects the campaign, a hit
  on a ``hold`` list holds it for an operator, no hit approves it — each move made by the
  ``system`` actor through ``flows.move_as_system`` — and the verdict is recorded with every
  hit (field, offset and length in the field's text, matched text, word, list and the list's
  version) and the lists' versions. In ``review.mode = assisted`` every submission is held.
- A person's approval or rejection of a pending campaign, and an operator's approval of a
  rejected one (an override: only of the last verdict, on the version it judged), is recorded
  as a verdict too and audited; overriding hits needs a reason.
- Nothing here commits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth.audit import record_audit
from incentive.campaigns import flows
from incentive.campaigns.service import customer_texts
from incentive.config import live_config
from incentive.db import utcnow
from incentive.errors import InvalidField
from incentive.kit.pagination import KeyInt, Keyset, Slice
from incentive.review.errors import ReviewConflict
from incentive.review.keys import MODE
from incentive.review.models import ReviewVerdict
from incentive.review.screen import Snapshot, screen

VERDICTS = Counter("incentive_review_verdicts_total", "Review verdicts", ["verdict", "automated"])
SCREEN_SECONDS = Histogram(
    "incentive_review_screen_seconds",
    "Matching one submitted campaign's texts",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
QUEUE = Keyset((ReviewVerdict.id,), tuple[KeyInt], descending=False)
MAX_REASON_HITS = 5
# A verdict keeps the first hits in text order and counts them all: one submission of 50
# long fields full of a listed word would otherwise store tens of megabytes.
MAX_KEPT_HITS = 200


@dataclass(frozen=True)
class Actor:
    id: str
    role: str


def screen_texts(snapshot: Snapshot, texts: list[tuple[str, str]]) -> list[dict[str, Any]]:
    hits = []
    for path, text in texts:
        for hit in snapshot.matcher.find(text):
            hits.append(
                {
                    "field": path,
                    "offset": hit.offset,
                    "length": hit.length,
                    "matched": hit.matched,
                    "word": hit.word.text,
                    "list": hit.word.list_name,
                    "list_version": hit.word.list_version,
                    "severity": hit.word.severity,
                }
            )
    return hits


def verdict_for(hits: list[dict[str, Any]], mode: str) -> str:
    if mode == "assisted":
        return "held"
    if any(h["severity"] == "reject" for h in hits):
        return "rejected"
    return "held" if hits else "approved"


def _summary(hits: list[dict[str, Any]]) -> str:
    shown = ", ".join(
        f"{h['matched']!r} in {h['field']} ({h['list']})" for h in hits[:MAX_REASON_HITS]
    )
    more = len(hits) - MAX_REASON_HITS
    return f"automated review: {len(hits)} sensitive word(s): {shown}" + (
        f" and {more} more" if more > 0 else ""
    )


async def screening(
    session: AsyncSession, texts: list[tuple[str, str]]
) -> tuple[str, list[dict[str, Any]], Snapshot]:
    """The verdict ``texts`` would get now, their hits, and the lists matched with."""
    snapshot = await screen.snapshot(await session.connection())
    hits = screen_texts(snapshot, texts)
    return verdict_for(hits, live_config.get(MODE)), hits, snapshot


async def screen_submission(session: AsyncSession, move: flows.Move) -> ReviewVerdict:
    campaign = move.campaign
    started = time.perf_counter()
    snapshot = await screen.snapshot(await session.connection(), fresh=True)
    hits = screen_texts(snapshot, await customer_texts(session, campaign))
    SCREEN_SECONDS.observe(time.perf_counter() - started)
    verdict = verdict_for(hits, live_config.get(MODE))
    if verdict == "approved":
        campaign = await flows.move_as_system(
            session, campaign, "approved", reason="automated review: no sensitive words"
        )
    elif verdict == "rejected":
        campaign = await flows.move_as_system(session, campaign, "rejected", reason=_summary(hits))
    return await _record(
        session,
        campaign.id,
        campaign.version,
        verdict,
        automated=True,
        decided_by=flows.SYSTEM_ACTOR,
        reason=_summary(hits) if hits else "",
        hits=hits,
        lists=snapshot.versions,
    )


async def _record(
    session: AsyncSession,
    campaign_id: str,
    campaign_version: int,
    verdict: str,
    *,
    automated: bool,
    decided_by: str,
    reason: str,
    hits: list[dict[str, Any]],
    lists: dict[str, int],
    hit_count: int | None = None,
) -> ReviewVerdict:
    row = ReviewVerdict(
        campaign_id=campaign_id,
        campaign_version=campaign_version,
        verdict=verdict,
        open=verdict == "held",
        automated=automated,
        decided_by=decided_by,
        reason=reason,
        hits=hits[:MAX_KEPT_HITS],
        hit_count=len(hits) if hit_count is None else hit_count,
        lists=lists,
        at=utcnow(),
    )
    session.add(row)
    await session.flush()
    VERDICTS.labels(verdict, str(automated).lower()).inc()
    return row


async def latest(session: AsyncSession, campaign_id: str) -> ReviewVerdict | None:
    return (
        await session.execute(
            select(ReviewVerdict)
            .where(ReviewVerdict.campaign_id == campaign_id)
            .order_by(ReviewVerdict.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()


async def _decided(session: AsyncSession, move: flows.Move) -> None:
    """A person approved or rejected: recorded as a verdict beside the one it decides."""
    campaign = move.campaign
    last = await latest(session, campaign.id)
    judged = last is not None and last.campaign_version == campaign.version - 1
    if move.from_status == "rejected" and not judged:
        raise ReviewConflict(
            "only the last verdict on the campaign as it is can be overridden; "
            "it was edited or decided since — submit it again",
            campaign_id=campaign.id,
        )
    hits = last.hits if last is not None and judged else []
    if hits and move.to_status == "approved" and not move.reason.strip():
        raise InvalidField(
            "reason", "required", "a reason is required to approve over sensitive-word hits"
        )
    row = await _record(
        session,
        campaign.id,
        campaign.version,
        move.to_status,
        automated=False,
        decided_by=move.actor,
        reason=move.reason,
        hits=hits,
        lists=last.lists if last is not None and judged else {},
        hit_count=last.hit_count if last is not None and judged else 0,
    )
    await record_audit(
        session,
        Actor(move.actor, move.actor_role),
        "review.override"
        if last is not None and last.verdict != move.to_status
        else "review.decide",
        campaign.id,
        {
            "from": move.from_status,
            "to": move.to_status,
            "verdict_id": row.id,
            "overrides": None if last is None else last.id,
            "hits": len(hits),
        },
    )


async def on_move(session: AsyncSession, move: flows.Move) -> None:
    if move.from_status == "pending_review":  # decided or withdrawn: out of the queue
        await session.execute(
            update(ReviewVerdict)
            .where(ReviewVerdict.campaign_id == move.campaign.id, ReviewVerdict.open.is_(True))
            .values(open=False)
        )
    if move.to_status == "pending_review":
        await screen_submission(session, move)
    elif (
        move.actor != flows.SYSTEM_ACTOR
        and move.from_status in ("pending_review", "rejected")
        and move.to_status in ("approved", "rejected")
    ):
        await _decided(session, move)


flows.register_listener(on_move)


async def verdicts(
    session: AsyncSession, campaign_id: str, *, cursor: str | None = None, limit: int = 50
) -> Slice[ReviewVerdict]:
    """Every verdict on a campaign, oldest first."""
    stmt = select(ReviewVerdict).where(ReviewVerdict.campaign_id == campaign_id)
    return await QUEUE.fetch(session, stmt, cursor=cursor, limit=limit)


async def queue(
    session: AsyncSession, *, cursor: str | None = None, limit: int = 50
) -> Slice[ReviewVerdict]:
    """Campaigns held for a person, longest waiting first: held verdicts still open (the
    campaign has not left ``pending_review`` since)."""
    stmt = select(ReviewVerdict).where(ReviewVerdict.open.is_(True))
    return await QUEUE.fetch(session, stmt, cursor=cursor, limit=limit)
