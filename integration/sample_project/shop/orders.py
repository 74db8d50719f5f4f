"""Order handling that reports what it does as events, through any evcore transport."""

from __future__ import annotations

from evcore import Dispatcher


class OrderService:
    def __init__(self, events_url: str, hostname: str = "shop@web") -> None:
        self.dispatcher = Dispatcher(events_url, hostname=hostname)
        self.dispatcher.send("worker-online", freq=60.0)

    def place(self, order_id: str, items: list[str]) -> int:
        self.dispatcher.send("order-received", order=order_id, items=len(items))
        if not items:
            self.dispatcher.send("order-rejected", order=order_id, reason="empty")
            raise ValueError("an order needs items")
        self.dispatcher.send("order-accepted", order=order_id, items=len(items))
        return len(items)

    def close(self) -> None:
        self.dispatcher.send("worker-offline")
        self.dispatcher.close()
