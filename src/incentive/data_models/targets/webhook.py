"""The webhook target: one signed JSON POST per write.

The body is ``{"model", "version", "records": [{"key", "hash", "values"}]}`` as canonical
JSON (the same rows give the same bytes), signed per Standard Webhooks
(``incentive.kit.webhooks``: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``,
HMAC-SHA256). The ``webhook-id`` is derived from the model, version, keys and hashes, so a
retry of the same rows carries the same id and the receiver can drop the second copy; the
timestamp and signature are those of each attempt. The receiver upserts on ``key``.

A 2xx answer is done. A 408 or 429, a 5xx, a timeout or a connection error is
``TargetUnavailable`` (retry later); any other answer (a 4xx, a redirect) is
``TargetRefused``. All rows of one write must be of one model and version.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from incentive.data_models.records import TargetRefused, TargetRow, canonical_json, digest
from incentive.data_models.targets import TargetUnavailable, WebhookTarget
from incentive.kit import webhooks

_RETRYABLE = {408, 429}


def body_of(rows: Sequence[TargetRow]) -> bytes:
    first = rows[0]
    if any((r.model_id, r.version) != (first.model_id, first.version) for r in rows):
        raise ValueError("a webhook write carries the rows of one model version")
    return canonical_json(
        {
            "model": first.model_id,
            "version": first.version,
            "records": [{"key": r.key, "hash": r.hash, "values": r.values} for r in rows],
        }
    ).encode()


def message_id(rows: Sequence[TargetRow]) -> str:
    """The same rows (keys and hashes, in order) are the same message."""
    first = rows[0]
    pairs = [[r.key, r.hash] for r in rows]
    return "msg_" + digest(canonical_json([first.model_id, first.version, pairs]))[:32]


class WebhookWriter:
    """POSTs ``TargetRow`` s to ``config.url`` (see the module's docstring)."""

    def __init__(self, config: WebhookTarget) -> None:
        self.config = config
        self._client: httpx.AsyncClient | None = None

    async def write(self, rows: Sequence[TargetRow]) -> None:
        if not rows:
            return
        body = body_of(rows)
        headers = {"content-type": "application/json"}
        headers |= webhooks.headers(self.config.secret.get_secret_value(), message_id(rows), body)
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.config.timeout_seconds)
        where = self.config.redacted()
        try:
            answer = await self._client.post(self.config.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TargetUnavailable(
                f"{where}: no answer within {self.config.timeout_seconds} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise TargetUnavailable(f"{where}: {type(exc).__name__}: {exc}"[:500]) from exc
        status = answer.status_code
        if 200 <= status < 300:
            return
        reason = f"{where} answered {status}: {answer.text[:200]}"
        if status >= 500 or status in _RETRYABLE:
            raise TargetUnavailable(reason)
        raise TargetRefused(reason)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
