"""A book: positions and cash per currency, from the last snapshot plus the fills after it.

The book keeps the fills applied since its snapshot so that a later snapshot can
replace positions and cash as of its `as_of` and the fills after it still apply.
A fill is applied once by `fill_id`, whatever the re-deliveries: the fills since the
snapshot are the de-duplication horizon, since a fill at or before the snapshot's
`as_of` is in the books of record and never applied. So what a book remembers grows
with its fills since the snapshot, not with its history. A fill whose instrument has
no reference data yet is held in the book until the instrument arrives.

`forget()` says which fills no longer matter (a snapshot took them in, or they came
older than it): the shell keeps a record per fill and drops exactly those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from monitor.engine.model import Fill, Instrument, Micros, Snapshot

InstrumentLookup = Callable[[str], Instrument]


def _cash_effect(fill: Fill, instrument: Instrument) -> float:
    """Cash moved by a fill, in the instrument's currency: pay for buys, receive for sells, pay fees."""
    notional = fill.quantity * fill.price * instrument.multiplier
    return (-notional if fill.side == "BUY" else notional) - fill.fees


@dataclass
class Book:
    portfolio_id: str
    as_of: Micros | None = None
    snapshot_positions: dict[str, float] = field(default_factory=dict)
    snapshot_cash: dict[str, float] = field(default_factory=dict)
    fills: dict[str, Fill] = field(default_factory=dict)  # fill_id -> fill since the snapshot, as applied
    positions: dict[str, float] = field(default_factory=dict)
    cash: dict[str, float] = field(default_factory=dict)
    last_fill_id: str | None = None
    held: dict[str, Fill] = field(default_factory=dict)  # fill_id -> fill awaiting reference data
    # Fills that no longer matter since `forget` was last asked (taken in by a snapshot).
    _forgotten: list[str] = field(default_factory=list, repr=False, compare=False)

    def seen(self, fill: Fill) -> bool:
        """Whether the fill is applied or held already (a re-delivery)."""
        return fill.fill_id in self.fills or fill.fill_id in self.held

    def hold(self, fill: Fill) -> bool:
        """Keep a fill whose instrument is not known yet. False if seen before or in the snapshot."""
        if self.seen(fill):
            return False
        if self._in_snapshot(fill):
            return False
        self.held[fill.fill_id] = fill
        return True

    def forget(self) -> list[str]:
        """The ids of the fills that stopped mattering since the last call (oldest first)."""
        out, self._forgotten = self._forgotten, []
        return out

    def _in_snapshot(self, fill: Fill) -> bool:
        """A fill at or before the snapshot's as_of is in the books of record: it never applies."""
        if self.as_of is not None and fill.ts <= self.as_of:
            self._forgotten.append(fill.fill_id)
            return True
        return False

    def release(self, instrument: Instrument) -> list[Fill]:
        """Apply the held fills of an instrument that just became known; the ones applied."""
        ready = sorted((f for f in self.held.values() if f.instrument_id == instrument.instrument_id),
                       key=lambda f: (f.ts, f.fill_id))
        for f in ready:
            del self.held[f.fill_id]
        return [f for f in ready if self.apply_fill(f, instrument)]

    def apply_fill(self, fill: Fill, instrument: Instrument) -> bool:
        """Apply a fill once. False if it was seen before or is already in the snapshot."""
        if fill.fill_id in self.fills or self._in_snapshot(fill):
            return False
        self.fills[fill.fill_id] = fill
        self._move(fill, instrument)
        self.last_fill_id = fill.fill_id
        return True

    def apply_snapshot(self, snapshot: Snapshot, instrument: InstrumentLookup) -> bool:
        """Replace positions and cash as of the snapshot; re-apply the fills after it.

        False (nothing changes) for a snapshot older than the one in force.
        """
        if self.as_of is not None and snapshot.as_of < self.as_of:
            return False
        self.as_of = snapshot.as_of
        self.snapshot_positions = dict(snapshot.positions)
        self.snapshot_cash = dict(snapshot.cash)
        self._forgotten += [fid for fid, f in self.fills.items() if f.ts <= snapshot.as_of]
        self.fills = {fid: f for fid, f in self.fills.items() if f.ts > snapshot.as_of}
        for fid in [fid for fid, f in self.held.items() if f.ts <= snapshot.as_of]:
            del self.held[fid]  # the books of record include it
            self._forgotten.append(fid)
        self.positions = {iid: q for iid, q in self.snapshot_positions.items() if q != 0}
        self.cash = dict(self.snapshot_cash)
        for fill in sorted(self.fills.values(), key=lambda f: (f.ts, f.fill_id)):
            self._move(fill, instrument(fill.instrument_id))
        return True

    def _move(self, fill: Fill, instrument: Instrument) -> None:
        quantity = self.positions.get(fill.instrument_id, 0.0) + fill.signed_quantity
        if quantity == 0:
            self.positions.pop(fill.instrument_id, None)
        else:
            self.positions[fill.instrument_id] = quantity
        ccy = instrument.currency
        self.cash[ccy] = self.cash.get(ccy, 0.0) + _cash_effect(fill, instrument)

    # -- changelog form: plain JSON-ready dicts -------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "portfolio_id": self.portfolio_id,
            "as_of": self.as_of,
            "snapshot_positions": self.snapshot_positions,
            "snapshot_cash": self.snapshot_cash,
            "fills": [f.to_dict() for f in self.fills.values()],
            "positions": self.positions,
            "cash": self.cash,
            "last_fill_id": self.last_fill_id,
            "held": [f.to_dict() for f in self.held.values()],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Book":
        fills = [Fill.from_dict(f) for f in d["fills"]]
        return cls(
            portfolio_id=d["portfolio_id"],
            as_of=d["as_of"],
            snapshot_positions=dict(d["snapshot_positions"]),
            snapshot_cash=dict(d["snapshot_cash"]),
            fills={f.fill_id: f for f in fills},
            positions=dict(d["positions"]),
            cash=dict(d["cash"]),
            last_fill_id=d["last_fill_id"],
            held={f["fill_id"]: Fill.from_dict(f) for f in d.get("held", [])},
        )
