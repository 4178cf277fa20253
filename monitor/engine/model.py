"""Domain events: instruments, prices, fills and position snapshots.

Plain frozen values built from contract dicts (already schema-checked by the codec).
Event time is carried as integer microseconds since the epoch (UTC), so arithmetic
on it is exact and replays compare equal to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Mapping, NamedTuple

Micros = int
_US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Event times an input may carry: 1970-01-01 (the epoch) up to, not including, 2100-01-01 (UTC).
# Backfills reach back decades; nothing real is stamped next century, and a time past year 9999
# cannot even be written back out (format_ts).
EARLIEST: Micros = 0
LATEST: Micros = 4_102_444_800 * _US

# Plausibility bounds of input numbers (README, "Bad input"): far beyond any real book, far below
# where float sums lose a book's cents or overflow. Values are in the instrument's currency/units.
MAX_QUANTITY = 1e12  # |quantity| of a fill or a position, and a lot size
MAX_PRICE = 1e9  # a price per unit
MAX_AMOUNT = 1e15  # cash, fees, a fill's notional (quantity x price), an ADV
MAX_MULTIPLIER = 1e9  # contract multiplier
MAX_COEFFICIENT = 1e6  # factor loadings, (co)variances, spread in bps, daily volatility

# Instrument fields that are not attributes to bucket by.
_NON_ATTRIBUTES = frozenset(
    {"instrument_id", "multiplier", "adv", "spread_bps", "daily_vol", "lot_size", "factors", "schema_version"}
)


class Rejected(ValueError):
    """An input that must not enter the books; goes to the dead-letter topic.

    `code` is one of the contract's reason codes (schemas/monitor-dlq).
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@lru_cache(maxsize=4096)
def parse_ts(text: str) -> Micros:
    """RFC 3339 string to epoch microseconds (the schema guarantees a zone). Cached: a feed
    stamps many prices with the same millisecond."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise Rejected("schema_violation", f"timestamp {text!r} has no time zone")
    delta = dt - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds
    if not EARLIEST <= micros < LATEST:
        raise Rejected("impossible_value", f"timestamp {text!r} is not between 1970 and 2099 (UTC)")
    return micros


def format_ts(ts: Micros) -> str:
    """Epoch microseconds to RFC 3339 UTC with microseconds and a Z."""
    seconds, micros = divmod(ts, _US)
    dt = datetime.fromtimestamp(seconds, tz=timezone.utc).replace(microsecond=micros)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _finite(name: str, value: float, bound: float) -> float:
    """`value` as a float, refused unless |value| <= bound (which also refuses inf and NaN)."""
    if not abs(value) <= bound:
        raise Rejected("impossible_value", f"{name} {value!r} is outside +/-{bound:g}")
    return float(value)


def _optional(name: str, value: float | None, bound: float) -> float | None:
    return None if value is None else _finite(name, value, bound)


@dataclass(frozen=True, slots=True)
class Instrument:
    instrument_id: str
    currency: str
    asset_class: str
    multiplier: float = 1.0
    attributes: Mapping[str, str] = field(default_factory=dict)
    adv: float | None = None
    spread_bps: float | None = None
    daily_vol: float | None = None
    factors: Mapping[str, float] = field(default_factory=dict)
    lot_size: float = 1.0  # trading unit: proposed quantities are whole multiples of it

    @classmethod
    def from_message(cls, m: Mapping[str, Any]) -> "Instrument":
        attributes = {k: v for k, v in m.items() if k not in _NON_ATTRIBUTES and isinstance(v, str)}
        return cls(
            instrument_id=m["instrument_id"],
            currency=m["currency"],
            asset_class=m["asset_class"],
            multiplier=_finite("multiplier", m.get("multiplier", 1.0), MAX_MULTIPLIER),
            attributes=attributes,
            adv=_optional("adv", m.get("adv"), MAX_AMOUNT),
            spread_bps=_optional("spread_bps", m.get("spread_bps"), MAX_COEFFICIENT),
            daily_vol=_optional("daily_vol", m.get("daily_vol"), MAX_COEFFICIENT),
            factors={k: _finite(f"factors.{k}", v, MAX_COEFFICIENT) for k, v in (m.get("factors") or {}).items()},
            lot_size=_finite("lot_size", m.get("lot_size", 1.0), MAX_QUANTITY),
        )

    def attribute(self, dimension: str) -> str | None:
        """The bucket this instrument falls in along a dimension (sector, currency, ...)."""
        return self.attributes.get(dimension)


class Price(NamedTuple):
    """One tick of the price feed. A named tuple, not a dataclass: it is built once per
    message on the hot path, and a frozen dataclass costs several times more to build."""

    instrument_id: str
    price: float
    ts: Micros

    @classmethod
    def from_message(cls, m: Mapping[str, Any]) -> "Price":
        price = _finite("price", m["price"], MAX_PRICE)
        if price <= 0:
            raise Rejected("impossible_value", f"price must be > 0, got {price}")
        return cls(m["instrument_id"], price, parse_ts(m["ts"]))


@dataclass(frozen=True, slots=True)
class Fill:
    fill_id: str
    portfolio_id: str
    instrument_id: str
    side: str
    quantity: float
    price: float
    ts: Micros
    fees: float = 0.0

    @classmethod
    def from_message(cls, m: Mapping[str, Any]) -> "Fill":
        quantity = _finite("quantity", m["quantity"], MAX_QUANTITY)
        price = _finite("price", m["price"], MAX_PRICE)
        fees = _finite("fees", m.get("fees", 0.0), MAX_AMOUNT)
        if quantity <= 0:
            raise Rejected("impossible_value", f"quantity must be > 0, got {quantity}")
        if price <= 0:
            raise Rejected("impossible_value", f"price must be > 0, got {price}")
        if fees < 0:
            raise Rejected("impossible_value", f"fees must be >= 0, got {fees}")
        _finite("notional (quantity x price)", quantity * price, MAX_AMOUNT)
        return cls(m["fill_id"], m["portfolio_id"], m["instrument_id"], m["side"],
                   quantity, price, parse_ts(m["ts"]), fees)

    @property
    def signed_quantity(self) -> float:
        return self.quantity if self.side == "BUY" else -self.quantity

    def to_dict(self) -> dict[str, Any]:
        return {"fill_id": self.fill_id, "portfolio_id": self.portfolio_id,
                "instrument_id": self.instrument_id, "side": self.side,
                "quantity": self.quantity, "price": self.price, "ts": self.ts, "fees": self.fees}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Fill":
        return cls(**d)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Positions and cash from the books of record, as of a point in event time."""

    portfolio_id: str
    as_of: Micros
    cash: Mapping[str, float]
    positions: Mapping[str, float]

    @classmethod
    def from_message(cls, m: Mapping[str, Any]) -> "Snapshot":
        positions: dict[str, float] = {}
        for p in m["positions"]:
            iid = p["instrument_id"]
            if iid in positions:
                raise Rejected("impossible_value", f"instrument {iid} listed twice in the snapshot")
            positions[iid] = _finite(f"positions.{iid}.quantity", p["quantity"], MAX_QUANTITY)
        cash = {ccy: _finite(f"cash.{ccy}", amount, MAX_AMOUNT) for ccy, amount in m["cash"].items()}
        return cls(m["portfolio_id"], parse_ts(m["as_of"]), cash, positions)


