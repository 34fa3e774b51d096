"""`cancelwatch import-orders --seller-id A1 [FILE|-]`: Amazon order documents to events on Kafka.

Reads Orders API v2026-01-01 documents (getOrder responses, searchOrders
pages or bare orders; one JSON document, or JSON Lines) and publishes the
events of each order (contract section 12; mapping in streams/cancelwatch/core/amazon_orders.py).
An order that cannot be mapped is reported with its position and field and
none of its events is sent; the others are.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, BinaryIO, Iterator

import orjson
from tqdm import tqdm

from cancelwatch.core import amazon_orders
from cancelwatch.core.amazon_orders import Rejected
from cancelwatch.tools.producer import EventProducer, deliver
from cancelwatch.tools.publish import MAX_REPORTED, Progress, open_source


@dataclass
class Tally:
    orders: int = 0
    events: int = 0
    rejected: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def documents(source: BinaryIO) -> Iterator[tuple[str, Any]]:
    """(position, parsed document or Rejected) for each document of the input.

    JSON Lines when the first non-blank line is a JSON value by itself (positions `line N`);
    otherwise the whole input is one JSON document (`document`). A JSON list holds one document
    per element (`document[i]`, `line N[i]`).
    """
    first = b""
    for first in source:
        if first.strip():
            break
    try:
        orjson.loads(first)
        jsonl = bool(first.strip())
    except orjson.JSONDecodeError:
        jsonl = False
    source.seek(0)
    if jsonl:
        for number, line in enumerate(source, start=1):
            if line.strip():
                yield from _elements(f"line {number}", _parse(line))
        return
    text = source.read()
    if text.strip():
        yield from _elements("document", _parse(text))


def _elements(position: str, document: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(document, list):
        for index, element in enumerate(document):
            yield f"{position}[{index}]", element
    else:
        yield position, document


def _parse(text: bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as error:
        where = f" at line {error.lineno}, column {error.colno}" if text.count(b"\n") > 1 else ""
        return Rejected("", f"not valid JSON{where}: {error.msg}")


def _report(position: str, rejected: Rejected, tally: Tally) -> None:
    tally.rejected += 1
    if tally.rejected <= MAX_REPORTED:
        print(f"{position}: {rejected}", file=sys.stderr)


def run(source: BinaryIO, seller_id: str, producer: EventProducer | None) -> Tally:
    """Map every order of the input; send the events (producer) or print them (None)."""
    tally = Tally()
    now = datetime.now(timezone.utc)
    progress = Progress(source, "importing")
    for position, document in documents(source):
        progress.update()
        if isinstance(document, Rejected):
            _report(position, document, tally)
            continue
        found_orders = list(amazon_orders.orders_in(document))
        bar = tqdm(found_orders, desc="orders", unit=" orders", file=sys.stderr, leave=False,
                   disable=len(found_orders) < 1000 or not sys.stderr.isatty())
        for found in bar:
            if found.rejected is not None:
                _report(position, found.rejected, tally)
                continue
            try:
                mapped = amazon_orders.map_order(found.order, seller_id, now=now, path=found.path)
            except Rejected as rejected:
                _report(position, rejected, tally)
                continue
            tally.orders += 1
            tally.events += len(mapped)
            for one in mapped:
                if producer is None:
                    sys.stdout.buffer.write(one.raw + b"\n")
                else:
                    producer.send_encoded(one.event, one.raw)
    progress.close()
    return tally


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cancelwatch import-orders", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", metavar="FILE", nargs="?", default="-",
                        help="Orders API v2026-01-01 JSON or JSON Lines; `-` or none for stdin")
    parser.add_argument("--seller-id", required=True,
                        help="the seller the orders belong to (Amazon's documents do not name it)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the events as JSON Lines on standard output instead of publishing them")
    args = parser.parse_args(argv)
    if not 1 <= len(args.seller_id) <= 64:
        parser.error("--seller-id must be 1 to 64 characters")
    source = open_source(args.file, "import-orders")
    if source is None:
        return 2
    with source:
        if args.dry_run:
            tally = run(source, args.seller_id, None)
            sys.stdout.flush()
            return _summary(tally, "printed (--dry-run, nothing published)")
        tally = Tally()

        def send(producer: EventProducer) -> None:
            nonlocal tally
            tally = run(source, args.seller_id, producer)

        report = deliver("import-orders", send)
        if report is None:
            return 1
    tally.failed = report.failed
    for event_id, reason in tally.failed[:MAX_REPORTED]:
        print(f"event {event_id}: not delivered: {reason}", file=sys.stderr)
    return _summary(tally, "published")


def _summary(tally: Tally, verb: str) -> int:
    hidden = tally.rejected - MAX_REPORTED
    if hidden > 0:
        print(f"... and {hidden} more rejected", file=sys.stderr)
    failed = f", {len(tally.failed)} not delivered" if tally.failed else ""
    print(f"import-orders: {tally.orders} orders, {tally.events} events {verb}{failed}; "
          f"{tally.rejected} documents rejected", file=sys.stderr)
    return 1 if tally.rejected or tally.failed else 0
