"""The coupon provider client and webhook signatures, against a real provider on loopback.

Every outcome is read from outside the client: the fake provider's own counts (what it
issued, how often it was called) and, for webhooks, what a separate loopback server received.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from incentive.coupons.provider import (
    Done,
    ProviderBatch,
    ProviderClient,
    ProviderCoupon,
    ProviderUnavailable,
    Refused,
    Unclear,
    parse_batch,
    parse_coupon,
)
from incentive.kit.webhooks import BadSignature, sign, verify
from tests.coupons.fake_provider import FakeProvider, webhook_signature
from tests.servers import free_port

KEY = "provider-credentials"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


# -- a tiny loopback HTTP server: a webhook receiver, or a provider that answers badly ---------


class Scripted:
    """Answers every request with `reply(method, path, body)`; records what it received."""

    def __init__(self) -> None:
        self.reply: Callable[[str, str, bytes], tuple[int, bytes]] = lambda *_: (204, b"")
        self.received: list[tuple[str, str, dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with scripted.lock:
                    scripted.received.append(
                        (self.command, self.path, headers, body, self.client_address[1])
                    )
                status, answer = scripted.reply(self.command, self.path, body)
                if status == 0:  # hang up without a word
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def bodies(self) -> list[bytes]:
        with self.lock:
            return [r[3] for r in self.received]


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(credentials=KEY, page_size=2) as provider:
        yield provider


@pytest.fixture
async def provider(fake: FakeProvider) -> AsyncIterator[ProviderClient]:
    client = ProviderClient(fake.base_url, KEY, timeout=0.5)
    yield client
    await client.aclose()


def _wait(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _wait_quiet(fake: FakeProvider, quiet: float = 1.0, timeout: float = 60.0) -> None:
    """Wait until the fake has been idle, with no new issue call, for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    seen, since = -1, time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the fake never went quiet"
        calls = fake.calls("issue")
        if calls != seen or not fake.idle():
            seen, since = calls, time.monotonic()
        time.sleep(0.02)


# -- signatures -----------------------------------------------------------------------------


def _signed(body: bytes, *, secret: str = SECRET, at: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if at is None else at
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, "msg_1", stamp, body),
    }


def test_sign_matches_the_standard_webhooks_test_vector() -> None:
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": expected,
    }
    verify(SECRET, headers, body, now=1614265330 + 299)


def test_a_signed_webhook_passes_whatever_the_case_of_its_header_names() -> None:
    body = b'{"type": "coupon.issued"}'
    verify(SECRET, _signed(body), body)
    verify(SECRET, {k.title(): v for k, v in _signed(body).items()}, body)
    verify("plain secret", _signed(body, secret="plain secret"), body)


def test_a_tampered_body_is_refused() -> None:
    body = b'{"type": "coupon.issued", "data": {"code": "A"}}'
    with pytest.raises(BadSignature, match="no matching signature"):
        verify(SECRET, _signed(body), body.replace(b'"A"', b'"B"'))


def test_a_wrong_secret_is_refused() -> None:
    body = b"{}"
    with pytest.raises(BadSignature, match="no matching signature"):
        verify("whsec_c2VjcmV0LXR3bw==", _signed(body), body)


@pytest.mark.parametrize(("offset", "words"), [(-301, "stale"), (301, "future")])
def test_a_timestamp_outside_the_tolerance_is_refused(offset: int, words: str) -> None:
    body = b"{}"
    now = time.time()
    with pytest.raises(BadSignature, match=words):
        verify(SECRET, _signed(body, at=int(now) + offset), body, now=now)
    verify(SECRET, _signed(body, at=int(now) - 290), body, now=now)


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_named(header: str) -> None:
    body = b"{}"
    headers = _signed(body)
    del headers[header]
    with pytest.raises(BadSignature, match=f"missing header {header}"):
        verify(SECRET, headers, body)


@pytest.mark.parametrize("stamp", ["2026-12-01T00:00:00Z", "9" * 5000, "\u0661\u0662", "-1", "1.5"])
def test_a_timestamp_that_is_not_unix_seconds_is_refused(stamp: str) -> None:
    body = b"{}"
    headers = {**_signed(body), "webhook-timestamp": stamp}
    with pytest.raises(BadSignature, match="unix seconds"):
        verify(SECRET, headers, body)


