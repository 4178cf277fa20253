"""Library log lines repeat in bursts during a broker outage: each passes once per interval, counted."""

import logging

from monitor.ops.logging import RepeatFilter


def record(name: str, msg: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, ("127.0.0.1", 9092), None)


def test_a_repeated_library_error_passes_once_per_interval_saying_how_many_were_held_back():
    now = [0.0]
    counted: list[str] = []
    repeats = RepeatFilter(every=10.0, clock=lambda: now[0])
    repeats.count = counted.append
    passed = []
    for _ in range(150):  # a second of a broker outage
        r = record("aiokafka.conn", "Unable connect to %s:%s")
        if repeats.filter(r):
            passed.append(r)
        now[0] += 1 / 150
    assert len(passed) == 1 and len(counted) == 150 and set(counted) == {"aiokafka"}
    now[0] = 10.5
    later = record("aiokafka.conn", "Unable connect to %s:%s")
    assert repeats.filter(later)
    assert later.getMessage() == "Unable connect to 127.0.0.1:9092 [149 more like this in the last 10 s]"
    # Another message, the worker's own logs and library info lines are not held back.
    assert repeats.filter(record("aiokafka.conn", "Another problem"))
    assert all(repeats.filter(record("monitor.worker", "drift alert")) for _ in range(5))
    assert all(repeats.filter(record("aiokafka", "joined", logging.INFO)) for _ in range(5))


def test_faust_recovery_progress_is_logged_at_info_and_the_rest_of_faust_at_warning():
    """A changelog recovery that never ends must be visible before the stall exit: Faust's
    recovery says what it still has to read, at info; its other services stay quiet."""
    import logging

    from monitor.ops.logging import configure

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure("console", "info")
        assert logging.getLogger("faust.tables.recovery").isEnabledFor(logging.INFO)
        assert not logging.getLogger("faust.transport.consumer").isEnabledFor(logging.INFO)
        assert not logging.getLogger("aiokafka.consumer").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:], root.level = handlers, level
