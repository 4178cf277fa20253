"""Paper trading: executes approved rebalance signals as fills, closing the monitor's loop.

Two layers, like the rest of the project:

* `PaperTrader` is pure (no I/O, no wall clock): prices and signal messages in, fill
  documents (schemas/fills.v1) out. A signal executes once, at the latest price seen for
  each instrument, at the newest market time seen (or the signal's own time if later).
* `run_paper_trader` / `paper_trade_command` are the Kafka shell: they read `prices` and
  `rebalance-signals` and produce the fills to `fills`, where the worker applies them
  like any other execution. `monitor simulate --execute` wires the same `PaperTrader` to
  the simulator's own prices instead (see monitor/simulate.py).

Fill ids are deterministic (`paper-<signal_id>-<instrument_id>`), and the worker applies a
fill_id once, so a restarted paper trader that re-reads and re-executes old signals from
the beginning of the topic changes nothing.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping
from typing import Any

import click
import orjson
import structlog

from monitor.contract import ContractError, validate
from monitor.engine.model import Micros, Price, Rejected, format_ts, parse_ts
from monitor.ops.config import Settings
from monitor.stream.codec import decode_price

log = structlog.get_logger("monitor.paper")

FILL_ID_PREFIX = "paper-"
TRADEABLE = frozenset({"AUTO_APPROVED", "APPROVED"})
# Final states: a signal seen in one of these is never executed, even if an approval
# for it arrives later (a late approval of a superseded proposal must not trade).
CLOSED = frozenset({"SUPERSEDED", "REJECTED", "EXPIRED"})


class PaperTrader:
    """Turns tradeable rebalance signals into fills at the current market; each signal once."""

    def __init__(self) -> None:
        self._prices: dict[str, tuple[float, Micros]] = {}  # instrument -> (price, ts)
        self.market_ts: Micros | None = None  # newest market event time seen
        self._finished: set[str] = set()  # signal ids executed or closed: never again

    def on_price(self, instrument_id: str, price: float, ts_micros: Micros) -> None:
        """Remember the price if it is not older than the one held (partitions may lag)."""
        held = self._prices.get(instrument_id)
        if held is None or ts_micros >= held[1]:
            self._prices[instrument_id] = (price, ts_micros)
        if self.market_ts is None or ts_micros > self.market_ts:
            self.market_ts = ts_micros

    def price(self, instrument_id: str) -> float | None:
        """The latest price seen for an instrument, if any."""
        held = self._prices.get(instrument_id)
        return held[0] if held else None

    def on_signal(self, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Fills for a tradeable signal not executed before; nothing for any other message."""
        signal_id, state = doc["signal_id"], doc["state"]
        if signal_id in self._finished:
            return []  # a re-delivery, a later state of an executed signal, or closed before
        if state in CLOSED:
            self._finished.add(signal_id)
            return []
        if state not in TRADEABLE:
            return []  # PENDING_APPROVAL, WITHHELD: maybe later
        self._finished.add(signal_id)
        ts = parse_ts(doc["event_ts"])
        if self.market_ts is not None:
            ts = max(ts, self.market_ts)  # never before what the market has already shown
        fills: list[dict[str, Any]] = []
        used: set[str] = set()
        for trade in doc["trades"]:
            if trade["quantity"] <= 0:
                continue  # fully deferred: nothing to execute now
            iid = trade["instrument_id"]
            fill_id = f"{FILL_ID_PREFIX}{signal_id}-{iid}"
            if fill_id in used:  # one instrument twice in a proposal: keep both fills
                fill_id = f"{fill_id}-{len(used)}"
            used.add(fill_id)
            price = self.price(iid)
            fills.append({
                "fill_id": fill_id, "portfolio_id": doc["portfolio_id"], "instrument_id": iid,
                "side": trade["side"], "quantity": trade["quantity"],
                "price": trade["price"] if price is None else price, "ts": format_ts(ts),
            })
        return fills


# ----- the Kafka shell ----------------------------------------------------------------------