def test_an_unpadded_whsec_secret_is_the_same_key() -> None:
    body = b"{}"
    padded = "whsec_c2VjcmV0LXR3bw=="
    verify(padded.rstrip("="), _signed(body, secret=padded), body)


def test_any_one_matching_v1_signature_among_several_passes() -> None:
    body = b'{"type": "batch.updated"}'
    headers = _signed(body)
    good = headers["webhook-signature"]
    other = sign("whsec_b2xkLXNlY3JldA==", "msg_1", int(headers["webhook-timestamp"]), body)
    headers["webhook-signature"] = f"{other} v2,{good[3:]} v1,not-base64!! {good}"
    verify(SECRET, headers, body)
    # The same valid bytes under another version are not a v1 signature.
    headers["webhook-signature"] = f"{other} v2,{good[3:]}"
    with pytest.raises(BadSignature, match="no matching signature"):
        verify(SECRET, headers, body)


# -- parsing what a provider sends ----------------------------------------------------------

BATCH = {
    "id": "B1",
    "name": "Winter",
    "state": "running",
    "stock": 5,
    "face_value_fen": 1000,
    "min_spend_fen": 5000,
    "valid_from": "2026-12-01T00:00:00Z",
    "valid_until": "2026-12-31T16:00:00+08:00",
}


def test_a_batch_parses_with_times_in_utc() -> None:
    batch = parse_batch(BATCH)
    assert batch.valid_until == datetime(2026, 12, 31, 8, tzinfo=UTC)
    assert batch.valid_until.tzinfo is UTC
    assert parse_batch({**BATCH, "valid_from": None}).valid_from is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", None),
        ("id", ""),
        ("state", "running-ish"),
        ("stock", -1),
        ("stock", True),
        ("stock", 2**63),
        ("face_value_fen", 10.5),
        ("min_spend_fen", "100"),
        ("valid_until", "tomorrow"),
        ("valid_until", "2026-12-31T00:00:00"),
        ("valid_from", 1764547200),
    ],
)
def test_a_bad_batch_field_is_named(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        parse_batch({**BATCH, field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("request_no", None), ("code", 7), ("batch_id", ""), ("state", "reversed")],
)
def test_a_bad_coupon_field_is_named(field: str, value: Any) -> None:
    data = {"request_no": "r", "code": "C", "batch_id": "B", "state": "issued"}
    with pytest.raises(ValueError, match=field):
        parse_coupon({**data, field: value})


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*BATCH, "code", "request_no", "batch_id"]), _json))
def test_parsers_raise_only_value_error_on_any_json(data: dict[str, Any]) -> None:
    for parse in (parse_batch, parse_coupon):
        try:
            parse(data)
        except ValueError:
            pass


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stock=st.integers(0, 2**63 - 1),
    fen=st.integers(0, 2**63 - 1),
    until=st.none() | st.datetimes(timezones=st.just(UTC)),
)
def test_a_valid_batch_round_trips(stock: int, fen: int, until: datetime | None) -> None:
    data = {**BATCH, "stock": stock, "face_value_fen": fen}
    data["valid_until"] = None if until is None else until.isoformat()
    assert parse_batch(data) == ProviderBatch(
        "B1", "Winter", "running", stock, fen, 5000, datetime(2026, 12, 1, tzinfo=UTC), until
    )


# -- issuing --------------------------------------------------------------------------------


async def test_an_issue_is_done_and_found_by_its_request_number(
    fake: FakeProvider, provider: ProviderClient
) -> None:
    until = datetime(2027, 1, 1, tzinfo=UTC)
    fake.add_batch("B1", stock=3, valid_until=until)
    answer = await provider.issue("req-1", "B1", "u-1")
    assert isinstance(answer, Done)
    assert answer.coupon.state == "issued"
    assert answer.coupon.valid_until == until
    assert [c.code for c in fake.coupons()] == [answer.coupon.code]
    assert fake.batch("B1").stock == 2
    assert await provider.find_coupon("req-1") == answer.coupon
    assert await provider.find_coupon("req-unknown") is None


