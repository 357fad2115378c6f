"""Request and response shapes of data models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from incentive.data_models.fields import FieldSpec
from incentive.data_models.targets import TargetConfig
from incentive.kit.pagination import Page
from incentive.kit.text import Line, Name

ModelId = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
PartnerCode = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
Partners = Annotated[list[PartnerCode], Field(max_length=100)]


class DataModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: ModelId = Field(description="the id external systems ask for")
    name: Annotated[Name, Field(max_length=200)]
    source: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")] = Field(
        description="the module read: see GET /data-model-sources"
    )
    fields: Annotated[list[FieldSpec], Field(min_length=1, max_length=200)]
    partners: Partners = Field(
        default_factory=list, description="partner codes whose API keys may read the records"
    )


class DataModelPatch(BaseModel):
    """A change; new ``source``/``fields`` make the next version (give both or neither)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[Name, Field(max_length=200)] | None = None
    source: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")] | None = None
    fields: Annotated[list[FieldSpec], Field(min_length=1, max_length=200)] | None = None
    partners: Partners | None = None


class VersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: int
    source: str
    fields: list[FieldSpec]
    created_by: str
    created_at: datetime


class VersionPage(Page[VersionOut]):
    pass


class DataModelOut(BaseModel):
    id: str
    name: str
    source: str
    version: int = Field(description="the current version")
    partners: list[str]
    fields: list[FieldSpec] = Field(description="the current version's fields")
    systems: list[str] = Field(description="the target systems its fields name")
    created_at: datetime
    updated_at: datetime


class DataModelPage(Page[DataModelOut]):
    pass


class FailureOut(BaseModel):
    field: str = Field(description="the source field whose rule failed")
    rule: str
    detail: str


class RecordOut(BaseModel):
    """One record in the model's shape — or, when a rule could not take one of its values,
    the failure (``systems`` and ``hash`` null) so a reader sees what it is missing."""

    key: str = Field(description="the source record's key")
    version: int = Field(description="the model version that assembled it")
    hash: str | None = Field(description="SHA-256 of the record's canonical JSON")
    systems: dict[str, dict[str, Any]] | None = Field(
        description="per target system, the values under their mapped names"
    )
    failure: FailureOut | None = None


class RecordPage(Page[RecordOut]):
    pass


class SourceOut(BaseModel):
    name: str
    fields: dict[str, str] = Field(description="field name -> module type")


class SourcesOut(BaseModel):
    sources: list[SourceOut] = Field(description="every registered source, by name")


class TargetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
    system: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")] = Field(
        description="the target system (of the model's fields) whose values it receives"
    )
    config: TargetConfig = Field(description="the store: sql, redis or webhook")


class TargetOut(BaseModel):
    name: str
    system: str
    kind: str
    where: str = Field(description="the store's address, credentials hidden")
    enabled: bool
    deliveries: dict[str, int] = Field(description="records by delivery state")
    created_at: datetime


class TargetsOut(BaseModel):
    targets: list[TargetOut] = Field(description="the model's targets, by name")


class DeliveryOut(BaseModel):
    target: str
    key: str
    version: int
    hash: str
    state: str
    attempts: int
    last_error: str | None
    updated_at: datetime


class DeliveryPage(Page[DeliveryOut]):
    pass


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")] | None = None
    keys: Annotated[
        list[Annotated[Line, Field(min_length=1, max_length=128)]], Field(max_length=1000)
    ] = Field(default_factory=list, description="only these records (default: every dead letter)")


class CountOut(BaseModel):
    count: int


class AssemblyFailureOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    record_key: str
    version: int
    field: str = Field(description="the source field whose rule (or value check) failed")
    rule: str
    detail: str
    failed_at: datetime


class AssemblyFailurePage(Page[AssemblyFailureOut]):
    pass
