"""Message rewards leave through the outbox to the live ``rewards.message_webhook_url``, signed
(Standard Webhooks) with ``INCENTIVE_REWARDS_WEBHOOK_SECRET``: a real receiver on loopback
checks the signature with its own copy of the secret; a receiver answering 500 leaves the
grant ``delivering`` and the event to be retried. Workers are not embedded: the test relays."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from incentive.config import service as config_service
from incentive.db import Database
from incentive.events.backends.inprocess import InProcessTransport
from incentive.events.models import OutboxEvent
from incentive.events.relay import Relay
from incentive.kit import webhooks
from incentive.rewards.models import RewardGrant
from incentive.settings import Settings, get_settings
from tests.campaigns.conftest import World
from tests.coupons.conftest import customers
from tests.rewards.conftest import claim, left, reward_campaign
from tests.servers import free_port

SECRET = "whsec_" + "cmV3YXJkLW1lc3NhZ2Utc2VjcmV0LXRlc3Qh"
NOTE = {
    "code": "note",
    "title": "A drink on us",
    "type": "benefit",
    "delivery": "message",
    "message": "Show this at the till for a free drink.",
    "stock": 10,
}


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver on a loopback port: keeps every POST, answers ``status``."""

    url: str = ""
    status: int = 200
    posts: list[Received] = field(default_factory=list)

    async def endpoint(self, request: Request) -> Response:
        self.posts.append(Received(dict(request.headers), await request.body()))
        return Response(status_code=self.status)


@pytest.fixture
def settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    # The sender reads the process's settings (INCENTIVE_*), as `serve` and `worker` build
    # them, not the Settings object handed to create_app.
    monkeypatch.setenv("INCENTIVE_REWARDS_WEBHOOK_SECRET", SECRET)
    get_settings.cache_clear()
    yield settings.model_copy(
        update={"embedded_worker": False, "rewards_webhook_secret": SecretStr(SECRET)}
    )
    get_settings.cache_clear()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    port = free_port()
    app = Starlette(routes=[Route("/hooks/rewards", found.endpoint, methods=["POST"])])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    found.url = f"http://127.0.0.1:{port}/hooks/rewards"
    yield found
    server.should_exit = True
    await asyncio.wait_for(task, 10)


async def message_campaign(
    client: httpx.AsyncClient, db: Database, world: World, app: Any, receiver: Receiver
) -> str:
    async with db.unit_of_work() as s:
        await config_service.set_value(s, "rewards.message_webhook_url", receiver.url, actor="test")
    await app.state.config.reload()
    campaign = await reward_campaign(client, db, world, [NOTE], budget=0, per_user_limit=5)
    return str(campaign["id"])


def relay(db: Database) -> Relay:
    return Relay(db, InProcessTransport(db), retry_base_seconds=0.01, retry_max_seconds=0.01)


async def state_of(db: Database, grant_id: str) -> str:
    async with db.unit_of_work() as s:
        grant = await s.get(RewardGrant, grant_id)
        assert grant is not None
        return grant.state


async def message_event(db: Database, grant_id: str) -> OutboxEvent:
    async with db.unit_of_work() as s:
        (row,) = await s.scalars(
            select(OutboxEvent).where(
                OutboxEvent.topic == "rewards.message", OutboxEvent.key == grant_id
            )
        )
        return row


async def test_a_message_reward_is_posted_once_signed_and_the_grant_delivered(
    client: httpx.AsyncClient, db: Database, world: World, app: Any, receiver: Receiver
) -> None:
    campaign = await message_campaign(client, db, world, app, receiver)
    r = await claim(client, world.cust.headers, campaign)
    assert r.status_code == 201, r.text
    grant = r.json()
    assert (grant["reward"], grant["state"]) == ("note", "delivering")
    assert receiver.posts == []  # nothing leaves before the outbox relays it
    await relay(db).drain()
    (post,) = receiver.posts
    webhooks.verify(SECRET, post.headers, post.body)  # raises BadSignature otherwise
    assert post.headers["webhook-id"] == f"msg_{grant['id']}"
    with pytest.raises(webhooks.BadSignature):
        webhooks.verify(SECRET, post.headers, post.body + b" ")
    sent = json.loads(post.body)
    assert sent["type"] == "reward.message"
    assert sent["data"]["grant_id"] == grant["id"]
    assert sent["data"]["customer_id"] == world.cust.user.id
    assert sent["data"]["message"] == NOTE["message"]
    assert await state_of(db, grant["id"]) == "delivered"
    assert (await message_event(db, grant["id"])).published_at is not None
    assert await left(client, world.op.headers, campaign) == {"note": 9}
    # Relaying again sends nothing more.
    await relay(db).drain()
    assert len(receiver.posts) == 1


async def test_a_receiver_answering_500_keeps_the_grant_delivering_and_the_event_retried(
    client: httpx.AsyncClient, db: Database, world: World, app: Any, receiver: Receiver
) -> None:
    campaign = await message_campaign(client, db, world, app, receiver)
    (person,) = await customers(db, app, 1)
    receiver.status = 500
    r = await claim(client, person.headers, campaign)
    assert r.status_code == 201, r.text
    grant_id = r.json()["id"]
    attempts = 0
    for _ in range(3):  # the event is due again after each back-off
        while len(receiver.posts) == attempts:
            await relay(db).run_once()
            await asyncio.sleep(0.01)
        attempts += 1
        assert await state_of(db, grant_id) == "delivering"
        event = await message_event(db, grant_id)
        assert event.published_at is None
        assert event.attempts == attempts
        assert event.last_error is not None
        assert "500" in event.last_error
    assert len(receiver.posts) == 3
    for post in receiver.posts:  # every retry is the same message, signed
        webhooks.verify(SECRET, post.headers, post.body)
        assert post.headers["webhook-id"] == f"msg_{grant_id}"
    # The receiver recovers: the next retry delivers it, once.
    receiver.status = 204
    while len(receiver.posts) == attempts:
        await relay(db).run_once()
        await asyncio.sleep(0.01)
    assert await state_of(db, grant_id) == "delivered"
    assert (await message_event(db, grant_id)).published_at is not None
    await asyncio.sleep(0.05)
    await relay(db).drain()
    assert len(receiver.posts) == 4
    # The unit stays given: one reward, one unit, whatever the retries.
    assert await left(client, world.op.headers, campaign) == {"note": 9}
