"""Reconciliation: what the monitor held for a book as of a new snapshot's `as_of`, against what the
books of record report for then.

The monitor keeps a book as its last snapshot plus the fills applied since. When the next snapshot
arrives, the monitor's holdings as of that snapshot's `as_of` are today's positions and cash less
the effect of the fills applied with a `ts` after it; every instrument and cash currency where the
snapshot differs by more than the policy's tolerance is a break (a fill the monitor never saw, one
the books of record booked twice, a cash movement the monitor knows nothing of). Pure: holdings,
fills, a snapshot and tolerances in, the breaks out; the engine turns them into an alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from monitor.engine.book import _cash_effect
from monitor.engine.model import Fill, Instrument, Micros, Snapshot, format_ts

NOISE = 1e-9  # relative: what float sums of quantities and cash may differ by without a real difference


@dataclass(frozen=True, slots=True)
class Break:
    """One position or cash balance on which the monitor and the books of record differ."""

    kind: str  # "position" | "cash"
    key: str  # instrument_id, or currency for cash
    expected: float  # what the monitor held as of the snapshot's as_of
    reported: float  # what the snapshot says

    @property
    def difference(self) -> float:
        return self.reported - self.expected

    def to_message(self) -> dict[str, Any]:
        name = "instrument_id" if self.kind == "position" else "currency"
        return {name: self.key, "expected": self.expected, "reported": self.reported, "difference": self.difference}

    def describe(self) -> str:
        what = self.key if self.kind == "position" else f"cash {self.key}"
        return f"{what} expected {self.expected:,.10g} reported {self.reported:,.10g}"


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """A snapshot compared with the monitor's holdings as of its as_of: the breaks found (none: it agrees)."""

    as_of: Micros
    breaks: tuple[Break, ...]

    def to_message(self) -> dict[str, Any]:
        return {"as_of": format_ts(self.as_of),
                "positions": [b.to_message() for b in self.breaks if b.kind == "position"],
                "cash": [b.to_message() for b in self.breaks if b.kind == "cash"]}

    def describe(self, most: int = 10) -> str:
        """One line for the alert's reason."""
        head = f"{len(self.breaks)} difference(s) with the books of record as of {format_ts(self.as_of)}"
        listed = "; ".join(b.describe() for b in self.breaks[:most])
        return f"{head}: {listed}{' ...' if len(self.breaks) > most else ''}"


def held_as_of(positions: Mapping[str, float], cash: Mapping[str, float], fills: Iterable[Fill], as_of: Micros,
               instrument: Callable[[str], Instrument]) -> tuple[dict[str, float], dict[str, float]]:
    """The monitor's positions and cash as of `as_of`: today's, less every applied fill after it.
    (Cash moves back at today's multiplier: a contract's multiplier does not change within a day.)"""
    held_positions, held_cash = dict(positions), dict(cash)
    for fill in fills:
        if fill.ts > as_of:
            held_positions[fill.instrument_id] = held_positions.get(fill.instrument_id, 0.0) - fill.signed_quantity
            reference = instrument(fill.instrument_id)
            held_cash[reference.currency] = held_cash.get(reference.currency, 0.0) - _cash_effect(fill, reference)
    return held_positions, held_cash


def _differs(expected: float, reported: float, tolerance: float) -> bool:
    return abs(reported - expected) > tolerance + NOISE * max(1.0, abs(expected), abs(reported))


def reconcile(positions: Mapping[str, float], cash: Mapping[str, float], snapshot: Snapshot,
              quantity_tolerance: float, cash_tolerance: float) -> Reconciliation:
    """The instruments, then the currencies (each sorted), where the snapshot differs from the expected
    holdings by more than the tolerance; a missing line counts as 0."""
    found = [Break("position", iid, positions.get(iid, 0.0), snapshot.positions.get(iid, 0.0))
             for iid in sorted({*positions, *snapshot.positions})
             if _differs(positions.get(iid, 0.0), snapshot.positions.get(iid, 0.0), quantity_tolerance)]
    found += [Break("cash", ccy, cash.get(ccy, 0.0), snapshot.cash.get(ccy, 0.0))
              for ccy in sorted({*cash, *snapshot.cash})
              if _differs(cash.get(ccy, 0.0), snapshot.cash.get(ccy, 0.0), cash_tolerance)]
    return Reconciliation(snapshot.as_of, tuple(found))
