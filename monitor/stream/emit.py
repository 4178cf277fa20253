"""What leaves the worker: alert and signal events, dead letters, and their metrics. Every
record goes through the outbox (outbox.py): handed to the producer at once, its delivery awaited
with the others of its batch."""

from __future__ import annotations

import time
from typing import Any

import structlog

from monitor.engine import AlertEvent, Rejected
from monitor.engine.engine import Event
from monitor.engine.model import Micros
from monitor.ops import metrics
from monitor.ops.config import Settings
from monitor.stream.codec import MAX_REASON, dead_letter, dead_letter_key, encode
from monitor.stream.outbox import Outbox
from monitor.stream.tables import Origin

log = structlog.get_logger("monitor.worker")


def now_us() -> Micros:
    return time.time_ns() // 1_000


class Emitter:
    def __init__(self, app: Any, settings: Settings, outbox: Outbox) -> None:
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.settings = settings
        self.outbox = outbox
        self.alerts = app.topic(settings.topic("drift-alerts"), **raw)
        self.signals = app.topic(settings.topic("rebalance-signals"), **raw)
        self.dlq = app.topic(settings.topic("monitor-dlq"), **raw)

    async def events(self, events: list[Event]) -> None:
        """Alert and signal events, in the order given."""
        now = now_us()
        for event in events:
            key, value = event.portfolio_id.encode(), encode(event.to_message(now))
            if isinstance(event, AlertEvent):
                await self.outbox.send(self.alerts, key=key, value=value)
                metrics.alert_emitted(event)
                log.info("drift alert", alert_id=event.alert_id, summary=event.summary())
            else:
                await self.outbox.send(self.signals, key=key, value=value)
                metrics.SIGNALS_EMITTED.labels(event.state).inc()
                log.info("rebalance signal", signal_id=event.signal_id, summary=event.summary())

    async def dead_letter(self, origin: Origin, value: bytes | None, rejected: Rejected) -> None:
        """A refused input, with its origin and reason, to the dead-letter topic (a bounded record,
        keyed as the input was: codec.dead_letter)."""
        metrics.DLQ_MESSAGES.labels(origin.topic, rejected.code).inc()
        log.warning("dead-lettered", topic=origin.topic, partition=origin.partition, offset=origin.offset,
                    reason_code=rejected.code, reason=rejected.reason[:MAX_REASON])
        record = dead_letter(value, origin.key, self.settings.topic(origin.topic), origin.partition, origin.offset,
                             origin.timestamp_ms, rejected, now_us())
        await self.outbox.send(self.dlq, key=dead_letter_key(origin.key), value=record)
