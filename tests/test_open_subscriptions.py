"""The adapters' shared record of open subscriptions: closing a transport closes them all,
and a subscription that arrives while it closes is refused instead of left open (every
adapter's own behaviour is checked by the conformance suite)."""

from __future__ import annotations

import threading
from typing import Any

from evcore_adapter_helpers.subscriptions import OpenSubscriptions


class Sub:
    def __init__(self, registry: OpenSubscriptions[Any]) -> None:
        self.registry = registry
        self.closed = 0

    def close(self) -> None:
        self.closed += 1
        self.registry.forget(self)


def test_close_hands_back_the_open_ones_and_refuses_new_ones() -> None:
    registry: OpenSubscriptions[Sub] = OpenSubscriptions()
    first, second, gone = Sub(registry), Sub(registry), Sub(registry)
    assert registry.add(first) and registry.add(second) and registry.add(gone)
    gone.close()
    assert len(registry) == 2
    assert set(registry.close()) == {first, second}
    assert len(registry) == 0
    assert not registry.add(Sub(registry))
    assert registry.close() == []


def test_subscribing_while_closing_leaves_nothing_open() -> None:
    registry: OpenSubscriptions[Sub] = OpenSubscriptions()
    accepted: list[Sub] = []
    refused: list[Sub] = []
    start = threading.Barrier(5)

    def subscribe() -> None:
        start.wait()
        for _ in range(2000):
            sub = Sub(registry)
            (accepted if registry.add(sub) else refused).append(sub)

    threads = [threading.Thread(target=subscribe) for _ in range(4)]
    for thread in threads:
        thread.start()
    start.wait()
    for sub in registry.close():
        sub.close()
    for thread in threads:
        thread.join()
    # Everything accepted was handed back by close() and closed; the rest was refused.
    assert all(sub.closed == 1 for sub in accepted)
    assert len(accepted) + len(refused) == 8000
    assert len(registry) == 0
