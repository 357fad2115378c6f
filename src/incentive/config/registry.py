"""The registry of live configuration keys: name, type (with constraints), default, meaning.

A key is declared once, at import time, by the domain that reads it::

    from typing import Annotated
    from pydantic import Field
    from incentive.config import register_key

    BUCKETS = register_key(
        "flash_sale.buckets", Annotated[int, Field(ge=1, le=1024)], 16,
        "sub-buckets a flash-sale pool is split into at activation",
    )

Values are validated by pydantic against the annotation (strict: ``"16"`` is not an int), so a
stored value is always of the declared type. Only registered keys can be read or written.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from incentive.config.errors import InvalidConfigValue, UnknownConfigKey

KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
MAX_KEY_LENGTH = 200


@dataclass(frozen=True)
class ConfigKey:
    """One registered key. ``adapter`` validates and serialises values of ``annotation``."""

    name: str
    annotation: Any
    default: Any
    description: str
    adapter: TypeAdapter[Any] = field(repr=False, compare=False)

    def validate(self, value: Any) -> Any:
        """Return ``value`` as the key's Python type or raise ``InvalidConfigValue``."""
        try:
            return self.adapter.validate_python(value, strict=True)
        except ValidationError as exc:
            # JSON has no tuples/sets/datetimes: a strict failure on input that came from JSON
            # gets one lenient retry in JSON mode, so e.g. a list can fill a tuple[int, ...].
            try:
                return self.adapter.validate_json(json.dumps(value), strict=True)
            except (ValidationError, TypeError, ValueError):
                raise _invalid(exc) from exc

    def dump(self, value: Any) -> Any:
        """The JSON-compatible form stored in the database and returned by the API."""
        return self.adapter.dump_python(value, mode="json")

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of the key's values, built once per key (the configuration list
        shows it for every key on every request). Shared: never mutate it."""
        return self._schema

    @functools.cached_property
    def _schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = self.adapter.json_schema()
        return schema


def _invalid(exc: ValidationError) -> InvalidConfigValue:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    field_name = f"value.{loc}" if loc else "value"
    rule = first.get("type", "invalid")
    return InvalidConfigValue(field_name, rule, first.get("msg", rule))


_registry: dict[str, ConfigKey] = {}


def register_key(name: str, annotation: Any, default: Any, description: str) -> ConfigKey:
    """Declare a live configuration key and return it.

    ``annotation`` is any type pydantic validates (``int``, ``Annotated[int, Field(ge=1)]``,
    ``dict[str, bool]``, a ``BaseModel``...). ``default`` must itself be valid. Registering the
    same name again with the same type and default returns the existing key (modules may be
    re-imported); a different definition is a programming error and raises ``ValueError``.
    """
    if len(name) > MAX_KEY_LENGTH or not KEY_PATTERN.match(name):
        raise ValueError(f"config key {name!r} must be dotted lower_snake_case, e.g. 'domain.name'")
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    key = ConfigKey(name, annotation, None, description, adapter)
    try:
        checked = key.validate(default)
    except InvalidConfigValue as exc:
        raise ValueError(f"default of config key {name!r} is invalid: {exc.detail}") from exc
    key = ConfigKey(name, annotation, checked, description, adapter)
    existing = _registry.get(name)
    if existing is not None:
        # Annotations with Field(...) metadata never compare equal; their schemas do.
        same_type = existing.json_schema() == key.json_schema()
        if same_type and existing.dump(existing.default) == key.dump(checked):
            return existing
        raise ValueError(f"config key {name!r} is already registered with another definition")
    _registry[name] = key
    return key


def get_key(name: str) -> ConfigKey:
    try:
        return _registry[name]
    except KeyError:
        raise UnknownConfigKey(name) from None


def is_registered(name: str) -> bool:
    return name in _registry


def registered_keys() -> list[ConfigKey]:
    return [_registry[name] for name in sorted(_registry)]
