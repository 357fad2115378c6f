"""Where a data model's records go: the target configurations and ``writer_for``.

A target is configured per model (``TargetConfig``, discriminated by ``kind``) and written
through a ``TargetWriter`` (``records.py``) that upserts on the record's key, so a row
delivered twice leaves the target as if delivered once:

- ``sql`` (``sql.py``): a table in PostgreSQL (``postgresql+asyncpg://``) or MariaDB/MySQL
  (``mysql+aiomysql://``, ``mariadb+aiomysql://``), one row per record keyed on
  ``key_column``; the columns are the mapped fields.
- ``redis`` (``keyspace.py``): a hash per record at ``prefix:key``, or a stream ``prefix``
  with one entry per delivery.
- ``webhook`` (``webhook.py``): one signed (Standard Webhooks) JSON POST per write.

A writer raises ``TargetRefused`` when the target will never take the rows as they are (a
column the table lacks, a 4xx) and ``TargetUnavailable`` when a later retry may succeed (the
service is down, slow or throttled). URLs may carry credentials: show ``redacted()``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from incentive.data_models.records import TargetWriter
from incentive.kit import webhooks
from incentive.kit.text import Line

#: SQLAlchemy async URL schemes whose driver the project installs.
SQL_SCHEMES = ("postgresql+asyncpg", "mysql+aiomysql", "mariadb+aiomysql")
REDIS_SCHEMES = ("redis", "rediss")
# Unquoted identifiers of both PostgreSQL (63 bytes at most) and MariaDB (64): no quoting
# games, and the same name works in either.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_PREFIX = re.compile(r"[A-Za-z0-9_.:\-]{1,100}")


class TargetUnavailable(Exception):
    """The target did not take the rows now (down, slow, throttled): retry them later."""


def _identifier(value: str) -> str:
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(
            "must be a plain identifier: a letter or _, then up to 62 letters, digits or _"
        )
    return value


Identifier = Annotated[
    str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"), AfterValidator(_identifier)
]


#: query parameters that carry credentials (``?password=`` is read by asyncpg, aiomysql and
#: redis-py alike; a webhook's ``?token=``): their values are never shown
_SECRET_PARAM = re.compile(r"pass|secret|token|key|auth|sig|credential", re.IGNORECASE)


def _redact_query(url: str) -> str:
    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    shown = [(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in pairs]
    return parts._replace(query=urlencode(shown, safe="*")).geturl()


def _redact_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is not None:
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        url = parts._replace(netloc=f"{user}:***@{host}").geturl()
    return _redact_query(url)


def _port(value: str) -> None:
    """A port within 1-65535 (``urlsplit`` raises ValueError for one it cannot read)."""
    port = urlsplit(value).port
    if port is not None and not 0 < port < 65536:
        raise ValueError("port must be 1 to 65535")


class _Target(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SqlTarget(_Target):
    """A table upserted on ``key_column`` (a primary key or unique column of the table);
    ``version_column`` and ``hash_column``, when named, receive the model version and the
    record's hash."""

    kind: Literal["sql"] = "sql"
    url: Line = Field(repr=False, min_length=1, max_length=2000)
    table: Identifier
    key_column: Identifier = "record_key"
    version_column: Identifier | None = None
    hash_column: Identifier | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("must be a SQLAlchemy URL, e.g. postgresql+asyncpg://h/db") from None
        if url.drivername not in SQL_SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SQL_SCHEMES)}")
        if not url.host or not url.database:
            raise ValueError("must name a host and a database")
        if url.port is not None and not 0 < url.port < 65536:
            raise ValueError("port must be 1 to 65535")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> SqlTarget:
        named = [c for c in (self.key_column, self.version_column, self.hash_column) if c]
        if len({c.lower() for c in named}) != len(named):
            raise ValueError("key_column, version_column and hash_column must differ")
        return self

    def redacted(self) -> str:
        return _redact_query(make_url(self.url).render_as_string(hide_password=True))


class RedisTarget(_Target):
    """``hash``: one hash per record at ``prefix:key`` (idempotent); ``stream``: an entry per
    row on ``prefix``, trimmed to about ``stream_maxlen`` when set, at least once (a
    consumer dedupes by key and hash)."""

    kind: Literal["redis"] = "redis"
    url: Line = Field(repr=False, min_length=1, max_length=2000)
    mode: Literal["hash", "stream"] = "hash"
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,100}$")]
    stream_maxlen: int | None = Field(default=None, ge=1, le=2**63 - 1)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if urlsplit(value).scheme not in REDIS_SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(REDIS_SCHEMES)}")
        _port(value)
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _PREFIX.fullmatch(value):
            raise ValueError("must be 1 to 100 letters, digits or _ . : -")
        return value

    @model_validator(mode="after")
    def _maxlen_for_streams(self) -> RedisTarget:
        if self.stream_maxlen is not None and self.mode != "stream":
            raise ValueError("stream_maxlen applies to mode 'stream' only")
        return self

    def redacted(self) -> str:
        return _redact_userinfo(self.url)


class WebhookTarget(_Target):
    """A JSON POST per write, signed with ``secret`` (Standard Webhooks, ``whsec_<base64>``
    or any text of 16 characters or more)."""

    kind: Literal["webhook"] = "webhook"
    url: Line = Field(repr=False, min_length=1, max_length=2000)
    secret: SecretStr = Field(min_length=16)
    timeout_seconds: float = Field(default=10, gt=0, le=120)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http or https URL with a host")
        _port(value)
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        webhooks.webhook_key(value.get_secret_value())  # a bad whsec_ raises ValueError
        return value

    def redacted(self) -> str:
        return _redact_userinfo(self.url)


TargetConfig = Annotated[SqlTarget | RedisTarget | WebhookTarget, Field(discriminator="kind")]


def writer_for(config: SqlTarget | RedisTarget | WebhookTarget) -> TargetWriter:
    """A writer for ``config``; it connects on its first write. Close it when done."""
    if isinstance(config, SqlTarget):
        from incentive.data_models.targets.sql import SqlWriter

        return SqlWriter(config)
    if isinstance(config, RedisTarget):
        from incentive.data_models.targets.keyspace import RedisWriter

        return RedisWriter(config)
    from incentive.data_models.targets.webhook import WebhookWriter

    return WebhookWriter(config)
