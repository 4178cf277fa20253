"""The crafted messages that once stopped or corrupted a worker (issue 15), and the reason code
each must be dead-lettered with. Shared by the codec's unit tests and the live test."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import NamedTuple


class Crafted(NamedTuple):
    name: str
    topic: str
    key: str | None
    raw: bytes
    code: str  # the reason code it must be dead-lettered with


def stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fill(fill_id: str, book: str, iid: str, ts: str, quantity: object = 5, **extra: object) -> dict:
    return {"fill_id": fill_id, "portfolio_id": book, "instrument_id": iid, "side": "BUY",
            "quantity": quantity, "price": 10.0, "ts": ts, **extra}


def crafted(now: datetime, book: str, iid: str) -> list[Crafted]:
    """Every crafted message, stamped around `now` where a time is not the point."""
    ts = stamp(now)

    def dumps(doc: dict) -> bytes:
        return json.dumps(doc).encode()  # json, not orjson: it writes integers of any size

    deep = b"[" * 1000 + b"]" * 1000
    return [
        Crafted("deep-price", "prices", iid, deep, "too_deep"),
        Crafted("deep-fill", "fills", book, b'{"fill_id": ' + deep + b"}", "too_deep"),
        Crafted("far-future-price", "prices", iid,
                dumps({"instrument_id": iid, "price": 10.0, "ts": "9999-12-31T23:59:59Z"}), "impossible_value"),
        Crafted("hour-ahead-price", "prices", iid,
                dumps({"instrument_id": iid, "price": 10.0, "ts": stamp(now + timedelta(hours=1))}),
                "future_timestamp"),
        Crafted("year-10000-fill", "fills", book, dumps(fill("X-10000", book, iid, "9999-12-31T23:59:59-05:00")),
                "impossible_value"),
        Crafted("1e308-fill", "fills", book, dumps(fill("X-1e308", book, iid, ts, 1e308)), "impossible_value"),
        Crafted("1.23e29-fill", "fills", book, dumps(fill("X-1e29", book, iid, ts, 123 * 10**27)),
                "impossible_value"),
        Crafted("600-KB-fill", "fills", book, dumps(fill("X-big", book, iid, ts, note="x" * 600_000)),
                "schema_violation"),
        Crafted("mismatched-key-price", "prices", "NOT-" + iid,
                dumps({"instrument_id": iid, "price": 10.0, "ts": ts}), "impossible_value"),
        Crafted("null-key-price", "prices", None, dumps({"instrument_id": iid, "price": 10.0, "ts": ts}),
                "impossible_value"),
        # Identifiers become record keys and metric labels: at most 128 characters.
        Crafted("129-char-fill-id", "fills", book, dumps(fill("F" * 129, book, iid, ts)), "schema_violation"),
        Crafted("129-char-instrument-price", "prices", "I" * 129,
                dumps({"instrument_id": "I" * 129, "price": 10.0, "ts": ts}), "schema_violation"),
    ]
