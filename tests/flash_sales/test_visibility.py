"""A resource the caller may not see answers exactly as one that does not exist, on every route
that takes its id, whatever its state, and nothing changes (issue 10, item 11).

Visibility is checked before state: a customer buying another merchant's cancelled sale gets
404, not 409 "is cancelled".
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import func, select

from incentive.campaigns.models import Campaign
from incentive.db import Base, Database, new_id, utcnow
from incentive.ledger import service as ledger
from tests.campaigns.conftest import assisted_review
from tests.factories import Actor, make_merchant, make_user
from tests.flash_sales.conftest import Sales, make_customers

H = "/api/v1"


async def _snapshot(db: Database) -> dict[str, Any]:
    """Row counts of every table and every campaign's (status, version, name). Not
    ``processed_events``: the relay records there, in the background, the delivery of events
    the setup published (one row per subscriber), whatever the requests under test do."""
    counts: dict[str, Any] = {}
    async with db.unit_of_work() as s:
        for table in Base.metadata.sorted_tables:
            if table.name == "processed_events":
                continue
            counts[table.name] = await s.scalar(select(func.count()).select_from(table))
        rows = await s.execute(
            select(Campaign.id, Campaign.status, Campaign.version, Campaign.name)
        )
        counts["campaigns:rows"] = sorted(tuple(row) for row in rows)
    return counts


def _calls(sale: str, account: int, funding: int) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every route that takes the id of a campaign, flash sale or account."""
    return [
        ("GET", f"{H}/campaigns/{sale}", None),
        ("PATCH", f"{H}/campaigns/{sale}", {"name": "taken over"}),
        ("POST", f"{H}/campaigns/{sale}/transitions", {"to": "cancelled"}),
        ("POST", f"{H}/campaigns/{sale}/transitions", {"to": "active"}),
        ("GET", f"{H}/campaigns/{sale}/history", None),
        ("GET", f"{H}/campaigns/{sale}/review", None),
        ("POST", f"{H}/campaigns/{sale}/review/decision", {"decision": "approve", "reason": "x"}),
        ("GET", f"{H}/campaigns/{sale}/budget", None),
        ("POST", f"{H}/campaigns/{sale}/budget", {"amount": 5, "from_account_id": funding}),
        ("GET", f"{H}/flash-sales/{sale}", None),
        ("POST", f"{H}/flash-sales/{sale}/activate", None),
        ("POST", f"{H}/flash-sales/{sale}/purchases", {"quantity": 1}),
        ("POST", f"{H}/flash-sales/{sale}/reconcile", None),
        ("POST", f"{H}/campaigns/{sale}/join-codes", {"count": 1}),
        ("GET", f"{H}/campaigns/{sale}/join-codes", None),
        ("GET", f"{H}/campaigns/{sale}/join-codes/export", None),
        ("POST", f"{H}/campaigns/{sale}/join-codes/void", {"all_unused": True}),
        ("GET", f"{H}/campaigns/{sale}/merchants", None),
        ("GET", f"{H}/campaigns/{sale}/membership", None),
        ("GET", f"{H}/campaigns/{sale}/rebates", None),
        ("GET", f"{H}/campaigns/{sale}/rebates/report", None),
        ("GET", f"{H}/campaigns/{sale}/rewards", None),
        ("POST", f"{H}/campaigns/{sale}/rewards", _REWARD),
        ("PUT", f"{H}/campaigns/{sale}/rewards/order", {"codes": ["a"]}),
        ("POST", f"{H}/campaigns/{sale}/rewards/{_CODE}/restocks", {"units": 1}),
        ("DELETE", f"{H}/campaigns/{sale}/rewards/{_CODE}", None),
        ("POST", f"{H}/campaigns/{sale}/rewards/reconcile", None),
        ("POST", f"{H}/campaigns/{sale}/rewards/claims", None),
        ("GET", f"{H}/campaigns/{sale}/rewards/grants", None),
        ("GET", f"{H}/campaigns/{sale}/rewards/report", None),
        ("GET", f"{H}/campaigns/{sale}/sharing", None),
        ("PUT", f"{H}/campaigns/{sale}/sharing", {"enabled": True}),
        ("POST", f"{H}/campaigns/{sale}/shares", {"channel": "link"}),
        ("GET", f"{H}/campaigns/{sale}/shares/stats", None),
        ("GET", f"{H}/campaigns/{sale}/shares/stats/sharers", None),
        ("POST", f"{H}/campaigns/{sale}/invites", {}),
        ("GET", f"{H}/campaigns/{sale}/referrals", None),
        ("GET", f"{H}/campaigns/{sale}/referrals/report", None),
        ("GET", f"{H}/accounts/{account}", None),
        ("GET", f"{H}/accounts/{account}/transfers", None),
    ]


