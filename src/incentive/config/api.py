"""Config centre HTTP API (operators only): list, read, change, reset, audit trail."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from incentive.auth.principal import Operator
from incentive.config import service
from incentive.config.errors import ConfigVersionConflict, InvalidConfigValue, UnknownConfigKey
from incentive.config.live import LiveConfig
from incentive.config.registry import MAX_KEY_LENGTH, get_key
from incentive.config.schemas import (
    AppliedValue,
    ConfigAuditOut,
    ConfigAuditPage,
    ConfigValueIn,
    ConfigValueOut,
    ConfigValuePage,
)
from incentive.deps import Session
from incentive.errors import AUTHENTICATED, VALIDATION, Forbidden, problems
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.kit.pagination import DEFAULT_LIMIT, Cursor, Limit
from incentive.kit.text import Line
from incentive.observability import request_id_var

router = APIRouter(prefix="/config", tags=["config"], route_class=JSONBodyRoute)

KeyPath = Annotated[Line, Path(min_length=1, max_length=MAX_KEY_LENGTH, description="dotted key")]


OPERATOR = (*AUTHENTICATED, Forbidden)
KEYED = (*OPERATOR, *VALIDATION, UnknownConfigKey)


@router.get(
    "",
    name="list_config_values",
    response_model=ConfigValuePage,
    responses=problems(*OPERATOR, *VALIDATION),
)
async def list_config(
    _: Operator, session: Session, cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT
) -> ConfigValuePage:
    """Every live-configuration key with its effective value, by name."""
    page = await service.value_page(session, cursor=cursor, limit=limit)
    return ConfigValuePage.of(page, ConfigValueOut.of)


@router.get(
    "/{key}", name="get_config_value", response_model=ConfigValueOut, responses=problems(*KEYED)
)
async def get_config(
    key: KeyPath, _: Operator, session: Session, request: Request
) -> ConfigValueOut:
    """The committed value, and under ``applied`` the value this process uses right now
    (they differ for at most a refresh interval after a change)."""
    out = ConfigValueOut.of(await service.get_value(session, key))
    live: LiveConfig = request.app.state.config
    out.applied = AppliedValue(value=get_key(key).dump(live.get(key)), revision=live.revision)
    return out


@router.put(
    "/{key}",
    name="set_config_value",
    response_model=ConfigValueOut,
    responses=problems(*KEYED, InvalidConfigValue, ConfigVersionConflict),
)
async def put_config(
    key: KeyPath, body: ConfigValueIn, principal: Operator, session: Session
) -> ConfigValueOut:
    """Change the value (validated against the key's schema, audited, applied in every
    process within a refresh interval); `expected_version` guards against lost updates."""
    value = await service.set_value(
        session,
        key,
        body.value,
        actor=f"user:{principal.name}",
        request_id=request_id_var.get(),
        expected_version=body.expected_version,
    )
    return ConfigValueOut.of(value)


@router.delete(
    "/{key}", name="reset_config_value", response_model=ConfigValueOut, responses=problems(*KEYED)
)
async def reset_config(
    key: KeyPath,
    principal: Operator,
    session: Session,
    expected_version: Annotated[int | None, Query(ge=0, le=2**62)] = None,
) -> ConfigValueOut:
    """Remove the override so the registered default applies again."""
    value = await service.reset_value(
        session,
        key,
        actor=f"user:{principal.name}",
        request_id=request_id_var.get(),
        expected_version=expected_version,
    )
    return ConfigValueOut.of(value)


@router.get(
    "/{key}/audit",
    name="list_config_changes",
    response_model=ConfigAuditPage,
    responses=problems(*KEYED),
)
async def config_audit(
    key: KeyPath,
    _: Operator,
    session: Session,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> ConfigAuditPage:
    """Every change of the key (set and reset), newest first: who, when, old and new value."""
    page = await service.audit_trail(session, key, cursor=cursor, limit=limit)
    return ConfigAuditPage.of(page, ConfigAuditOut.model_validate)
