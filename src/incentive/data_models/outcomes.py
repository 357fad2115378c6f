"""The delivery ledger's outcome statements (``sync.deliver_due`` records a round with them).

Each is executed once for all the rows of its kind in a round (executemany), with the
parameters ``o_target``, ``o_key``, ``o_hash`` (the hash claimed), ``o_attempts``, ``o_error``,
``o_now``, ``o_leased`` (the lease the claim set) and, for a retry, ``o_next``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from sqlalchemy import Table, bindparam, update

from incentive.data_models.models import Delivery

_DELIVERIES = cast(Table, Delivery.__table__)


def _outcome_update(values: Mapping[str, Any]) -> Any:
    """One statement per kind of outcome, executed for all its rows (executemany): the row's
    own outcome only if it still wants the hash claimed and is still pending."""
    d = _DELIVERIES.c
    return (
        update(_DELIVERIES)
        .where(
            d.target_id == bindparam("o_target"),
            d.record_key == bindparam("o_key"),
            d.hash == bindparam("o_hash"),
            d.state == "pending",
        )
        .values(
            attempts=bindparam("o_attempts"),
            last_error=bindparam("o_error"),
            updated_at=bindparam("o_now"),
            **values,
        )
    )


OUTCOMES = {
    "delivered": _outcome_update({"state": "delivered", "delivered_hash": bindparam("o_hash")}),
    "dead": _outcome_update({"state": "dead"}),
    "retried": _outcome_update({"next_attempt_at": bindparam("o_next")}),
}
# A row changed while we wrote it (it kept waiting on our lease, see sync._want; so its outcome
# above matched nothing): due now.
_d = _DELIVERIES.c
CHANGED_MEANWHILE = (
    update(_DELIVERIES)
    .where(
        _d.target_id == bindparam("o_target"),
        _d.record_key == bindparam("o_key"),
        _d.state == "pending",
        _d.hash != bindparam("o_hash"),
        _d.next_attempt_at == bindparam("o_leased"),
    )
    .values(next_attempt_at=bindparam("o_now"), updated_at=bindparam("o_now"))
)
