"""Public shapes of the config centre API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from incentive.config.service import ConfigValue
from incentive.kit.pagination import Page


class AppliedValue(BaseModel):
    value: Any
    revision: int = Field(description="global config revision loaded by this process")


class ConfigValueOut(BaseModel):
    key: str
    value: Any = Field(description="effective value (the default when no override is set)")
    default: Any
    is_default: bool
    version: int = Field(description="changes of this key so far; 0 = never set")
    updated_at: datetime | None
    updated_by: str | None
    description: str
    value_schema: dict[str, Any] = Field(description="JSON Schema a value must satisfy")
    applied: AppliedValue | None = Field(
        default=None, description="what the answering process is applying right now"
    )

    @classmethod
    def of(cls, v: ConfigValue) -> ConfigValueOut:
        return cls(
            key=v.key.name,
            value=v.value,
            default=v.key.dump(v.key.default),
            is_default=v.is_default,
            version=v.version,
            updated_at=v.updated_at,
            updated_by=v.updated_by,
            description=v.key.description,
            value_schema=v.key.json_schema(),
        )


class ConfigValueIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: Any = Field(description="new value; validated against the key's schema")
    expected_version: int | None = Field(
        default=None,
        ge=0,
        le=2**62,
        description="optional optimistic lock: the version you read (0 = still default)",
    )


class ConfigAuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    key: str
    action: str
    old_value: Any
    new_value: Any
    version: int
    actor: str
    at: datetime
    request_id: str | None


class ConfigValuePage(Page[ConfigValueOut]):
    """Keys by name."""


class ConfigAuditPage(Page[ConfigAuditOut]):
    """Changes, newest first."""
