"""Amazon's account-health report (`GET_V2_SELLER_PERFORMANCE_REPORT`) as the worker reads it.

Contract section 11. A seller's SP-API poller publishes each report to the
`account-health` topic in an envelope that names the seller:

    {"schema_version": 1, "seller_id": "A1", "fetched_at": "2026-11-20T06:00:00Z",
     "report": {"accountStatuses": [...], "performanceMetrics": [...]}}

`decode_envelope(raw, now)` is strict on the envelope (like events.decode) and
tolerant on the report, which Amazon's own schema and examples disagree about
(amazon-documents.md 1.6): minute or second precision in dates, unknown keys,
`prefulfillmentCancelRate` for `preFulfillmentCancellationRate`, missing or
malformed metrics other than the cancellation rate (they are not read), an
account status outside the schema's enum (`SUSPENDED`). It returns, per
marketplace country code, Amazon's cancellation metric and the account
status, and how many entries of marketplaces outside the contract it skipped;
or raises `BadReport` (kind and a reason naming the field) for the dead-letter
topic. Pure: no Kafka, no clock.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Annotated, Literal, Optional

import msgspec

from cancelwatch.core.amazon_orders import MARKETPLACE_IDS
from cancelwatch.core import events
from cancelwatch.core.events import FUTURE_TOLERANCE, ShortId, Timestamp

# accountStatuses[].status: the schema's enum, and the statuses SellerAccountAtRisk fires on.
# `SUSPENDED` is not in the schema but appears in its own example (amazon-documents.md 1.6,
# item 3); a suspended account cannot sell, so it alerts like DEACTIVATED. Any other status
# is kept as Amazon wrote it and does not alert.
ACCOUNT_STATUSES = ("NORMAL", "AT_RISK", "DEACTIVATED")
AT_RISK_STATUSES = ("AT_RISK", "DEACTIVATED", "SUSPENDED")

# Counts larger than this are not an order count of one seller in one range.
MAX_COUNT = 1_000_000_000

Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]

# Amazon's dates: RFC 3339 with or without seconds (its examples: `2020-11-12T00:00Z`; real
# reports: `2021-10-29T00:00:00Z`), fractions of a second allowed, `Z` or an offset required.
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})", re.IGNORECASE)


class BadReport(ValueError):
    """An account-health message that cannot be used; `kind` is one of names.DEAD_LETTER_KINDS."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class CancellationRate(msgspec.Struct, frozen=True):
    """Amazon's preFulfillmentCancellationRate for one marketplace; dates in epoch seconds."""

    order_count: int           # orderCount
    cancellation_count: int    # cancellationCount: seller-fault cancelled orders
    rate: float                # a fraction: 0.005 is 0.5%
    status: str                # GOOD, BAD or NONE
    reporting_from: int        # reportingDateRange.reportingDateFrom
    reporting_to: int          # reportingDateRange.reportingDateTo


class MarketplaceHealth(msgspec.Struct, frozen=True):
    """One marketplace of a report."""

    marketplace: str                  # the contract's country code
    cancellation: CancellationRate
    account_status: Optional[str]     # accountStatuses[].status; None when the report has none
    health_rating: Optional[str]      # accountHealthRating's ahrStatus (GREAT, WARNED), if readable


class Envelope(msgspec.Struct, frozen=True):
    """A decoded `account-health` message."""

    seller_id: str
    fetched_at: datetime              # timezone-aware
    marketplaces: dict[str, MarketplaceHealth]
    skipped: int                      # performanceMetrics entries of marketplaces outside the contract

    @property
    def fetched_epoch(self) -> float:
        return self.fetched_at.timestamp()


# --- the wire shapes ---------------------------------------------------------------------------


class _Envelope(msgspec.Struct, frozen=True):
    schema_version: Literal[1]
    seller_id: ShortId
    fetched_at: Timestamp
    report: msgspec.Raw


