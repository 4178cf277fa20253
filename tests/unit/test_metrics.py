"""The bulk histogram observe used on the price path equals prometheus_client's own observe."""

from hypothesis import given, strategies as st
from prometheus_client import CollectorRegistry, Histogram

from monitor.ops.metrics import observe_many



def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples if not s.name.endswith("_created")}


@given(st.lists(st.one_of(st.floats(0.0, 100.0), st.sampled_from([0.0, 0.001, 0.0025, 0.05, 1.0, 60.0])),
                max_size=200))
def test_observe_many_equals_observe_one_by_one(amounts: list[float]) -> None:
    one, many = CollectorRegistry(), CollectorRegistry()
    bounds = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
    h_one = Histogram("lag_seconds", "lag", ["topic"], buckets=bounds, registry=one)
    h_many = Histogram("lag_seconds", "lag", ["topic"], buckets=bounds, registry=many)
    child_one, child_many = h_one.labels("prices"), h_many.labels("prices")
    for a in amounts:
        child_one.observe(a)
    observe_many(child_many, amounts)
    expected, got = _samples(one), _samples(many)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        if key[0].endswith("_sum"):
            assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value))
        else:
            assert got[key] == value, key  # bucket and count samples: exact


def test_a_reconciliation_break_is_counted_when_it_opens_only() -> None:
    from prometheus_client import REGISTRY

    from monitor.engine.alerts import AlertEvent, Inputs
    from monitor.ops import metrics

    def count() -> float:
        return REGISTRY.get_sample_value("monitor_reconciliation_breaks_total") or 0.0

    def alert(kind: str, state: str) -> AlertEvent:
        return AlertEvent(alert_id="a", state=state, kind=kind, portfolio_id="B1", limit_id="x", metric="nav",
                          actual=None, target=None, band=None, severity="BREACH", policy_version=1, event_ts=1,
                          opened_ts=1, inputs=Inputs(None, None))

    before = count()
    for kind, state in (("RECONCILIATION_BREAK", "OPEN"), ("RECONCILIATION_BREAK", "RESOLVED"), ("LIMIT", "OPEN"),
                        ("RECONCILIATION_BREAK", "OPEN")):
        metrics.alert_emitted(alert(kind, state))
    assert count() - before == 2


def test_a_forgotten_book_has_no_series_left_and_others_keep_theirs() -> None:
    from monitor.engine import BookStatus
    from monitor.ops import metrics

    status = BookStatus(1000.0, 0.01, 0.5, 2, None)
    metrics.publish_book("GONE", status)
    metrics.publish_book("KEPT", status)
    metrics.forget_book("GONE")
    metrics.forget_book("NEVER-EXPORTED")  # no error
    exported = {s.labels.get("portfolio_id") for g in metrics.BOOK_GAUGES for f in g.collect() for s in f.samples}
    assert "GONE" not in exported and "KEPT" in exported


def test_each_collection_adds_its_pause_to_its_generation():
    """The collector's pauses as a counter (`metrics.time_gc_pauses`)."""
    import gc

    from monitor.ops import metrics

    metrics.time_gc_pauses()
    metrics.time_gc_pauses()  # once only, however often asked
    assert gc.callbacks.count(metrics._on_gc) == 1
    before = [metrics.GC_PAUSE_SECONDS.labels(str(g))._value.get() for g in range(3)]
    gc.collect(1)
    after = [metrics.GC_PAUSE_SECONDS.labels(str(g))._value.get() for g in range(3)]
    assert after[1] > before[1]
    gc.collect()
    assert metrics.GC_PAUSE_SECONDS.labels("2")._value.get() > after[2]
