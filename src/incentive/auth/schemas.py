from __future__ import annotations

from pydantic import BaseModel


class MeOut(BaseModel):
    id: str
    username: str
    role: str
    merchant_id: str | None = None
