"""What the fault tests share: a seeded fill burst, and the independent recomputations a faulted
worker is held to (positions and cash from the input topics, alert ids from `monitor replay`).

The burst: a few books holding A and B, prices every few milliseconds of event time with A on a
slow wave (so weight limits breach and recover), fills at prices off the market, every event at
its own microsecond (so the event-time order is one order). Each fill moves NAV by its own
amount, so a lost or doubled fill shows in NAV as well as in positions.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import random
import time
import urllib.request
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import orjson
from aiokafka import AIOKafkaConsumer

from monitor.engine import Engine, format_ts
from monitor.stream.worker import EXIT_STALLED
from monitor.ops.config import KafkaSecurity, Settings
from monitor.replay import Replay, write_events

Message = tuple[str, str, Any]  # (logical topic, key, value)
MS = 1_000


def instrument(iid: str) -> dict:
    return {"instrument_id": iid, "currency": "USD", "asset_class": "equity", "sector": "S-" + iid,
            "region": "NA", "adv": 1_000_000, "spread_bps": 2, "daily_vol": 0.02}


def policy(book: str) -> dict:
    return {"portfolio_id": book, "version": 1, "base_currency": "USD",
            "evaluation": {"persistence_seconds": 0, "hysteresis": 0.2, "stale_price_seconds": 3600},
            "limits": [{"id": "w-A", "metric": "weight", "instrument": "A", "target": 0.5,
                        "band": {"type": "absolute", "width": 0.02}}]}


@dataclass
class Burst:
    """A seeded trading burst: `setup` (reference data, policies, snapshots) then `flow` (prices
    and fills, in event-time order), and what they add up to."""

    books: list[str]
    setup: list[Message]
    flow: list[Message]
    last_price: dict[str, float] = field(default_factory=dict)

    @property
    def messages(self) -> list[Message]:
        return self.setup + self.flow

    def fills(self) -> list[dict]:
        return [v for t, _, v in self.messages if t == "fills"]


def make_burst(seed: int, books: int = 4, fills_per_book: int = 300, start_us: int | None = None,
               step_us: int = 2 * MS) -> Burst:
    """Snapshots at `start_us`, then one event per `step_us`: a price of A or B, or a fill of one of
    the books. By default the last event is stamped a minute ago: the event times are live, and none
    is later than the time the message is produced (a feed's Kafka timestamps are not earlier than
    its event times less 10 s, which a restart's seek by time relies on; README)."""
    rng = random.Random(seed)
    span_us = 3 * books * fills_per_book * step_us  # two prices for every fill
    t0 = start_us if start_us is not None else (time.time_ns() // 1_000 - 60_000_000 - span_us)
    ids = [f"BK-{seed}-{i}" for i in range(books)]
    setup: list[Message] = [("instruments", "A", instrument("A")), ("instruments", "B", instrument("B"))]
    for book in ids:
        setup.append(("policies", book, policy(book)))
        setup.append(("positions", book, {"portfolio_id": book, "as_of": format_ts(t0), "cash": {"USD": 0.0},
                                          "positions": [{"instrument_id": "A", "quantity": 500},
                                                        {"instrument_id": "B", "quantity": 500}]}))
    px = {"A": 100.0, "B": 100.0}
    flow: list[Message] = []
    remaining = {b: fills_per_book for b in ids}
    n, k = 0, 0
    while any(remaining.values()):
        n += 1
        ts = format_ts(t0 + n * step_us)
        if n % 3:  # two prices for every fill
            iid = "A" if n % 3 == 1 else "B"
            px[iid] = round(100.0 * (1 + (0.08 * math.sin(n / 400) if iid == "A" else 0.01 * math.cos(n / 97))), 4)
            flow.append(("prices", iid, {"instrument_id": iid, "price": px[iid], "ts": ts}))
            continue
        book = rng.choice([b for b in ids if remaining[b]])
        remaining[book] -= 1
        k += 1
        iid = rng.choice("AB")
        side = rng.choice(("BUY", "SELL"))
        flow.append(("fills", book, {"fill_id": f"F-{seed}-{k}", "portfolio_id": book, "instrument_id": iid,
                                     "side": side, "quantity": rng.randint(1, 40),
                                     "price": round(px[iid] + rng.choice((-1, 1)) * rng.uniform(0.5, 1.5), 4),
                                     "ts": ts, "fees": 0.25}))
    return Burst(ids, setup, flow, dict(px))


def recompute_books(messages: list[Message]) -> dict[str, tuple[dict[str, float], float]]:
    """Positions and USD cash per book from the snapshots and the fills after them, each fill once."""
    books: dict[str, tuple[dict[str, float], float]] = {}
    as_of: dict[str, str] = {}
    seen: set[str] = set()
    for topic, _, v in messages:
        if topic == "positions":
            books[v["portfolio_id"]] = ({p["instrument_id"]: float(p["quantity"]) for p in v["positions"]},
                                        float(v["cash"].get("USD", 0.0)))
            as_of[v["portfolio_id"]] = v["as_of"]
        elif topic == "fills" and v["fill_id"] not in seen and v["ts"] > as_of[v["portfolio_id"]]:
            seen.add(v["fill_id"])
            positions, cash = books[v["portfolio_id"]]
            sign = 1 if v["side"] == "BUY" else -1
            positions[v["instrument_id"]] = positions.get(v["instrument_id"], 0.0) + sign * v["quantity"]
            books[v["portfolio_id"]] = (positions, cash - sign * v["quantity"] * v["price"] - v.get("fees", 0.0))
    return books


def nav(positions: dict[str, float], cash: float, prices: dict[str, float]) -> float:
    return cash + sum(q * prices[iid] for iid, q in positions.items())


def replay_alerts(messages: list[Message], tick: int) -> list[dict]:
    """The alert events `monitor replay` gives for the same messages, in event-time order."""
    lines = [orjson.dumps({"topic": t, "key": k, "value": v}) for t, k, v in messages]
    out = io.BytesIO()
    write_events(Replay(Engine(tick)).run(lines), out)
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    return [r["value"] for r in records if r["topic"] == "drift-alerts"]


def read_records(bootstrap: str, topic: str, idle_s: float = 1.5, security: KafkaSecurity = KafkaSecurity()
                 ) -> list[Any]:
    """Every record of a topic (aiokafka ConsumerRecords), read to its end."""

    async def go() -> list[Any]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                    **security.client_options())
        await consumer.start()
        try:
            out: list[Any] = []
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < idle_s:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    out += records
                    quiet_since = time.monotonic()
            return out
        finally:
            await consumer.stop()

    return asyncio.run(go())


def read_topic(bootstrap: str, topic: str, idle_s: float = 1.5, security: KafkaSecurity = KafkaSecurity()
               ) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of a topic, read to its end."""
    return [(r.key, r.value) for r in read_records(bootstrap, topic, idle_s, security)]


def state_partitions(settings: Settings) -> dict[str, set[tuple[str, int]]]:
    """Per state table, the (portfolio_id, partition) of every record on its changelog."""

    def books(topic: str) -> set[tuple[str, int]]:
        out: set[tuple[str, int]] = set()
        for r in read_records(settings.bootstrap_servers, topic, security=settings.kafka_security):
            key = orjson.loads(r.key)  # "B1", or the JSON text of ["B1", "fill", "F-1"]
            out.add((orjson.loads(key)[0] if key.startswith("[") else key, r.partition))
        return out

    app = settings.topic(settings.app_id)
    return {table: books(f"{app}-{table}-changelog") for table in ("policies", "watches", "book-inputs")}


def changelog_books(settings: Settings) -> dict[str, tuple[dict[str, float], float]]:
    """Positions and USD cash per book as a restarted worker would rebuild them: the `book-inputs`
    changelog (last record per key, tombstones deleting), folded like `recompute_books`."""
    topic = f"{settings.topic(settings.app_id)}-book-inputs-changelog"
    latest: dict[bytes | None, bytes | None] = {}
    for key, value in read_topic(settings.bootstrap_servers, topic, security=settings.kafka_security):
        latest[key] = value
    messages: list[tuple[str, str, Any, int]] = []
    for value in latest.values():
        if value is None:
            continue
        record = orjson.loads(value)
        if "snapshot" in record:
            s = record["snapshot"]
            doc = {"portfolio_id": s["portfolio_id"], "as_of": format_ts(s["as_of"]), "cash": s["cash"],
                   "positions": [{"instrument_id": i, "quantity": q} for i, q in s["positions"].items()]}
            messages.append(("positions", s["portfolio_id"], doc, s["as_of"]))
        else:
            fill = orjson.loads(record["value"])
            messages.append(("fills", fill["portfolio_id"], fill, 0))
    messages.sort(key=lambda m: (m[0] != "positions", m[3]))  # snapshots (oldest first), then fills
    return recompute_books([(t, k, v) for t, k, v, _ in messages])


def explain_books(settings: Settings, api_url: str, burst: Burst, books: list[str]) -> str:
    """Why books' NAVs differ from the recomputation: per book, each position and the cash as the
    worker holds them (its query API), as the `book-inputs` changelog rebuilds them, and as the topics
    add up to, with the prices the worker values at against the burst's last. A lost or doubled fill
    shows in the positions, a missed price in the prices."""
    expected, persisted = recompute_books(burst.messages), changelog_books(settings)
    lines = []
    for book in books:
        try:
            with urllib.request.urlopen(f"{api_url}/api/v1/books/{book}", timeout=5) as answer:
                held = orjson.loads(answer.read())
        except OSError as e:
            lines.append(f"{book}: the worker's API did not answer: {e}")
            continue
        worker = {h["instrument_id"]: (h["quantity"], h["price"]) for h in held.get("holdings", [])}
        (want, want_cash), (logged, logged_cash) = expected[book], persisted.get(book, ({}, None))
        lines.append(f"{book}: cash worker {held.get('cash')} changelog {logged_cash} topics {want_cash}")
        for iid in sorted({*worker, *want, *logged}):
            qty, px = worker.get(iid, (None, None))
            if qty != want.get(iid) or logged.get(iid) != want.get(iid) or px != burst.last_price.get(iid):
                lines.append(f"  {iid}: quantity worker {qty} changelog {logged.get(iid)} topics {want.get(iid)}; "
                             f"price worker {px} last {burst.last_price.get(iid)}")
    return "\n".join(lines)


def _comparable(a: dict, ignore: tuple[str, ...]) -> dict:
    return {k: v for k, v in a.items() if k not in ("detected_ts", "key", "partition", "offset", *ignore)}


def _differ(event_id: str, first: dict, other: dict, what: str) -> list[str]:
    keys = sorted(k for k in {*first, *other} if first.get(k) != other.get(k))
    if not keys:
        return []
    return [f"event {event_id} ({first['message']}) differs {what} in {keys}: "
            + "; ".join(f"{k}: {first.get(k)} / {other.get(k)}" for k in keys)]


def alerts_consistent(live: list[dict], ignore: tuple[str, ...] = ()) -> list[str]:
    """What is wrong with the live alert events on their own: a re-emitted event (same id) whose
    content differs from the first copy, an alert opened twice."""
    problems: list[str] = []
    first: dict[str, dict] = {}
    opens: dict[str, set[str]] = defaultdict(set)
    for a in live:
        c = _comparable(a, ignore)
        problems += _differ(a["event_id"], first.setdefault(a["event_id"], c), c, "between copies")
        if a["state"] == "OPEN":
            opens[a["alert_id"]].add(a["event_id"])
    return problems + [f"alert {aid} opened {len(ids)} times" for aid, ids in opens.items() if len(ids) > 1]


def alerts_match_replay(live: list[dict], expected: list[dict], ignore: tuple[str, ...] = ()) -> list[str]:
    """What is wrong with the live alert events against the replay's: an event id the replay does
    not have (or missing), an event whose content differs from the replay's, and `alerts_consistent`."""
    first: dict[str, dict] = {}
    for a in live:
        first.setdefault(a["event_id"], _comparable(a, ignore))
    wanted = {a["event_id"]: _comparable(a, ignore) for a in expected}
    problems = [f"live only: {first[e]['message']}" for e in sorted(set(first) - set(wanted))]
    problems += [f"replay only: {wanted[e]['message']}" for e in sorted(set(wanted) - set(first))]
    for event_id in sorted(set(first) & set(wanted)):
        problems += _differ(event_id, first[event_id], wanted[event_id], "from the replay")
    return problems + alerts_consistent(live, ignore)


def wait_for(check: Callable[[], str | None], timeout: float, poll: float = 0.5) -> None:
    """Poll `check` (None: done; else what is still wrong) until done; fail with its last answer."""
    deadline = time.monotonic() + timeout
    wrong = check()
    while wrong is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout:.0f} s: {wrong}")
        time.sleep(poll)
        wrong = check()


