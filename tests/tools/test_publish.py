"""`cancelwatch publish` (streams/cancelwatch/tools/publish.py): validation, and delivery to the real broker."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone

import pytest

from cancelwatch import settings

from cancelwatch.core import events

from cancelwatch.tools import publish, scenarios
from cancelwatch.tools.producer import ensure_topics
from tests.tools.test_producer import read_all, stack_env  # noqa: F401 (fixture)

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def good_events(count: int = 300) -> list[events.Event]:
    stream = scenarios.generate("buyer-requests", 5, start=NOW - timedelta(days=2), end=NOW, sellers=4)
    return [event for _, event in zip(range(count), stream)]


def jsonl(stream) -> bytes:
    return b"".join(events.encode(event) + b"\n" for event in stream)


def with_bad_lines(stream: list[events.Event]) -> tuple[bytes, dict[int, str]]:
    """JSON Lines with three bad lines; returns the text and {line number: expected message part}."""
    lines = [events.encode(event) for event in stream]
    missing = json.loads(lines[10])
    del missing["purchase_date"]
    wrong = json.loads(lines[20])
    wrong["marketplace"] = "XX"
    future = json.loads(lines[30])
    future["occurred_at"] = (NOW + timedelta(hours=2)).isoformat()
    lines[10] = json.dumps(missing).encode()
    lines[20] = json.dumps(wrong).encode()
    lines[30] = json.dumps(future).encode()
    lines.insert(40, b"{not json")
    return b"\n".join(lines) + b"\n", {
        11: "purchase_date is missing", 21: "marketplace", 31: "more than 5 minutes ahead",
        41: "not valid JSON",
    }


def test_bad_lines_are_reported_with_their_numbers():
    text, expected = with_bad_lines(good_events(60))
    checked = list(publish.check_lines(io.BytesIO(text), "jsonl", NOW))
    bad = {item.line: item.error for item in checked if item.error}
    assert sorted(bad) == sorted(expected)
    for line, part in expected.items():
        assert part in bad[line]
    assert sum(1 for item in checked if item.event is not None) == 57


def test_blank_lines_are_skipped_and_numbering_follows_the_file():
    stream = good_events(2)
    text = b"\n" + events.encode(stream[0]) + b"\n\n   \n" + b'{"type": "order_placed"}\n'
    checked = list(publish.check_lines(io.BytesIO(text), "jsonl", NOW))
    assert [(item.line, bool(item.error)) for item in checked] == [(2, False), (5, True)]


def test_csv_rows_become_events():
    text = (
        "schema_version,type,event_id,order_id,seller_id,marketplace,fulfillment_channel,"
        "purchase_date,occurred_at,order_status,items,initiator,reason,buyer_requested,"
        "order_status_at_cancel\n"
        '1,order_placed,e1,113-1,A1,US,MFN,2026-11-20T10:00:00Z,2026-11-20T10:00:00Z,Unshipped,'
        '"[{""sku"": ""S1"", ""quantity"": 2}]",,,,\n'
        "1,order_cancelled,e2,113-1,A1,US,MFN,2026-11-20T10:00:00Z,2026-11-20T11:00:00+01:00,,,"
        "seller,BuyerCanceled,true,Unshipped\n"
        "1,order_cancelled,e3,113-1,A1,US,MFN,,2026-11-20T11:00:00Z,,,seller,NoInventory,false,Unshipped\n"
        '1,order_placed,e4,113-2,A1,US,MFN,2026-11-20T10:00:00Z,2026-11-20T10:00:00Z,Unshipped,"[oops",,,,\n'
    ).encode()
    checked = list(publish.check_lines(io.BytesIO(text), "csv", NOW))
    first, second, third, fourth = checked
    assert first.event.items == [events.Item("S1", 2)] and first.line == 2
    assert second.event.buyer_requested is True
    assert second.event.occurred_at == datetime(2026, 11, 20, 10, tzinfo=timezone.utc)
    assert (third.line, third.error) == (4, "required field purchase_date is missing")
    assert fourth.line == 5 and "items is not a JSON list" in fourth.error


def test_format_detection():
    assert publish.detect_format("events.csv", b"{") == "csv"
    assert publish.detect_format("events.jsonl", b"schema_version") == "jsonl"
    assert publish.detect_format("", b"  {\"type\"") == "jsonl"
    assert publish.detect_format("", b"schema_version,type") == "csv"


def test_check_validates_without_a_broker(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CANCELWATCH_BROKER", "kafka://127.0.0.1:1")
    text, expected = with_bad_lines(good_events(60))
    path = tmp_path / "events.jsonl"
    path.write_bytes(text)
    assert publish.main([str(path), "--check"]) == 1
    error = capsys.readouterr().err
    for line in expected:
        assert f"line {line}: " in error
    assert "57 valid, 4 invalid; nothing sent" in error
    path.write_bytes(jsonl(good_events(50)))
    assert publish.main([str(path), "--check"]) == 0


def test_unreadable_file_exits_2(tmp_path, capsys):
    assert publish.main([str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.stack
def test_a_published_file_arrives_exactly_once_per_event(stack_env, tmp_path, capsys):  # noqa: F811
    stream = good_events(400)
    path = tmp_path / "events.jsonl"
    path.write_bytes(jsonl(stream))
    assert publish.main([str(path)]) == 0
    loaded = settings.load(stack_env)
    messages = read_all(loaded)
    received = sorted((topic, key, events.decode(value).event_id) for topic, key, value in messages)
    expected = sorted((loaded.cancellations_topic if isinstance(event, events.OrderCancelled)
                       else loaded.orders_topic, event.seller_id, event.event_id) for event in stream)
    assert received == expected
    summary = capsys.readouterr().err
    cancels = sum(isinstance(event, events.OrderCancelled) for event in stream)
    assert f"sent 400 events ({loaded.cancellations_topic} {cancels}, {loaded.orders_topic} {400 - cancels})" \
        in summary


@pytest.mark.stack
def test_a_file_with_invalid_lines_sends_nothing(stack_env, tmp_path, capsys):  # noqa: F811
    loaded = settings.load(stack_env)
    ensure_topics(loaded)
    text, expected = with_bad_lines(good_events(100))
    path = tmp_path / "events.jsonl"
    path.write_bytes(text)
    assert publish.main([str(path)]) == 1
    assert read_all(loaded) == []
    error = capsys.readouterr().err
    assert "4 invalid lines, 97 valid; nothing sent" in error and "--skip-invalid" in error


@pytest.mark.stack
def test_skip_invalid_sends_only_the_valid_lines(stack_env, tmp_path, capsys, monkeypatch):  # noqa: F811
    stream = good_events(100)
    text, expected = with_bad_lines(stream)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text)))
    assert publish.main(["-", "--skip-invalid"]) == 0
    received = [events.decode(value) for _, _, value in read_all(settings.load(stack_env))]
    bad_ids = {stream[10].event_id, stream[20].event_id, stream[30].event_id}
    assert sorted(event.event_id for event in received) == sorted(
        event.event_id for event in stream if event.event_id not in bad_ids)
    error = capsys.readouterr().err
    assert "line 41: not valid JSON" in error
    assert "sent 97 events" in error and "4 invalid lines skipped" in error
