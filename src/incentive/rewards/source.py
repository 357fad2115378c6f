"""The ``reward_grant`` data source: each reward given to a customer for one trigger, the
reward it holds now and the chain walked to get it.

``rewards.message`` names a grant whose message is to be sent; the other changes (a
delivery confirmed or failed, a fallback down the chain) publish nothing of the grant and
move ``updated_at``, which ``since`` reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from incentive.kit.sources import ModuleType, TableSource, register_source
from incentive.rewards.grants import MESSAGE_TOPIC
from incentive.rewards.models import RewardGrant


class RewardGrantSource(TableSource):
    name = "reward_grant"
    fields: ClassVar[Mapping[str, ModuleType]] = {
        "id": "string",
        "campaign_id": "string",
        "customer_id": "string",
        "trigger_key": "string",
        "user_type": "string",
        "reward_code": "string",
        "type": "string",
        "delivery": "string",
        "amount": "integer",
        "state": "string",
        "delivery_ref": "string",
        "chain": "json",
        "fallbacks": "integer",
        "day": "string",
        "created_at": "datetime",
        "updated_at": "datetime",
    }
    topic_keys: ClassVar[Mapping[str, str]] = {MESSAGE_TOPIC: "grant_id"}
    key = (RewardGrant.id,)
    campaign = RewardGrant.campaign_id
    changed = RewardGrant.updated_at

    def columns(self) -> Mapping[str, Any]:
        return {f: getattr(RewardGrant, f) for f in self.fields}


register_source(RewardGrantSource())
