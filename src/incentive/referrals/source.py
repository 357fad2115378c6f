"""The ``referral`` data source: each referee's acceptance of an invite, its state and the
business that completed it.

Referrals publish no outbox event: every change (acceptance, completion, hold, release,
void, expiry) moves ``updated_at``, which ``since`` reads. The address hash stays here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from incentive.kit.sources import ModuleType, TableSource, register_source
from incentive.referrals.models import Referral


class ReferralSource(TableSource):
    name = "referral"
    fields: ClassVar[Mapping[str, ModuleType]] = {
        "id": "string",
        "campaign_id": "string",
        "invite_id": "string",
        "referrer_id": "string",
        "referee_id": "string",
        "parent_id": "string",
        "state": "string",
        "reason": "string",
        "via": "string",
        "created_at": "datetime",
        "business_due_at": "datetime",
        "completed_at": "datetime",
        "completed_by": "string",
        "business_amount_fen": "fen",
        "refunded_fen": "fen",
        "release_at": "datetime",
        "updated_at": "datetime",
    }
    key = (Referral.id,)
    campaign = Referral.campaign_id
    changed = Referral.updated_at

    def columns(self) -> Mapping[str, Any]:
        return {f: getattr(Referral, f) for f in self.fields}


register_source(ReferralSource())
