"""Property tests for the money arithmetic of batch aggregation (integers only)."""

from __future__ import annotations

import random
from collections import defaultdict

from hypothesis import given
from hypothesis import strategies as st

from incentive.ledger.service import MAX_AMOUNT, TransferItem, aggregate_deltas

_items = st.lists(
    st.tuples(st.integers(1, 20), st.integers(1, 20), st.integers(1, MAX_AMOUNT)).filter(
        lambda t: t[0] != t[1]
    ),
    max_size=200,
).map(lambda rows: [TransferItem(f"k{i}", d, c, a, "x") for i, (d, c, a) in enumerate(rows)])


@given(_items)
def test_deltas_sum_to_zero_and_are_exact_integers(items: list[TransferItem]) -> None:
    deltas = aggregate_deltas(items)
    assert sum(deltas.values()) == 0
    assert all(type(v) is int for v in deltas.values())


@given(_items)
def test_delta_is_credits_minus_debits(items: list[TransferItem]) -> None:
    credits: dict[int, int] = defaultdict(int)
    debits: dict[int, int] = defaultdict(int)
    for it in items:
        credits[it.credit_account_id] += it.amount
        debits[it.debit_account_id] += it.amount
    deltas = aggregate_deltas(items)
    assert set(deltas) == set(credits) | set(debits)
    for account, delta in deltas.items():
        assert delta == credits[account] - debits[account]


@given(_items, st.randoms(use_true_random=False))
def test_order_does_not_matter(items: list[TransferItem], rnd: random.Random) -> None:
    shuffled = list(items)
    rnd.shuffle(shuffled)
    assert aggregate_deltas(shuffled) == aggregate_deltas(items)


@given(_items, _items)
def test_splitting_a_batch_adds_up(left: list[TransferItem], right: list[TransferItem]) -> None:
    whole = aggregate_deltas(left + right)
    a, b = aggregate_deltas(left), aggregate_deltas(right)
    for account in set(a) | set(b):
        assert whole[account] == a.get(account, 0) + b.get(account, 0)


@given(_items)
def test_sequential_application_equals_net_application(items: list[TransferItem]) -> None:
    balances: dict[int, int] = defaultdict(int)
    for it in items:
        balances[it.debit_account_id] -= it.amount
        balances[it.credit_account_id] += it.amount
    assert dict(balances) == aggregate_deltas(items)
