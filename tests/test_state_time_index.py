"""TimeIndex: entries in order or not, bounded, read back sorted (against a plain model)."""

from __future__ import annotations

import random

import pytest

from evcore.state.index import TimeEntry, TimeIndex


def model_add(model: list[TimeEntry], entry: TimeEntry, limit: int | None) -> int:
    """The reference: a sorted list that drops its oldest entry when full."""
    dropped = 0
    if limit and len(model) >= limit:
        model.pop(0)
        dropped = 1
    model.append(entry)
    model.sort()
    return dropped


@pytest.mark.parametrize("limit", [None, 1, 7, 100])
@pytest.mark.parametrize("seed", range(5))
def test_matches_a_sorted_bounded_list(limit: int | None, seed: int) -> None:
    rnd = random.Random(seed)
    index = TimeIndex(limit)
    model: list[TimeEntry] = []
    dropped = 0
    for seq in range(600):
        # Mostly increasing clocks, with senders that lag far behind now and then.
        clock = seq if rnd.random() < 0.7 else rnd.randint(1, max(seq, 1))
        entry: TimeEntry = (clock, f"w{rnd.randint(1, 3)}", seq, f"u{seq}")
        index.add(entry)
        dropped += model_add(model, entry, limit)
        assert len(index) == len(model)
        if rnd.random() < 0.05:
            assert index.entries() == model
    assert index.entries() == model
    assert index.dropped == dropped


def test_replace_forgets_out_of_order_entries() -> None:
    index = TimeIndex(None)
    index.add((5, "a", 1, "u1"))
    index.add((2, "a", 2, "u2"))
    index.replace([(9, "b", 3, "u3")])
    assert index.entries() == [(9, "b", 3, "u3")]
    assert len(index) == 1
