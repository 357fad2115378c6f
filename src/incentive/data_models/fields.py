"""A data model's definition, field by field, and its check against the source it reads.

A field reads the source field ``key`` (of module type ``module_type``), applies its
``rule`` and gives the result to ``target_system`` under ``mapped_field``. The check names
the field and the rule broken (``fields.<i>.<part>``): the source must be registered, each
key one of its fields with that module type, each (target system, mapped field) once, a
rule's own inputs (``concatenate``'s fields, ``lookup``'s source and field) must exist, and a
rule must take the field's type (``fen_to_yuan`` integers, ``date_format`` dates).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from incentive.data_models.rules import Concatenate, DateFormat, FenToYuan, Lookup, Rename, Rule
from incentive.errors import InvalidField
from incentive.kit.sources import DataSource, ModuleType, get_source, source_names

SystemName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
MappedName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
SourceField = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
#: the module types each typed rule takes
TAKES: dict[type, frozenset[str]] = {
    FenToYuan: frozenset({"fen", "integer"}),
    DateFormat: frozenset({"datetime", "string"}),
}


class FieldSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: SourceField = Field(description="the source field read")
    module_type: ModuleType = Field(description="that field's type in its module")
    target_system: SystemName = Field(description="the downstream system the value is for")
    mapped_field: MappedName = Field(description="the value's name in that system")
    rule: Rule = Field(default_factory=Rename, description="the processing rule applied")


class Definition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Annotated[str, Field(min_length=1, max_length=40)]
    fields: Annotated[list[FieldSpec], Field(min_length=1, max_length=200)]

    def systems(self) -> list[str]:
        return sorted({f.target_system for f in self.fields})


def _source(name: str) -> DataSource:
    if name not in source_names():
        raise InvalidField(
            "source", "registered", f"source: one of {', '.join(source_names()) or '(none)'}"
        )
    return get_source(name)


def check(definition: Definition) -> DataSource:
    """The definition's source, if the definition holds (see the module contract)."""
    source = _source(definition.source)
    seen: set[tuple[str, str]] = set()
    for i, spec in enumerate(definition.fields):
        at = f"fields.{i}"
        declared = source.fields.get(spec.key)
        if declared is None:
            raise InvalidField(
                f"{at}.key", "source-field", f"{at}.key: {source.name} has no field {spec.key!r}"
            )
        if declared != spec.module_type:
            raise InvalidField(
                f"{at}.module_type",
                "matches-source",
                f"{at}.module_type: {source.name}.{spec.key} is {declared}",
            )
        place = (spec.target_system, spec.mapped_field)
        if place in seen:
            raise InvalidField(
                f"{at}.mapped_field",
                "unique",
                f"{at}.mapped_field: {spec.target_system}.{spec.mapped_field} is mapped twice",
            )
        seen.add(place)
        rule = spec.rule
        takes = TAKES.get(type(rule))
        if takes is not None and spec.module_type not in takes:
            raise InvalidField(
                f"{at}.rule",
                "takes-type",
                f"{at}.rule: {rule.type} takes {' or '.join(sorted(takes))}, "
                f"not {spec.module_type}",
            )
        if isinstance(rule, Concatenate):
            for j, name in enumerate(rule.fields):
                if name not in source.fields:
                    raise InvalidField(
                        f"{at}.rule.fields.{j}",
                        "source-field",
                        f"{at}.rule.fields.{j}: {source.name} has no field {name!r}",
                    )
        if isinstance(rule, Lookup):
            if rule.source not in source_names():
                raise InvalidField(
                    f"{at}.rule.source",
                    "registered",
                    f"{at}.rule.source: no source {rule.source!r}",
                )
            if rule.field not in get_source(rule.source).fields:
                raise InvalidField(
                    f"{at}.rule.field",
                    "source-field",
                    f"{at}.rule.field: {rule.source} has no field {rule.field!r}",
                )
    return source
