"""The hand-over between the worker's consumer and its agent: whole fetches, one at a time.

`consumer.BatchingConsumer` puts each fetch of the source topics into a
`Mailbox`; the agent takes it, applies it and acknowledges it. Plain asyncio:
no faust, no broker.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Fetch:
    """The records of the batch topics in one fetch, and their offsets per partition."""

    generation: int
    records: list = field(default_factory=list)        # aiokafka ConsumerRecords
    offsets: dict = field(default_factory=dict)        # TP -> [offset, ...]
    full: bool = False                                 # as many records as a fetch holds: more wait
    seeks: int = 0                                     # the consumer's seeks before it was read


class Mailbox:
    """Fetches from the consumer to the agent, one at a time.

    The consumer reads the next fetch only once the agent has taken the previous
    one, so the records of at most two fetches are alive: the one being applied
    and the next one, read in the meantime."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        self._taken = asyncio.Event()

    def has_room(self) -> bool:
        return self._queue.empty()

    async def room(self) -> None:
        while not self._queue.empty():
            self._taken.clear()
            await self._taken.wait()

    async def put(self, fetch: Fetch) -> None:
        await self._queue.put(fetch)

    async def get(self) -> Fetch:
        fetch = await self._queue.get()
        self._taken.set()
        return fetch