@pytest.mark.parametrize(
    ("state", "stock", "batch_id", "reason"),
    [
        ("running", 0, "B1", "out-of-stock"),
        ("paused", 5, "B1", "batch-not-running"),
        ("stopped", 5, "B1", "batch-not-running"),
        ("running", 5, "B-nope", "unknown-batch"),
    ],
)
async def test_a_refused_issue_is_definitive_and_takes_nothing(
    fake: FakeProvider,
    provider: ProviderClient,
    state: str,
    stock: int,
    batch_id: str,
    reason: str,
) -> None:
    fake.add_batch("B1", stock=stock, state=state)
    answer = await provider.issue("req-1", batch_id, "u-1")
    assert isinstance(answer, Refused)
    assert answer.reason == reason
    assert answer.message
    assert fake.issued == 0
    assert fake.batch("B1").stock == stock
    assert fake.calls("issue") == 1


async def test_a_503_is_unclear_did_nothing_and_is_not_retried_by_the_client(
    fake: FakeProvider, provider: ProviderClient
) -> None:
    fake.add_batch("B1", stock=3)
    fake.set_faults(fail_ratio=1.0, endpoints={"issue"})
    assert await provider.issue("req-1", "B1", "u-1") == Unclear("http-503")
    assert fake.calls("issue") == 1
    assert fake.issued == 0
    assert await provider.find_coupon("req-1") is None


async def test_a_timeout_is_unclear_though_the_provider_issued_and_a_lookup_finds_it(
    fake: FakeProvider, provider: ProviderClient
) -> None:
    fake.add_batch("B1", stock=3)
    fake.set_faults(timeout_ratio=1.0, hang_seconds=30, endpoints={"issue"})
    started = time.monotonic()
    assert await provider.issue("req-1", "B1", "u-1") == Unclear("timeout")
    assert time.monotonic() - started < 3
    assert fake.calls("issue") == 1
    assert fake.issued == 1
    found = await provider.find_coupon("req-1")
    assert isinstance(found, ProviderCoupon)
    assert found.code == fake.coupons()[0].code


async def test_the_fake_issues_again_for_a_repeated_request_number_unless_idempotent(
    fake: FakeProvider, provider: ProviderClient
) -> None:
    fake.add_batch("B1", stock=5)
    first = await provider.issue("req-1", "B1", "u-1")
    second = await provider.issue("req-1", "B1", "u-1")
    assert isinstance(first, Done)
    assert isinstance(second, Done)
    assert first.coupon.code != second.coupon.code
    assert (fake.issued, fake.issued_for("req-1"), fake.batch("B1").stock) == (2, 2, 3)
    assert await provider.find_coupon("req-1") == first.coupon

    with FakeProvider(credentials=KEY, idempotent=True) as careful:
        careful.add_batch("B1", stock=5)
        client = ProviderClient(careful.base_url, KEY)
        answers = [await client.issue("req-1", "B1", "u-1") for _ in range(3)]
        await client.aclose()
        assert {a.coupon.code for a in answers if isinstance(a, Done)} == {
            careful.coupons()[0].code
        }
        assert (careful.issued, careful.batch("B1").stock) == (1, 4)


async def test_concurrent_issues_under_faults_reconcile_exactly_with_the_provider(
    fake: FakeProvider, provider: ProviderClient
) -> None:
    """Done plus what lookups find after an Unclear is exactly what the provider issued."""
    fake.add_batch("B1", stock=1000)
    fake.set_faults(fail_ratio=0.2, timeout_ratio=0.2, hang_seconds=3, seed=7)
    # A timeout well past the fake's handling time: an unclear answer is one the fake hung on
    # after doing the work, never one still to be done after the lookups below.
    patient = ProviderClient(fake.base_url, KEY, timeout=1.5)
    answers = await asyncio.gather(*(patient.issue(f"req-{i}", "B1", "u") for i in range(60)))
    await patient.aclose()
    # On a loaded machine a request may reach the fake after the client gave up on it, or never
    # (a CI run saw 60 s pass with some never handled): the lookups below start once the fake
    # has handled nothing for a second, so every work it will ever do for these is done.
    _wait_quiet(fake)
    fake.set_faults(fail_ratio=0.0, timeout_ratio=0.0)
    known = {a.coupon.code for a in answers if isinstance(a, Done)}
    unclear = [f"req-{i}" for i, a in enumerate(answers) if isinstance(a, Unclear)]
    assert unclear, "the faults should have made some answers unclear"
    assert not any(isinstance(a, Refused) for a in answers)
    for request_no in unclear:
        found = await provider.find_coupon(request_no)
        assert not isinstance(found, Unclear)
        if found is not None:
            known.add(found.code)
    assert known == {c.code for c in fake.coupons()}
    assert 0 < fake.calls("issue") <= 60
    assert fake.batch("B1").stock == 1000 - fake.issued


