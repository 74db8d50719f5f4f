from __future__ import annotations

import threading

from evcore import LamportClock


def test_celery_vectors() -> None:
    clock = LamportClock()
    assert clock.adjust(5) == 6
    assert clock.forward() == 7
    assert clock.adjust(2) == 8
    assert str(clock) == "8"
    assert repr(clock) == "<LamportClock: 8>"


def test_forward_is_thread_safe() -> None:
    clock = LamportClock()
    seen: list[list[int]] = [[] for _ in range(4)]

    def work(out: list[int]) -> None:
        for _ in range(5000):
            out.append(clock.forward())

    threads = [threading.Thread(target=work, args=(out,)) for out in seen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    values = [v for out in seen for v in out]
    assert len(set(values)) == 20000
    assert clock.value == 20000
