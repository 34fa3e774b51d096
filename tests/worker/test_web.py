"""The worker's HTTP views without faust or Kafka: routing by ownership, errors, merging.

The views (`streams/cancelwatch/worker/web.py`) take a runtime and an `Ownership`; here
both are small in-memory stand-ins (the real ones need a faust app and a
broker, which tests/worker/test_worker.py and tests/test_scaleout.py run), and
forwarding to another worker is a function that records where it was sent.
"""

from __future__ import annotations

import asyncio
import dataclasses

from cancelwatch import names, settings as settings_module
from cancelwatch.worker import web
from cancelwatch.worker.ownership import Owners, Ownership, owner_partition

ME = "http://me:6066"
OTHER = "http://other:6067"


class RecordingQuery(dict):
    """A query mapping that remembers which parameters a view read."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


class FakeRuntime:
    def __init__(self, sellers: dict[tuple[str, str], dict], loaded: bool = True,
                 catching_up: set[int] = frozenset(),
                 reconciliations: dict[tuple[str, str], dict] | None = None) -> None:
        self.sellers = sellers
        self.book = object() if loaded else None
        self.catching_up = set(catching_up)
        self.reconciliations = reconciliations or {}
        self.settings = settings_module.load({})

    def is_catching_up(self, partition: int) -> bool:
        return partition in self.catching_up

    def seller_view(self, seller_id, marketplace, extra=0):
        view = self.sellers.get((seller_id, marketplace))
        return None if view is None else dict(view, extra=extra)

    def reconciliation_view(self, seller_id, marketplace):
        return self.reconciliations.get((seller_id, marketplace))

    def at_risk(self, marketplace, limit):
        return [view for (seller, mp), view in self.sellers.items() if mp == marketplace][:limit]


def seller_json(seller_id: str, cancelled: int, orders: int = 100) -> dict:
    return {"seller_id": seller_id, "marketplace": "US", "windows": [
        {"days": 7, "orders": orders, "cancelled": cancelled, "limit": 0.025, "warning_level": 0.02}]}


def ownership(assigned: dict[int, str], partitions: int = 4, loaded: bool = True,
              recovering: set[int] = frozenset()) -> Ownership:
    return Ownership(Owners(partitions), lambda: (ME, assigned), lambda: loaded, lambda: set(recovering))


@dataclasses.dataclass
class Answer:
    status: int
    body: object
    headers: dict
    query_read: set


class Forwarder:
    def __init__(self, replies: dict[str, web.Reply] | None = None) -> None:
        self.sent: list[tuple[str, web.Request]] = []
        self.replies = replies or {}

    async def __call__(self, url: str, request: web.Request) -> web.Reply:
        self.sent.append((url, request))
        return self.replies.get(url, web.Reply(200, {"from": url}))


async def ask(api: web.Api, method: str, forwarded: bool = False, **params) -> Answer:
    query = RecordingQuery({key: value for key, value in params.items() if key != "seller_id"})
    path_params = {"seller_id": params["seller_id"]} if "seller_id" in params else {}
    request = web.Request(f"/sellers/{params.get('seller_id', 'at-risk')}", query, path_params, forwarded)
    reply = await getattr(api, method)(request)
    return Answer(reply.status, reply.body, dict(reply.headers), query.read)


def seller_on(partition: int, partitions: int = 4) -> str:
    return next(f"S{n}" for n in range(10_000) if owner_partition(f"S{n}", partitions) == partition)


async def api_replies() -> list[Answer]:
    """Every kind of answer the views give (the docs test reads statuses and parameters from it)."""
    mine, theirs = seller_on(0), seller_on(1)
    runtime = FakeRuntime({(mine, "US"): seller_json(mine, 1)},
                          reconciliations={(mine, "US"): {"seller_id": mine, "marketplace": "US"}})
    api = web.Api(runtime, ownership({0: ME, 1: OTHER, 2: ME, 3: OTHER}), Forwarder())
    return [
        await ask(api, "seller", seller_id=mine, marketplace="US"),
        await ask(api, "seller", seller_id=mine, marketplace="XX"),
        await ask(api, "seller", seller_id=seller_on(2), marketplace="US"),
        await ask(api, "seller", seller_id=theirs, marketplace="US"),
        await ask(web.Api(runtime, ownership({}), Forwarder()), "seller", seller_id=mine, marketplace="US"),
        await ask(api, "what_if", seller_id=mine, marketplace="US", cancel="2"),
        await ask(api, "what_if", seller_id=mine, marketplace="US", cancel="-1"),
        await ask(api, "what_if", seller_id=mine, marketplace="US"),
        await ask(api, "seller", seller_id=mine, marketplace="us"),
        await ask(api, "seller", seller_id="at-risk", marketplace="US", limit="5", scope="local"),
        await ask(api, "at_risk", marketplace="US", limit="0"),
        await ask(api, "reconciliation", seller_id=mine, marketplace="US"),
        await ask(api, "reconciliation", seller_id=seller_on(2), marketplace="US"),
    ]


def run(coroutine):
    return asyncio.run(coroutine)


def test_the_owner_answers_from_its_state_and_404_only_for_a_seller_it_owns_and_never_saw():
    mine = seller_on(0)
    api = web.Api(FakeRuntime({(mine, "US"): seller_json(mine, 1)}), ownership({0: ME, 1: OTHER}), Forwarder())
    assert run(ask(api, "seller", seller_id=mine, marketplace="US")).status == 200
    unseen = seller_on(0) + "x"
    while owner_partition(unseen, 4) != 0:
        unseen += "x"
    answer = run(ask(api, "seller", seller_id=unseen, marketplace="US"))
    assert answer.status == 404 and "never been seen" in answer.body["error"]


def test_a_seller_not_read_yet_while_its_partition_catches_up_is_503_not_404():
    seller = seller_on(0)
    api = web.Api(FakeRuntime({}, catching_up={0}), ownership({0: ME}), Forwarder())
    answer = run(ask(api, "seller", seller_id=seller, marketplace="US"))
    assert answer.status == 503 and "catching up" in answer.body["error"]


def test_reconciliation_answers_from_the_owner_404_naming_the_topic_and_503_while_catching_up():
    mine, idle, theirs = seller_on(0), seller_on(2), seller_on(1)
    comparison = {"seller_id": mine, "marketplace": "US", "drifting": False}
    runtime = FakeRuntime({}, reconciliations={(mine, "US"): comparison})
    forwarder = Forwarder()
    api = web.Api(runtime, ownership({0: ME, 1: OTHER, 2: ME}), forwarder)
    assert run(ask(api, "reconciliation", seller_id=mine, marketplace="US")).body == comparison
    missing = run(ask(api, "reconciliation", seller_id=idle, marketplace="US"))
    assert missing.status == 404
    assert idle in missing.body["error"] and "account-health" in missing.body["error"]
    assert run(ask(api, "reconciliation", seller_id=mine, marketplace="XX")).status == 400
    assert run(ask(api, "reconciliation", seller_id=theirs, marketplace="US")).body == {"from": OTHER}
    catching_up = web.Api(FakeRuntime({}, catching_up={2}), ownership({2: ME}), Forwarder())
    answer = run(ask(catching_up, "reconciliation", seller_id=idle, marketplace="US"))
    assert answer.status == 503 and answer.headers.get("Retry-After")


def test_a_worker_without_partitions_forwards_every_seller_to_its_owner():
    forwarder = Forwarder()
    api = web.Api(FakeRuntime({}, loaded=False), ownership({0: OTHER, 1: OTHER, 2: OTHER, 3: OTHER}), forwarder)
    for partition in range(4):
        answer = run(ask(api, "seller", seller_id=seller_on(partition), marketplace="US"))
        assert answer.status == 200 and answer.body == {"from": OTHER}
    assert [url for url, _ in forwarder.sent] == [OTHER] * 4
    assert all(request.query["marketplace"] == "US" for _, request in forwarder.sent)


def test_no_owner_known_or_state_recovering_is_503_with_retry_after_never_404():
    seller = seller_on(0)
    for api in (web.Api(FakeRuntime({}), ownership({}), Forwarder()),
                web.Api(FakeRuntime({}), ownership({0: ME}, recovering={0}), Forwarder()),
                web.Api(FakeRuntime({}, loaded=False), ownership({0: ME}, loaded=False), Forwarder())):
        answer = run(ask(api, "seller", seller_id=seller, marketplace="US"))
        assert answer.status == 503, answer
        assert answer.headers["Retry-After"] == str(web.RETRY_AFTER_SECONDS)


def test_a_forwarded_request_is_never_forwarded_again():
    forwarder = Forwarder()
    api = web.Api(FakeRuntime({}), ownership({0: OTHER}), forwarder)
    answer = run(ask(api, "seller", forwarded=True, seller_id=seller_on(0), marketplace="US"))
    assert answer.status == 503 and forwarder.sent == []


def test_at_risk_merges_every_other_workers_local_ranking_in_risk_order():
    breached = seller_json("B", cancelled=5)
    calm = seller_json("C", cancelled=1)
    forwarder = Forwarder({OTHER: web.Reply(200, [breached])})
    api = web.Api(FakeRuntime({("C", "US"): calm}), ownership({0: ME, 1: OTHER}), forwarder)
    answer = run(ask(api, "at_risk", marketplace="US", limit="10"))
    assert answer.status == 200
    assert [view["seller_id"] for view in answer.body] == ["B", "C"]
    [(url, request)] = forwarder.sent
    assert url == OTHER and request.query["scope"] == "local" and request.forwarded


def test_at_risk_is_503_rather_than_a_ranking_with_sellers_missing():
    forwarder = Forwarder({OTHER: web.error(503, "down")})
    api = web.Api(FakeRuntime({}), ownership({0: ME, 1: OTHER}), forwarder)
    assert run(ask(api, "at_risk", marketplace="US", limit="10")).status == 503


def test_at_risk_before_any_assignment_is_503():
    api = web.Api(FakeRuntime({}, loaded=False), ownership({}), Forwarder())
    answer = run(ask(api, "at_risk", marketplace="US", limit="10"))
    assert answer.status == 503 and answer.headers["Retry-After"]


def test_a_worker_without_partitions_ranks_from_the_others_only():
    forwarder = Forwarder({OTHER: web.Reply(200, [seller_json("B", 5)])})
    api = web.Api(FakeRuntime({}, loaded=False), ownership({0: OTHER, 1: OTHER}), forwarder)
    answer = run(ask(api, "at_risk", marketplace="US", limit="10"))
    assert answer.status == 200 and [view["seller_id"] for view in answer.body] == ["B"]


def test_bad_parameters_are_400_with_a_reason():
    api = web.Api(FakeRuntime({}), ownership({0: ME}), Forwarder())
    for method, params in [("seller", {"seller_id": "A1", "marketplace": "ZZ"}),
                           ("seller", {"seller_id": "a" * 65, "marketplace": "US"}),
                           ("what_if", {"seller_id": "A1", "marketplace": "US"}),
                           ("what_if", {"seller_id": "A1", "marketplace": "US", "cancel": "x"}),
                           ("at_risk", {"marketplace": "US", "limit": "1001"})]:
        answer = run(ask(api, method, **params))
        assert answer.status == 400 and answer.body["error"], (method, params)


def test_every_answer_kind_is_produced():
    statuses = {answer.status for answer in run(api_replies())}
    assert statuses == {200, 400, 404, 503}
    assert names.MARKETPLACES