async def test_the_same_seed_draws_the_same_faults() -> None:
    outcomes = []
    for _ in range(2):
        with FakeProvider(credentials=KEY) as fake:
            fake.add_batch("B1", stock=100)
            fake.set_faults(fail_ratio=0.5, seed=42)
            client = ProviderClient(fake.base_url, KEY)
            answers = [await client.issue(f"r{i}", "B1", "u") for i in range(20)]
            await client.aclose()
            outcomes.append([type(a).__name__ for a in answers])
    assert outcomes[0] == outcomes[1]
    assert {"Done", "Unclear"} == set(outcomes[0])


async def test_latency_is_added_only_to_the_chosen_endpoints(fake: FakeProvider) -> None:
    fake.add_batch("B1", stock=3)
    fake.set_faults(latency=1.0, endpoints={"find_coupon"})
    client = ProviderClient(fake.base_url, KEY, timeout=3)
    started = time.monotonic()
    assert isinstance(await client.issue("r1", "B1", "u"), Done)
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    assert isinstance(await client.find_coupon("r1"), ProviderCoupon)
    assert time.monotonic() - started >= 1.0
    await client.aclose()


async def test_wrong_credentials_are_a_401_that_does_nothing(fake: FakeProvider) -> None:
    fake.add_batch("B1", stock=3)
    async with httpx.AsyncClient() as raw:
        response = await raw.post(f"{fake.base_url}/v1/coupons", json={})
        assert response.status_code == 401
    client = ProviderClient(fake.base_url, "stolen")
    assert await client.issue("r1", "B1", "u") == Unclear("http-401")
    assert await client.find_coupon("r1") == Unclear("http-401")
    with pytest.raises(ProviderUnavailable, match="http-401"):
        await client.batches()
    await client.aclose()
    assert fake.issued == 0
    assert fake.batch("B1").stock == 3


async def test_an_unreachable_provider_is_unclear_and_reads_raise() -> None:
    client = ProviderClient(f"http://127.0.0.1:{free_port()}", KEY)
    assert await client.issue("r1", "B1", "u") == Unclear("connect-error")
    assert await client.redeem("d1", "C", "m", 100) == Unclear("connect-error")
    assert await client.revoke("v1", "C", "why") == Unclear("connect-error")
    assert await client.reverse_redemption("d1") == Unclear("connect-error")
    assert await client.find_coupon("r1") == Unclear("connect-error")
    assert await client.find_redemption("d1") == Unclear("connect-error")
    with pytest.raises(ProviderUnavailable, match="connect-error"):
        await client.batches()
    with pytest.raises(ProviderUnavailable):
        [c async for c in client.coupons()]
    await client.aclose()


# -- listings -------------------------------------------------------------------------------


async def test_batches_are_paged_through_each_once(
    fake: FakeProvider, provider: ProviderClient
) -> None:
    for i in range(5):
        fake.add_batch(f"B{i}", stock=i, face_value_fen=100 * i)
    batches = await provider.batches()
    assert [(b.id, b.stock, b.face_value_fen) for b in batches] == [
        (f"B{i}", i, 100 * i) for i in range(5)
    ]
    assert fake.calls("batches") == 3


async def test_batches_raise_when_a_page_fails(
    fake: FakeProvider, provider: ProviderClient
) -> None:
    for i in range(5):
        fake.add_batch(f"B{i}", stock=1)
    fake.set_faults(fail_ratio=1.0, endpoints={"batches"})
    with pytest.raises(ProviderUnavailable, match="http-503"):
        await provider.batches()


