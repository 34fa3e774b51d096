"""Which worker owns which seller: one answer for the HTTP routing and for alerting.

A seller's state, events and alerts live on partition
`murmur2(seller_id) % partitions` (Kafka's default partitioner). faust's
assignor says which worker holds each partition actively; `Ownership` reads
it once per question, so the web views and the alert engine never disagree:

- `LOCAL`: this worker owns the partition and its state is loaded;
- `RECOVERING`: this worker owns it but is still restoring or rebuilding it,
  or a rebalance is under way (answer 503 and retry);
- `REMOTE`: another worker owns it (forward to `url`);
- `UNKNOWN`: no assignment names an owner yet (503).

A worker that owns no partition at all (more workers than partitions) is a
non-owner like any other: it forwards.
"""

from __future__ import annotations

import dataclasses
from typing import Callable


LOCAL = "local"
RECOVERING = "recovering"
REMOTE = "remote"
UNKNOWN = "unknown"


def owner_partition(seller_id: str, partitions: int) -> int:
    """The partition a seller's state lives on: Kafka's default partitioner on seller_id.
    (aiokafka is imported here, not with the module: the web views need no Kafka client.)"""
    from aiokafka.partitioner import murmur2

    return (murmur2(seller_id.encode()) & 0x7FFFFFFF) % partitions


class Owners(dict):
    """seller_id -> owner partition, computed once per seller (murmur2 is pure Python)."""

    def __init__(self, partitions: int) -> None:
        super().__init__()
        self.partitions = partitions

    def __missing__(self, seller_id: str) -> int:
        partition = self[seller_id] = owner_partition(seller_id, self.partitions)
        return partition


@dataclasses.dataclass(frozen=True)
class Owner:
    state: str             # LOCAL, RECOVERING, REMOTE or UNKNOWN
    partition: int
    url: str | None = None


class Ownership:
    """The partitions this worker owns and who owns the others, from faust's assignment.

    `assignment()` returns (this worker's URL, {partition: owner URL}) as faust's assignor
    distributes the changelog partitions; `loaded()` says whether this worker's state is
    rebuilt for its current assignment; `recovering()` which partitions are still restoring.
    """

    def __init__(self, owners: Owners, assignment: Callable[[], tuple[str, dict[int, str]]],
                 loaded: Callable[[], bool], recovering: Callable[[], set[int]]) -> None:
        self.owners = owners
        self._assignment = assignment
        self._loaded = loaded
        self._recovering = recovering

    def of_seller(self, seller_id: str) -> Owner:
        return self.of_partition(self.owners[seller_id])

    def of_partition(self, partition: int) -> Owner:
        own_url, urls = self._assignment()
        url = urls.get(partition)
        if url is None:
            return Owner(UNKNOWN, partition)
        if _same(url, own_url):
            if not self._loaded() or partition in self._recovering():
                return Owner(RECOVERING, partition, url)
            return Owner(LOCAL, partition, url)
        return Owner(REMOTE, partition, url)

    def assigned(self) -> bool:
        """Whether faust's assignment has named the owners yet (after the first rebalance)."""
        return bool(self._assignment()[1])

    def owned(self) -> set[int]:
        """The partitions this worker owns now."""
        own_url, urls = self._assignment()
        return {partition for partition, url in urls.items() if _same(url, own_url)}

    def others(self) -> set[str]:
        """URLs of the other workers that own partitions."""
        own_url, urls = self._assignment()
        return {url.rstrip("/") for url in urls.values() if not _same(url, own_url)}


def _same(url: str, other: str) -> bool:
    return url.rstrip("/") == other.rstrip("/")


def faust_assignment(app, changelog_topic: Callable[[], str]) -> Callable[[], tuple[str, dict[int, str]]]:
    """`Ownership`'s view of a faust app: its canonical URL and the changelog partitions' owners."""
    def assignment() -> tuple[str, dict[int, str]]:
        topic = changelog_topic()
        urls: dict[int, str] = {}
        try:
            distribution = app.assignor.changelog_distribution
        except AttributeError:
            distribution = {}
        for url, topics in (distribution or {}).items():
            for partition in topics.get(topic, ()):
                urls[partition] = str(url)
        return str(app.conf.canonical_url), urls
    return assignment


def faust_recovering(app, changelog_topic: Callable[[], str]) -> Callable[[], set[int]]:
    def recovering() -> set[int]:
        recovery = app.tables.recovery
        topic = changelog_topic()
        return {tp.partition for tp in recovery.active_tps if tp.topic == topic} \
            if recovery.in_recovery else set()
    return recovering

