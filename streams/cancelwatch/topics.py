"""Creating the topics the worker and the producer client need, one way for both.

A missing topic is created with the configured partition count and
min(3, brokers) replicas; a replicated topic also gets `min.insync.replicas`
one below its replicas (2 on three brokers or more), so a write acknowledged
by all in-sync replicas (`acks=all`) is on two brokers and losing one broker
stops no write. One that another client creates meanwhile is left as it is.
Each caller opens the admin client and words its own errors.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

MAX_REPLICAS = 3
CREATE_TIMEOUT_MS = 30_000


@dataclasses.dataclass(frozen=True)
class Replication:
    """How the topics of a cluster are replicated: replicas, and the configs that go with them."""

    replicas: int

    @property
    def configs(self) -> dict[str, str]:
        """Topic configs for these replicas: `min.insync.replicas` once a topic is replicated."""
        return {"min.insync.replicas": str(self.replicas - 1)} if self.replicas > 1 else {}


def replication(admin: KafkaAdminClient) -> Replication:
    """min(3, brokers in the cluster) replicas."""
    return Replication(min(MAX_REPLICAS, len(admin.describe_cluster()["brokers"]) or 1))


def create_missing(admin: KafkaAdminClient, wanted: Iterable[str], partitions: int,
                   configs: Mapping[str, str] | None = None) -> list[str]:
    """Create the topics of `wanted` that do not exist, with `configs` besides those of the
    replication; return the names this call created."""
    existing = set(admin.list_topics())
    missing = [name for name in wanted if name not in existing]
    if not missing:
        return []
    replicated = replication(admin)
    topic_configs = {**replicated.configs, **(configs or {})}
    created = []
    for name in missing:
        try:
            admin.create_topics([NewTopic(name, partitions, replicated.replicas, topic_configs=topic_configs)],
                                timeout_ms=CREATE_TIMEOUT_MS)
            created.append(name)
        except TopicAlreadyExistsError:
            pass
    return created
