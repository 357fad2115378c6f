"""CLI: `incentive data-models sources|list|show|create|change|archive|sync` against the configured
database (changes audited with no actor: the command line). Each prints JSON; a refusal
prints ``error: ...`` and exits 2 for bad input, 1 otherwise."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.data_models import service
from incentive.data_models.fields import Definition
from incentive.data_models.models import DataModel
from incentive.data_models.schemas import DataModelIn, DataModelPatch
from incentive.db import utcnow
from incentive.errors import BadRequest, IncentiveError
from incentive.kit.commands import command_database, echo_json, fail, run_work
from incentive.kit.sources import get_source, source_names

data_models_app = typer.Typer(no_args_is_help=True, help="Data models: registry and archive")


def register(app: typer.Typer) -> None:
    app.add_typer(data_models_app, name="data-models")


def _shown(model: DataModel) -> dict[str, Any]:
    return {"id": model.id, "name": model.name, "source": model.source, "version": model.version}


def _read(path: Path, shape: type[DataModelIn] | type[DataModelPatch]) -> Any:
    try:
        return shape.model_validate_json(path.read_bytes())
    except OSError as exc:
        fail(f"{path}: {exc.strerror}", 2)
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}", 2)


@data_models_app.command("sources")
def sources() -> None:
    """The modules a data model can read, with their fields and module types."""
    echo_json({"sources": {n: dict(get_source(n).fields) for n in source_names()}})


@data_models_app.command("list")
def listing() -> None:
    """Every data model and its current version."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        page = await service.listing(session, limit=200)
        return {"data_models": [_shown(m) for m in page.items]}

    echo_json(run_work(work))


@data_models_app.command("create")
def create(
    file: Annotated[Path, typer.Argument(help="the model as JSON (as POST /data-models)")],
) -> None:
    """Register a data model (version 1)."""
    body = _read(file, DataModelIn)

    async def work(session: AsyncSession) -> dict[str, Any]:
        definition = Definition(source=body.source, fields=body.fields)
        model = await service.create(
            session,
            None,
            model_id=body.id,
            name=body.name,
            definition=definition,
            partners=body.partners,
        )
        return _shown(model)

    echo_json(run_work(work))


@data_models_app.command("change")
def change(
    model_id: str,
    file: Annotated[Path, typer.Argument(help="the change as JSON (as PATCH /data-models/{id})")],
) -> None:
    """Change a data model; new source and fields make the next version."""
    body = _read(file, DataModelPatch)
    if (body.source is None) != (body.fields is None):
        fail("give source and fields together", 2)

    async def work(session: AsyncSession) -> dict[str, Any]:
        definition = None
        if body.source is not None and body.fields is not None:
            definition = Definition(source=body.source, fields=body.fields)
        model = await service.change(
            session, None, model_id, name=body.name, definition=definition, partners=body.partners
        )
        return _shown(model)

    echo_json(run_work(work))


