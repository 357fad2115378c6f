"""Review over HTTP: operators keep the sensitive-word lists and work the queue; a campaign's
manager reads its verdicts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from incentive.auth.principal import MerchantStaff, Operator
from incentive.campaigns import flows
from incentive.campaigns import service as campaigns
from incentive.campaigns.errors import InvalidTransition
from incentive.deps import Session
from incentive.errors import AUTHENTICATED, VALIDATION, Forbidden, NotFound, problems
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.kit.pagination import DEFAULT_LIMIT, Cursor, Limit
from incentive.review import service, words
from incentive.review.errors import ReviewConflict, WordListNotFound
from incentive.review.models import WordList
from incentive.review.schemas import (
    LIST_NAME,
    ChangeOut,
    ChangePage,
    DecisionIn,
    ScreeningIn,
    ScreeningOut,
    VerdictOut,
    VerdictPage,
    WordListIn,
    WordListOut,
    WordListPage,
    WordListPatch,
    WordOut,
    WordPage,
    WordsChanged,
    WordsIn,
)

router = APIRouter(tags=["review"], route_class=JSONBodyRoute)

ListPath = Annotated[str, Path(pattern=LIST_NAME, description="list name")]
CampaignId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="campaign id")]
OPERATING = (*AUTHENTICATED, *VALIDATION, Forbidden)
LISTED = (*OPERATING, WordListNotFound)


def _list(row: WordList) -> WordListOut:
    return WordListOut.model_validate(row)


def _changed(row: WordList, changed: int) -> WordsChanged:
    return WordsChanged(list=_list(row), changed=changed)


@router.post(
    "/review/word-lists",
    name="create_word_list",
    response_model=WordListOut,
    status_code=201,
    responses=problems(*OPERATING),
)
async def create_list(body: WordListIn, principal: Operator, session: Session) -> WordListOut:
    """A new, empty list; ``severity``: a hit ``reject``s the campaign or ``hold``s it for a
    person."""
    return _list(await words.create_list(session, principal, body.name, body.severity))


@router.get(
    "/review/word-lists",
    name="list_word_lists",
    response_model=WordListPage,
    responses=problems(*OPERATING),
)
async def list_lists(
    principal: Operator, session: Session, cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT
) -> WordListPage:
    """Every list with its severity, version and size, by name."""
    page = await words.lists(session, cursor=cursor, limit=limit)
    return WordListPage.of(page, _list)


@router.get(
    "/review/word-lists/{name}",
    name="get_word_list",
    response_model=WordListOut,
    responses=problems(*LISTED),
)
async def get_list(name: ListPath, principal: Operator, session: Session) -> WordListOut:
    """One list: its severity, version and size."""
    return _list(await words.get_list(session, name))


@router.patch(
    "/review/word-lists/{name}",
    name="change_word_list",
    response_model=WordListOut,
    responses=problems(*LISTED),
)
async def change_list(
    name: ListPath, body: WordListPatch, principal: Operator, session: Session
) -> WordListOut:
    """Change the list's severity (a new version)."""
    return _list(await words.set_severity(session, principal, name, body.severity))


@router.post(
    "/review/word-lists/{name}/words",
    name="add_words",
    response_model=WordsChanged,
    responses=problems(*LISTED),
)
async def add_words(
    name: ListPath, body: WordsIn, principal: Operator, session: Session
) -> WordsChanged:
    """Add words (a new version); words already listed are kept once."""
    row, added = await words.add_words(session, principal, name, words.clean_words(body.words))
    return _changed(row, added)


@router.put(
    "/review/word-lists/{name}/words",
    name="import_words",
    response_model=WordsChanged,
    responses=problems(*LISTED),
)
async def import_words(
    name: ListPath, body: WordsIn, principal: Operator, session: Session
) -> WordsChanged:
    """Replace the list's words with these (an import of a whole file: up to 200,000); every
    process matches with them within seconds."""
    row, added = await words.add_words(
        session, principal, name, words.clean_words(body.words), replace=True
    )
    return _changed(row, added)