class _Report(msgspec.Struct, frozen=True):
    performanceMetrics: list[msgspec.Raw]
    accountStatuses: list[msgspec.Raw] = []


class _AccountStatus(msgspec.Struct, frozen=True):
    marketplaceId: Text
    status: Text


class _Metrics(msgspec.Struct, frozen=True):
    """The keys of a performanceMetrics entry that are read; every other metric is left alone.
    An absent key is an empty Raw."""

    marketplaceId: Text
    preFulfillmentCancellationRate: msgspec.Raw = msgspec.Raw()
    prefulfillmentCancelRate: msgspec.Raw = msgspec.Raw()      # the schema's own example
    accountHealthRating: msgspec.Raw = msgspec.Raw()


class _DateRange(msgspec.Struct, frozen=True):
    reportingDateFrom: str
    reportingDateTo: str


class _CancellationRate(msgspec.Struct, frozen=True):
    reportingDateRange: _DateRange
    orderCount: Count
    cancellationCount: Count
    rate: Annotated[float, msgspec.Meta(ge=0, le=1)]
    status: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class _HealthRating(msgspec.Struct, frozen=True):
    ahrStatus: Optional[str] = None
    accountHealthRatingStatus: Optional[str] = None     # declared by the schema, used by no example


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_report_decoder = msgspec.json.Decoder(_Report)
_status_decoder = msgspec.json.Decoder(_AccountStatus)
_metrics_decoder = msgspec.json.Decoder(_Metrics)
_rate_decoder = msgspec.json.Decoder(_CancellationRate)
_rating_decoder = msgspec.json.Decoder(_HealthRating)


def decode_envelope(raw: bytes, now: datetime | None = None) -> Envelope:
    """Decode and validate one `account-health` message value.

    `now` is the wall clock: a `fetched_at` more than 5 minutes ahead of it is refused (it
    would hide every later report of the seller); None skips that check.
    """
    envelope = events.decode_message(_envelope_decoder, raw, lambda message: _explain(message, ""), BadReport)
    if now is not None and envelope.fetched_at > now + FUTURE_TOLERANCE:
        raise BadReport("future", f"fetched_at {envelope.fetched_at.isoformat()} is more than 5 minutes "
                                  f"ahead of the wall clock ({now.astimezone(timezone.utc).isoformat()})")
    report = _decode(_report_decoder, envelope.report, "report")
    statuses = _account_statuses(report.accountStatuses)
    marketplaces: dict[str, MarketplaceHealth] = {}
    skipped = 0
    for index, entry in enumerate(report.performanceMetrics):
        where = f"report.performanceMetrics[{index}]"
        metrics = _decode(_metrics_decoder, entry, where)
        marketplace = MARKETPLACE_IDS.get(metrics.marketplaceId)
        if marketplace is None:
            skipped += 1
            continue
        health = MarketplaceHealth(marketplace, _cancellation(metrics, where),
                                   statuses.get(marketplace), _health_rating(metrics))
        if marketplace in marketplaces and marketplaces[marketplace] != health:
            raise BadReport("invalid_event", f"{where}: a second, different entry for marketplace "
                                             f"{metrics.marketplaceId} ({marketplace})")
        marketplaces[marketplace] = health
    if not marketplaces:
        known = f" ({skipped} skipped: marketplaceId not one of the contract's marketplaces)" if skipped else ""
        raise BadReport("invalid_event", f"report.performanceMetrics: no entry of a contract marketplace{known}")
    return Envelope(envelope.seller_id, envelope.fetched_at, marketplaces, skipped)