async def test_coupons_are_listed_by_batch_and_issue_day_across_pages(
    fake: FakeProvider, provider: ProviderClient
) -> None:
    fake.add_batch("B1", stock=10)
    fake.add_batch("B2", stock=10)
    day = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
    for i in range(7):
        # Three on the 30th (UTC), four on 1 December: the day is the UTC day of issue.
        moment = day + timedelta(minutes=i)
        fake.clock = _at(moment)
        assert isinstance(await provider.issue(f"r{i}", "B1" if i % 2 else "B2", "u"), Done)
    listed = [c async for c in provider.coupons()]
    assert [c.request_no for c in listed] == [f"r{i}" for i in range(7)]
    assert all(c.issued_at is not None for c in listed)
    on_b1 = [c.request_no async for c in provider.coupons(batch_id="B1")]
    assert on_b1 == ["r1", "r3", "r5"]
    first = [c.request_no async for c in provider.coupons(date=date(2026, 12, 1))]
    assert first == ["r1", "r2", "r3", "r4", "r5", "r6"]
    both = [c.request_no async for c in provider.coupons(batch_id="B2", date=date(2026, 11, 30))]
    assert both == ["r0"]


def _at(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


# -- redemptions and revocations ------------------------------------------------------------


async def _issued(fake: FakeProvider, provider: ProviderClient, request_no: str) -> str:
    answer = await provider.issue(request_no, "B1", "u")
    assert isinstance(answer, Done)
    return answer.coupon.code


async def test_a_redemption_is_done_found_refused_twice_and_reversed(
    fake: FakeProvider, provider: ProviderClient
) -> None:
    fake.add_batch("B1", stock=3, min_spend_fen=5000)
    code = await _issued(fake, provider, "r1")
    assert await provider.redeem("d0", code, "m-1", 4999) == Refused(
        "not-usable", "revoked, expired or below min spend"
    )
    answer = await provider.redeem("d1", code, "m-1", 5000)
    assert answer == Done(ProviderCoupon("d1", code, "B1", "redeemed"))
    assert await provider.find_redemption("d1") == answer.coupon
    assert await provider.find_redemption("d-unknown") is None
    second = await provider.redeem("d2", code, "m-2", 9000)
    assert isinstance(second, Refused)
    assert second.reason == "already-redeemed"
    assert await provider.redeem("d3", "NO-SUCH", "m-1", 9000) == Refused(
        "unknown-code", "no such code"
    )
    assert fake.redeemed == 1

    reversed_ = await provider.reverse_redemption("d1")
    assert reversed_ == Done(ProviderCoupon("d1", code, "B1", "reversed"))
    assert await provider.reverse_redemption("d1") == reversed_
    assert fake.reversed == 1
    assert isinstance(await provider.redeem("d4", code, "m-1", 5000), Done)
    assert await provider.reverse_redemption("d-unknown") == Refused(
        "not-found", "no redemption under that request_no"
    )


async def test_a_revoked_coupon_cannot_be_redeemed(
    fake: FakeProvider, provider: ProviderClient
) -> None:
    fake.add_batch("B1", stock=3)
    code = await _issued(fake, provider, "r1")
    answer = await provider.revoke("v1", code, "campaign-cancelled")
    assert isinstance(answer, Done)
    assert (answer.coupon.request_no, answer.coupon.code, answer.coupon.state) == (
        "r1",
        code,
        "revoked",
    )
    assert await provider.revoke("v2", code, "again") == answer
    assert fake.revoked == 1
    refused = await provider.redeem("d1", code, "m", 100)
    assert isinstance(refused, Refused)
    assert refused.reason == "not-usable"
    assert fake.redeemed == 0
    assert await provider.revoke("v3", "NO-SUCH", "x") == Refused("not-found", "no such code")

    used = await _issued(fake, provider, "r2")
    assert isinstance(await provider.redeem("d2", used, "m", 100), Done)
    refused = await provider.revoke("v4", used, "x")
    assert isinstance(refused, Refused)
    assert refused.reason == "already-redeemed"


# -- a provider that answers badly ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "why"),
    [
        (201, b"<html>ok</html>", "bad-answer"),
        (200, b'{"request_no": "r1", "batch_id": "B1", "state": "issued"}', "bad-answer"),
        (201, b'{"request_no": "r", "code": "C", "batch_id": "B", "state": "gone"}', "bad-answer"),
        (201, b'[{"request_no": "r1"}]', "bad-answer"),
        (202, b"{}", "http-202"),
        (302, b"", "http-302"),
        (409, b"conflict", "http-409"),
        (404, b"<html>not here</html>", "http-404"),
        (429, b'{"error": "slow-down"}', "http-429"),
        (500, b'{"error": "out-of-stock"}', "http-500"),
    ],
)
async def test_what_is_not_a_clear_answer_is_unclear(
    scripted: Scripted, status: int, body: bytes, why: str
) -> None:
    scripted.reply = lambda *_: (status, body)
    client = ProviderClient(scripted.url, KEY)
    assert await client.issue("r1", "B1", "u") == Unclear(why)
    if status not in (201, 202):  # a lookup answers 200, so 201 is no answer to it
        assert await client.find_coupon("r1") == Unclear(why)
    await client.aclose()


