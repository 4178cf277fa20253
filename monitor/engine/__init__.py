"""The pure domain: books, valuation, limits, drift and the alert lifecycle."""

from monitor.engine.alerts import AlertEvent
from monitor.engine.book import Book
from monitor.engine.engine import BookStatus, Engine, Watch
from monitor.engine.model import Fill, Instrument, Price, Rejected, RiskModel, Snapshot, format_ts, parse_ts
from monitor.engine.policy import Policy, PolicyError, parse_policy

__all__ = ["AlertEvent", "Book", "BookStatus", "Engine", "Fill", "Instrument", "Policy", "PolicyError",
           "Price", "Rejected", "RiskModel", "Snapshot", "Watch", "format_ts", "parse_policy", "parse_ts"]