def _account_statuses(entries: list[msgspec.Raw]) -> dict[str, str]:
    """Country code -> status; entries of marketplaces outside the contract are ignored."""
    statuses: dict[str, str] = {}
    for index, entry in enumerate(entries):
        where = f"report.accountStatuses[{index}]"
        status = _decode(_status_decoder, entry, where)
        marketplace = MARKETPLACE_IDS.get(status.marketplaceId)
        if marketplace is None:
            continue
        if statuses.get(marketplace, status.status) != status.status:
            raise BadReport("invalid_event", f"{where}: marketplace {status.marketplaceId} ({marketplace}) "
                                             f"is both {statuses[marketplace]} and {status.status}")
        statuses[marketplace] = status.status
    return statuses


def _cancellation(metrics: _Metrics, where: str) -> CancellationRate:
    key = "preFulfillmentCancellationRate"
    raw = metrics.preFulfillmentCancellationRate
    if _absent(raw):
        key, raw = "prefulfillmentCancelRate", metrics.prefulfillmentCancelRate
    if _absent(raw):
        raise BadReport("invalid_event", f"{where}.preFulfillmentCancellationRate: missing (the "
                                         f"cancellation rate is the one metric the monitor needs)")
    where = f"{where}.{key}"
    metric = _decode(_rate_decoder, raw, where)
    dates = f"{where}.reportingDateRange"
    start = _epoch(metric.reportingDateRange.reportingDateFrom, f"{dates}.reportingDateFrom")
    end = _epoch(metric.reportingDateRange.reportingDateTo, f"{dates}.reportingDateTo")
    if start > end:
        raise BadReport("invalid_event", f"{dates}: reportingDateFrom "
                                         f"{metric.reportingDateRange.reportingDateFrom} is after reportingDateTo "
                                         f"{metric.reportingDateRange.reportingDateTo}")
    if metric.cancellationCount > metric.orderCount:
        raise BadReport("invalid_event", f"{where}.cancellationCount: {metric.cancellationCount} is more than "
                                         f"orderCount {metric.orderCount}")
    return CancellationRate(metric.orderCount, metric.cancellationCount, metric.rate, metric.status, start, end)


def _health_rating(metrics: _Metrics) -> str | None:
    """ahrStatus, or the schema's accountHealthRatingStatus; None when absent or unreadable
    (it is shown, never counted)."""
    raw = metrics.accountHealthRating
    if _absent(raw):
        return None
    try:
        rating = _rating_decoder.decode(raw)
    except msgspec.ValidationError:
        return None
    return rating.ahrStatus or rating.accountHealthRatingStatus


def _absent(raw: msgspec.Raw) -> bool:
    """The key is missing or null."""
    return bytes(raw) in (b"", b"null")


def _epoch(text: str, where: str) -> int:
    """Epoch seconds (floored) of one of Amazon's dates."""
    moment = None
    if _DATE.fullmatch(text):
        try:
            moment = datetime.fromisoformat(text.upper())
        except ValueError:
            pass
    if moment is None:
        raise BadReport("invalid_event", f"{where}: {text!r} is not a timestamp like 2026-08-03T00:00:00Z "
                                         f"(seconds optional, Z or an offset required)")
    return math.floor(moment.timestamp())


def _decode(decoder: msgspec.json.Decoder, raw: msgspec.Raw, where: str):
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as error:
        raise BadReport("invalid_event", _explain(str(error), where)) from None


def _explain(message: str, where: str) -> str:
    """msgspec's message with its JSON path (`$.a[0].b`) turned into the field's name (`a[0].b`)."""
    path = ""
    if " - at `$" in message:
        message, _, path = message.rpartition(" - at `$")
        path = path.rstrip("`").lstrip(".")
    if message.startswith("Object missing required field"):
        field = message.split("`")[1] if "`" in message else "?"
        message = "missing"
        path = f"{path}.{field}" if path else field
    elif message.startswith("Expected"):
        message = "expected" + message[len("Expected"):]
    field = ".".join(part for part in (where, path) if part).replace(".[", "[")
    return f"{field or 'message'}: {message}"


def at_risk(account_status: str | None) -> bool:
    """SellerAccountAtRisk fires for this account status."""
    return account_status in AT_RISK_STATUSES