_CODE = "a"  # a reward code in a path
_REWARD = {"code": "a", "type": "points", "delivery": "ledger", "amount": 1, "stock": 1}


async def _call(
    client: httpx.AsyncClient, actor: Actor, method: str, url: str, body: Any
) -> httpx.Response:
    headers = {**actor.headers, "Idempotency-Key": new_id()}
    return await client.request(method, url, json=body, headers=headers)


async def _sale_in(sales: Sales, owner: Actor, status: str) -> str:
    """A sale of ``owner``'s merchant, moved to ``status`` by its staff and an operator."""
    now = utcnow()
    body = {
        "name": f"Owner's {status}",
        "sku": "SKU-1",
        "item_name": "Phone",
        "price_fen": 100,
        "total_stock": 10,
        "per_user_limit": 5,
        "buckets": 2,
        "starts_at": (now - timedelta(seconds=1)).isoformat(),
        "ends_at": (now + timedelta(hours=1)).isoformat(),
    }
    r = await sales.client.post(f"{H}/flash-sales", json=body, headers=owner.headers)
    assert r.status_code == 201, r.text
    sale = str(r.json()["id"])
    path = {
        "draft": [],
        "pending_review": ["pending_review"],
        "rejected": ["pending_review", "rejected"],
        "approved": ["pending_review", "approved"],
        "cancelled": ["pending_review", "approved", "cancelled"],
        "paused": ["pending_review", "approved", "active", "paused"],
        "ended": ["pending_review", "approved", "active", "ended"],
    }[status]
    reached = None
    for to in path:
        if to == reached:  # the automated review approved it
            continue
        r = await sales.client.post(
            f"{H}/campaigns/{sale}/transitions",
            json={"to": to, "reason": "test"},
            headers=sales.operator.headers,
        )
        assert r.status_code == 200, r.text
        reached = r.json()["status"]
        if to == "active":
            await sales.wait_split(sale)
    return sale


async def test_unseen_sales_and_accounts_are_404_on_every_route_and_nothing_changes(
    sales: Sales, db: Database, app: Any
) -> None:
    await assisted_review(db, app)  # sales held in pending_review, and rejected, by a person
    owner_shop = await make_merchant(db, "OWNER", "Owner's shop")
    other_shop = await make_merchant(db, "OTHER", "Other shop")
    owner = await make_user(db, app, username="owner", role="merchant", merchant_id=owner_shop.id)
    other = await make_user(db, app, username="other", role="merchant", merchant_id=other_shop.id)
    (customer,) = await make_customers(db, app, 1)
    async with db.unit_of_work() as s:
        account = await ledger.open_account(
            s, owner_type="merchant", owner_id=owner_shop.id, asset="CNY"
        )
        funding = await ledger.open_account(
            s, owner_type="platform", owner_id="fund", asset="CNY", allow_negative=True
        )
    unseen = [
        await _sale_in(sales, owner, status)
        for status in (
            "draft",
            "pending_review",
            "rejected",
            "approved",
            "cancelled",
            "paused",
            "ended",
        )
    ]
    missing_sale, missing_account = new_id(), 2**40
    before = await _snapshot(db)
    checked = 0
    for caller in (other, customer):
        for sale in unseen:
            seen = _calls(sale, account.id, funding.id)
            absent = _calls(missing_sale, missing_account, funding.id)
            for (method, url, body), (_, absent_url, _) in zip(seen, absent, strict=True):
                r = await _call(sales.client, caller, method, url, body)
                ref = await _call(sales.client, caller, method, absent_url, body)
                where = f"{caller.user.username} {method} {url} {body}"
                # The same answer as for an id that does not exist: 404, or the refusal
                # of the caller's role (403 on an operator's route) whatever the id.
                assert (r.status_code, r.json()["type"]) == (
                    ref.status_code,
                    ref.json()["type"],
                ), where
                assert r.status_code in (404, 403), where
                if r.status_code == 403:  # the role's refusal, never about this resource
                    assert r.json()["detail"] == ref.json()["detail"], where
                    assert r.json()["detail"].startswith(f"role {caller.user.role!r}"), where
                checked += 1
    assert checked == 2 * 7 * 40
    assert await _snapshot(db) == before


