"""`monitor top` renders the read model's books to a recorded console: worst band usage first, with
NAV, the worst limit, open alerts and pending signals; a worker it cannot reach is named."""

from __future__ import annotations

import io

from rich.console import Console

from monitor.engine import Engine, Price, Snapshot, parse_policy
from monitor.engine import views
from monitor.ops.processes import free_ports
from monitor.top import Snapshot as TopSnapshot, fetch, table
from tests.unit.test_engine import T0, SEC, inst


def desk() -> Engine:
    """Three books over A and B at 10: CALM at 60/40 (on target), EDGY at 64/36 (A's usage 0.8, WARN),
    HOT at 70/30 (A's usage 2.0 past its edge at once: an open BREACH)."""
    e = Engine(0)
    e.on_instrument(inst("A"))
    e.on_instrument(inst("B"))
    for pid, a in (("CALM", 60), ("EDGY", 64), ("HOT", 70)):
        e.on_policy(parse_policy({"portfolio_id": pid, "version": 1, "base_currency": "USD", "limits": [
            {"metric": "weight", "instrument": "A", "target": 0.6, "band": {"width": 0.05}}]}, "test"))
        e.on_snapshot(Snapshot(pid, T0, {"USD": 0.0}, {"A": a, "B": 100 - a}))
    e.on_prices([Price("A", 10.0, T0 + SEC), Price("B", 10.0, T0 + SEC)])
    return e


def render(snapshot: TopSnapshot) -> str:
    console = Console(record=True, width=160, color_system=None, file=io.StringIO())
    console.print(table(snapshot))
    return console.export_text()


def test_books_are_listed_worst_band_usage_first_with_their_numbers():
    books = [{**b, "worker": "http://127.0.0.1:9109"} for b in views.books(desk())]
    text = render(TopSnapshot(books=books, workers=["http://127.0.0.1:9109"]))
    rows = [line for line in text.splitlines() if line.lstrip("│┃ ").split(" ")[0] in ("CALM", "EDGY", "HOT")]
    assert [r.lstrip("│┃ ").split()[0] for r in rows] == ["HOT", "EDGY", "CALM"], text
    hot, edgy, calm = rows
    assert "1,000" in hot and "2.00" in hot and "weight:A" in hot and "70.00% / 60.00%" in hot
    assert hot.split("│")[7].strip() == "1" and edgy.split("│")[7].strip() == "0"  # open alerts
    assert "0.80" in edgy and "64.00% / 60.00%" in edgy
    assert "0.00" in calm and "14:00:01.000" in calm
    assert "3 book(s) from 1 worker(s)" in text


def test_a_worker_that_does_not_answer_is_named_not_hidden():
    url = f"http://127.0.0.1:{free_ports()[0]}"  # nothing listens there
    found = fetch([url], timeout=1.0)
    assert found.books == [] and found.workers == [] and found.errors[0].startswith(url)
    assert f"unreachable: {url}" in render(found)
