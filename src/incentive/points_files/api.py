"""Points files over HTTP: upload (partners), progress and answers (partners and operators)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse

from incentive.auth.principal import CurrentPartner, PartnerOrOperator, Principal
from incentive.deps import Session
from incentive.errors import AUTHENTICATED, VALIDATION, Forbidden, problems
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.kit.pagination import DEFAULT_LIMIT, Cursor, Limit
from incentive.points_files import intake, service
from incentive.points_files.errors import (
    AnswerNotReady,
    PartnerNotConfigured,
    PointsFileNotFound,
    StorageFull,
)
from incentive.points_files.models import FILE_STATES, PointsFile
from incentive.points_files.schemas import (
    PointsFileAccepted,
    PointsFileOut,
    PointsFilePage,
    PointsFileSummary,
    RecordCounts,
)
from incentive.settings import Settings

router = APIRouter(tags=["points files"], route_class=JSONBodyRoute)

FileId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]


VIEWING = (*AUTHENTICATED, *VALIDATION, Forbidden)

# A partner sees its own files (by API key), an operator every file (by bearer token).
Viewer = PartnerOrOperator


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _visible_file(session: Session, viewer: Principal, file_id: str) -> PointsFile:
    row = await service.get_file(session, file_id)
    if viewer.role == "partner" and row.partner_id != viewer.id:
        raise PointsFileNotFound(f"no points file {file_id!r}", id=file_id)
    return row


@router.post(
    "/partners/{code}/points-files",
    status_code=202,
    response_model=PointsFileAccepted,
    responses=problems(*VIEWING, PartnerNotConfigured, StorageFull),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_points_file(
    request: Request,
    code: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{2,64}$")],
    partner: CurrentPartner,
    name: Annotated[
        str,
        Query(
            pattern=r"^POINTS_[A-Za-z0-9_-]{1,64}_[0-9]{8}_[0-9]{1,19}\.txt\.pgp$",
            description="the file name: POINTS_<PARTNER>_<YYYYMMDD>_<SEQ>.txt.pgp",
        ),
    ],
) -> PointsFileAccepted:
    """Upload an encrypted, signed points file (the raw OpenPGP message as the body).

    202 once the file is stored durably; follow it with ``GET /points-files/{id}``. A file
    rejected on arrival (duplicate, too large, another partner's name) is 202 too: its state
    is ``rejected`` and its exception file follows.
    """
    # Short transactions of its own, not the request's: the body is streamed to disk first,
    # and no transaction (on SQLite: the write lock) may stay open meanwhile.
    db = request.app.state.db
    async with db.unit_of_work() as s:
        if partner.name != code:
            raise Forbidden("the API key belongs to another partner")
        who = await intake.sender(s, code)
    row = await intake.receive(db, _settings(request), who, name, request.stream(), source="http")
    return PointsFileAccepted(
        id=row.id, name=row.name, state=row.state, reason_code=row.reason_code
    )


@router.get(
    "/points-files/{file_id}",
    response_model=PointsFileOut,
    responses=problems(*VIEWING, PointsFileNotFound),
)
async def get_points_file(session: Session, viewer: Viewer, file_id: FileId) -> PointsFileOut:
    """State and live progress: record counts, batches, current batch size and concurrency,
    throughput and ETA."""
    row = await _visible_file(session, viewer, file_id)
    p = await service.progress(session, row)
    return PointsFileOut(
        id=row.id,
        partner=p.partner_code,
        name=row.name,
        file_seq=row.file_seq,
        source=row.source,
        state=row.state,
        reason_code=row.reason_code,
        reason_detail=row.reason_detail,
        size_bytes=row.size_bytes,
        records=RecordCounts(**p.counts),
        points_total=row.points_total,
        points_credited=row.points_credited,
        batches_done=p.batches_done,
        batches_in_flight=p.batches_in_flight,
        batches_total=p.batches_total,
        batch_size=row.batch_size,
        concurrency=row.concurrency,
        throughput_records_per_s=None
        if p.throughput_per_s is None
        else round(p.throughput_per_s, 1),
        eta_seconds=None if p.eta_s is None else round(p.eta_s, 1),
        answer_name=row.answer_name,
        delivery_attempts=row.delivery_attempts,
        delivery_error=row.delivery_error,
        received_at=row.received_at,
        credited_at=row.credited_at,
        answered_at=row.answered_at,
        delivered_at=row.delivered_at,
    )


@router.get("/points-files", response_model=PointsFilePage, responses=problems(*VIEWING))
async def list_points_files(
    session: Session,
    viewer: Viewer,
    partner: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.-]{2,64}$")] = None,
    state: Annotated[str | None, Query(pattern="^(" + "|".join(FILE_STATES) + ")$")] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> PointsFilePage:
    """Newest first. Partners see their own files only (``partner`` must be theirs)."""
    partner_id: str | None = None
    if viewer.role == "partner":
        if partner is not None and partner != viewer.name:
            raise Forbidden("partners list their own files only")
        partner_id = viewer.id
    elif partner is not None:
        partner_id = await service.partner_id(session, partner)
    rows, next_cursor = await service.list_files(
        session, partner_id=partner_id, state=state, cursor=cursor, limit=limit
    )
    return PointsFilePage(
        items=[
            PointsFileSummary(
                id=f.id,
                partner=code,
                name=f.name,
                file_seq=f.file_seq,
                state=f.state,
                reason_code=f.reason_code,
                record_count=f.record_count,
                received_at=f.received_at,
            )
            for f, code in rows
        ],
        next_cursor=next_cursor,
    )


@router.get(
    "/points-files/{file_id}/feedback",
    name="get_points_file_feedback",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/pgp-encrypted": {}}},
        **problems(*VIEWING, PointsFileNotFound, AnswerNotReady),
    },
)
async def get_points_file_answer(
    request: Request, session: Session, viewer: Viewer, file_id: FileId
) -> FileResponse:
    """The encrypted feedback (or exception) file; 409 while it is not written yet."""
    row = await _visible_file(session, viewer, file_id)
    path = service.answer_file(_settings(request), row)
    return FileResponse(
        path, media_type="application/pgp-encrypted", filename=row.answer_name or path.name
    )
