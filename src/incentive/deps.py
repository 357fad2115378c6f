"""Request-scoped dependencies shared by every router: the unit of work and the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.db import Database
from incentive.errors import Conflict, InvalidField
from incentive.kit import qr


def public_base(request: Request) -> str:
    """The platform's public address (links people open: a share's, an invite's): the
    ``INCENTIVE_PUBLIC_BASE_URL`` setting, else the address the request came to."""
    settings = request.app.state.settings
    return str(settings.public_base_url or request.base_url).rstrip("/")


@dataclass(frozen=True)
class QrOptions:
    """How a caller wants a QR code drawn (query parameters of every QR route)."""

    format: Annotated[qr.Format, Query()] = "png"
    size: Annotated[int | None, Query(ge=1, le=qr.MAX_SCALE, description="pixels per module")] = (
        None
    )
    ecc: Annotated[qr.Ecc, Query(description="error correction: l, m, q or h")] = "m"


def link_qr(request: Request, path: str, options: QrOptions) -> Response:
    """A QR code of the public link ``path`` (a share's ``/s/…``, an invite's ``/i/…``); a
    link too long for one (made from a caller's long Host header, without
    ``INCENTIVE_PUBLIC_BASE_URL``) is a 422 naming ``Host``."""
    try:
        image, media_type = qr.render(
            f"{public_base(request)}{path}", options.format, scale=options.size, ecc=options.ecc
        )
    except qr.DataTooLong:
        raise InvalidField(
            "Host", "too-long", "Host: the link made from it does not fit a QR code"
        ) from None
    return Response(image, media_type=media_type)


QrQuery = Annotated[QrOptions, Depends()]


def database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    # scope="function" (below) runs the commit right after the endpoint returns and before
    # the response is sent, so a 2xx is only ever sent for committed work. A concurrent
    # duplicate found at commit is a 409 here; a busy, full or lost database is a 503 on every
    # route, by the handler of errors.store_unavailable.
    try:
        async with database(request).unit_of_work() as session:
            yield session
    except IntegrityError as exc:
        raise Conflict("the change conflicts with existing data (a concurrent duplicate?)") from exc


Session = Annotated[AsyncSession, Depends(_session, scope="function")]


def _query_names(dependant: Dependant) -> frozenset[str]:
    names = {f.alias for f in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return frozenset(names)


# Per route (its dependant, kept alive here so its id is never reused): the query parameters
# it declares, computed at its first request instead of at every one.
_declared: dict[int, tuple[Dependant, frozenset[str]]] = {}


def declared_query_names(route: APIRoute) -> frozenset[str]:
    known = _declared.get(id(route.dependant))
    if known is None or known[0] is not route.dependant:
        known = _declared[id(route.dependant)] = (route.dependant, _query_names(route.dependant))
    return known[1]


async def declared_query_only(request: Request) -> None:
    """Mounted on the app for every route: a query parameter the route does not declare is a
    422 naming it, so a typo (``?limt=5``) is never answered as if it had not been sent."""
    if not request.scope.get("query_string"):
        return
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    declared = declared_query_names(route)
    unknown = [name for name in dict.fromkeys(request.query_params) if name not in declared]
    if unknown:
        raise RequestValidationError(
            [
                {
                    "type": "unknown_parameter",
                    "loc": ("query", name),
                    "msg": f"unknown query parameter; this operation takes {sorted(declared)}",
                    "input": request.query_params[name],
                }
                for name in unknown
            ]
        )
