"""`monitor top`: a live desk view of every book, from the query API of one or more workers.

Books are sorted by their worst band usage (the book nearest to or furthest past an edge first), each
with its NAV, worst limit, open alerts and pending signals. A worker names the other workers of its
group (`worker.peers`), so one `--url` is enough to see every book; several are asked in turn.
`table` is pure (rows in, a rich Table out): the tests render it to a recorded console.
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import click
import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from monitor.engine.alerts import _fmt

_STYLE = {"CRITICAL": "bold white on red", "BREACH": "bold red", "WARN": "yellow", None: "green"}


@dataclass
class Snapshot:
    """What the workers answered: their books (each with the worker that owns it), and who failed."""

    books: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)


def fetch(urls: list[str], timeout: float = 3.0) -> Snapshot:
    """GET /api/v1/books of each worker and of the peers they name; a worker that fails is reported."""
    out, seen, todo, pids = Snapshot(), set(), [u.rstrip("/") for u in urls], set()
    while todo:
        url = todo.pop(0)
        if url in seen:
            continue
        seen.add(url)
        try:
            with urllib.request.urlopen(f"{url}/api/v1/books", timeout=timeout) as response:
                body = orjson.loads(response.read())
        except (OSError, ValueError) as e:
            out.errors.append(f"{url}: {getattr(e, 'reason', None) or e}")
            continue
        out.workers.append(url)
        todo += body["worker"]["peers"]
        for book in body["books"]:
            if book["portfolio_id"] not in pids:  # during a rebalance two workers may both list a book
                pids.add(book["portfolio_id"])
                out.books.append({**book, "worker": url})
    return out


def _usage(book: dict[str, Any]) -> float:
    u = book.get("worst_band_usage")
    return u if u is not None and math.isfinite(u) else -1.0


def _money(x: float | None) -> str:
    return f"{x:,.0f}" if x is not None else "n/a"


def console() -> Console:
    """The terminal's console; 160 columns wide when the output is a file or a pipe (not 80)."""
    found = Console()
    return found if found.is_terminal else Console(width=160)


def table(snapshot: Snapshot, title: str = "drift-monitor") -> Group:
    """The desk view: one row per book, worst band usage first."""
    t = Table(title=title, title_justify="left", expand=False, header_style="bold")
    for name, justify in (("book", "left"), ("ccy", "left"), ("NAV", "right"), ("worst usage", "right"),
                          ("worst limit", "left"), ("actual / target", "right"), ("alerts", "right"),
                          ("pending", "right"), ("evaluated", "left"), ("worker", "left")):
        t.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for book in sorted(snapshot.books, key=lambda b: (-_usage(b), b["portfolio_id"])):
        worst = book.get("worst_limit") or {}
        style = _STYLE.get(worst.get("severity"), "")
        usage = book.get("worst_band_usage")
        fmt = _fmt(worst.get("metric", ""))
        numbers = (f"{fmt(worst['actual'])} / {fmt(worst['target'])}"
                   if worst.get("actual") is not None else "")
        evaluated = (book.get("evaluated_ts") or "")[11:23]
        t.add_row(book["portfolio_id"], book.get("base_currency") or "", _money(book.get("nav")),
                  Text(f"{usage:.2f}" if usage is not None else "n/a", style=style),
                  Text(worst.get("limit_id", book.get("unavailable") or ""), style=style), numbers,
                  Text(str(book["open_alerts"]), style="bold red" if book["open_alerts"] else ""),
                  Text(str(book["pending_signals"]), style="bold yellow" if book["pending_signals"] else ""),
                  evaluated, book["worker"])
    footer = Text(f"{len(snapshot.books)} book(s) from {len(snapshot.workers)} worker(s); usage 1.00 = at the band's "
                  f"edge", style="dim")
    return Group(t, footer, *(Text(f"unreachable: {e}", style="red") for e in snapshot.errors))


@click.command("top")
@click.option("--url", "urls", multiple=True, metavar="URL",
              help="A worker's API, e.g. http://127.0.0.1:9109 (repeatable; the workers it names are asked too) "
                   "[default: this machine's worker, from MONITOR_API_PORT / MONITOR_METRICS_PORT]")
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between refreshes")
@click.option("--once", is_flag=True, help="Print the view once and exit")
def top_command(urls: tuple[str, ...], interval: float, once: bool) -> None:
    """A live view of every book: worst band usage first, with NAV, worst limit, alerts and signals."""
    from monitor.ops.config import Settings

    targets = list(urls) or [f"http://127.0.0.1:{Settings.from_env().http_port}"]
    if once:
        console().print(table(fetch(targets)))
        return
    with Live(table(fetch(targets)), console=console(), refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(table(fetch(targets)))
        except KeyboardInterrupt:
            pass
