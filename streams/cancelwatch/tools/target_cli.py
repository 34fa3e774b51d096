"""`cancelwatch target`: set, clear and list sellers' own limits (contract section 10).

A target is a message on the compacted seller-targets topic
(CANCELWATCH_TARGETS_TOPIC), key `{seller_id}/{marketplace}`; clearing it
sends a tombstone. Every message is checked with the decoder the worker uses
(streams/cancelwatch/core/targets.py) before it is sent. The topic is created compacted, with
one partition, when missing: every worker reads all of it, so more partitions
would buy nothing, and one partition keeps every key's history in one order.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from datetime import datetime, timezone

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.errors import KafkaError

from cancelwatch import names, settings, topics

from cancelwatch.core import policy, targets
from cancelwatch.tools.producer import ProducerError, _unreachable, send_one

READ_TIMEOUT_SECONDS = 30
COMPACT = {"cleanup.policy": "compact"}


def _percent(bps: int) -> str:
    return f"{bps / 100:.2f}%"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cancelwatch target", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, metavar="{set,clear,list}")
    set_parser = actions.add_parser("set", help="set a seller's own limit and warning level in a marketplace")
    _seller_options(set_parser)
    set_parser.add_argument("--limit", help="the seller's limit: 0.5%% or 0.005 (whole basis points)")
    set_parser.add_argument("--warning", help="the warning level, below the limit: 0.4%% or 0.004")
    set_parser.add_argument("--preset", help="a preset of the policy file (presets:) instead of --limit "
                                             "and --warning, e.g. sfp_us")
    set_parser.add_argument("--note", help="text shown with the limit in alerts (replaces a preset's note)")
    clear_parser = actions.add_parser("clear", help="remove a seller's target: the marketplace's limits apply again")
    _seller_options(clear_parser)
    list_parser = actions.add_parser("list", help="print the targets in force (latest message per seller "
                                                  "and marketplace)")
    list_parser.add_argument("--marketplace", "-m", choices=names.MARKETPLACES, metavar="CODE",
                             help="only this marketplace")
    list_parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.epilog = "actions:\n" + "".join(
        "  " + sub.format_usage().removeprefix("usage: ") for sub in (set_parser, clear_parser, list_parser))
    return parser


def _seller_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seller-id", required=True, help="the seller (1 to 64 characters)")
    parser.add_argument("--marketplace", "-m", required=True, choices=names.MARKETPLACES, metavar="CODE",
                        help="marketplace code, e.g. US")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    loaded = settings.load()
    try:
        if args.action == "set":
            return _set(args, loaded)
        if args.action == "clear":
            return _clear(args, loaded)
        return _list(args, loaded)
    except ProducerError as error:
        print(f"cancelwatch target {args.action}: {error}", file=sys.stderr)
        return 1


def _fail(action: str, message: str) -> int:
    print(f"cancelwatch target {action}: {message}", file=sys.stderr)
    return 2


def _set(args: argparse.Namespace, loaded: settings.Settings) -> int:
    try:
        rules = policy.load(loaded.policy_path)
    except policy.PolicyError as error:
        return _fail("set", str(error))
    if args.preset is not None:
        if args.limit is not None or args.warning is not None:
            return _fail("set", "give either --preset or --limit and --warning, not both")
        preset = rules.presets.get(args.preset)
        if preset is None:
            known = ", ".join(sorted(rules.presets)) or "none"
            return _fail("set", f"no preset {args.preset!r} in {loaded.policy_path} (presets: {known})")
        target = targets.from_preset(args.seller_id, args.marketplace, preset, args.note)
    else:
        if args.limit is None or args.warning is None:
            return _fail("set", "give --limit and --warning (e.g. --limit 0.5% --warning 0.4%), or --preset")
        try:
            limit_bps = targets.parse_fraction("--limit", args.limit)
            warning_bps = targets.parse_fraction("--warning", args.warning)
        except ValueError as error:
            return _fail("set", str(error))
        if warning_bps >= limit_bps:
            return _fail("set", f"--warning {args.warning} must be below --limit {args.limit}")
        target = targets.Target(args.seller_id, args.marketplace, limit_bps, warning_bps, args.note)
    try:
        target = targets.validated(target)
    except targets.BadTarget as error:
        return _fail("set", error.reason)
    marketplace_limit = min(window.limit_bps for window in rules.windows(args.marketplace))
    if target.limit_bps > marketplace_limit:
        return _fail("set", f"the {_percent(target.limit_bps)} limit is above {args.marketplace}'s own "
                            f"{_percent(marketplace_limit)}: a target is a stricter limit, and a looser "
                            "one would hold the seller's alerts until after Amazon's limit is crossed")
    where = _send(loaded, target.seller_id, target.marketplace, targets.encode_target(target))
    note = f" ({target.note})" if target.note else ""
    print(f"target set: seller {target.seller_id} in {target.marketplace}: limit {_percent(target.limit_bps)}, "
          f"warning level {_percent(target.warning_bps)}{note}; {where}")
    return 0


def _clear(args: argparse.Namespace, loaded: settings.Settings) -> int:
    try:
        targets.decode_target(targets.target_key(args.seller_id, args.marketplace), None)
    except targets.BadTarget as error:
        return _fail("clear", error.reason)
    where = _send(loaded, args.seller_id, args.marketplace, None)
    print(f"target cleared: seller {args.seller_id} in {args.marketplace} is held to the marketplace's "
          f"limits again; {where}")
    return 0


def _admin(loaded: settings.Settings) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(bootstrap_servers=loaded.bootstrap_servers,
                                client_id=f"{loaded.app_id}-target-admin",
                                **loaded.kafka_security.kafka_python_options())
    except KafkaError as error:
        raise _unreachable(loaded, error) from None


def ensure_topic(loaded: settings.Settings) -> bool:
    """Create the targets topic, compacted, if missing (True when created). An existing topic
    that is not compacted is reported: its targets would be deleted after its retention."""
    topic = loaded.targets_topic
    admin = _admin(loaded)
    try:
        if topics.create_missing(admin, [topic], 1, configs=COMPACT):
            return True
        response = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entries = response[0].resources[0][4]
        cleanup = next((entry[1] for entry in entries if entry[0] == "cleanup.policy"), "")
        if "compact" not in cleanup.split(","):
            print(f"cancelwatch target: warning: topic {topic} has cleanup.policy={cleanup or '?'}, not "
                  "compact: its targets are deleted after the topic's retention. Make it compacted "
                  f"(kafka-configs.sh --alter --entity-type topics --entity-name {topic} "
                  "--add-config cleanup.policy=compact)", file=sys.stderr)
        return False
    except KafkaError as error:
        raise ProducerError(f"cannot create or inspect topic {topic}: {error}") from None
    finally:
        admin.close()


def _send(loaded: settings.Settings, seller_id: str, marketplace: str, value: bytes | None) -> str:
    """Send one message and wait for the broker's acknowledgement; return where it was written."""
    ensure_topic(loaded)
    return send_one(loaded, "target", loaded.targets_topic, targets.target_key(seller_id, marketplace), value,
                    timeout=READ_TIMEOUT_SECONDS)


