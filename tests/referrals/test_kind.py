"""The referral kind's rules: the sample is accepted, a broken rule is refused by name."""

from __future__ import annotations

import httpx
import pytest

from incentive.campaigns.kinds import get_kind, parse_rules
from incentive.errors import InvalidField
from incentive.referrals.rules import ReferralRules
from tests.campaigns.conftest import ASSETS, RULES, World, campaign_body
from tests.campaigns.conftest import world as world  # noqa: F401  (fixture)


def test_sample_rules_parse_and_fund_the_right_asset() -> None:
    rules = parse_rules("referral", RULES["referral"])
    assert get_kind("referral").budget_asset(rules) == ASSETS["referral"]


def test_broken_rule_is_named() -> None:
    with pytest.raises(InvalidField) as caught:
        parse_rules("referral", {**RULES["referral"], **{"referrer_reward_points": -1}})
    assert caught.value.field.startswith("rules")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"referrer_reward": {"type": "cash", "amount": 100}}, "rules.referrer_reward"),
        (
            {"referrer_reward_points": 0, "referrer_reward": {"type": "cash", "amount": 1}},
            "rules.referrer_reward",
        ),
        ({"budget_asset": "CNY"}, "rules.referrer_reward_points"),
        ({"referee_reward": {"type": "coupon"}}, "rules.referee_reward"),
        ({"referee_reward": {"type": "points", "amount": 0}}, "rules.referee_reward"),
        ({"multi_level": {"enabled": True}}, "rules.multi_level.rates_bp"),
        (
            {"multi_level": {"enabled": True, "rates_bp": [1, 2, 3, 4]}},
            "rules.multi_level.rates_bp",
        ),
        ({"multi_level": {"rates_bp": [100]}}, "rules.multi_level.rates_bp"),
        ({"referrer_roles": ["operator"]}, "rules.referrer_roles.0"),
        ({"referrer_roles": []}, "rules.referrer_roles"),
        ({"min_account_age_days": -1}, "rules.min_account_age_days"),
        ({"max_referrals_per_day": 0}, "rules.max_referrals_per_day"),
        ({"attribution_days": 0}, "rules.attribution_days"),
        ({"hold_days": 91}, "rules.hold_days"),
        ({"business": {"activity_type": "refund"}}, "rules.business.activity_type"),
        ({"referrer_reward_points": 0, "referee_reward_points": 0}, "rules"),
    ],
)
def test_each_rule_is_named(change: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidField) as caught:
        parse_rules("referral", {**RULES["referral"], **change})
    assert caught.value.field == field


def test_defaults_and_a_cash_campaign() -> None:
    rules = parse_rules("referral", RULES["referral"])
    assert isinstance(rules, ReferralRules)
    assert rules.multi_level.enabled is False
    assert rules.referrer_roles == ["customer"]
    assert (rules.hold_days, rules.void_on_refund, rules.attribution_days) == (0, True, 7)
    cash = parse_rules(
        "referral",
        {
            "budget_asset": "CNY",
            "referrer_reward": {"type": "cash", "amount": 500},
            "referee_reward": {"type": "coupon", "coupon_batch_id": "a" * 32},
            "max_referrals_per_user": 5,
            "multi_level": {"enabled": True, "rates_bp": [10_000, 2_000, 500]},
        },
    )
    assert get_kind("referral").budget_asset(cash) == "CNY"


async def test_a_coupon_reward_names_a_batch_that_exists(
    client: httpx.AsyncClient, world: World
) -> None:
    body = campaign_body(
        "referral",
        rules={
            **RULES["referral"],
            "referee_reward_points": 0,
            "referee_reward": {"type": "coupon", "coupon_batch_id": "a" * 32},
        },
    )
    r = await client.post("/api/v1/campaigns", json=body, headers=world.op.headers)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "rules.referee_reward.coupon_batch_id"
    assert await counts_of_campaigns(client, world) == 0


async def counts_of_campaigns(client: httpx.AsyncClient, world: World) -> int:
    r = await client.get("/api/v1/campaigns", headers=world.op.headers)
    return len(r.json()["items"])


async def test_a_coupon_reward_names_a_batch_of_the_same_owner(
    client: httpx.AsyncClient, world: World
) -> None:
    """Merchant A's referral campaign cannot give merchant B's coupons, nor the platform's."""
    from tests.coupons.conftest import coupon_campaign

    _, batch_of_a = await coupon_campaign(client, world, owner="merchant")  # merchant A's batch
    body = campaign_body(
        "referral",
        rules={
            **RULES["referral"],
            "referee_reward_points": 0,
            "referee_reward": {"type": "coupon", "coupon_batch_id": batch_of_a},
        },
    )
    # merchant B's staff name merchant A's batch
    r = await client.post("/api/v1/campaigns", json=body, headers=world.mb.headers)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "rules.referee_reward.coupon_batch_id"
    assert r.json()["errors"][0]["rule"] == "same-owner"
    # the operator's platform campaign cannot either; merchant A's own campaign can
    r = await client.post("/api/v1/campaigns", json=body, headers=world.op.headers)
    assert (r.status_code, r.json()["errors"][0]["rule"]) == (422, "same-owner")
    r = await client.post("/api/v1/campaigns", json=body, headers=world.ma.headers)
    assert r.status_code == 201, r.text
