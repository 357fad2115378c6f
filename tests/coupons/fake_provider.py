"""A coupon provider on loopback speaking "Incentive coupon provider API v1", for tests.

A real HTTP server (Starlette under uvicorn) on its own thread and event loop, so a test of
any kind (sync or async) can use it and the client under test meets real sockets, real
timeouts and real connection errors:

    with FakeProvider(credentials="k") as provider:
        provider.add_batch("B1", stock=10)
        ... ProviderClient(provider.base_url, "k") ...
        assert provider.issued == 1

It is deliberately not idempotent unless asked (`idempotent=True`): every accepted
`POST /v1/coupons` issues a fresh code, so a client that sends a request twice shows in the
counts (`issued`, `issued_for`, `calls`); a repeated redemption meets `already-redeemed`.
Faults are injected per call (`set_faults`: latency, 503 without work, or work then a hang),
at any time, from any thread; `stop()` ends hangs and returns within seconds. Webhooks
(`webhook_url` + `webhook_secret`) leave from background tasks, optionally late or twice, and
each POST's outcome is kept in `deliveries()`. It knows nothing of the client's code: its
JSON and its webhook signatures are written here, so a client mistake is not mirrored.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from types import TracebackType
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ENDPOINTS = frozenset(
    {"batches", "issue", "find_coupon", "coupons", "revoke", "redeem", "find_redemption", "reverse"}
)
_STOP_SECONDS = 10.0

Outcome = tuple[int, dict[str, Any]]


@dataclass(frozen=True)
class Faults:
    """What goes wrong, per call. `endpoints=None` means every endpoint."""

    latency: float = 0.0  # seconds added before each call is handled
    fail_ratio: float = 0.0  # share of calls answered 503 having done nothing
    timeout_ratio: float = 0.0  # share of calls that do the work, then hang `hang_seconds`
    hang_seconds: float = 30.0
    endpoints: frozenset[str] | None = None


@dataclass
class FakeBatch:
    id: str
    name: str
    state: str
    stock: int
    face_value_fen: int
    min_spend_fen: int
    valid_from: datetime | None
    valid_until: datetime | None


@dataclass
class FakeCoupon:
    request_no: str
    code: str
    batch_id: str
    customer: str
    state: str
    valid_until: datetime | None
    issued_at: datetime


@dataclass
class FakeRedemption:
    request_no: str
    code: str
    batch_id: str
    merchant: str
    amount_fen: int
    state: str = "redeemed"


@dataclass(frozen=True)
class Delivery:
    """One webhook POST the fake made: its status, or the error that stopped it."""

    type: str
    msg_id: str
    body: bytes
    status: int | None
    error: str = ""


@dataclass
class _State:
    batches: dict[str, FakeBatch] = field(default_factory=dict)
    coupons: list[FakeCoupon] = field(default_factory=list)
    redemptions: dict[str, FakeRedemption] = field(default_factory=dict)
    issued_for: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0  # requests being handled now (a hanging one included)
    redeemed: int = 0
    reversed: int = 0
    revoked: int = 0
    deliveries: list[Delivery] = field(default_factory=list)


def webhook_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks v1, written independently of `incentive.kit.webhooks.sign`."""
    key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
    mac = hmac.new(key, msg_id.encode() + b"." + str(timestamp).encode() + b"." + body, "sha256")
    return "v1," + base64.b64encode(mac.digest()).decode()


