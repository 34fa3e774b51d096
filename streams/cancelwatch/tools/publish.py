"""`cancelwatch publish FILE`: validate a file of events and send it to Kafka.

JSON Lines (one event object per line) or CSV with a header row whose
columns are the event fields (`items` as a JSON string). Every line is
checked with the definitions the worker decodes with. By default the whole
file is validated first and nothing is sent if any line is bad; with
--skip-invalid the good lines are sent and the bad ones reported.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import BinaryIO, Iterator

from tqdm import tqdm

from cancelwatch.core import events
from cancelwatch.tools.producer import EventProducer, deliver

MAX_REPORTED = 100
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
_INTEGER_FIELDS = ("schema_version",)


@dataclass
class Checked:
    """One line of the input: its number, and either the event and its bytes or the reason it is bad."""

    line: int
    event: events.Event | None = None
    raw: bytes = b""
    error: str = ""


@dataclass
class Summary:
    valid: int = 0
    invalid: list[Checked] = field(default_factory=list)


def detect_format(path: str, head: bytes) -> str:
    lowered = path.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    return "jsonl" if head.lstrip()[:1] == b"{" else "csv"


def _jsonl_lines(source: BinaryIO) -> Iterator[tuple[int, bytes | None, str]]:
    for number, line in enumerate(source, start=1):
        line = line.strip()
        if line:
            yield number, line, ""


def _csv_value(column: str, value: str):
    if column in _INTEGER_FIELDS:
        try:
            return int(value)
        except ValueError:
            return value
    if column == "buyer_requested":
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        return value
    if column == "items":
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"items is not a JSON list of {{sku, quantity}}: {error.msg}") from None
    return value


def _csv_lines(source: BinaryIO) -> Iterator[tuple[int, bytes | None, str]]:
    text = io.TextIOWrapper(source, encoding="utf-8", newline="")
    reader = csv.DictReader(text)
    if not reader.fieldnames:
        return
    try:
        for row in reader:
            number = reader.line_num
            if None in row:
                yield number, None, f"{len(row[None])} more cells than the header has columns"
                continue
            try:
                record = {column: _csv_value(column, value)
                          for column, value in row.items() if value not in (None, "")}
            except ValueError as error:
                yield number, None, str(error)
                continue
            if not record:
                continue
            yield number, json.dumps(record).encode("utf-8"), ""
    finally:
        text.detach()


def check_lines(source: BinaryIO, fmt: str, now: datetime) -> Iterator[Checked]:
    """Every non-empty line of the input, decoded and validated as the worker would."""
    lines = _csv_lines(source) if fmt == "csv" else _jsonl_lines(source)
    try:
        for number, raw, problem in lines:
            if raw is None:
                yield Checked(number, error=problem)
                continue
            try:
                yield Checked(number, events.decode(raw, now), raw)
            except events.BadEvent as error:
                yield Checked(number, error=error.reason)
    except UnicodeDecodeError as error:
        yield Checked(0, error=f"the file is not UTF-8 text ({error.reason} at byte {error.start})")


def open_source(path: str, command: str) -> BinaryIO | None:
    """The file, or standard input (`-`) spooled so it can be read twice; None, once the error
    is printed as `cancelwatch COMMAND: cannot read ...`, when the file cannot be opened."""
    if path != "-":
        try:
            return open(path, "rb")
        except OSError as error:
            print(f"cancelwatch {command}: cannot read {path}: {error.strerror}", file=sys.stderr)
            return None
    spool = tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024)
    shutil.copyfileobj(sys.stdin.buffer, spool)
    spool.seek(0)
    return spool  # type: ignore[return-value]


def _size(source: BinaryIO) -> int:
    position = source.tell()
    size = source.seek(0, io.SEEK_END)
    source.seek(position)
    return size


class Progress:
    """A byte-count progress bar on stderr, shown only on a terminal."""

    def __init__(self, source: BinaryIO, label: str) -> None:
        self.source = source
        self.bar = tqdm(total=_size(source), unit="B", unit_scale=True, desc=label,
                        file=sys.stderr, disable=not sys.stderr.isatty(), leave=False)
        self.position = 0

    def update(self) -> None:
        if self.bar.disable:
            return
        try:
            position = self.source.tell()
        except OSError:
            return
        if position > self.position:
            self.bar.update(position - self.position)
            self.position = position

    def close(self) -> None:
        self.bar.close()


def _report_invalid(checked: Checked, count: int) -> None:
    if count <= MAX_REPORTED:
        where = f"line {checked.line}" if checked.line else "input"
        print(f"{where}: {checked.error}", file=sys.stderr)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cancelwatch publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", metavar="FILE", help="JSON Lines or CSV file of events; `-` for stdin")
    parser.add_argument("--format", choices=("auto", "jsonl", "csv"), default="auto",
                        help="input format (default auto: by extension, else by the first byte)")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="send the valid lines even if some are invalid (default: send nothing "
                             "if any line is invalid)")
    parser.add_argument("--check", action="store_true",
                        help="validate only; send nothing")
    args = parser.parse_args(argv)
    source = open_source(args.file, "publish")
    if source is None:
        return 2
    with source:
        head = source.read(4096)
        source.seek(0)
        fmt = detect_format(args.file if args.file != "-" else "", head) if args.format == "auto" \
            else args.format
        if args.check or not args.skip_invalid:
            summary = _validate(source, fmt)
            if summary.invalid or args.check:
                return _finish_check(summary, args.check)
            source.seek(0)
        return _send(source, fmt)


def _validate(source: BinaryIO, fmt: str) -> Summary:
    summary = Summary()
    progress = Progress(source, "validating")
    for checked in check_lines(source, fmt, datetime.now(timezone.utc)):
        progress.update()
        if checked.error:
            summary.invalid.append(checked)
            _report_invalid(checked, len(summary.invalid))
        else:
            summary.valid += 1
    progress.close()
    return summary


def _finish_check(summary: Summary, check_only: bool) -> int:
    hidden = len(summary.invalid) - MAX_REPORTED
    if hidden > 0:
        print(f"... and {hidden} more invalid lines", file=sys.stderr)
    if check_only:
        print(f"publish: {summary.valid} valid, {len(summary.invalid)} invalid; nothing sent (--check)",
              file=sys.stderr)
    else:
        print(f"publish: {len(summary.invalid)} invalid lines, {summary.valid} valid; nothing sent. "
              "Fix the lines above, or use --skip-invalid to send the valid ones.", file=sys.stderr)
    return 1 if summary.invalid else 0


def _send(source: BinaryIO, fmt: str) -> int:
    invalid = 0

    def send(producer: EventProducer) -> None:
        nonlocal invalid
        progress = Progress(source, "sending")
        for checked in check_lines(source, fmt, datetime.now(timezone.utc)):
            progress.update()
            if checked.error:
                invalid += 1
                _report_invalid(checked, invalid)
                continue
            producer.send_encoded(checked.event, checked.raw)
        progress.close()

    report = deliver("publish", send)
    if report is None:
        return 1
    if invalid > MAX_REPORTED:
        print(f"... and {invalid - MAX_REPORTED} more invalid lines", file=sys.stderr)
    for event_id, reason in report.failed[:MAX_REPORTED]:
        print(f"event {event_id}: not delivered: {reason}", file=sys.stderr)
    per_topic = ", ".join(f"{topic} {count}" for topic, count in sorted(report.sent.items())) or "none"
    print(f"publish: sent {report.sent_total} events ({per_topic}); {invalid} invalid lines skipped; "
          f"{len(report.failed)} not delivered", file=sys.stderr)
    return 1 if report.failed else 0

