"""The worker's HTTP API (aiohttp, on the worker's event loop): /health, /ready and the read-only
query API over the books this worker owns (schemas/api/openapi.yaml).

Reads take the worker's lock, so an answer never shows an event half-applied; what a book looks like
is `monitor.engine.views`, this module only serves it. Books are spread over the workers of a group
by the partition of their input topics (the key is the raw portfolio_id, Kafka's default murmur2
partitioner); Faust's assignor tells every worker which worker (by its canonical URL) holds each
partition, so a worker asked for a book another one owns redirects there (307), naming the owner.

/metrics stays on prometheus_client's own port (`metrics_port`), served from a thread, so a scrape
is answered even while the event loop evaluates.
"""

from __future__ import annotations

import asyncio
import operator
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import orjson
import structlog
from aiohttp import web
from aiokafka.partitioner import DefaultPartitioner

from monitor.engine import views

if TYPE_CHECKING:
    from monitor.stream.worker import Worker

log = structlog.get_logger("monitor.api")

SAMPLE_S = 1.0  # how often liveness is sampled


# -- ownership (pure) -------------------------------------------------------------------


def book_partition(portfolio_id: str, partitions: int) -> int:
    """The partition a book's input goes to: Kafka's default partitioner on the raw key bytes."""
    every = list(range(partitions))
    return DefaultPartitioner()(portfolio_id.encode("utf-8"), every, every)


def owner_of(portfolio_id: str, topic: str, distribution: Mapping[str, Mapping[str, Sequence[int]]],
             partitions: int) -> tuple[int, str | None]:
    """(the book's partition, the URL of the worker that owns it, None if no worker does yet), from
    Faust's assignment of topic partitions to worker URLs (`external_topics_metadata`)."""
    owners = {p: url for url, tps in distribution.items() for p in tps.get(topic, ())}
    partition = book_partition(portfolio_id, max(partitions, max(owners, default=-1) + 1))
    return partition, owners.get(partition)


# -- health and readiness (pure) --------------------------------------------------------


@dataclass(frozen=True)
class Liveness:
    """How long each loop of the worker has gone without progress while it had work, in seconds."""

    market_idle_s: float  # since the market loop last went round (0 until it starts, after recovery)
    book_idle_s: float  # the book stream has had unread messages and delivered none (the worker's measure)
    gate_idle_s: float  # the gate has held events and released none
    loop_lag_s: float  # how late the last 1 s sample ran: the event loop's responsiveness


def health(live: Liveness, stall_s: float) -> tuple[bool, list[str]]:
    """Healthy unless a loop has made no progress with work waiting for `stall_s` (the worker itself
    exits at MONITOR_STALL_EXIT_S; health fails sooner, so an orchestrator sees it coming)."""
    reasons = [f"{what} has made no progress for {idle:.0f} s" for what, idle in (
        ("the market data loop", live.market_idle_s), ("the book stream", live.book_idle_s),
        ("the event-time gate", live.gate_idle_s)) if idle >= stall_s]
    return not reasons, reasons


def readiness(recovered: bool, caught_up: bool, rebalancing: bool) -> tuple[bool, list[str]]:
    """Ready once the tables are recovered and every input was read to its end once; not while a
    rebalance moves books (their tables are being recovered again)."""
    reasons = []
    if rebalancing:
        reasons.append("rebalancing: book tables are being recovered")
    elif not recovered:
        reasons.append("book tables not recovered yet")
    if not caught_up:
        reasons.append("inputs not read to their end yet")
    return not reasons, reasons


# -- the adapter --------------------------------------------------------------------------


