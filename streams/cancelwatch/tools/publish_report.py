"""`cancelwatch publish-report --seller-id A1 [FILE|-]`: an Amazon account-health report to Kafka.

Wraps one `GET_V2_SELLER_PERFORMANCE_REPORT` document, as SP-API returns it,
in the envelope of contract section 11 (the report names no seller) and
publishes it to the account-health topic, keyed by seller_id. The envelope is
checked the way the worker reads it (streams/cancelwatch/core/account_health.py):
a report the worker would refuse is reported with the field at fault and not
sent. `fetched_at` is when the report was fetched: now, unless given.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

import orjson

from cancelwatch import settings

from cancelwatch.core import account_health
from cancelwatch.tools.producer import ProducerError, ensure_topics, send_one
from cancelwatch.tools.publish import open_source

SEND_TIMEOUT_SECONDS = 30


def envelope(report: bytes, seller_id: str, fetched_at: datetime, now: datetime) -> tuple[bytes, account_health.Envelope]:
    """The account-health message for `report` (the document's bytes) and what the worker reads
    in it; raises account_health.BadReport when the worker would refuse it."""
    try:
        document = orjson.loads(report)
    except orjson.JSONDecodeError as error:
        raise account_health.BadReport("invalid_json", f"the report is not valid JSON: {error.msg}") from None
    if isinstance(document, dict) and "report" in document and "performanceMetrics" not in document:
        raise account_health.BadReport(
            "invalid_event", "this is already an envelope (it has `report`): pass the report itself")
    raw = orjson.dumps({"schema_version": 1, "seller_id": seller_id,
                        "fetched_at": fetched_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "report": document})
    return raw, account_health.decode_envelope(raw, now)


def describe(decoded: account_health.Envelope) -> str:
    """One line on what the worker will compare: marketplaces, ranges, statuses."""
    parts = []
    for marketplace, entry in sorted(decoded.marketplaces.items()):
        rate = entry.cancellation
        span = (f"{datetime.fromtimestamp(rate.reporting_from, timezone.utc):%Y-%m-%d %H:%M} to "
                f"{datetime.fromtimestamp(rate.reporting_to, timezone.utc):%Y-%m-%d %H:%M}")
        parts.append(f"{marketplace} ({rate.cancellation_count} of {rate.order_count} orders, {span}, "
                     f"account {entry.account_status or 'status not given'})")
    skipped = f"; {decoded.skipped} entries of marketplaces outside the contract skipped" if decoded.skipped else ""
    return ", ".join(parts) + skipped


def publish(loaded: settings.Settings, seller_id: str, raw: bytes) -> str:
    """Send the message and wait for the broker's acknowledgement; return where it was written."""
    topic = loaded.account_health_topic
    ensure_topics(loaded, names=[topic])
    return send_one(loaded, "publish-report", topic, seller_id.encode(), raw, "the report",
                    SEND_TIMEOUT_SECONDS)


def _time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a timestamp like 2026-11-20T06:00:00Z") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no offset: add Z or +HH:MM")
    return moment


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cancelwatch publish-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", metavar="FILE", nargs="?", default="-",
                        help="the report document (JSON) as SP-API returns it; `-` or none for stdin")
    parser.add_argument("--seller-id", required=True, help="the seller the report belongs to")
    parser.add_argument("--fetched-at", type=_time,
                        help="when the report was fetched, RFC 3339 with an offset (default now)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the envelope on standard output instead of publishing it")
    args = parser.parse_args(argv)
    if not 1 <= len(args.seller_id) <= 64:
        parser.error("--seller-id must be 1 to 64 characters")
    now = datetime.now(timezone.utc)
    source = open_source(args.file, "publish-report")
    if source is None:
        return 2
    with source:
        report = source.read()
    try:
        raw, decoded = envelope(report, args.seller_id, args.fetched_at or now, now)
    except account_health.BadReport as bad:
        print(f"cancelwatch publish-report: {args.file}: {bad.reason}; nothing published", file=sys.stderr)
        return 1
    if args.dry_run:
        sys.stdout.buffer.write(raw + b"\n")
        print(f"publish-report: seller {args.seller_id}: {describe(decoded)}; printed (--dry-run, nothing "
              f"published)", file=sys.stderr)
        return 0
    try:
        where = publish(settings.load(), args.seller_id, raw)
    except ProducerError as error:
        print(f"cancelwatch publish-report: {error}", file=sys.stderr)
        return 1
    print(f"publish-report: seller {args.seller_id}: {describe(decoded)}; published to {where}", file=sys.stderr)
    return 0
