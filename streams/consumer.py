"""A faust consumer that hands whole fetches of the worker's source topics to its agent.

faust delivers every message on its own: a task race against the flow
suspension, an Event, a queue put, a stream step and an ack per message,
about 100 µs each on a 2-core machine, which caps a worker near 8,000
events/s however little the agent does. `BatchingConsumer` keeps faust's
consumer (group membership, assignment, table recovery, flow suspension,
offset tracking and commits) and changes one thing: messages of the source
topics named in `batch_topics` are tracked as unacked and handed over per
fetch (`await handoff(messages)`); the agent acks each message after applying
it, so offsets are committed only for applied messages, exactly as before.
Messages of every other topic take faust's usual path.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Sequence

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import Message

Handoff = Callable[[Sequence[Message]], Awaitable[None]]


class BatchingConsumer(aiokafka_driver.Consumer):
    batch_topics: frozenset[str] = frozenset()
    handoff: Handoff | None = None

    @classmethod
    def for_topics(cls, topics: Sequence[str], handoff: Handoff) -> type["BatchingConsumer"]:
        return type("BatchingConsumer", (cls,), {"batch_topics": frozenset(topics),
                                                 "handoff": staticmethod(handoff)})

    async def _drain_messages(self, fetcher) -> None:  # noqa: C901 - mirrors faust's own loop
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        batch_topics = self.batch_topics
        track = self.track_message
        handoff = self.handoff
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                batch: list[Message] = []
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in getmany(timeout=1.0):
                        offset = message.offset
                        read_offset = get_read_offset(tp)
                        if read_offset is not None and offset < read_offset:
                            continue
                        gap = offset - (read_offset or 0)
                        if gap > 1 and read_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, read_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if message.topic in batch_topics:
                            track(message)
                            batch.append(message)
                        else:
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                if batch:
                    handed = asyncio.ensure_future(handoff(batch))
                    await self.wait_first(handed, self.suspend_flow.wait())
                    if not handed.done():
                        # Flow suspended for a rebalance: drop the fetch; faust seeks
                        # back to the committed offsets, so it is fetched again.
                        handed.cancel()
                        for message in batch:
                            self._unacked_messages.discard(message)
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)
