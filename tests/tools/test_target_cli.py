"""`cancelwatch target` against the real broker, on a targets topic of each test's own."""

from __future__ import annotations

import json
import uuid
from typing import Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic

from cancelwatch import cli, settings

from cancelwatch.core import targets

pytestmark = pytest.mark.stack


@pytest.fixture
def topic(kafka_bootstrap: str, monkeypatch) -> Iterator[str]:
    """A unique CANCELWATCH_TARGETS_TOPIC (in the environment), deleted afterwards."""
    name = f"test-targets-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("CANCELWATCH_BROKER", f"kafka://{kafka_bootstrap}")
    monkeypatch.setenv("CANCELWATCH_TARGETS_TOPIC", name)
    yield name
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="cancelwatch-tests")
    if name in admin.list_topics():
        admin.delete_topics([name])
    admin.close()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["target", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def listed(capsys, *argv: str) -> list[dict]:
    code, out, err = run(capsys, "list", "--json", *argv)
    assert code == 0, err
    return json.loads(out)


def messages(kafka_bootstrap: str, topic: str) -> list[tuple[bytes, bytes | None]]:
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None, enable_auto_commit=False,
                             consumer_timeout_ms=5000)
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    end = consumer.end_offsets([partition])[partition]
    found = []
    for record in consumer:
        found.append((record.key, record.value))
        if record.offset + 1 >= end:
            break
    consumer.close()
    return found


def topic_config(kafka_bootstrap: str, topic: str) -> tuple[int, str]:
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="cancelwatch-tests")
    partitions = len(admin.describe_topics([topic])[0]["partitions"])
    entries = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])[0].resources[0][4]
    admin.close()
    return partitions, next(entry[1] for entry in entries if entry[0] == "cleanup.policy")


def test_set_list_clear_list(topic, kafka_bootstrap, capsys):
    code, out, err = run(capsys, "set", "--seller-id", "agency/A1", "--marketplace", "US",
                         "--limit", "0.5%", "--warning", "0.004", "--note", "SFP trial")
    assert code == 0, err
    assert "seller agency/A1 in US: limit 0.50%, warning level 0.40% (SFP trial)" in out
    assert topic_config(kafka_bootstrap, topic) == (1, "compact")
    assert run(capsys, "set", "--preset", "sfp_us", "--seller-id", "B2", "-m", "US")[0] == 0
    assert run(capsys, "set", "--seller-id", "C3", "-m", "IN", "--limit", "1.5%", "--warning", "1%")[0] == 0

    shown = listed(capsys)
    assert [(row["seller_id"], row["marketplace"]) for row in shown] == [("C3", "IN"), ("B2", "US"),
                                                                         ("agency/A1", "US")]
    first = shown[2]
    assert {key: first[key] for key in ("limit", "warning_level", "note", "schema_version")} == \
        {"limit": 0.005, "warning_level": 0.004, "note": "SFP trial", "schema_version": 1}
    assert shown[1]["note"] == "Seller Fulfilled Prime (US)"
    assert [row["seller_id"] for row in listed(capsys, "--marketplace", "IN")] == ["C3"]
    code, out, _ = run(capsys, "list")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["seller_id", "marketplace", "limit", "warning", "set", "at", "note"]
    assert rows[2].split()[:4] == ["agency/A1", "US", "0.50%", "0.40%"] and rows[2].endswith("SFP trial")

    code, out, err = run(capsys, "clear", "--seller-id", "agency/A1", "--marketplace", "US")
    assert code == 0, err
    assert "seller agency/A1 in US is held to the marketplace's limits again" in out
    assert [row["seller_id"] for row in listed(capsys)] == ["C3", "B2"]
    # What the worker reads: every message the decoder accepts, the last one a tombstone.
    raw = messages(kafka_bootstrap, topic)
    assert raw[-1] == (b"agency/A1/US", None)
    assert [targets.decode_target(key, value).target is None for key, value in raw] == [False] * 3 + [True]


def test_a_new_target_replaces_the_previous_one(topic, capsys):
    assert run(capsys, "set", "--seller-id", "A1", "-m", "UK", "--limit", "1%", "--warning", "0.8%")[0] == 0
    assert run(capsys, "set", "--seller-id", "A1", "-m", "UK", "--limit", "0.6%", "--warning", "0.5%")[0] == 0
    assert [(row["limit"], row["warning_level"]) for row in listed(capsys)] == [(0.006, 0.005)]


def test_refused_targets_send_nothing(topic, kafka_bootstrap, capsys):
    for argv, words in [
        (("--limit", "0.555%", "--warning", "0.4%"), "--limit 0.555% is 55.5 basis points"),
        (("--limit", "0.4%", "--warning", "0.5%"), "--warning 0.5% must be below --limit 0.4%"),
        (("--limit", "0.5", "--warning", "0.4%"), "the 50.00% limit is above US's own 2.50%"),
        (("--limit", "3%", "--warning", "2%"), "a target is a stricter limit"),
        (("--limit", "0.5%"), "give --limit and --warning"),
        (("--preset", "sfp_us", "--limit", "0.5%"), "either --preset or --limit"),
        (("--preset", "platinum",), "no preset 'platinum'"),
    ]:
        code, _, err = run(capsys, "set", "--seller-id", "A1", "-m", "US", *argv)
        assert code == 2 and words in err, (argv, err)
    code, _, err = run(capsys, "set", "--seller-id", "S" * 65, "-m", "US", "--limit", "0.5%", "--warning", "0.4%")
    assert code == 2 and "1..64" in err
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="cancelwatch-tests")
    assert topic not in admin.list_topics()
    admin.close()
    code, out, _ = run(capsys, "list")
    assert code == 0 and "no seller targets" in out


def test_list_reports_messages_the_worker_refuses(topic, kafka_bootstrap, capsys):
    assert run(capsys, "set", "--seller-id", "A1", "-m", "US", "--limit", "0.5%", "--warning", "0.4%")[0] == 0
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer.send(topic, key=b"A2/US", value=b'{"schema_version": 1, "seller_id": "A2", "marketplace": "US", '
                                             b'"limit": 0.0055, "warning_level": 0.00401}')
    producer.send(topic, key=b"A1/US", value=b"not json")
    producer.flush()
    producer.close()
    code, out, err = run(capsys, "list", "--json")
    assert code == 0
    assert [row["seller_id"] for row in json.loads(out)] == ["A1"]  # a refused message changes nothing
    assert f"{topic}/0@1: warning_level 0.00401 is 40.1 basis points" in err
    assert f"{topic}/0@2: the value is not valid JSON" in err


def test_an_existing_topic_that_is_not_compacted_is_reported(kafka_bootstrap, topic, capsys):
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="cancelwatch-tests")
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    code, _, err = run(capsys, "set", "--seller-id", "A1", "-m", "US", "--limit", "0.5%", "--warning", "0.4%")
    assert code == 0
    assert f"topic {topic} has cleanup.policy=delete, not compact" in err


def test_an_unreachable_broker_is_reported(monkeypatch, capsys):
    monkeypatch.setenv("CANCELWATCH_BROKER", "kafka://127.0.0.1:1")
    code, _, err = run(capsys, "clear", "--seller-id", "A1", "-m", "US")
    assert code == 1 and "cannot reach a Kafka broker at 127.0.0.1:1" in err
    assert settings.load().targets_topic == "seller-targets"
