"""Topic creation shared by the worker and the producer client (streams/cancelwatch/topics.py),
against a stand-in admin client: no broker."""

from __future__ import annotations

from kafka.errors import TopicAlreadyExistsError

from cancelwatch import topics


class StandInAdmin:
    def __init__(self, existing: set[str], brokers: int, raced: set[str] = frozenset()) -> None:
        self.existing = set(existing)
        self.brokers = brokers
        self.raced = raced          # created by another client between list_topics and create_topics
        self.requests: list[tuple[str, int, int]] = []
        self.configs: dict[str, dict[str, str]] = {}

    def list_topics(self) -> list[str]:
        return sorted(self.existing)

    def describe_cluster(self) -> dict:
        return {"brokers": [{"node_id": node} for node in range(self.brokers)]}

    def create_topics(self, new_topics, timeout_ms: int) -> None:
        for topic in new_topics:
            self.requests.append((topic.name, topic.num_partitions, topic.replication_factor))
            self.configs[topic.name] = dict(topic.topic_configs)
            if topic.name in self.raced:
                raise TopicAlreadyExistsError()
            self.existing.add(topic.name)


def test_only_missing_topics_are_created_with_the_partitions_asked_and_at_most_three_replicas():
    admin = StandInAdmin({"orders"}, brokers=5)
    assert topics.create_missing(admin, ["orders", "cancellations", "reroute"], 4) == ["cancellations", "reroute"]
    assert admin.requests == [("cancellations", 4, 3), ("reroute", 4, 3)]


def test_a_single_broker_gets_one_replica_and_nothing_missing_asks_nothing():
    admin = StandInAdmin(set(), brokers=1)
    assert topics.create_missing(admin, ["orders"], 2) == ["orders"]
    assert admin.requests == [("orders", 2, 1)]
    assert admin.configs == {"orders": {}}
    assert topics.create_missing(admin, ["orders"], 2) == []
    assert len(admin.requests) == 1


def test_a_topic_another_client_created_meanwhile_is_left_as_it_is():
    admin = StandInAdmin(set(), brokers=3, raced={"orders"})
    assert topics.create_missing(admin, ["orders", "cancellations"], 4) == ["cancellations"]


def test_a_replicated_topic_takes_writes_on_all_but_one_replica():
    """acks=all then means two brokers of three have the write, and one broker down stops none."""
    admin = StandInAdmin(set(), brokers=3)
    topics.create_missing(admin, ["orders"], 4, configs={"cleanup.policy": "compact"})
    assert admin.configs == {"orders": {"min.insync.replicas": "2", "cleanup.policy": "compact"}}
    assert [topics.Replication(replicas).configs for replicas in (1, 2, 3)] == [
        {}, {"min.insync.replicas": "1"}, {"min.insync.replicas": "2"}]