async def test_a_purchase_on_another_merchants_cancelled_sale_is_404(
    sales: Sales, db: Database, app: Any
) -> None:
    shop = await make_merchant(db, "SHOP", "Shop")
    owner = await make_user(db, app, username="owner", role="merchant", merchant_id=shop.id)
    (buyer,) = await make_customers(db, app, 1)
    sale = await _sale_in(sales, owner, "cancelled")
    before = await _snapshot(db)
    r = await sales.buy(buyer, sale)
    assert r.status_code == 404, r.text
    assert r.json()["type"].endswith("/not-found")
    assert "cancelled" not in r.text
    assert r.json()["detail"] == f"flash sale {sale} does not exist"
    assert await _snapshot(db) == before


# Routes taking an id that the test above does not call, and why that is safe.
NOT_CALLED_ABOVE = {
    # Data models: operators only (the role's 403 first), who see every model; a model's
    # records are also read by the partners it lists, and answered as absent (404) to any
    # other caller (`tests/data_models/test_registry.py::
    # test_records_by_id_in_the_models_shape_for_who_may_read`).
    ("GET", "/api/v1/data-models/{model_id}"),
    ("PATCH", "/api/v1/data-models/{model_id}"),
    ("GET", "/api/v1/data-models/{model_id}/versions"),
    ("GET", "/api/v1/data-models/{model_id}/records"),
    ("GET", "/api/v1/data-models/{model_id}/targets"),
    ("POST", "/api/v1/data-models/{model_id}/targets"),
    ("POST", "/api/v1/data-models/{model_id}/targets/{target}/rebuild"),
    ("GET", "/api/v1/data-models/{model_id}/dead-letters"),
    ("GET", "/api/v1/data-models/{model_id}/failures"),
    ("POST", "/api/v1/data-models/{model_id}/dead-letters/replay"),
    # An activity's id is its sender's own: another sender's is absent (404), tested in
    # `tests/activities/test_rebates.py::test_who_may_send_and_see_activities`.
    ("GET", "/api/v1/activities/{activity_id}"),
    # Live configuration: operators only, who see every key; others get the role's 403.
    ("GET", "/api/v1/config/{key}"),
    ("PUT", "/api/v1/config/{key}"),
    ("DELETE", "/api/v1/config/{key}"),
    ("GET", "/api/v1/config/{key}/audit"),
    # Points files (another team's area): `points_files/api.py::_visible_file` answers another
    # partner's file as absent (404); NOT exercised here. The upload is refused (403) when the
    # path names a partner other than the API key's, whether or not that partner exists.
    ("GET", "/api/v1/points-files/{file_id}"),
    ("GET", "/api/v1/points-files/{file_id}/feedback"),
    ("POST", "/api/v1/partners/{code}/points-files"),
    # Partner administration: operators only, who see every partner; others get the role's 403
    # before the code is looked up (`tests/auth/test_partner_keys.py::
    # test_partner_key_routes_are_for_operators_only_and_refusals_write_nothing`).
    ("GET", "/api/v1/partners/{code}"),
    ("POST", "/api/v1/partners/{code}/api-keys"),
    ("DELETE", "/api/v1/partners/{code}/api-keys/{key_id}"),
    ("POST", "/api/v1/partners/{code}/disable"),
    ("POST", "/api/v1/partners/{code}/enable"),
    # Coupons: a coupon is its holder's (others' ids answer 404) and operators'; a batch not
    # open for claims is seen by operators and its campaign's merchant only (404 otherwise):
    # `tests/coupons/test_claims.py::test_a_coupon_and_a_closed_batch_are_seen_only_by_who_may`.
    # Revocation, code imports, provider routes: operators only (the role's 403 first). The
    # till's undo answers another merchant's redemption as absent
    # (`tests/coupons/test_till.py::test_undo_within_the_window_and_not_after`). A provider's
    # webhook route takes no caller: only its signature (`tests/coupons/test_providers.py`).
    ("GET", "/api/v1/me/coupons/{coupon_id}"),
    ("GET", "/api/v1/me/coupons/{coupon_id}/qr"),
    ("GET", "/api/v1/coupons/{coupon_id}/transitions"),
    ("POST", "/api/v1/coupons/{coupon_id}/revocation"),
    ("GET", "/api/v1/coupon-batches/{batch_id}"),
    ("POST", "/api/v1/coupon-batches/{batch_id}/claims"),
    ("POST", "/api/v1/coupon-batches/{batch_id}/codes"),
    ("PATCH", "/api/v1/coupon-providers/{code}"),
    ("POST", "/api/v1/coupon-providers/{code}/sync"),
    ("POST", "/api/v1/coupon-providers/{code}/webhooks"),
    ("POST", "/api/v1/till/redemptions/{redemption_id}/undo"),
    # Templates: published versions are for everyone signed in to make campaigns from; drafts
    # and retired ones answer others than operators as absent, and every change is operators'
    # (the role's 403 first): `tests/templates/test_templates.py`.
    ("GET", "/api/v1/templates/{key}/versions/{version}"),
    ("PATCH", "/api/v1/templates/{key}/versions/{version}"),
    ("POST", "/api/v1/templates/{key}/versions/{version}/{action}"),
    # Sensitive-word lists: operators only (the role's 403 before the name is looked up):
    # `tests/review/test_lists.py`.
    ("GET", "/api/v1/review/word-lists/{name}"),
    ("PATCH", "/api/v1/review/word-lists/{name}"),
    ("POST", "/api/v1/review/word-lists/{name}/words"),
    ("PUT", "/api/v1/review/word-lists/{name}/words"),
    ("GET", "/api/v1/review/word-lists/{name}/words"),
    ("POST", "/api/v1/review/word-lists/{name}/words/removal"),
    ("GET", "/api/v1/review/word-lists/{name}/changes"),
    # A share's token is public (it is the link people share): its QR code is the link's,
    # for any signed-in user; an unknown token is 404 (`tests/sharing/test_shares.py::
    # test_the_qr_code_reads_back_as_the_link`). `/s/{token}` is outside the API.
    ("GET", "/api/v1/shares/{token}/qr"),
    # An invite's token is public too (it is the link a referee opens): its QR code is the
    # link's, for any signed-in user, and a customer accepts the invite by its token; an
    # unknown or expired token is 404 (`tests/referrals/test_invites.py::
    # test_invite_link_and_qr_decode_to_the_link_that_opens_the_invite`,
    # `test_an_expired_invite_is_a_404_everywhere`). `/i/{token}` is outside the API.
    ("GET", "/api/v1/invites/{token}/qr"),
    ("POST", "/api/v1/invites/{token}/acceptance"),
}


def test_every_route_taking_an_id_is_called_above_or_says_why_not(app: Any) -> None:
    """A new route taking an id must join `_calls` (or say here why it needs not)."""
    templates = {
        "/api/v1/campaigns/SALE": "/api/v1/campaigns/{campaign_id}",
        "/api/v1/flash-sales/SALE": "/api/v1/flash-sales/{sale_id}",
        "/api/v1/accounts/0": "/api/v1/accounts/{account_id}",
    }
    called = set()
    for method, url, _ in _calls("SALE", 0, 0):
        for concrete, template in templates.items():
            if url.startswith(concrete):
                path = template + url[len(concrete) :]
                path = path.replace(f"/rewards/{_CODE}/", "/rewards/{code}/")
                called.add(
                    (
                        method,
                        path.removesuffix(f"/rewards/{_CODE}")
                        + ("/rewards/{code}" if path.endswith(f"/rewards/{_CODE}") else ""),
                    )
                )
    routes = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if "{" in path
        for method in operations
    }
    assert routes - NOT_CALLED_ABOVE == called
