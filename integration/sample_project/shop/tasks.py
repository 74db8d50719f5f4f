"""The shop's Celery tasks; their events go through evcore (``evcore.celery``)."""

from __future__ import annotations

from celery import Celery

app = Celery("shop", events="evcore.celery:Events")


@app.task(name="shop.total")
def total(prices: list[float]) -> float:
    return round(sum(prices), 2)


@app.task(name="shop.charge")
def charge(card: str) -> None:
    raise PermissionError(f"card {card} declined")