def _ts(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class FakeProvider:
    def __init__(
        self,
        *,
        credentials: str = "fake-credentials",
        idempotent: bool = False,
        page_size: int = 100,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        duplicate_callbacks: bool = False,
        callback_delay: float = 0.0,
        failure_callbacks: bool = False,
        faults: Faults = Faults(),  # noqa: B008 - frozen, so one shared default is safe
        seed: int = 0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.credentials = credentials
        self.idempotent = idempotent
        self.page_size = page_size
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.duplicate_callbacks = duplicate_callbacks
        self.callback_delay = callback_delay
        self.failure_callbacks = failure_callbacks  # `coupon.failed` after an injected 503
        self.clock = clock
        self._faults = faults
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._delivered = threading.Condition(self._lock)
        self._state = _State()
        self._sequence = 0
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sender: httpx.AsyncClient | None = None
        self.base_url = ""

    # -- control, from any thread ------------------------------------------------------------

    def set_faults(self, *, seed: int | None = None, **changes: Any) -> Faults:
        """Change some fault knobs (the rest stay); `seed` restarts the random draws."""
        unknown = set(changes) - set(Faults.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown fault knobs {sorted(unknown)}")
        if changes.get("endpoints") is not None:
            changes["endpoints"] = frozenset(changes["endpoints"])
            if not changes["endpoints"] <= ENDPOINTS:
                raise ValueError(f"endpoints must be among {sorted(ENDPOINTS)}")
        with self._lock:
            self._faults = replace(self._faults, **changes)
            if seed is not None:
                self._random = random.Random(seed)
            return self._faults

    def add_batch(
        self,
        id: str,
        stock: int,
        *,
        face_value_fen: int = 1000,
        min_spend_fen: int = 0,
        state: str = "running",
        name: str | None = None,
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
    ) -> None:
        batch = FakeBatch(
            id, name or f"batch {id}", state, stock, face_value_fen, min_spend_fen, valid_from,
            valid_until,
        )  # fmt: skip
        with self._lock:
            self._state.batches[id] = batch

    def set_batch(self, id: str, *, state: str | None = None, stock: int | None = None) -> None:
        """Change a batch as the provider's operator would; sends `batch.updated`."""
        with self._lock:
            batch = self._state.batches[id]
            batch.state = state if state is not None else batch.state
            batch.stock = stock if stock is not None else batch.stock
            data = self._batch_json(batch)
        loop = self._loop
        if loop is not None:
            try:  # the coroutine is made in the loop, so a stopped fake leaves none unawaited
                loop.call_soon_threadsafe(lambda: self._spawn(self._deliver("batch.updated", data)))
            except RuntimeError:  # stopped meanwhile: nobody is listening for webhooks
                pass

    @property
    def issued(self) -> int:
        with self._lock:
            return len(self._state.coupons)

    def issued_for(self, request_no: str) -> int:
        with self._lock:
            return self._state.issued_for.get(request_no, 0)

    @property
    def redeemed(self) -> int:
        with self._lock:
            return self._state.redeemed

    @property
    def reversed(self) -> int:
        with self._lock:
            return self._state.reversed

    @property
    def revoked(self) -> int:
        with self._lock:
            return self._state.revoked

    def calls(self, endpoint: str) -> int:
        """Requests that reached this endpoint, answered or not (401 and 503 included)."""
        with self._lock:
            return self._state.calls.get(endpoint, 0)

    def idle(self) -> bool:
        """No request is being handled now."""
        with self._lock:
            return self._state.in_flight == 0

    def coupons(self) -> list[FakeCoupon]:
        with self._lock:
            return [replace(c) for c in self._state.coupons]

    def batch(self, id: str) -> FakeBatch:
        with self._lock:
            return replace(self._state.batches[id])

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._state.deliveries)

    def wait_for_deliveries(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        """Block until `count` webhook POSTs have ended (any outcome); raise if they do not."""
        with self._delivered:
            if not self._delivered.wait_for(lambda: len(self._state.deliveries) >= count, timeout):
                raise TimeoutError(f"{len(self._state.deliveries)} of {count} webhooks delivered")
            return list(self._state.deliveries)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeProvider:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # uvicorn writes an answer's head and body apart; with Nagle on, the client's delayed
        # ACK adds 40 ms to every call on a kept-alive connection. Accepted sockets inherit it.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(
            self._app(), log_level="error", access_log=False, lifespan="off",
            timeout_graceful_shutdown=2,
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._serve(sock))
            except BaseException as exc:  # reported to start() instead of dying unseen
                failure.append(exc)

        self._thread = threading.Thread(target=run, name="fake-provider", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _STOP_SECONDS
        while not self._server.started:
            if failure or not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError(f"fake provider did not start: {failure!r}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop within seconds even with calls hanging: hangs end, then uvicorn is forced."""
        thread, server, loop = self._thread, self._server, self._loop
        if thread is None or server is None:
            return
        self._thread, self._loop = None, None
        server.should_exit = True
        if loop is not None and self._stopping is not None:
            try:
                loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:  # the loop is already closed
                pass
        thread.join(_STOP_SECONDS)
        if thread.is_alive():
            server.force_exit = True
            thread.join(_STOP_SECONDS / 2)
        if thread.is_alive():
            raise RuntimeError("fake provider did not stop")

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> FakeProvider:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    async def _serve(self, sock: socket.socket) -> None:
        assert self._server is not None
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._sender = httpx.AsyncClient(timeout=5.0)
        try:
            await self._server.serve(sockets=[sock])
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._sender.aclose()
            sock.close()

    # -- the HTTP side -----------------------------------------------------------------------

    def _app(self) -> Starlette:
        def route(path: str, name: str, handler: Callable[..., Outcome], method: str) -> Route:
            async def endpoint(request: Request) -> Response:
                return await self._handle(name, request, handler)

            return Route(path, endpoint, methods=[method])

        return Starlette(
            routes=[
                route("/v1/batches", "batches", self._list_batches, "GET"),
                route("/v1/coupons", "issue", self._issue, "POST"),
                route("/v1/coupons", "coupons", self._list_coupons, "GET"),
                route("/v1/coupons/{request_no}", "find_coupon", self._find_coupon, "GET"),
                route("/v1/coupons/{code}/revocation", "revoke", self._revoke, "POST"),
                route("/v1/redemptions", "redeem", self._redeem, "POST"),
                route("/v1/redemptions/{request_no}", "find_redemption", self._find_red, "GET"),
                route("/v1/redemptions/{request_no}/reversal", "reverse", self._reverse, "POST"),
            ]
        )

    async def _handle(
        self, name: str, request: Request, handler: Callable[..., Outcome]
    ) -> Response:
        with self._lock:
            self._state.in_flight += 1
        try:
            return await self._answer(name, request, handler)
        finally:
            with self._lock:
                self._state.in_flight -= 1

    async def _answer(
        self, name: str, request: Request, handler: Callable[..., Outcome]
    ) -> Response:
        with self._lock:
            self._state.calls[name] = self._state.calls.get(name, 0) + 1
            faults = self._faults
            applies = faults.endpoints is None or name in faults.endpoints
            fail = applies and self._random.random() < faults.fail_ratio
            hang = applies and not fail and self._random.random() < faults.timeout_ratio
        if request.headers.get("authorization") != f"Bearer {self.credentials}":
            return JSONResponse({"error": "unauthorized", "message": "bad credentials"}, 401)
        if applies and faults.latency:
            await self._pause(faults.latency)
        if fail:
            if name == "issue" and self.failure_callbacks:
                await self._tell_failed(request)
            return JSONResponse({"error": "unavailable", "message": "injected"}, 503)
        body: dict[str, Any] = {}
        if request.method == "POST":
            try:
                parsed = json.loads(await request.body())
            except ValueError:
                return JSONResponse({"error": "bad-request", "message": "not JSON"}, 400)
            if not isinstance(parsed, dict):
                return JSONResponse({"error": "bad-request", "message": "not an object"}, 400)
            body = parsed
        webhooks: list[tuple[str, dict[str, Any]]] = []
        with self._lock:
            try:
                status, answer = handler(
                    body=body, query=request.query_params, path=request.path_params,
                    webhooks=webhooks,
                )  # fmt: skip
            except (KeyError, TypeError, ValueError) as exc:
                status, answer = 400, {"error": "bad-request", "message": str(exc)}
        for kind, data in webhooks:
            self._spawn(self._deliver(kind, data))
        if hang:
            await self._pause(faults.hang_seconds)
        return JSONResponse(answer, status)

    async def _tell_failed(self, request: Request) -> None:
        try:
            request_no = json.loads(await request.body())["request_no"]
        except (ValueError, KeyError, TypeError):
            return
        failed = {"request_no": request_no, "reason": "provider-error"}
        self._spawn(self._deliver("coupon.failed", failed))

    async def _pause(self, seconds: float) -> None:
        # Bounded by stop(): a hanging call must never keep the server from stopping.
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, kind: str, data: dict[str, Any]) -> None:
        url, secret = self.webhook_url, self.webhook_secret
        if url is None or secret is None or self._sender is None:
            return
        if self.callback_delay:
            await self._pause(self.callback_delay)
        if self._stopping is not None and self._stopping.is_set():
            return
        body = json.dumps({"type": kind, "data": data}).encode()
        msg_id = f"msg_{uuid.uuid4().hex}"
        # A duplicate is a redelivery: same id, same body, its own timestamp and signature.
        for _ in range(2 if self.duplicate_callbacks else 1):
            stamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": webhook_signature(secret, msg_id, stamp, body),
            }
            try:
                response = await self._sender.post(url, content=body, headers=headers)
                delivery = Delivery(kind, msg_id, body, response.status_code)
            except httpx.HTTPError as exc:
                delivery = Delivery(kind, msg_id, body, None, type(exc).__name__)
            with self._delivered:
                self._state.deliveries.append(delivery)
                self._delivered.notify_all()

    # -- the protocol (each runs under the lock) ---------------------------------------------

    def _page(self, rows: list[dict[str, Any]], cursor: str | None) -> Outcome:
        start = 0
        if cursor is not None:
            if not cursor.startswith("at-") or not cursor[3:].isdigit():
                return 400, {"error": "bad-cursor", "message": "unknown cursor"}
            start = int(cursor[3:])
        end = start + self.page_size
        following = f"at-{end}" if end < len(rows) else None
        return 200, {"items": rows[start:end], "next_cursor": following}

    def _list_batches(self, query: Any, **_: Any) -> Outcome:
        rows = [self._batch_json(b) for b in self._state.batches.values()]
        return self._page(rows, query.get("cursor"))

    def _issue(self, body: dict[str, Any], webhooks: list[Any], **_: Any) -> Outcome:
        request_no, batch_id = _text(body, "request_no"), _text(body, "batch_id")
        _text(body, "customer")
        earlier = [c for c in self._state.coupons if c.request_no == request_no]
        if self.idempotent and earlier:
            return 200, self._coupon_json(earlier[0])
        batch = self._state.batches.get(batch_id)
        if batch is None:
            return 409, {"error": "unknown-batch", "message": f"no batch {batch_id}"}
        if batch.stock <= 0 or batch.state == "exhausted":
            return 409, {"error": "out-of-stock", "message": f"batch {batch_id} is out of stock"}
        if batch.state != "running":
            return 409, {"error": "batch-not-running", "message": f"batch is {batch.state}"}
        self._sequence += 1
        coupon = FakeCoupon(
            request_no, f"FAKE{self._sequence:08d}", batch_id, body["customer"], "issued",
            batch.valid_until, self.clock(),
        )  # fmt: skip
        self._state.coupons.append(coupon)
        self._state.issued_for[request_no] = self._state.issued_for.get(request_no, 0) + 1
        batch.stock -= 1
        webhooks.append(("coupon.issued", self._coupon_json(coupon)))
        if batch.stock == 0:
            batch.state = "exhausted"
            webhooks.append(("batch.updated", self._batch_json(batch)))
        return 201, self._coupon_json(coupon)

    def _find_coupon(self, path: dict[str, str], **_: Any) -> Outcome:
        for coupon in self._state.coupons:
            if coupon.request_no == path["request_no"]:
                return 200, self._coupon_json(coupon)
        return 404, {"error": "not-found", "message": "no coupon under that request_no"}

    def _list_coupons(self, query: Any, **_: Any) -> Outcome:
        day = date.fromisoformat(query["date"]) if "date" in query else None
        rows = [
            self._coupon_json(c)
            for c in self._state.coupons
            if query.get("batch_id") in (None, c.batch_id)
            and (day is None or c.issued_at.astimezone(UTC).date() == day)
        ]
        return self._page(rows, query.get("cursor"))

    def _revoke(self, path: dict[str, str], body: dict[str, Any], **_: Any) -> Outcome:
        _text(body, "request_no")
        coupon = self._by_code(path["code"])
        if coupon is None:
            return 404, {"error": "not-found", "message": "no such code"}
        if coupon.state == "redeemed":
            return 409, {"error": "already-redeemed", "message": "a redeemed coupon stays"}
        if coupon.state != "revoked":
            coupon.state = "revoked"
            self._state.revoked += 1
        return 200, self._coupon_json(coupon)

    def _redeem(self, body: dict[str, Any], **_: Any) -> Outcome:
        request_no, code = _text(body, "request_no"), _text(body, "code")
        merchant, amount_fen = _text(body, "merchant"), body["amount_fen"]
        if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or amount_fen < 0:
            raise ValueError("amount_fen must be a non-negative integer")
        earlier = self._state.redemptions.get(request_no)
        if self.idempotent and earlier is not None:
            return 200, self._redemption_json(earlier)
        coupon = self._by_code(code)
        if coupon is None:
            return 409, {"error": "unknown-code", "message": "no such code"}
        if coupon.state == "redeemed":
            return 409, {"error": "already-redeemed", "message": "used already"}
        batch = self._state.batches[coupon.batch_id]
        expired = coupon.valid_until is not None and coupon.valid_until < self.clock()
        if coupon.state != "issued" or expired or amount_fen < batch.min_spend_fen:
            return 409, {"error": "not-usable", "message": "revoked, expired or below min spend"}
        coupon.state = "redeemed"
        redemption = FakeRedemption(request_no, code, coupon.batch_id, merchant, amount_fen)
        self._state.redemptions.setdefault(request_no, redemption)
        self._state.redeemed += 1
        return 201, self._redemption_json(redemption)

    def _find_red(self, path: dict[str, str], **_: Any) -> Outcome:
        redemption = self._state.redemptions.get(path["request_no"])
        if redemption is None:
            return 404, {"error": "not-found", "message": "no redemption under that request_no"}
        return 200, self._redemption_json(redemption)

    def _reverse(self, path: dict[str, str], **_: Any) -> Outcome:
        redemption = self._state.redemptions.get(path["request_no"])
        if redemption is None:
            return 404, {"error": "not-found", "message": "no redemption under that request_no"}
        if redemption.state == "redeemed":
            redemption.state = "reversed"
            coupon = self._by_code(redemption.code)
            if coupon is not None and coupon.state == "redeemed":
                coupon.state = "issued"
            self._state.reversed += 1
        return 200, self._redemption_json(redemption)

    def _by_code(self, code: str) -> FakeCoupon | None:
        return next((c for c in self._state.coupons if c.code == code), None)

    @staticmethod
    def _batch_json(batch: FakeBatch) -> dict[str, Any]:
        return {
            "id": batch.id,
            "name": batch.name,
            "state": batch.state,
            "stock": batch.stock,
            "face_value_fen": batch.face_value_fen,
            "min_spend_fen": batch.min_spend_fen,
            "valid_from": _ts(batch.valid_from),
            "valid_until": _ts(batch.valid_until),
        }

    @staticmethod
    def _coupon_json(coupon: FakeCoupon) -> dict[str, Any]:
        return {
            "request_no": coupon.request_no,
            "code": coupon.code,
            "batch_id": coupon.batch_id,
            "state": coupon.state,
            "valid_until": _ts(coupon.valid_until),
            "issued_at": _ts(coupon.issued_at),
        }

    @staticmethod
    def _redemption_json(redemption: FakeRedemption) -> dict[str, Any]:
        return {
            "request_no": redemption.request_no,
            "code": redemption.code,
            "batch_id": redemption.batch_id,
            "state": redemption.state,
        }


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value
