"""Creating the topics the worker and the producer client need, one way for both.

A missing topic is created with the configured partition count and
min(3, brokers) replicas; one that another client creates meanwhile is left
as it is. Each caller opens the admin client and words its own errors.
"""

from __future__ import annotations

from typing import Iterable

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

MAX_REPLICAS = 3
CREATE_TIMEOUT_MS = 30_000


def create_missing(admin: KafkaAdminClient, wanted: Iterable[str], partitions: int) -> list[str]:
    """Create the topics of `wanted` that do not exist; return the names this call created."""
    existing = set(admin.list_topics())
    missing = [name for name in wanted if name not in existing]
    if not missing:
        return []
    replicas = min(MAX_REPLICAS, len(admin.describe_cluster()["brokers"]) or 1)
    created = []
    for name in missing:
        try:
            admin.create_topics([NewTopic(name, partitions, replicas)], timeout_ms=CREATE_TIMEOUT_MS)
            created.append(name)
        except TopicAlreadyExistsError:
            pass
    return created
