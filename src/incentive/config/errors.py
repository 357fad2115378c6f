"""Live-config errors. ``except ConfigError`` catches every refusal of the config centre."""

from __future__ import annotations

from incentive.errors import Conflict, IncentiveError, InvalidField, NotFound


class ConfigError(IncentiveError):
    """Marker base of the config centre's refusals (combined with an HTTP-shaped base)."""


class UnknownConfigKey(ConfigError, NotFound):
    slug = "config-key-unknown"
    title = "Unknown configuration key"

    def __init__(self, key: str) -> None:
        super().__init__(f"no configuration key {key!r} is registered", key=key)
        self.key = key


class InvalidConfigValue(ConfigError, InvalidField):
    """The value breaks the key's type or constraint; ``field`` is ``value`` (or a sub-path)."""

    slug = "invalid-config-value"
    title = "Invalid configuration value"


class ConfigVersionConflict(ConfigError, Conflict):
    """``expected_version`` did not match: someone else changed the key in between."""

    slug = "config-version-conflict"
    title = "Configuration changed concurrently"
