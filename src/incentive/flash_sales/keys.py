"""Live keys of flash sales (see ``incentive.config``).

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

from incentive.config import live_config, register_key

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
DRAIN_SECONDS = register_key(
    "flash_sale.drain_seconds",
    Annotated[float, Field(ge=0, le=60)],
    5.0,
    "How long reconcile/rebuild wait after closing a sale's flow-control switch for requests "
    "in flight to finish (live-config propagation + one commit).",
)


def flash_sale_flow_open(campaign_id: str) -> bool:
    """The flow-control switch of one flash-sale campaign (``True`` when not configured)."""
    switches: dict[str, bool] = live_config.get(FLASH_SALE_FLOW_CONTROL)
    return switches.get(campaign_id, True)
