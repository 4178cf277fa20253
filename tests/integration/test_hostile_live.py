"""Hostile input on a real broker: every crafted message that once stopped or corrupted a worker
lands in monitor-dlq with its reason and a bounded record, while the worker applies the valid
fills around them, and after a restart it still runs."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import orjson
import pytest

from monitor.contract import validate
from monitor.stream.codec import EXCERPT_BYTES, MAX_DEAD_LETTER_BYTES
from tests.conftest import consume, produce, running_worker
from tests.faults import changelog_books
from tests.hostile import crafted, fill
from tests.integration.test_restart import _wait_for_nav
from tests.integration.test_worker import BOOK, price, setup_messages, ts

pytestmark = pytest.mark.integration


def _valid_fill(fill_id: str, iid: str, side: str, quantity: float, fees: float = 0.0) -> tuple[str, str, dict]:
    return ("fills", BOOK, {**fill(fill_id, BOOK, iid, ts(), quantity), "side": side, "fees": fees})


def test_crafted_messages_are_dead_lettered_and_the_worker_goes_on_also_after_a_restart(settings, tmp_path):
    cases = crafted(datetime.now(timezone.utc), BOOK, "A")
    with running_worker(settings, tmp_path / "first.log") as first:
        produce(settings, setup_messages())  # cash 0, 60 A and 40 B at 10: NAV 1000
        _wait_for_nav(first, 1000.0)
        hostile = [(c.topic, c.key, c.raw) for c in cases]
        produce(settings, [_valid_fill("F-1", "A", "BUY", 10), *hostile[:5], _valid_fill("F-2", "B", "SELL", 5),
                           *hostile[5:], _valid_fill("F-3", "A", "BUY", 3, fees=1.0)])

        dlq = consume(settings, "monitor-dlq", lambda r: len(r) >= len(cases))
        assert len(dlq) == len(cases), [d["reason"] for d in dlq]
        expected = {(settings.topic(c.topic), c.key, len(c.raw), c.raw[:EXCERPT_BYTES]): c for c in cases}
        for record in dlq:
            body = {k: v for k, v in record.items() if k not in ("key", "partition", "offset")}
            validate("monitor-dlq", body)
            assert len(orjson.dumps(body)) <= MAX_DEAD_LETTER_BYTES
            case = expected.pop((body["source"]["topic"], body["source"]["key"], body["original_bytes"],
                                 base64.b64decode(body["original_base64"])))
            assert body["reason_code"] == case.code, (case.name, body["reason"])
            assert body["truncated"] is (len(case.raw) > EXCERPT_BYTES)
        assert not expected, f"not dead-lettered: {sorted(c.name for c in expected.values())}"

        # 70 -> 73 A, 40 -> 35 B; cash -100 + 50 - 31 = -81. At 12 and 11: 876 + 385 - 81 = 1180.
        produce(settings, [("prices", "A", price("A", 12.0)), ("prices", "B", price("B", 11.0))])
        _wait_for_nav(first, 1180.0)
        # What a restart rebuilds the book from holds the valid fills only.
        positions, cash = changelog_books(settings)[BOOK]
        assert positions == {"A": 73, "B": 35} and cash == pytest.approx(-81.0)
        assert first.proc is not None and first.proc.poll() is None
        assert "worker loop failed" not in first.log()

    with running_worker(settings, tmp_path / "second.log") as second:
        # The book comes back from its changelog; the hostile prices are read again and refused again.
        _wait_for_nav(second, 1180.0, timeout=60)
        produce(settings, [_valid_fill("F-4", "A", "BUY", 1)])  # at 10 with A at 12: NAV + 2
        _wait_for_nav(second, 1182.0)
        refused_prices = sum(v for (name, labels), v in second.metrics().items()
                             if name == "monitor_dlq_messages_total" and ("topic", "prices") in labels)
        assert refused_prices == sum(1 for c in cases if c.topic == "prices")
        assert second.proc is not None and second.proc.poll() is None
        assert "worker loop failed" not in second.log()
