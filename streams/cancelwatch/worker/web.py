"""The worker's HTTP API (contract section 8): views and routing, testable without faust.

Each view is a plain coroutine `(api, request) -> Reply`; `ROUTES` is the one
table of paths the worker serves (the app registers it with faust's web
server, docs/api.md is checked against it). A seller's view is answered by
the owner of the seller's partition (`Ownership`): locally when this worker
owns it, forwarded to the owner otherwise (a worker without partitions is no
exception), and `503` with `Retry-After` while no worker can answer yet:
never a wrong `404`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Awaitable, Callable, Mapping

import aiohttp
import yarl

from cancelwatch import names

from cancelwatch.core import window
from cancelwatch.worker import ownership as ownership_module
from cancelwatch.worker.ownership import Ownership

RETRY_AFTER_SECONDS = 1
FORWARDED_HEADER = "X-Cancelwatch-Forwarded"
FORWARD_TIMEOUT_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    body: object
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Request:
    """What a view reads of an HTTP request."""

    path: str
    query: Mapping[str, str]
    params: Mapping[str, str]           # path parameters
    forwarded: bool = False             # already forwarded once by another worker


def error(status: int, message: str) -> Reply:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else {}
    return Reply(status, {"error": message}, headers)


class Api:
    """The views over a runtime (its book, clock and alerts) and the ownership of partitions.

    `forward(url, request)` asks another worker (aiohttp by default); `runtime` is duck-typed:
    `book`, `seller_view`, `at_risk`."""

    def __init__(self, runtime, ownership: Ownership,
                 forward: Callable[[str, Request], Awaitable[Reply]] | None = None) -> None:
        self.runtime = runtime
        self.ownership = ownership
        self.forward = forward or forward_http

    async def seller(self, request: Request) -> Reply:
        seller_id = request.params["seller_id"]
        if seller_id == "at-risk":
            return await self.at_risk(request)
        return await self._seller(request, seller_id, 0)

    async def what_if(self, request: Request) -> Reply:
        extra = whole_number(request.query, "cancel", 0, 1_000_000)
        if isinstance(extra, Reply):
            return extra
        return await self._seller(request, request.params["seller_id"], extra)

    def _route(self, request: Request, seller_id: str, marketplace: str) -> Awaitable[Reply] | None:
        """None when this worker answers for the seller; else the answer to give instead: a 400,
        a 503 while no worker can answer, or the owner's answer (forwarded)."""
        if marketplace not in names.MARKETPLACES:
            return _now(_bad_marketplace(marketplace))
        if not 1 <= len(seller_id) <= 64:
            return _now(error(400, "seller_id must be 1..64 characters"))
        owner = self.ownership.of_seller(seller_id)
        if owner.state == ownership_module.REMOTE:
            if request.forwarded:
                # The worker that sent it thinks this one owns the seller: an assignment is changing.
                return _now(error(503, "partitions are moving between workers (rebalancing); retry shortly"))
            return self.forward(owner.url, request)
        if owner.state == ownership_module.UNKNOWN:
            return _now(error(503, "no worker owns this seller's partition yet (starting or rebalancing); "
                                   "retry shortly"))
        if owner.state == ownership_module.RECOVERING or self.runtime.book is None:
            return _now(error(503, "this seller's state is being recovered; retry shortly"))
        return None

    async def _seller(self, request: Request, seller_id: str, extra: int) -> Reply:
        marketplace = request.query.get("marketplace", "")
        refused = self._route(request, seller_id, marketplace)
        if refused is not None:
            return await refused
        view = self.runtime.seller_view(seller_id, marketplace, extra)
        if view is None and self.runtime.is_catching_up(self.ownership.of_seller(seller_id).partition):
            return error(503, "this seller's partition is catching up on a backlog and has not read it yet; "
                              "retry shortly")
        if view is None:
            return error(404, f"seller {seller_id} has never been seen in {marketplace}")
        return Reply(200, view)

    async def reconciliation(self, request: Request) -> Reply:
        """Amazon's account-health figures against this worker's counts (contract section 11)."""
        seller_id = request.params["seller_id"]
        marketplace = request.query.get("marketplace", "")
        refused = self._route(request, seller_id, marketplace)
        if refused is not None:
            return await refused
        view = self.runtime.reconciliation_view(seller_id, marketplace)
        if view is None and self.runtime.is_catching_up(self.ownership.of_seller(seller_id).partition):
            return error(503, "this seller's partition is catching up on a backlog and has not read its "
                              "account-health reports yet; retry shortly")
        if view is None:
            return error(404, f"no account-health report has been seen for seller {seller_id} in {marketplace} "
                              f"(topic {self.runtime.settings.account_health_topic})")
        return Reply(200, view)

    async def at_risk(self, request: Request) -> Reply:
        marketplace = request.query.get("marketplace", "")
        if marketplace not in names.MARKETPLACES:
            return _bad_marketplace(marketplace)
        limit = whole_number(request.query, "limit", 1, 1000, default="20")
        if isinstance(limit, Reply):
            return limit
        if not self.ownership.assigned():
            return error(503, "no partition is assigned yet (starting or rebalancing); retry shortly")
        owned = self.ownership.owned()
        if owned and self.runtime.book is None:
            return error(503, "state is being recovered; retry shortly")
        ranked = self.runtime.at_risk(marketplace, limit) if owned else []
        if request.query.get("scope") == "local":
            return Reply(200, ranked)
        others = sorted(self.ownership.others())
        if not others:
            return Reply(200, ranked)
        replies = await asyncio.gather(*(self.forward(url, Request(
            "/sellers/at-risk", {"marketplace": marketplace, "limit": str(limit), "scope": "local"},
            {}, forwarded=True)) for url in others))
        failed = [url for url, reply in zip(others, replies) if reply.status != 200]
        if failed:
            return error(503, f"cannot reach workers {', '.join(failed)}; retry shortly")
        merged = ranked + [view for reply in replies for view in reply.body]
        merged.sort(key=window.risk_key_of_json)
        return Reply(200, merged[:limit])