@data_models_app.command("show")
def show(model_id: str) -> None:
    """A data model with its current fields."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        model = await service.get(session, model_id)
        version = await service.version_of(session, model_id, model.version)
        return {**_shown(model), "partners": model.partners, "fields": version.fields}

    echo_json(run_work(work))


async def _archive(model_id: str, campaign: str | None, cursor: str | None, batch: int) -> Any:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    totals = {"assembled": 0, "archived": 0, "failed": 0}
    async with command_database() as db:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.fields[assembled]:,} assembled, {task.fields[archived]:,} archived"),
            TextColumn("{task.fields[failed]:,} failed"),
            TimeElapsedColumn(),
            transient=True,
        ) as bar:
            task = bar.add_task("archive", **totals)  # type: ignore[arg-type]
            while True:
                async with db.unit_of_work() as session:
                    model = await service.get(session, model_id)
                    done = await service.assemble(
                        session, model, campaign_id=campaign, cursor=cursor, limit=batch,
                        archive=True,
                    )  # fmt: skip
                totals["assembled"] += len(done.work.records)
                totals["archived"] += len(done.work.changed)
                totals["failed"] += len(done.work.failures)
                bar.update(task, **totals)  # type: ignore[arg-type]
                for failure in done.work.failures:
                    typer.echo(json.dumps({"failed": failure.__dict__}), err=True)
                cursor = done.next_cursor
                if cursor is None:
                    return {"model": model_id, "version": model.version, **totals}


@data_models_app.command("archive")
def archive(
    model_id: str,
    campaign: str | None = typer.Option(None, "--campaign", help="only this campaign's records"),
    cursor: str | None = typer.Option(None, "--from", help="resume after this source position"),
    batch: int = typer.Option(500, "--batch", min=1, max=5000, help="records per transaction"),
) -> None:
    """Assemble every record of the model's source into the archive (a page per transaction;
    unchanged records are not rewritten), with a live count."""
    try:
        echo_json(asyncio.run(_archive(model_id, campaign, cursor, batch)))
    except BadRequest as exc:
        fail(exc.detail, 2)
    except IncentiveError as exc:
        fail(exc.detail, 1)


async def _sync(
    model_id: str, target: str | None, start: str | None, batch: int, deliver: bool
) -> Any:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from incentive.data_models import sync
    from incentive.data_models.models import SyncPosition

    totals = {"assembled": 0, "handed": 0, "failed": 0}
    async with command_database() as db:
        async with db.unit_of_work() as session:
            await service.get(session, model_id)
            saved = await session.get(SyncPosition, model_id)
            position = start if start is not None else (saved.position if saved else None)
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.fields[assembled]:,} assembled, {task.fields[handed]:,} to deliver"),
            TextColumn("{task.fields[failed]:,} failed"),
            TimeElapsedColumn(),
            transient=True,
        ) as bar:
            task = bar.add_task("sync", **totals)  # type: ignore[arg-type]
            while True:
                async with db.unit_of_work() as session:
                    only = (
                        None
                        if target is None
                        else await sync.target_named(session, model_id, target)
                    )
                    work, position = await sync.backfill_page(
                        session, model_id, position=position, only=only, limit=batch
                    )
                    row = await session.get(SyncPosition, model_id)
                    if row is None:
                        row = SyncPosition(model_id=model_id, done=0)
                        session.add(row)
                    row.position, row.done = position, (row.done or 0) + len(work.rows)
                    row.updated_at = utcnow()
                totals["assembled"] += len(work.records)
                totals["handed"] += len(work.changed)
                totals["failed"] += len(work.failures)
                bar.update(task, **totals)  # type: ignore[arg-type]
                for failure in work.failures:
                    typer.echo(json.dumps({"failed": failure.__dict__}), err=True)
                if position is None:
                    break
            delivered = {"delivered": 0, "retried": 0, "dead": 0}
            while deliver:
                done = await sync.deliver_due(db)
                for k, v in done.items():
                    delivered[k] += v
                if not any(done.values()):
                    break
    return {"model": model_id, **totals, **({"delivery": delivered} if deliver else {})}


@data_models_app.command("sync")
def sync_command(
    model_id: str,
    target: str | None = typer.Option(
        None, "--target", help="also hand this target every record it does not hold as it is now"
    ),
    start: str | None = typer.Option(
        None, "--from", help="start after this source position (default: where it stopped)"
    ),
    batch: int = typer.Option(500, "--batch", min=1, max=5000, help="records per transaction"),
    deliver: bool = typer.Option(False, "--deliver", help="also deliver now, not by workers"),
) -> None:
    """Backfill: assemble, archive and hand every record of the model's source to its targets
    (or one), a page per transaction, remembering the position — killed, it goes on from
    there when run again; with --deliver, deliver what is due before returning."""
    try:
        echo_json(asyncio.run(_sync(model_id, target, start, batch, deliver)))
    except BadRequest as exc:
        fail(exc.detail, 2)
    except IncentiveError as exc:
        fail(exc.detail, 1)