@dataclasses.dataclass
class TopicContents:
    """The targets topic read to its end: the targets in force by (seller_id, marketplace), the
    time of each one's message (epoch milliseconds), and the messages the worker refuses
    (`topic/partition@offset: reason`)."""

    in_force: dict[tuple[str, str], targets.Target] = dataclasses.field(default_factory=dict)
    set_at: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    refused: list[str] = dataclasses.field(default_factory=list)


def read_targets(loaded: settings.Settings) -> TopicContents:
    """Every target in force, read from the beginning of the topic to its end."""
    topic = loaded.targets_topic
    try:
        consumer = KafkaConsumer(bootstrap_servers=loaded.bootstrap_servers, group_id=None,
                                 enable_auto_commit=False, client_id=f"{loaded.app_id}-target-list",
                                 **loaded.kafka_security.kafka_python_options())
    except KafkaError as error:
        raise _unreachable(loaded, error) from None
    contents = TopicContents()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return contents
        assigned = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        ends = consumer.end_offsets(assigned)
        deadline = time.monotonic() + READ_TIMEOUT_SECONDS
        while any(consumer.position(partition) < ends[partition] for partition in assigned):
            if time.monotonic() > deadline:
                raise ProducerError(f"reading {topic} to its end took over {READ_TIMEOUT_SECONDS} s")
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    try:
                        update = targets.decode_target(record.key, record.value)
                    except targets.BadTarget as error:
                        contents.refused.append(f"{record.topic}/{record.partition}@{record.offset}: "
                                                f"{error.reason}")
                        continue
                    targets.apply_update(contents.in_force, update)
                    contents.set_at[update.key] = record.timestamp
    except KafkaError as error:
        raise ProducerError(f"cannot read {topic}: {error}") from None
    finally:
        consumer.close()
    return contents


def _list(args: argparse.Namespace, loaded: settings.Settings) -> int:
    contents = read_targets(loaded)
    for problem in contents.refused:
        print(f"cancelwatch target list: refused by the worker (dead-letter topic): {problem}", file=sys.stderr)
    rows = sorted(((target, contents.set_at[key]) for key, target in contents.in_force.items()
                   if args.marketplace is None or key[1] == args.marketplace),
                  key=lambda row: (row[0].marketplace, row[0].seller_id))
    if args.json:
        print(json.dumps([dict(targets.target_value(target), set_at=_time(timestamp))
                          for target, timestamp in rows], indent=2))
        return 0
    if not rows:
        where = f" in {args.marketplace}" if args.marketplace else ""
        print(f"no seller targets{where} ({loaded.targets_topic}); the marketplaces' limits apply")
        return 0
    table = [("seller_id", "marketplace", "limit", "warning", "set at", "note")]
    table += [(target.seller_id, target.marketplace, _percent(target.limit_bps), _percent(target.warning_bps),
               _time(timestamp), target.note or "") for target, timestamp in rows]
    widths = [max(len(row[column]) for row in table) for column in range(len(table[0]) - 1)]
    for row in table:
        print(("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]).rstrip())
    return 0


def _time(timestamp_ms: int) -> str:
    return datetime.fromtimestamp(timestamp_ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