def whole_number(query: Mapping[str, str], name: str, lowest: int, highest: int,
                 default: str | None = None) -> int | Reply:
    """The query parameter `name` as a whole number within lowest..highest, or the 400 that says
    what is wrong; without a default the parameter is required."""
    raw = query.get(name, default)
    allowed = f"a whole number within {lowest}..{highest}"
    if raw is None:
        return error(400, f"query parameter {name} ({allowed}) is required")
    try:
        value = int(raw)
    except ValueError:
        return error(400, f"{name} must be {allowed}, got {raw!r}")
    if not lowest <= value <= highest:
        return error(400, f"{name} must be within {lowest}..{highest}, got {value}")
    return value


def _bad_marketplace(marketplace: str) -> Reply:
    return error(400, f"marketplace must be one of {' '.join(names.MARKETPLACES)}, got {marketplace!r}")


async def _now(reply: Reply) -> Reply:
    return reply


async def forward_http(url: str, request: Request) -> Reply:
    """Ask the worker at `url` the same question; its answer, or a 503 when it cannot be reached."""
    timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_SECONDS)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            target = yarl.URL(url.rstrip("/") + request.path, encoded=True).with_query(dict(request.query))
            async with session.get(target, headers={FORWARDED_HEADER: "1"}) as response:
                body = await response.json(content_type=None)
                headers = {"Retry-After": response.headers["Retry-After"]} \
                    if "Retry-After" in response.headers else {}
                return Reply(response.status, body, headers)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as failure:
        return error(503, f"cannot reach the worker owning this seller at {url}: "
                          f"{type(failure).__name__}; retry shortly")


# path -> name of the Api method serving it. docs/api.md is checked against this table.
ROUTES: dict[str, str] = {
    "/sellers/{seller_id}": "seller",            # also /sellers/at-risk (the seller id "at-risk")
    "/sellers/{seller_id}/what-if": "what_if",
    "/sellers/{seller_id}/reconciliation": "reconciliation",
}
DISPATCHED = {"/sellers/at-risk": "at_risk"}     # paths served through another route's pattern