def decode_signal(raw: bytes | None) -> dict[str, Any] | None:
    """A rebalance-signal message, or None (logged) if it breaks the contract.

    A bad message must not stop execution of the good ones after it.
    """
    try:
        doc = orjson.loads(raw or b"")
        validate("rebalance-signals", doc)
    except (orjson.JSONDecodeError, ContractError) as exc:
        log.warning("skipped an invalid rebalance signal", reason=str(exc))
        return None
    return doc


def usable_price(raw: bytes | None) -> Price | None:
    """A price message as the worker reads it, or None if it would be refused.

    The worker dead-letters bad prices; here they are simply not used.
    """
    try:
        return decode_price(raw)
    except Rejected:
        return None


def log_execution(doc: Mapping[str, Any], fills: list[dict[str, Any]]) -> None:
    """One log line per executed signal."""
    log.info("paper trade executed", signal_id=doc["signal_id"], portfolio_id=doc["portfolio_id"],
             state=doc["state"], fills=len(fills), ts=fills[0]["ts"] if fills else None,
             trades=[f"{f['side']} {f['quantity']:g} {f['instrument_id']} @ {f['price']:g}" for f in fills])


async def send_fills(producer: Any, settings: Settings, fills: list[dict[str, Any]]) -> None:
    """Produce fills keyed by portfolio_id and wait until the broker has them all."""
    futures = [await producer.send(settings.topic("fills"), orjson.dumps(fill),
                                   key=fill["portfolio_id"].encode()) for fill in fills]
    await asyncio.gather(*futures)


async def run_paper_trader(settings: Settings, stop: asyncio.Event | None = None) -> int:
    """Execute tradeable signals from `rebalance-signals` at the prices on `prices` until `stop`.

    Reads both topics from the beginning (no consumer group): the price book is rebuilt,
    and signals executed before a restart produce the same fill ids again, which the worker
    ignores. Returns the number of fills produced.
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from monitor.stream.topics import ensure_topics

    await ensure_topics(settings, ("prices", "fills", "rebalance-signals"))
    prices_topic = settings.topic("prices")
    consumer = AIOKafkaConsumer(prices_topic, settings.topic("rebalance-signals"),
                                bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                **settings.kafka_security.client_options())
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5,
                                **settings.kafka_security.client_options())
    await consumer.start()
    await producer.start()
    log.info("paper trader started", prices=prices_topic, signals=settings.topic("rebalance-signals"),
             fills=settings.topic("fills"))
    trader, produced = PaperTrader(), 0
    try:
        while stop is None or not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=5_000)
            records = [r for part in batch.values() for r in part]
            # prices first: a signal in the same batch executes at the freshest price
            for record in records:
                if record.topic == prices_topic and (price := usable_price(record.value)) is not None:
                    trader.on_price(price.instrument_id, price.price, price.ts)
            for record in records:
                if record.topic != prices_topic and (doc := decode_signal(record.value)) is not None:
                    fills = trader.on_signal(doc)
                    if fills:
                        await send_fills(producer, settings, fills)
                        produced += len(fills)
                        log_execution(doc, fills)
    finally:
        await producer.stop()
        await consumer.stop()
    return produced


@click.command("paper-trade")
@click.option("--bootstrap", "bootstrap_servers", help="Kafka bootstrap servers [env KAFKA_BOOTSTRAP_SERVERS]")
@click.option("--topic-prefix", help="Prefix of every topic name [env MONITOR_TOPIC_PREFIX]")
@click.option("--log-format", type=click.Choice(["console", "json"]), help="[env MONITOR_LOG_FORMAT]")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="[env MONITOR_LOG_LEVEL]")
def paper_trade_command(**flags: str | None) -> None:
    """Execute approved rebalance signals as paper fills at the latest prices, until Ctrl-C."""
    from monitor.ops.logging import configure

    settings = Settings.from_env(**flags)
    configure(settings.log_format, settings.log_level)
    produced = asyncio.run(_run_until_signal(settings))
    click.echo(f"paper-trade: {produced} fills produced")


async def _run_until_signal(settings: Settings) -> int:
    """`run_paper_trader`, stopped cleanly by SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await run_paper_trader(settings, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
