"""Whether the fair peer counts right: its answers, the worker's and the oracle's on a sample of sellers.

The throughput benchmark picks a sample of (seller, marketplace) pairs from the
simulator events it pre-filled, asks the worker (`GET /sellers/{id}`) and the
fair peer (`quix_peer.py`'s answers file) at the end of a complete run, and
compares both with `tests/oracle.py` computed from the same events at the same
event clock (the largest `occurred_at`). Compared: each window's orders and
seller-fault cancelled orders, the first window's reasons and excluded causes.
"""

from __future__ import annotations

import sys
from datetime import datetime
from urllib.parse import quote

import orjson
import requests

from common import ROOT, default_policy

from cancelwatch.core import events

sys.path.insert(0, str(ROOT))     # tests/oracle.py


def sample_pairs(lines: list[bytes], count: int) -> list[tuple[str, str]]:
    """`count` (seller, marketplace) pairs spread evenly over the sorted pairs of the events,
    half among those with a cancellation (so counted cancels are compared, not only zeros)."""
    every, cancelling = set(), set()
    for line in lines:
        event = orjson.loads(line)
        pair = (event["seller_id"], event["marketplace"])
        every.add(pair)
        if event["type"] == "order_cancelled":
            cancelling.add(pair)
    chosen = _spread(sorted(cancelling), count // 2)
    chosen += _spread(sorted(every - set(chosen)), count - len(chosen))
    return sorted(chosen)


def _spread(pairs: list, count: int) -> list:
    if count >= len(pairs):
        return list(pairs)
    step = len(pairs) / count
    return [pairs[int(index * step)] for index in range(count)]


def event_clock(lines: list[bytes]) -> float:
    """The largest occurred_at among the events (the event clock once all are processed)."""
    return max(datetime.fromisoformat(orjson.loads(line)["occurred_at"].replace("Z", "+00:00")).timestamp()
               for line in lines)


def oracle_answers(lines: list[bytes], pairs: list[tuple[str, str]], now: float) -> dict[str, dict]:
    """tests/oracle.py's answers for the pairs, from the events of those pairs only (a seller's
    answer depends on its own events and the clock)."""
    from tests import oracle
    wanted = set(pairs)
    chosen = []
    for line in lines:
        event = orjson.loads(line)
        if (event["seller_id"], event["marketplace"]) in wanted:
            chosen.append(events.decode(line))
    computed = oracle.compute(chosen, now, default_policy())
    return {f"{seller}/{marketplace}": normalize(computed[(seller, marketplace)]) for seller, marketplace in pairs}


def worker_answers(url: str, pairs: list[tuple[str, str]]) -> dict[str, dict]:
    """The worker's `GET /sellers/{id}?marketplace=` for each pair (None where it answers 404)."""
    found = {}
    for seller, marketplace in pairs:
        response = requests.get(f"{url}/sellers/{quote(seller, safe='')}",
                                params={"marketplace": marketplace}, timeout=30)
        found[f"{seller}/{marketplace}"] = normalize(response.json()) if response.status_code == 200 else None
    return found


def normalize(view: dict) -> dict:
    """The compared part of an answer, whoever gave it."""
    return {"windows": [[w["days"], w["orders"], w["cancelled"]] for w in view["windows"]],
            "reasons": {key: value for key, value in sorted((view["reasons"] or {}).items()) if value},
            "excluded": {key: value for key, value in sorted((view["excluded"] or {}).items()) if value}}


def differences(expected: dict[str, dict], found: dict[str, dict | None]) -> list[str]:
    """One line per pair whose answer differs (or is missing)."""
    lines = []
    for pair, answer in expected.items():
        got = found.get(pair)
        if got != answer:
            lines.append(f"{pair}: expected {answer}, got {got}")
    return lines


def check(expected: dict[str, dict], peer: dict[str, dict] | None, worker: dict[str, dict] | None) -> dict:
    """The comparison as recorded in the results: per answerer, how many pairs differ and the first few."""
    result = {"pairs": len(expected), "sellers_with_cancels": sum(
        1 for answer in expected.values() if any(window[2] for window in answer["windows"]))}
    for name, found in (("quix_peer", peer), ("cancelwatch_worker", worker)):
        if found is None:
            result[name] = {"checked": False}
            continue
        wrong = differences(expected, found)
        result[name] = {"checked": True, "differing": len(wrong), "examples": wrong[:3]}
    if peer is not None and worker is not None:
        result["peer_equals_worker"] = not differences(
            {pair: answer for pair, answer in worker.items() if answer is not None}, peer) and None not in worker.values()
    return result
