"""The mailbox between the worker's consumer and its agent (pure asyncio, no broker)."""

import asyncio

from cancelwatch.worker.mailbox import Fetch, Mailbox


def test_the_consumer_reads_the_next_fetch_only_once_the_agent_took_the_last_one():
    async def scenario():
        mailbox = Mailbox()
        assert mailbox.has_room()
        await mailbox.put(Fetch(1, records=["a"]))
        assert not mailbox.has_room()
        waiting = asyncio.ensure_future(mailbox.room())
        await asyncio.sleep(0.01)
        assert not waiting.done(), "room while the agent has not taken the fetch"
        taken = await mailbox.get()
        await asyncio.wait_for(waiting, 1.0)
        assert taken.records == ["a"] and mailbox.has_room()

    asyncio.run(scenario())


def test_a_put_cancelled_while_the_mailbox_is_full_leaves_only_the_first_fetch():
    async def scenario():
        mailbox = Mailbox()
        await mailbox.put(Fetch(1, records=["first"]))
        second = asyncio.ensure_future(mailbox.put(Fetch(1, records=["second"])))
        await asyncio.sleep(0.01)
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)
        assert (await mailbox.get()).records == ["first"]
        assert mailbox.has_room()
        await mailbox.room()     # returns at once: nothing is held

    asyncio.run(scenario())
