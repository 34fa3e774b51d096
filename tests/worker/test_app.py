"""The worker's faust app as built for a cluster (streams/cancelwatch/worker/app.py), without a
broker: the topics faust creates are replicated like the others, and its producer writes with
`acks=all` and idempotence. tests/test_brokers.py proves the same on a real cluster."""

from __future__ import annotations

import asyncio

import pytest

from cancelwatch import settings, topics
from cancelwatch.core import policy
from cancelwatch.worker import app as worker_app


@pytest.fixture
def built(tmp_path):
    loaded = settings.load({"CANCELWATCH_DATA_DIR": str(tmp_path / "state"), "CANCELWATCH_ALERTMANAGER_URL": ""})
    app, _ = worker_app.build_app(loaded, policy.load(loaded.policy_path), topics.Replication(3))
    return app


def test_faust_creates_its_topics_with_the_clusters_replicas_and_min_insync_replicas(built):
    assert built.conf.topic_replication_factor == 3       # the changelog and the assignor's leader topic
    changelog = built.tables[worker_app.TABLE_NAME].changelog_topic
    assert changelog.config["min.insync.replicas"] == "2"
    assert changelog.config["segment.bytes"] == str(16 * 1024 * 1024)


def test_the_producer_writes_with_acks_all_and_idempotence(built):
    producer = built.producer
    assert isinstance(producer, worker_app.IdempotentProducer)
    assert {**producer._settings_default(), **producer._settings_extra()}["acks"] == -1

    async def client_side():
        client = producer._new_producer()
        try:
            return client._txn_manager is not None          # aiokafka's idempotence state
        finally:
            await client.stop()
    assert asyncio.run(client_side())


@pytest.mark.parametrize("session", ["6", "60", "120", "1800"])
def test_every_session_timeout_the_settings_allow_starts_the_consumer(tmp_path, session):
    # faust checks the session against the request timeout only when its consumer thread
    # starts: a session the settings accept must not crash the worker there.
    from faust.transport.drivers import aiokafka as driver

    loaded = settings.load({"CANCELWATCH_DATA_DIR": str(tmp_path / "state"), "CANCELWATCH_ALERTMANAGER_URL": "",
                            "CANCELWATCH_SESSION_TIMEOUT_SECONDS": session})
    app, _ = worker_app.build_app(loaded, policy.load(loaded.policy_path), topics.Replication(1))
    assert app.conf.broker_session_timeout == float(session)

    async def create():
        thread = driver.AIOKafkaConsumerThread(app.consumer, loop=asyncio.get_running_loop())
        return thread._create_worker_consumer(app.transport)     # raises if faust refuses the settings
    assert asyncio.run(create()) is not None