async def test_a_provider_hanging_up_without_an_answer_is_unclear(scripted: Scripted) -> None:
    scripted.reply = lambda *_: (0, b"")
    client = ProviderClient(scripted.url, KEY)
    assert await client.issue("r1", "B1", "u") == Unclear("network-error")
    assert await client.revoke("v1", "C", "x") == Unclear("network-error")
    with pytest.raises(ProviderUnavailable, match="network-error"):
        await client.batches()
    await client.aclose()


async def test_only_the_providers_not_found_means_never_issued(scripted: Scripted) -> None:
    scripted.reply = lambda *_: (404, b'{"error": "not-found"}')
    client = ProviderClient(scripted.url, KEY)
    assert await client.find_coupon("r1") is None
    assert await client.find_redemption("d1") is None
    scripted.reply = lambda *_: (404, b'{"error": "no-route"}')
    assert await client.find_coupon("r1") == Unclear("http-404")
    await client.aclose()


async def test_a_listing_whose_cursor_comes_back_raises(scripted: Scripted) -> None:
    scripted.reply = lambda *_: (200, b'{"items": [], "next_cursor": "again"}')
    client = ProviderClient(scripted.url, KEY)
    with pytest.raises(ProviderUnavailable, match="twice"):
        await client.batches()
    scripted.reply = lambda *_: (200, b'{"items": [{"id": 1}], "next_cursor": null}')
    with pytest.raises(ProviderUnavailable, match="id"):
        await client.batches()
    await client.aclose()


async def test_calls_share_one_connection_and_carry_the_credentials(scripted: Scripted) -> None:
    scripted.reply = lambda *_: (404, b'{"error": "not-found"}')
    client = ProviderClient(scripted.url + "/", KEY)
    for i in range(3):
        assert await client.find_coupon(f"r/{i}") is None
    await client.aclose()
    assert {r[4] for r in scripted.received} == {scripted.received[0][4]}
    assert [r[1] for r in scripted.received] == [f"/v1/coupons/r%2F{i}" for i in range(3)]
    assert {r[2]["authorization"] for r in scripted.received} == {f"Bearer {KEY}"}


# -- webhooks from the fake -----------------------------------------------------------------


def _events(scripted: Scripted) -> list[tuple[dict[str, str], bytes]]:
    with scripted.lock:
        return [(r[2], r[3]) for r in scripted.received]


async def test_issued_coupons_and_batch_changes_are_called_back_signed(
    scripted: Scripted,
) -> None:
    with FakeProvider(credentials=KEY, webhook_url=scripted.url, webhook_secret=SECRET) as fake:
        fake.add_batch("B1", stock=1)
        client = ProviderClient(fake.base_url, KEY)
        answer = await client.issue("r1", "B1", "u")
        await client.aclose()
        assert isinstance(answer, Done)
        # The last coupon also exhausts the batch.
        deliveries = await asyncio.to_thread(fake.wait_for_deliveries, 2)
        fake.set_batch("B1", state="stopped", stock=0)
        deliveries = await asyncio.to_thread(fake.wait_for_deliveries, 3)
    assert [d.status for d in deliveries] == [204, 204, 204]
    received = _events(scripted)
    for headers, body in received:
        verify(SECRET, headers, body)
    by_type = {json.loads(b)["type"]: json.loads(b)["data"] for _, b in received}
    assert parse_coupon(by_type["coupon.issued"]) == answer.coupon
    assert parse_batch(by_type["batch.updated"]).state in {"exhausted", "stopped"}
    assert [json.loads(b)["data"].get("state") for _, b in received][-1] == "stopped"
    with pytest.raises(BadSignature):
        verify("whsec_d3Jvbmc=", received[0][0], received[0][1])


