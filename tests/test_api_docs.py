"""docs/api.md against the worker: every endpoint, parameter, status and field is documented.

Read from the worker's route table (`streams/cancelwatch/worker/web.py`), from its views
driven through every answer they give, and from the pure functions that
build the answers (streams/cancelwatch/core/window.py), so an endpoint, parameter or field
added there without its documentation fails here.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from cancelwatch import names

from cancelwatch.core import policy as policy_module, window
from cancelwatch.worker import web
from tests.worker.test_web import api_replies

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "api.md").read_text()
POLICY = policy_module.load(ROOT / "streams" / "cancelwatch" / "core" / "policy.yaml")


def worker_paths() -> list[str]:
    """Every path the worker serves: its routes, what they dispatch to, and /metrics."""
    return list(web.ROUTES) + list(web.DISPATCHED) + ["/metrics"]


def test_the_route_table_is_read_as_expected():
    assert "/sellers/{seller_id}" in worker_paths()
    assert "/sellers/at-risk" in worker_paths()
    assert "/metrics" in worker_paths()


def test_every_endpoint_path_of_the_worker_is_documented():
    missing = [path for path in worker_paths() if f"`GET {path}" not in DOC]
    assert not missing, f"docs/api.md has no `GET <path>` for {missing}"


def test_every_documented_endpoint_exists():
    documented = set(re.findall(r"`GET (/[^`?]*)", DOC))
    assert documented == set(worker_paths())


def test_every_query_parameter_is_documented():
    read = {name for reply in asyncio.run(api_replies()) for name in reply.query_read}
    assert read >= {"marketplace", "limit", "cancel", "scope"}
    missing = [name for name in sorted(read) if f"`{name}`" not in DOC]
    assert not missing, f"docs/api.md does not mention the query parameters {missing}"


def test_every_status_code_of_the_worker_is_in_the_status_table():
    codes = {reply.status for reply in asyncio.run(api_replies())}
    assert codes >= {200, 400, 404, 503}
    table = DOC.split("## Status codes", 1)[1]
    missing = sorted(code for code in codes if f"| `{code}` |" not in table)
    assert not missing, f"the status table of docs/api.md lacks {missing}"


def test_the_example_error_bodies_are_answers_the_views_give():
    examples = DOC.split("Examples of `400` bodies:", 1)[1].split("\n## ", 1)[0]
    documented = [json.loads(line) for line in examples.splitlines() if line.strip().startswith("{")]
    assert len(documented) >= 3
    given = [reply.body for reply in asyncio.run(api_replies()) if reply.status == 400]
    missing = [body for body in documented if body not in given]
    assert not missing, f"docs/api.md shows error bodies the views never give: {missing}"


def documented_seller() -> dict:
    block = re.search(r"```json\n(.*?)```", DOC, re.S)
    assert block, "docs/api.md has no ```json example of the seller object"
    return json.loads(block.group(1))


def built_seller(marketplace: str) -> dict:
    windows = [window.WindowTotals(w, 100, 2, {"NoInventory": 2}, {"pending": 1})
               for w in POLICY.windows(marketplace)]
    return window.seller_json("A1", marketplace, windows, 0.0)


def test_the_example_has_exactly_the_fields_the_worker_answers_with():
    example = documented_seller()
    built = built_seller(example["marketplace"])
    assert set(example) == set(built)
    assert [set(w) for w in example["windows"]] == [set(w) for w in built["windows"]]
    assert example["windows"][0]["status"] in names.STATUSES
    assert set(example["excluded"]) <= set(names.EXCLUDED_CAUSES)


def test_every_field_status_and_excluded_cause_is_explained():
    built = built_seller("IN")
    fields = set(built) | {f"windows[].{key}" for key in built["windows"][0]}
    table = DOC.split("## The seller object", 1)[1].split("\n## ", 1)[0]
    missing = [field for field in sorted(fields)
               if f"`{field}`" not in table and not re.search(rf"`{re.escape(field)}`,", table)]
    assert not missing, f"the field table of docs/api.md does not explain {missing}"
    for word in (*names.STATUSES, *names.EXCLUDED_CAUSES):
        assert f"`{word}`" in table, f"the field table of docs/api.md does not explain `{word}`"


def test_the_example_is_consistent_with_the_counting_rules():
    example = documented_seller()
    [first] = example["windows"]
    [policy_window] = POLICY.windows(example["marketplace"])
    totals = window.WindowTotals(policy_window, first["orders"], first["cancelled"], {}, {})
    assert first == totals.as_json()
    assert sum(example["reasons"].values()) == first["cancelled"]