@router.post(
    "/review/word-lists/{name}/words/removal",
    name="remove_words",
    response_model=WordsChanged,
    responses=problems(*LISTED),
)
async def remove_words(
    name: ListPath, body: WordsIn, principal: Operator, session: Session
) -> WordsChanged:
    """Take words out (a new version); words not listed are ignored."""
    row, removed = await words.remove_words(session, principal, name, words.clean_words(body.words))
    return _changed(row, removed)


@router.get(
    "/review/word-lists/{name}/words",
    name="list_words",
    response_model=WordPage,
    responses=problems(*LISTED),
)
async def list_words(
    name: ListPath,
    principal: Operator,
    session: Session,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> WordPage:
    """The list's words in order, each with the version that added it."""
    page = await words.words_of(session, name, cursor=cursor, limit=limit)
    return WordPage.of(page, WordOut.model_validate)


@router.get(
    "/review/word-lists/{name}/changes",
    name="list_word_list_changes",
    response_model=ChangePage,
    responses=problems(*LISTED),
)
async def list_changes(
    name: ListPath,
    principal: Operator,
    session: Session,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> ChangePage:
    """The list's versions: what each changed, who and when (newest first)."""
    page = await words.changes(session, name, cursor=cursor, limit=limit)
    return ChangePage.of(page, ChangeOut.model_validate)


@router.post(
    "/review/screenings",
    name="screen_texts",
    response_model=ScreeningOut,
    responses=problems(*OPERATING),
)
async def screen_texts(body: ScreeningIn, principal: Operator, session: Session) -> ScreeningOut:
    """Screen texts with this process's current lists, as a submission would be: the verdict
    and every hit (nothing is recorded)."""
    verdict, hits, snapshot = await service.screening(session, list(body.texts.items()))
    return ScreeningOut(
        revision=snapshot.revision,
        lists=snapshot.versions,
        verdict=verdict,
        hits=hits[: service.MAX_KEPT_HITS],
        hit_count=len(hits),
    )


@router.get(
    "/review/queue", name="review_queue", response_model=VerdictPage, responses=problems(*OPERATING)
)
async def review_queue(
    principal: Operator, session: Session, cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT
) -> VerdictPage:
    """Campaigns held for a person, longest waiting first, each with its hits."""
    page = await service.queue(session, cursor=cursor, limit=limit)
    return VerdictPage.of(page, VerdictOut.model_validate)


@router.get(
    "/campaigns/{campaign_id}/review",
    name="list_campaign_verdicts",
    response_model=VerdictPage,
    responses=problems(*OPERATING, NotFound),
)
async def campaign_verdicts(
    campaign_id: CampaignId,
    principal: MerchantStaff,
    session: Session,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> VerdictPage:
    """Every verdict on the campaign, automated and by a person, oldest first."""
    campaign = await campaigns.managed_campaign(session, principal, campaign_id)
    page = await service.verdicts(session, campaign.id, cursor=cursor, limit=limit)
    return VerdictPage.of(page, VerdictOut.model_validate)


@router.post(
    "/campaigns/{campaign_id}/review/decision",
    name="decide_campaign_review",
    response_model=VerdictOut,
    responses=problems(*OPERATING, NotFound, InvalidTransition, ReviewConflict),
)
async def decide(
    campaign_id: CampaignId, body: DecisionIn, principal: Operator, session: Session
) -> VerdictOut:
    """Approve or reject a held campaign, or approve a rejected one (an override of the last
    verdict): recorded as a verdict with the reason, and audited."""
    await flows.transition(
        session,
        principal,
        campaign_id,
        to_status="approved" if body.decision == "approve" else "rejected",
        reason=body.reason,
    )
    last = await service.latest(session, campaign_id)
    assert last is not None  # the listener recorded it
    return VerdictOut.model_validate(last)