async def test_duplicate_and_late_callbacks_and_their_recorded_statuses(
    scripted: Scripted,
) -> None:
    scripted.reply = lambda *_: (500, b"")
    with FakeProvider(
        credentials=KEY,
        webhook_url=scripted.url,
        webhook_secret=SECRET,
        duplicate_callbacks=True,
        callback_delay=1.0,
    ) as fake:
        fake.add_batch("B1", stock=5)
        client = ProviderClient(fake.base_url, KEY)
        started = time.monotonic()
        assert isinstance(await client.issue("r1", "B1", "u"), Done)
        assert time.monotonic() - started < 1.0, "the answer waits for no callback"
        await client.aclose()
        assert fake.deliveries() == []
        deliveries = await asyncio.to_thread(fake.wait_for_deliveries, 2)
    assert [d.status for d in deliveries] == [500, 500]
    fake.set_batch("B1", state="paused")  # after the stop: no webhook, no error
    assert deliveries[0].msg_id == deliveries[1].msg_id
    assert deliveries[0].body == deliveries[1].body
    for headers, body in _events(scripted):
        verify(SECRET, headers, body)


async def test_an_issue_that_failed_at_the_provider_is_called_back(scripted: Scripted) -> None:
    with FakeProvider(
        credentials=KEY, webhook_url=scripted.url, webhook_secret=SECRET, failure_callbacks=True
    ) as fake:
        fake.add_batch("B1", stock=5)
        fake.set_faults(fail_ratio=1.0, endpoints={"issue"})
        client = ProviderClient(fake.base_url, KEY)
        assert await client.issue("r1", "B1", "u") == Unclear("http-503")
        await client.aclose()
        await asyncio.to_thread(fake.wait_for_deliveries, 1)
    [(headers, body)] = _events(scripted)
    verify(SECRET, headers, body)
    assert json.loads(body) == {
        "type": "coupon.failed",
        "data": {"request_no": "r1", "reason": "provider-error"},
    }
    assert fake.issued == 0


def test_the_fakes_signature_is_the_standard_one() -> None:
    body = b'{"test": 2432232314}'
    assert webhook_signature(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


# -- the fake's own lifecycle ---------------------------------------------------------------


async def test_stopping_the_fake_is_bounded_with_a_call_hanging() -> None:
    fake = FakeProvider(credentials=KEY)
    await asyncio.to_thread(fake.start)
    fake.add_batch("B1", stock=3)
    fake.set_faults(timeout_ratio=1.0, hang_seconds=120)
    client = ProviderClient(fake.base_url, KEY, timeout=60)
    hanging = asyncio.create_task(client.issue("r1", "B1", "u"))
    await asyncio.to_thread(_wait, lambda: fake.issued == 1)
    started = time.monotonic()
    await asyncio.to_thread(fake.stop)
    assert time.monotonic() - started < 5
    answer = await asyncio.wait_for(hanging, 5)
    assert isinstance(answer, Done | Unclear)
    assert await client.issue("r2", "B1", "u") == Unclear("connect-error")
    await client.aclose()


def test_the_fake_is_a_sync_and_an_async_context_manager() -> None:
    async def use() -> int:
        async with FakeProvider(credentials=KEY) as fake:
            async with httpx.AsyncClient() as raw:
                response = await raw.get(
                    f"{fake.base_url}/v1/batches", headers={"authorization": f"Bearer {KEY}"}
                )
            return response.status_code

    assert asyncio.run(use()) == 200
    with FakeProvider() as fake:
        assert httpx.get(f"{fake.base_url}/v1/batches").status_code == 401
