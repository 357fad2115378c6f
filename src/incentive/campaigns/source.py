"""The ``campaign`` data source: every campaign of every kind, as data models read it.

A record changes with each status change (``campaign.status_changed`` names it) and with
each edit, which moves ``updated_at`` but publishes nothing: a sync sees edits by ``since``.
``budget_asset`` is what the campaign's kind holds its budget in (``CNY`` or ``POINTS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from incentive.campaigns.flows import STATUS_CHANGED_TOPIC
from incentive.campaigns.kinds import get_kind, stored_rules
from incentive.campaigns.models import Campaign
from incentive.kit.sources import ModuleType, TableSource, register_source


class CampaignSource(TableSource):
    name = "campaign"
    fields: ClassVar[Mapping[str, ModuleType]] = {
        "id": "string",
        "kind": "string",
        "status": "string",
        "owner_type": "string",
        "merchant_id": "string",
        "name": "string",
        "description": "string",
        "starts_at": "datetime",
        "ends_at": "datetime",
        "budget_asset": "string",
        "budget_account_id": "integer",
        "rules": "json",
        "template_key": "string",
        "template_version": "integer",
        "version": "integer",
        "created_by": "string",
        "created_at": "datetime",
        "updated_at": "datetime",
    }
    topic_keys: ClassVar[Mapping[str, str]] = {STATUS_CHANGED_TOPIC: "campaign_id"}
    key = (Campaign.id,)
    campaign = Campaign.id
    changed = Campaign.updated_at

    def columns(self) -> Mapping[str, Any]:
        return {f: getattr(Campaign, f) for f in self.fields if f != "budget_asset"}

    def shape(self, values: dict[str, Any]) -> dict[str, Any]:
        rules = stored_rules(values["rules"])
        return {**values, "budget_asset": get_kind(values["kind"]).budget_asset(rules)}


register_source(CampaignSource())