class Supervised:
    """A worker run as a supervisor (systemd, Kubernetes) runs it: one that exits with EXIT_STALLED
    (its book stream stopped delivering, see `Worker._watch_streams`) is started again, at most
    `restarts` times; any other exit fails the test. `restarted` counts the restarts."""

    def __init__(self, settings: Settings, log_dir: Path, name: str, restarts: int = 2) -> None:
        self.settings, self.log_dir, self.name, self.restarts = settings, log_dir, name, restarts
        self.restarted = 0
        self._stack = contextlib.ExitStack()
        self.worker: Any = None

    def __enter__(self) -> "Supervised":
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        if self.restarted:  # passed, as under a supervisor; said in the test summary, not hidden
            warnings.warn(f"{self.name}: exited stalled ({EXIT_STALLED}) and was started again {self.restarted} "
                          f"time(s); the stall report is in {self.log_dir / (self.name + '-0.log')}", stacklevel=2)

    def _start(self) -> None:
        from tests.conftest import running_worker

        log = self.log_dir / f"{self.name}-{self.restarted}.log"
        self.worker = self._stack.enter_context(running_worker(self.settings, log))

    def alive(self) -> Any:
        """The worker, restarted if it exited stalled."""
        proc = self.worker.proc
        code = proc.poll() if proc is not None else None
        if code is None:
            return self.worker
        if code != EXIT_STALLED or self.restarted >= self.restarts:
            raise AssertionError(f"worker exited with {code}:\n{self.worker.log()[-3000:]}")
        self.restarted += 1
        self._start()
        return self.worker
