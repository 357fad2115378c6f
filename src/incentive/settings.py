"""Static settings read once from the environment (prefix ``INCENTIVE_``).

What operators change while the platform runs lives in the live ``config`` domain instead.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import phonenumbers
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INCENTIVE_", extra="ignore")

    data_dir: Path = Path("./var")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; default: SQLite file in data_dir"
    )
    redis_url: str | None = Field(default=None, description="unset = embedded backends")
    stock_url: str | None = Field(
        default=None,
        description="stock store: redis://… or redis+cluster://…; default: redis_url, else "
        "the embedded in-process engine",
    )
    signing_key_file: Path | None = Field(
        default=None, description="PEM Ed25519 private key; default: generated in data_dir/keys"
    )
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    login_window_seconds: int = Field(
        default=300, ge=1, description="the moving window of every login ceiling (seconds)"
    )
    login_max_failures: int = Field(
        default=5, ge=1, description="failed logins of one username from one address per window"
    )
    login_max_failures_per_username: int = Field(
        default=50, ge=1, description="failed logins of one username from any address per window"
    )
    login_max_failures_per_address: int = Field(
        default=100, ge=1, description="failed logins from one address, any username, per window"
    )
    login_max_per_username: int = Field(
        default=20, ge=1, description="successful logins of one username per window"
    )
    max_sessions_per_user: int = Field(
        default=10, ge=1, description="live sessions per user; a new login revokes the oldest"
    )
    principal_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        le=60,
        description="how long a resolved caller (bearer token, partner API key) is reused "
        "without a lookup; revocations drop it at once (in other processes via Redis), so "
        "this bounds only changes no process announced (0: look up every request)",
    )
    forwarded_allow_ips: str = Field(
        default="",
        description="comma-separated proxy addresses/networks whose X-Forwarded-For is "
        "trusted ('*' for any); empty trusts none",
    )
    demo_data: bool = True
    public_base_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="the platform's public address (https://host[/prefix]) in links people "
        "share (`/s/{token}`); unset: the address each request came to",
    )
    share_landing_url: str = Field(
        default="/api/v1/campaigns/{campaign_id}",
        description="where a share's link (`/s/{token}`) redirects: a path on the public "
        "base URL or an absolute URL, with `{campaign_id}` (and optionally `{token}`) filled in",
    )
    identity_pepper: SecretStr | None = Field(
        default=None,
        description="secret mixed into the hashes of phone numbers, device ids, payment "
        "instruments and client addresses (referral abuse checks); default: random bytes kept "
        "in data_dir/keys/identity-pepper (every process must share it); set but blank is "
        "refused at start",
    )
    phone_region: str = Field(
        default="CN",
        pattern=r"^[A-Z]{2}$",
        description="the region (ISO 3166 alpha-2) of a phone number given without its country "
        "code, before it is normalised to E.164 and hashed (sign-up)",
    )
    rewards_webhook_secret: SecretStr | None = Field(
        default=None,
        description="Standard Webhooks secret (whsec_…) that signs message rewards sent to "
        "the live rewards.message_webhook_url; unset: sent unsigned",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="bearer token the Prometheus scraper sends to /metrics; unset = /metrics "
        "is not served (its series name ids of sales that are not public)",
    )
    db_pool_size: int = Field(
        default=10,
        ge=1,
        description="PostgreSQL connections each process keeps open (its pool); see README "
        "'Sizing the connection pools'",
    )
    db_max_overflow: int = Field(
        default=5,
        ge=0,
        description="connections a process may open beyond db_pool_size under a burst "
        "(closed again after use)",
    )
    db_pool_timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds a request waits for a free database connection before it is "
        "answered 503 with Retry-After",
    )
    redis_pool_size: int = Field(
        default=16,
        ge=4,
        description="connections in each of a process's two Redis pools (the shared client, "
        "whose event consumers and config listener each hold one while they wait, and the "
        "stock engine, per node on a cluster)",
    )
    redis_pool_timeout: float = Field(
        default=5.0,
        gt=0,
        description="seconds a caller waits for a free Redis connection before a 503",
    )
    log_level: str = "INFO"
    log_json: bool = True
    embedded_worker: bool = True
    config_refresh_seconds: float = 1.0
    review_refresh_seconds: float = Field(
        default=0.5,
        gt=0,
        description="how often each process checks for changed sensitive-word lists (seconds)",
    )
    points_poll_seconds: float = Field(
        default=5.0, description="how often the worker polls partner inboxes (seconds)"
    )
    points_lease_seconds: float = Field(
        default=60.0, description="a crashed worker's points-file claim is taken over after this"
    )
    points_min_free_bytes: int = Field(
        default=1024 * 1024 * 1024,
        ge=0,
        description="points-file work (uploads, decrypting, answers) is refused while the data "
        "directory's disk has less free space than this (bytes)",
    )
    points_stage_attempts: int = Field(
        default=5,
        ge=1,
        description="a points-file stage that fails this many times ends the file with an "
        "answer to the partner instead of being retried forever",
    )
    points_stage_retry_seconds: float = Field(
        default=2.0,
        gt=0,
        description="first wait before a failed points-file stage is retried (doubles each "
        "time, at most 5 minutes)",
    )
    points_stage_chunk: int = Field(
        default=20_000, ge=100, description="records staged per transaction (points files)"
    )

    @field_validator("identity_pepper")
    @classmethod
    def _pepper_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError(
                "INCENTIVE_IDENTITY_PEPPER is set but blank: set it to a long random secret "
                "shared by every process, or unset it to keep one in data_dir/keys"
            )
        return value

    @field_validator("phone_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        if value not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"INCENTIVE_PHONE_REGION: {value!r} is no region phonenumbers knows")
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'incentive.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
