"""`cancelwatch simulate`: realistic order and cancellation traffic, to Kafka or a file.

The simulated span runs from --start (default: --history before now) for
--duration. The part of the span before now is history: sent as fast as
possible, with real past timestamps. The part after now is live: sent when
due, with simulated time running --speed times faster than the wall clock.
Live timestamps are the wall-clock moment of sending, never ahead of it, so
an accelerated live phase means a higher event rate, not future timestamps.
The scenario's incident starts when the live phase does (or, without one,
shortly before the end of the span). With --reports, Amazon's account-health
report of every seller follows the history (or ends a span that ends by now)
and is refreshed every --report-every of simulated time; --report-gap
withholds a share of one seller's orders that Amazon still counts. See
docs/commands.md.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import BinaryIO, Callable, Iterable

from tqdm import tqdm

from cancelwatch import names, settings

from cancelwatch.core import account_health, events, policy

from cancelwatch.tools import account_health_reports, scenarios
from cancelwatch.tools.producer import EventProducer, deliver

_SPAN = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
STATUS_SECONDS = 30
FOREVER = "forever"


def parse_span(text: str) -> timedelta:
    """`8d`, `7d12h`, `90m`, `30s` -> timedelta."""
    compact = text.replace(" ", "")
    parts = _SPAN.findall(compact)
    if not parts or "".join(number + unit for number, unit in parts) != compact:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time span like 8d, 7d12h, 90m or 30s")
    return timedelta(seconds=sum(float(number) * _UNITS[unit] for number, unit in parts))


def parse_duration(text: str) -> timedelta | str:
    return FOREVER if text == FOREVER else parse_span(text)


def parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time like 2026-11-20T13:05:00Z") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone; add Z or an offset like +01:00")
    return moment.astimezone(timezone.utc)


def parse_speed(text: str) -> float | None:
    """`realtime` -> 1, `60` -> 60, `max` -> None (as fast as possible)."""
    if text == "max":
        return None
    if text == "realtime":
        return 1.0
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not realtime, max or a factor like 60") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"speed must be positive, not {text}")
    return value


def parse_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction between 0 and 1") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cancelwatch simulate",
        description="Generate realistic order and cancellation traffic and send it to Kafka "
                    "(or write JSON Lines).",
        epilog="scenarios: " + "; ".join(f"{name}: {scenario.description}"
                                         for name, scenario in scenarios.SCENARIOS.items()))
    parser.add_argument("--scenario", choices=list(scenarios.SCENARIOS), default="steady",
                        help="what happens at the focus seller (default steady)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--sellers", type=int, default=30, help="number of sellers (default 30)")
    parser.add_argument("--history", type=parse_span, default=timedelta(days=8),
                        help="simulated time before now, sent as fast as possible (default 8d)")
    parser.add_argument("--start", type=parse_time,
                        help="simulated start (RFC 3339) instead of --history")
    parser.add_argument("--duration", type=parse_duration,
                        help="simulated span from the start: a span like 7d6h, or `forever`; "
                             "default: up to now with --speed max, forever otherwise")
    parser.add_argument("--speed", type=parse_speed, default=None,
                        help="pace of the live part (after now): realtime, a factor like 60 "
                             "(simulated seconds per wall second), or max, for a span that ends "
                             "by now (default max)")
    parser.add_argument("--ramp", type=parse_span, default=timedelta(hours=4),
                        help="simulated time the incident takes to reach its peak (default 4h)")
    parser.add_argument("--duplicates", type=parse_rate, default=0.0,
                        help="fraction of events sent twice with the same event_id (default 0)")
    parser.add_argument("--reorder", type=parse_rate, default=0.0,
                        help="fraction of events delivered late, after up to 500 later events "
                             "(default 0)")
    parser.add_argument("--output", metavar="FILE",
                        help="write JSON Lines to FILE (`-` for stdout) instead of sending to Kafka")
    parser.add_argument("--reports", action="store_true",
                        help="also publish each seller's account-health report, as Amazon counts its "
                             "orders, to the account-health topic")
    parser.add_argument("--report-every", type=parse_span, default=timedelta(minutes=1),
                        help="simulated time between two reports of a seller (default 1m)")
    parser.add_argument("--report-gap", type=parse_rate, default=0.0,
                        help="share of one seller's orders never published, yet counted by Amazon "
                             "(default 0)")
    parser.add_argument("--reports-output", metavar="FILE",
                        help="with --output: write the reports' envelopes as JSON Lines to FILE")
    return parser


def paced(stream: Iterable[events.Event], live_from: datetime | None,
          clock: Callable[[], datetime], sleep: Callable[[float], None]) -> Iterable[events.Event]:
    """Hold each event with occurred_at after `live_from` until the wall clock reaches it."""
    for event in stream:
        if live_from is not None and event.occurred_at > live_from:
            wait = (event.occurred_at - clock()).total_seconds()
            if wait > 0:
                sleep(wait)
        yield event


def write_jsonl(stream: Iterable[events.Event | account_health_reports.Report], output: BinaryIO,
                reports: BinaryIO | None = None) -> Counter:
    counts: Counter = Counter()
    for event in stream:
        if isinstance(event, account_health_reports.Report):
            if reports is not None:
                reports.write(event.value + b"\n")
            counts[names.ACCOUNT_HEALTH_TOPIC] += 1
            continue
        output.write(events.encode(event) + b"\n")
        counts[events.TOPIC_OF_TYPE[type(event)]] += 1
    output.flush()
    if reports is not None:
        reports.flush()
    return counts


def resolve_span(args: argparse.Namespace, now: datetime) -> tuple[datetime, datetime | None]:
    """(start, end) of the simulated span; end None is forever. ValueError says what is wrong."""
    start = args.start or now - args.history
    if args.duration == FOREVER or (args.duration is None and args.speed is not None):
        end = None
    elif args.duration is None:
        if start >= now:
            raise ValueError("--start is not in the past; give --duration too")
        end = now
    else:
        end = start + args.duration
    if args.speed is None and (end is None or end > now):
        raise ValueError("the span reaches past now, so with --speed max its events would be ahead "
                         "of the wall clock; use --speed realtime or a factor like 60 for the part "
                         "after now, or end the span by now")
    return start, end


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(parser, args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.sellers < 1:
        parser.error("--sellers must be at least 1")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    try:
        start, end = resolve_span(args, now)
    except ValueError as error:
        parser.error(str(error))
    live = end is None or end > now
    speed = args.speed or 1.0
    pivot = max(now, start) if live else None
    if scenarios.SCENARIOS[args.scenario].ageing and (pivot or end) - start < timedelta(days=7):
        parser.error("the ageing scenario needs at least 7 days of history before its pivot "
                     "(the busy day 6 to 7 days back); use --history 7d or more")
    if args.reports_output and not (args.reports and args.output):
        parser.error("--reports-output is where --reports go with --output; give both")
    if args.reports and args.output and not args.reports_output:
        parser.error("with --output, give --reports-output FILE for the account-health reports")
    if args.report_every < timedelta(seconds=1):
        parser.error("--report-every must be at least 1s")
    timeline = scenarios.Timeline(pivot, speed) if live else scenarios.Timeline()
    simulation = scenarios.Simulation(args.scenario, args.seed, start=start, end=end,
                                      sellers=args.sellers, pivot=pivot, ramp=args.ramp,
                                      timeline=timeline)
    view = None
    stream: Iterable = simulation.events()
    if args.reports or args.report_gap:
        view = account_health_reports.AmazonView(
            policy.load(settings.load().policy_path),
            {seller.seller_id: seller.marketplaces for seller in simulation.sellers},
            account_health_reports.gap_seller(simulation.sellers), args.report_gap)
        due = ()
        if args.reports:
            due = (timeline.stamp(moment) for moment in
                   account_health_reports.due_moments(pivot or end, args.report_every, end))
        stream = account_health_reports.with_reports(stream, view, due)
    describe(simulation, live, speed, view, args.report_every if args.reports else None)
    stream = scenarios.disorder(stream, args.duplicates, args.reorder, args.seed)
    history_end = min(now, end) if end is not None else now
    stream = _progress(stream, start, history_end)
    stream = paced(stream, now if live else None, lambda: datetime.now(timezone.utc), time.sleep)
    if args.output:
        return _to_file(stream, args.output, args.reports_output)
    return _to_kafka(stream, live, args.reports)


def _interrupt(_signum, _frame) -> None:
    """SIGTERM stops like Ctrl-C: what was handed to the producer is flushed and summarised."""
    raise KeyboardInterrupt


def describe(simulation: scenarios.Simulation, live: bool, speed: float,
             view: account_health_reports.AmazonView | None = None,
             report_every: timedelta | None = None) -> None:
    end = simulation.end.isoformat() if simulation.end else "forever"
    lines = [f"simulate: scenario {simulation.scenario.name}, {len(simulation.sellers)} sellers, "
             f"{simulation.start.isoformat()} .. {end}"]
    if simulation.focus is not None:
        lines.append(f"simulate: focus seller {simulation.focus.seller_id} in "
                     f"{simulation.focus.marketplaces[0]}: {simulation.scenario.description}")
        lines.append(f"simulate: the incident starts at {simulation.pivot.isoformat()}"
                     + (f", ramp {simulation.ramp} simulated = {simulation.ramp / speed} wall time"
                        if live else ""))
    if live:
        lines.append(f"simulate: history first as fast as possible, then live at {speed:g}x")
    if report_every is not None:
        lines.append(f"simulate: account-health reports of every seller "
                     f"{'after the history, then every ' + str(report_every) + ' simulated' if live else 'at the end'}")
    if view is not None and view.gap_seller is not None:
        places = ",".join(view.sellers[view.gap_seller])
        lines.append(f"simulate: gap seller {view.gap_seller} in {places}: {view.gap:.0%} of its orders are "
                     f"never published, yet Amazon counts them")
    print("\n".join(lines), file=sys.stderr)


def _progress(stream: Iterable[events.Event], start: datetime, history_end: datetime):
    """Progress bar over the history part (stderr, only on a terminal)."""
    total = max(0, int((history_end - start).total_seconds() / 3600))
    bar = tqdm(total=total, unit="h", desc="history", file=sys.stderr,
               disable=not sys.stderr.isatty() or total == 0, leave=False)
    done = 0
    with bar:
        for event in stream:
            if not bar.disable and event.occurred_at <= history_end:
                hours = int((event.occurred_at - start).total_seconds() / 3600)
                if hours > done:
                    bar.update(hours - done)
                    done = hours
            elif not bar.disable:
                bar.close()
            yield event


def _to_file(stream: Iterable[events.Event], path: str, reports_path: str | None) -> int:
    try:
        with contextlib.ExitStack() as files:
            reports = files.enter_context(open(reports_path, "wb")) if reports_path else None
            output = sys.stdout.buffer if path == "-" else files.enter_context(open(path, "wb"))
            counts = write_jsonl(stream, output, reports)
    except KeyboardInterrupt:
        print("simulate: interrupted", file=sys.stderr)
        return 0
    except OSError as error:
        print(f"cancelwatch simulate: cannot write {error.filename or path}: {error.strerror}", file=sys.stderr)
        return 1
    reports = counts.pop(names.ACCOUNT_HEALTH_TOPIC, 0)
    print(f"simulate: wrote {sum(counts.values())} events ({_by_topic(counts)})"
          + (f" and {reports} account-health reports" if reports else ""), file=sys.stderr)
    return 0


def _to_kafka(stream: Iterable[events.Event], live: bool, reports: bool = False) -> int:
    def send(producer: EventProducer) -> None:
        sent = 0
        last_status = time.monotonic()
        try:
            for event in stream:
                if isinstance(event, account_health_reports.Report):
                    producer.send_account_health(event.seller_id, event.value)
                    continue
                producer.send(event)
                sent += 1
                if live and time.monotonic() - last_status >= STATUS_SECONDS:
                    last_status = time.monotonic()
                    print(f"simulate: {sent} events sent, up to {event.occurred_at.isoformat()}",
                          file=sys.stderr)
        except KeyboardInterrupt:
            print("simulate: interrupted; flushing", file=sys.stderr)

    try:
        report = deliver("simulate", send, account_health=reports)
    except (events.BadEvent, account_health.BadReport) as error:
        print(f"cancelwatch simulate: generated an invalid event or report ({error}); this is a bug in "
              "the simulator, please report it with the options used", file=sys.stderr)
        return 1
    if report is None:
        return 1
    sent_by_topic = Counter(report.sent)
    sent_reports = sent_by_topic.pop(settings.load().account_health_topic, 0)
    print(f"simulate: sent {sum(sent_by_topic.values())} events ({_by_topic(sent_by_topic)})"
          + (f" and {sent_reports} account-health reports" if sent_reports else "")
          + f", {len(report.failed)} failed", file=sys.stderr)
    for what, reason in report.failed[:10]:
        what = what if what.startswith("account-health") else f"event {what}"
        print(f"simulate: {what} not delivered: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


def _by_topic(counts: Counter) -> str:
    return ", ".join(f"{topic} {count}" for topic, count in sorted(counts.items())) or "none"
