"""An account is opened through the API only for an owner that exists.

The ledger keeps owners as ``(owner_type, owner_id)`` strings so that any domain can hold
value; whether such an owner exists is the owning domain's answer (``auth`` for users,
merchants and partners, ``campaigns`` for campaigns). Platform accounts are named by their
role (``issuer``, ``fees``) and have no owner row.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth import service as auth
from incentive.campaigns import service as campaigns
from incentive.errors import InvalidField, NotFound


async def check_owner_exists(session: AsyncSession, owner_type: str, owner_id: str) -> None:
    """``InvalidField`` (422 naming ``owner_id``) when no such owner exists."""
    if owner_type == "platform":
        return
    if owner_type == "campaign":
        try:
            await campaigns.get_campaign(session, owner_id)
        except NotFound:
            exists = False
        else:
            exists = True
    else:
        exists = await auth.identity_exists(session, owner_type, owner_id)
    if not exists:
        raise InvalidField("owner_id", "owner_exists", f"owner_id: no {owner_type} {owner_id!r}")
