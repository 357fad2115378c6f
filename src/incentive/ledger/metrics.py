"""Prometheus counters of the ledger. Counted when the change is written in the transaction
(a later rollback of the whole unit of work is rare and not subtracted)."""

from __future__ import annotations

from prometheus_client import Counter

TRANSFERS = Counter(
    "incentive_ledger_transfers_total", "Transfers written (single and batch)", ["asset", "mode"]
)
REFUSALS = Counter("incentive_ledger_refusals_total", "Transfers refused by the ledger", ["reason"])