@dataclass(frozen=True, slots=True)
class RiskModel:
    """A factor risk model: instrument covariance = B F B' + D (loadings from reference data)."""

    model_id: str
    as_of: Micros
    factors: tuple[str, ...]
    covariance: tuple[tuple[float, ...], ...]
    specific_var: Mapping[str, float]

    @classmethod
    def from_message(cls, m: Mapping[str, Any]) -> "RiskModel":
        factors = tuple(m["factors"])
        k = len(factors)
        rows = m["covariance"]
        if len(set(factors)) != k:
            raise Rejected("impossible_value", "risk model factors are not unique")
        if len(rows) != k or any(len(r) != k for r in rows):
            raise Rejected("impossible_value", f"covariance must be {k}x{k} to match {k} factors")
        cov = tuple(tuple(_finite("covariance", float(x), MAX_COEFFICIENT) for x in r) for r in rows)
        if any(abs(cov[i][j] - cov[j][i]) > 1e-12 * max(1.0, abs(cov[i][j])) for i in range(k) for j in range(k)):
            raise Rejected("impossible_value", "covariance is not symmetric")
        if any(cov[i][i] < 0 for i in range(k)):
            raise Rejected("impossible_value", "covariance has a negative variance on its diagonal")
        specific = {iid: _finite(f"specific_var.{iid}", v, MAX_COEFFICIENT) for iid, v in m["specific_var"].items()}
        if any(v < 0 for v in specific.values()):
            raise Rejected("impossible_value", "specific_var has a negative variance")
        return cls(m["model_id"], parse_ts(m["as_of"]), factors, cov, specific)
