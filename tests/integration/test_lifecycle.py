"""The alert lifecycle end-to-end on the real broker, in event time.

Book: 60 A + 40 B, no cash; A's weight limit 0.60 +/- 0.05; persistence 5 s,
hysteresis 0.2, CRITICAL past 2 bands, prices older than 30 s are stale.
Weight of A at price a (B at 10): 60a / (60a + 400).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pytest

from tests.conftest import consume, produce
from tests.integration.test_worker import BOOK, instrument

pytestmark = pytest.mark.integration

T0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=10)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def px(iid: str, price: float, seconds: float) -> tuple[str, str, dict]:
    return ("prices", iid, {"instrument_id": iid, "price": price, "ts": at(seconds)})


def policy(version: int, band: dict) -> dict:
    return {"portfolio_id": BOOK, "version": version, "base_currency": "USD",
            "evaluation": {"persistence_seconds": 5, "hysteresis": 0.2, "stale_price_seconds": 30,
                           "critical_multiple": 2.0},
            "limits": [{"id": "w-A", "metric": "weight", "instrument": "A", "target": 0.60, "band": band}]}


def states(alerts: list[dict]) -> list[tuple]:
    return [(a["kind"], a["state"], a["severity"], a["event_ts"][11:19], a["policy_version"]) for a in alerts]


def test_persistence_escalation_hysteresis_stale_guard_and_policy_versions(worker, settings):
    produce(settings, [
        ("instruments", "A", instrument("A", "Technology")),
        ("instruments", "B", instrument("B", "Energy")),
        ("policies", BOOK, policy(1, {"type": "absolute", "width": 0.05})),
        ("positions", BOOK, {"portfolio_id": BOOK, "as_of": at(-60), "cash": {"USD": 0},
                             "positions": [{"instrument_id": "A", "quantity": 60},
                                           {"instrument_id": "B", "quantity": 40}]}),
        px("A", 10.0, 0), px("B", 10.0, 0),
        px("A", 12.5, 1),   # 0.6522: outside (usage 1.04), persistence starts
        px("A", 12.6, 3),   # 0.6540: 2 s outside: not yet
        px("A", 12.5, 6),   # 5 s outside: OPEN, BREACH
        px("A", 16.0, 7),   # 0.7059: usage 2.12: ESCALATED, CRITICAL
        px("A", 11.9, 8),   # 0.6409: usage 0.82: inside, but not past hysteresis (0.8): DEESCALATED, BREACH
        px("A", 11.5, 9),   # 0.6330: usage 0.66: RESOLVED
        px("A", 13.0, 45),  # B's price is 45 s old: DATA_STALE; the breach on A is not judged
        px("B", 10.0, 46),  # fresh again: DATA_STALE resolved; A (0.6610, usage 1.22) starts its 5 s
        px("A", 13.0, 52),  # 6 s outside: OPEN
    ])
    t = lambda s: (T0 + timedelta(seconds=s)).strftime("%H:%M:%S")  # noqa: E731
    expected = [
        ("LIMIT", "OPEN", "BREACH", t(6), 1),
        ("LIMIT", "ESCALATED", "CRITICAL", t(7), 1),
        ("LIMIT", "DEESCALATED", "BREACH", t(8), 1),
        ("LIMIT", "RESOLVED", "BREACH", t(9), 1),
        ("DATA_STALE", "OPEN", "BREACH", t(45), 1),
        ("DATA_STALE", "RESOLVED", "BREACH", t(46), 1),
        ("LIMIT", "OPEN", "BREACH", t(52), 1),
    ]
    alerts = consume(settings, "drift-alerts", lambda r: len(r) >= len(expected))
    assert states(alerts) == expected
    stale = alerts[4]
    assert stale["inputs"]["stale_instruments"] == ["B"] and stale["actual"] == pytest.approx(45.0)
    assert alerts[3]["alert_id"] == alerts[0]["alert_id"] != alerts[6]["alert_id"]
    assert alerts[6]["opened_ts"] == at(52).replace("Z", "000Z")

    # An invalid version 2 is refused and version 1 stays in force ...
    bad = policy(2, {"type": "relative", "width": 0.1}) | {"limits": [
        {"id": "w-A", "metric": "weight", "instrument": "A", "target": 0.0, "band": {"type": "relative", "width": 0.1}}]}
    produce(settings, [("policies", BOOK, bad)])
    [dead] = consume(settings, "monitor-dlq", lambda r: len(r) >= 1)
    assert dead["reason_code"] == "schema_violation" and orjson.loads(dead["original"])["version"] == 2
    # ... and a valid version 2 (band 0.10: usage 0.61) takes effect at once: RESOLVED under version 2.
    produce(settings, [("policies", BOOK, policy(2, {"type": "absolute", "width": 0.10}))])
    alerts = consume(settings, "drift-alerts", lambda r: len(r) >= len(expected) + 1)
    assert states(alerts[-1:]) == [("LIMIT", "RESOLVED", "BREACH", t(52), 2)]
    assert alerts[-1]["band"] == {"lower": pytest.approx(0.5), "upper": pytest.approx(0.7)}
