"""`cancelwatch publish-report` without a broker: the envelope it builds, checked as the worker
reads it, `--dry-run`, and the reports, files and options it refuses. Publishing to the real
broker, read by a real worker, is in tests/worker/test_reconciliation_e2e.py."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone

import pytest

from cancelwatch import cli

from cancelwatch.core import account_health
from cancelwatch.tools import publish_report
from tests.core.test_account_health import EXAMPLE, EXAMPLE_TEXT

NOW = datetime(2026, 8, 10, 6, 30, tzinfo=timezone.utc)


def test_the_report_is_wrapped_in_the_envelope_the_worker_reads():
    raw, decoded = publish_report.envelope(EXAMPLE_TEXT.encode(), "A1", NOW - timedelta(minutes=30), NOW)
    message = json.loads(raw)
    assert message == {"schema_version": 1, "seller_id": "A1", "fetched_at": "2026-08-10T06:00:00Z",
                       "report": EXAMPLE}
    assert account_health.decode_envelope(raw, NOW) == decoded
    assert sorted(decoded.marketplaces) == ["IN", "US"]
    assert publish_report.describe(decoded) == (
        "IN (47 of 1320 orders, 2026-08-03 00:00 to 2026-08-09 23:59, account AT_RISK), "
        "US (33 of 4760 orders, 2026-08-03 00:00 to 2026-08-09 23:59, account NORMAL)")


def test_fetched_at_is_written_in_utc_whatever_its_offset():
    india = timezone(timedelta(hours=5, minutes=30))
    raw, _ = publish_report.envelope(EXAMPLE_TEXT.encode(), "A1", datetime(2026, 8, 10, 11, 30, tzinfo=india), NOW)
    assert json.loads(raw)["fetched_at"] == "2026-08-10T06:00:00Z"


def test_skipped_marketplaces_are_named_in_the_summary():
    report = copy.deepcopy(EXAMPLE)
    report["performanceMetrics"].append({**report["performanceMetrics"][0], "marketplaceId": "A28R8C7NBKEWEA"})
    _, decoded = publish_report.envelope(json.dumps(report).encode(), "A1", NOW, NOW)
    assert decoded.skipped == 1
    assert publish_report.describe(decoded).endswith("; 1 entries of marketplaces outside the contract skipped")


@pytest.mark.parametrize("document, reason", [
    (b"{not json", "the report is not valid JSON"),
    (json.dumps({"schema_version": 1, "seller_id": "A1", "fetched_at": "2026-08-10T06:00:00Z",
                 "report": EXAMPLE}).encode(), "already an envelope"),
    (json.dumps({"accountStatuses": []}).encode(), "report.performanceMetrics: missing"),
    (json.dumps({"performanceMetrics": [{"marketplaceId": "A28R8C7NBKEWEA"}]}).encode(),
     "no entry of a contract marketplace"),
])
def test_a_report_the_worker_would_refuse_is_refused_naming_the_field(document, reason):
    with pytest.raises(account_health.BadReport) as refused:
        publish_report.envelope(document, "A1", NOW, NOW)
    assert reason in refused.value.reason


def test_a_report_fetched_in_the_future_is_refused():
    with pytest.raises(account_health.BadReport) as refused:
        publish_report.envelope(EXAMPLE_TEXT.encode(), "A1", NOW + timedelta(minutes=6), NOW)
    assert refused.value.kind == "future"


def test_dry_run_prints_the_envelope_and_publishes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(publish_report, "publish", lambda *args: pytest.fail("published on --dry-run"))
    path = tmp_path / "report.json"
    path.write_text(EXAMPLE_TEXT)
    assert cli.main(["publish-report", "--seller-id", "A1", "--fetched-at", "2026-08-10T06:00:00Z",
                     "--dry-run", str(path)]) == 0
    out, err = capsys.readouterr()
    message = json.loads(out)
    assert message["seller_id"] == "A1" and message["fetched_at"] == "2026-08-10T06:00:00Z"
    assert message["report"] == EXAMPLE
    assert "publish-report: seller A1: IN (47 of 1320 orders" in err and "nothing published" in err


def test_a_refused_report_exits_1_and_a_missing_file_or_bad_option_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(publish_report, "publish", lambda *args: pytest.fail("a refused report was published"))
    bad = copy.deepcopy(EXAMPLE)
    bad["performanceMetrics"][0]["preFulfillmentCancellationRate"]["cancellationCount"] = 5000
    path = tmp_path / "report.json"
    path.write_text(json.dumps(bad))
    assert cli.main(["publish-report", "--seller-id", "A1", str(path)]) == 1
    err = capsys.readouterr().err
    assert "preFulfillmentCancellationRate.cancellationCount: 5000 is more than orderCount 4760" in err
    assert "nothing published" in err
    assert cli.main(["publish-report", "--seller-id", "A1", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    for options in (["--seller-id", "A1", "--fetched-at", "2026-08-10T06:00:00"],
                    ["--seller-id", "A1", "--fetched-at", "yesterday"], ["--seller-id", ""]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["publish-report", *options, str(path)])
        assert exit_info.value.code == 2
