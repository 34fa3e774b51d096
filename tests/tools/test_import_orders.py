"""`cancelwatch import-orders` against the real broker and a real worker: a document imported
twice, and an overlapping page, count once; a rejected document publishes nothing."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from cancelwatch import settings

from cancelwatch.core import events

from cancelwatch.tools import import_orders
from tests.core.test_amazon_orders import EXAMPLE, EXAMPLE_EVENTS, item, order
from tests.tools.test_producer import read_all, stack_env  # noqa: F401 (fixture)
from tests.workers import Topics, WorkerProcess

pytestmark = pytest.mark.stack


def wait_for(worker: WorkerProcess, seller_id: str, expected: dict, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    answer: dict = {}
    while time.monotonic() < deadline:
        response = worker.get(f"/sellers/{seller_id}", marketplace="IN")
        if response.status_code == 200:
            body = response.json()
            answer = {"windows": [(w["days"], w["orders"], w["cancelled"], w["status"]) for w in body["windows"]],
                      "reasons": body["reasons"], "excluded": body["excluded"]}
            if answer == expected:
                return answer
        time.sleep(0.5)
    return answer


def test_the_example_imported_twice_and_in_an_overlapping_page_counts_once(kafka_bootstrap, tmp_path,
                                                                           monkeypatch, capsys):
    topics = Topics("import")
    seller_id = f"A1IMPORT{uuid.uuid4().hex[:8].upper()}"
    for variable, value in {"CANCELWATCH_BROKER": f"kafka://{kafka_bootstrap}", **topics.env()}.items():
        monkeypatch.setenv(variable, value)
    example = tmp_path / "order.json"
    example.write_text(json.dumps(EXAMPLE, indent=2))
    # A later page holding the example order again and a new order its buyer cancelled: once the
    # buyer's cancel is counted, everything sent before it on both topics has been read.
    page = tmp_path / "page.jsonl"
    page.write_text(json.dumps({"orders": [EXAMPLE["order"], order(
        "404-0000000-0000001", marketplace_id="A21TJRUUN4KGV", created="2026-08-07T10:00:00Z",
        updated="2026-08-07T10:20:00Z", items=[item(cancelled_by="BUYER", reason="Changed mind")])]}) + "\n")
    worker = WorkerProcess(topics, tmp_path / "state", clock="event").start()
    try:
        worker.wait_ready()
        for _ in range(2):
            assert import_orders.main(["--seller-id", seller_id, str(example)]) == 0
            assert "import-orders: 1 orders, 2 events published; 0 documents rejected" in capsys.readouterr().err
        once = {"windows": [(7, 1, 1, "breach"), (30, 1, 1, "breach")],
                "reasons": {"NoInventory": 1}, "excluded": {}}
        assert wait_for(worker, seller_id, once) == once
        assert import_orders.main(["--seller-id", seller_id, str(page)]) == 0
        with_page = {"windows": [(7, 2, 1, "breach"), (30, 2, 1, "breach")],
                     "reasons": {"NoInventory": 1}, "excluded": {"buyer_initiated": 1}}
        assert wait_for(worker, seller_id, with_page) == with_page
        assert worker.metric("cancelwatch_dead_letters_total") == 0
    finally:
        worker.stop()


def test_a_file_with_a_bad_document_exits_1_and_publishes_nothing_of_it(stack_env, tmp_path, capsys):  # noqa: F811
    bad = order("113-9999999-0000001", marketplace_id="A28R8C7NBKEWEA",
                items=[item(cancelled_by="MERCHANT", reason="NoInventory")])
    path = tmp_path / "orders.jsonl"
    path.write_text(json.dumps(EXAMPLE) + "\n" + json.dumps(bad) + "\n")
    assert import_orders.main(["--seller-id", "A1", str(path)]) == 1
    err = capsys.readouterr().err
    assert "line 2: salesChannel.marketplaceId: 'A28R8C7NBKEWEA' is not the id of a marketplace" in err
    assert "import-orders: 1 orders, 2 events published; 1 documents rejected" in err
    loaded = settings.load(stack_env)
    received = sorted((topic, key, value) for topic, key, value in read_all(loaded))
    assert [(topic, key) for topic, key, _ in received] == [(loaded.cancellations_topic, "A1"),
                                                            (loaded.orders_topic, "A1")]
    assert sorted(json.loads(value)["event_id"] for _, _, value in received) == sorted(
        value["event_id"] for value in EXAMPLE_EVENTS)
    assert json.loads(received[0][2]) == EXAMPLE_EVENTS[1]
    assert events.decode(received[0][2]).reason == "NoInventory"
