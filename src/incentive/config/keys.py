"""The platform's catalogue of live keys for domains that read them on hot paths.

Domains import the ``ConfigKey`` objects from here (or register their own keys in their own
module with ``register_key``); reading is ``live_config.get(FLASH_SALE_BUCKETS)`` or
``live_config.get("flash_sale.buckets")``.

Per-campaign switches are one dict-valued key rather than a key per campaign, so the whole
set is typed, validated, audited and pushed as one value, and a campaign that is not listed
simply has the default behaviour:

- ``flash_sale.flow_control``: campaign id -> ``true`` (deductions allowed) / ``false``
  (deductions refused: the flow-control switch is off). A campaign absent from the map is
  open. Use ``flash_sale_flow_open(campaign_id)`` on the hot path.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from incentive.config.live import live_config
from incentive.config.registry import register_key

CampaignId = Annotated[str, StringConstraints(min_length=1, max_length=64)]

FLASH_SALE_BUCKETS = register_key(
    "flash_sale.buckets",
    Annotated[int, Field(ge=1, le=1024)],
    16,
    "Sub-buckets a flash-sale stock pool is split into when the campaign is activated.",
)
FLASH_SALE_FLOW_CONTROL = register_key(
    "flash_sale.flow_control",
    Annotated[dict[CampaignId, bool], Field(max_length=10_000)],
    {},
    "Per-campaign flow-control switch: campaign id -> true (deductions allowed) or false "
    "(refused). Campaigns not listed are open.",
)
POINTS_FILE_BATCH_SIZE = register_key(
    "points_file.batch_size",
    Annotated[int, Field(ge=100, le=50_000)],
    5_000,
    "Upper bound on records credited per batch of a partner points file (adaptive control "
    "may go lower under pressure, never higher).",
)
POINTS_FILE_WORKERS = register_key(
    "points_file.workers",
    Annotated[int, Field(ge=1, le=64)],
    4,
    "Upper bound on concurrent crediting workers per points file.",
)
LEDGER_MAX_BATCH = register_key(
    "ledger.max_batch",
    Annotated[int, Field(ge=1, le=10_000)],
    10_000,
    "Most transfers accepted in one ledger batch request.",
)


def flash_sale_flow_open(campaign_id: str) -> bool:
    """The flow-control switch of one flash-sale campaign (``True`` when not configured)."""
    switches: dict[str, bool] = live_config.get(FLASH_SALE_FLOW_CONTROL)
    return switches.get(campaign_id, True)