def _json(body: Any, status: int = 200, **kw: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", **kw)


def _error(status: int, message: str, **fields: Any) -> web.Response:
    return _json({"error": message, **fields}, status)


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own errors (unknown path, wrong method) as JSON too."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(e.status, f"{e.reason}: {request.method} {request.path}")


class QueryServer:
    """Serves one worker's engine. `serve` runs for the worker's life as one of its tasks."""

    def __init__(self, worker: "Worker") -> None:
        self.worker = worker
        self.settings = worker.settings
        self.url = worker.settings.public_api_url
        self._marks: dict[str, tuple[Any, float]] = {}  # what was last seen of a loop, and since when
        self._lag = 0.0
        app = web.Application(middlewares=[_json_errors])
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/api/v1/books", self.books)
        app.router.add_get("/api/v1/books/{portfolio_id}", self.book)
        app.router.add_get("/api/v1/alerts", self.alerts)
        app.router.add_get("/api/v1/signals", self.signals)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> None:
        """Listen, before the Faust app starts: /health and /ready answer during the first recovery
        (Faust starts the app's tasks only after it)."""
        await self._runner.setup()
        await web.TCPSite(self._runner, self.settings.metrics_host, self.settings.http_port).start()
        log.info("HTTP API served", url=self.url, bound=f"{self.settings.metrics_host}:{self.settings.http_port}")

    async def serve(self) -> None:
        """One of the worker's tasks: sample the loops' progress every second; stop serving with it."""
        try:
            while True:
                started = time.monotonic()
                await asyncio.sleep(SAMPLE_S)
                self._lag = max(0.0, time.monotonic() - started - SAMPLE_S)
                self._sample()
        finally:
            await self._runner.cleanup()

    # -- liveness ------------------------------------------------------------------------

    def _since(self, name: str, mark: Any, busy: bool, now: float, same: Any = operator.eq) -> float:
        """Seconds `mark` has stayed the same while `busy`; 0 when it moved or there is nothing to do."""
        last = self._marks.get(name)
        if not busy or last is None or not same(last[0], mark):
            self._marks[name] = (mark, now)
            return 0.0
        return now - last[1]

    def _sample(self) -> Liveness:
        w, now = self.worker, time.monotonic()
        progress = w.progress
        # The market loop replaces `progress.market` every time round; it starts after the first recovery.
        # (kept referenced in `_marks`, so a new one is never the old one at the same address).
        market = self._since("market", progress.market, progress.recovered, now, operator.is_)
        gate = self._since("gate", w._released, len(w.gate) > 0, now)  # events the gate has released
        # The worker's own measure, refreshed every second while the book stream is fine (or idle).
        book = self._since("book", w._book_quiet_since, progress.recovered, now)
        return Liveness(market, book, gate, self._lag)

    # -- handlers ------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        live = self._sample()
        ok, reasons = health(live, self.settings.stall_exit_s / 2)
        return _json({"ok": ok, "reasons": reasons, "checks": {
            "market_idle_s": round(live.market_idle_s, 3), "book_idle_s": round(live.book_idle_s, 3),
            "gate_idle_s": round(live.gate_idle_s, 3), "loop_lag_s": round(live.loop_lag_s, 3),
            "gate_held": len(self.worker.gate)}}, 200 if ok else 503)

    async def ready(self, request: web.Request) -> web.Response:
        w = self.worker
        rebalancing = bool(w.app.rebalancing or getattr(w.app, "in_recovery", False))
        ok, reasons = readiness(w.progress.recovered, w._caught_up, rebalancing)
        return _json({"ok": ok, "reasons": reasons, "checks": {
            "recovered": w.progress.recovered, "caught_up": w._caught_up, "rebalancing": rebalancing}},
            200 if ok else 503)

    def _worker(self) -> dict[str, Any]:
        """Who answered: this worker's URL, its book partitions, the other workers of the group."""
        distribution = self.worker.app.assignor.external_topics_metadata()
        mine = distribution.get(self.url, {}).get(self._topic, [])
        return {"url": self.url, "partitions": sorted(mine), "peers": sorted(set(distribution) - {self.url})}

    @property
    def _topic(self) -> str:
        return self.settings.topic("positions")  # every book topic is partitioned alike

    async def books(self, request: web.Request) -> web.Response:
        async with self.worker._lock:
            books = views.books(self.worker.engine)
        return _json({"worker": self._worker(), "books": books})

    async def book(self, request: web.Request) -> web.Response:
        pid = request.match_info["portfolio_id"]
        distribution = self.worker.app.assignor.external_topics_metadata()
        partition, owner = owner_of(pid, self._topic, distribution, self.settings.partitions)
        if owner is not None and owner != self.url:
            return _json({"error": f"book {pid} is owned by another worker", "portfolio_id": pid, "owner": owner,
                          "partition": partition}, 307, headers={"Location": f"{owner}{request.path_qs}"})
        async with self.worker._lock:
            found = views.book(self.worker.engine, pid)
        if found is not None:
            return _json({"worker": self._worker(), **found})
        if owner is None:
            return _error(503, f"book {pid}: no worker owns its partition yet (the group is forming)",
                          portfolio_id=pid, owner=None, partition=partition)
        return _error(404, f"unknown book {pid}: no policy, snapshot or fill for it", portfolio_id=pid,
                      owner=owner, partition=partition)

    async def alerts(self, request: web.Request) -> web.Response:
        state = request.query.get("state", "open").lower()
        if state not in views.ALERT_STATES:
            return _error(400, f"query parameter state={state!r}: the worker holds only the open alerts "
                               f"(state=open); resolved ones are on the drift-alerts topic")
        async with self.worker._lock:
            found = views.alerts(self.worker.engine)
        return _json({"worker": self._worker(), "alerts": found})

    async def signals(self, request: web.Request) -> web.Response:
        state = request.query.get("state")
        if state is not None and state not in views.SIGNAL_STATES:
            return _error(400, f"query parameter state={state!r}: not one of {', '.join(views.SIGNAL_STATES)} "
                               f"(the live states; ended signals are on the rebalance-signals topic)")
        async with self.worker._lock:
            found = views.signals(self.worker.engine, state)
        return _json({"worker": self._worker(), "signals": found})
