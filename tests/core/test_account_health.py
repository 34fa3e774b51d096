"""Amazon's account-health report in its envelope (streams/cancelwatch/core/account_health.py): the example
document of amazon-documents.md 1.7, every known quirk of 1.6, and bad envelopes and reports.
No services."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from cancelwatch.core import account_health, events
from cancelwatch.core.account_health import BadReport

NOW = datetime(2026, 8, 10, 6, 30, tzinfo=timezone.utc)
AUG_3 = int(datetime(2026, 8, 3, tzinfo=timezone.utc).timestamp())
AUG_9_END = int(datetime(2026, 8, 9, 23, 59, 59, tzinfo=timezone.utc).timestamp())

# The example document of amazon-documents.md, section 1.7 (US and IN), verbatim.
EXAMPLE_TEXT = r"""
{
  "accountStatuses": [
    {"marketplaceId": "ATVPDKIKX0DER", "status": "NORMAL"},
    {"marketplaceId": "A21TJRUUN4KGV", "status": "AT_RISK"}
  ],
  "performanceMetrics": [
    {
      "marketplaceId": "ATVPDKIKX0DER",
      "accountHealthRating": {"ahrStatus": "GREAT", "reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}},
      "preFulfillmentCancellationRate": {"reportingDateRange": {"reportingDateFrom": "2026-08-03T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "orderCount": 4760, "cancellationCount": 33, "status": "GOOD", "rate": 0.006933, "targetValue": 0.025, "targetCondition": "LESS_THAN"},
      "lateShipmentRate": {"reportingDateRange": {"reportingDateFrom": "2026-07-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "orderCount": 20415, "lateShipmentCount": 388, "status": "GOOD", "rate": 0.019006, "targetValue": 0.04, "targetCondition": "LESS_THAN"},
      "validTrackingRate": {"reportingDateRange": {"reportingDateFrom": "2026-07-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "shipmentCount": 19870, "validTrackingCount": 19612, "status": "GOOD", "rate": 0.987016, "targetValue": 0.95, "targetCondition": "GREATER_THAN"},
      "onTimeDeliveryRate": {"reportingDateRange": {"reportingDateFrom": "2026-07-01T00:00:00Z", "reportingDateTo": "2026-07-30T23:59:59Z"}, "shipmentCountWithValidTracking": 19540, "onTimeDeliveryCount": 18602, "status": "GOOD", "rate": 0.951996, "targetValue": 0.9, "targetCondition": "GREATER_THAN"},
      "unitOnTimeDeliveryRate": {"reportingDateRange": {"reportingDateFrom": "2026-07-17T00:00:00Z", "reportingDateTo": "2026-07-30T23:59:59Z"}, "totalUnitCount": 10230, "unitOnTimeDeliveryCount": 9650, "status": "GOOD", "rate": 0.943304, "targetValue": 0.9, "targetCondition": "GREATER_THAN"},
      "orderDefectRate": {
        "mfn": {"reportingDateRange": {"reportingDateFrom": "2026-05-27T00:00:00Z", "reportingDateTo": "2026-07-25T23:59:59Z"}, "orderCount": 40890, "orderWithDefects": {"count": 176, "status": "GOOD"}, "claims": {"count": 61, "status": "NONE"}, "chargebacks": {"count": 9, "status": "NONE"}, "negativeFeedback": {"count": 112, "status": "NONE"}, "fulfillmentType": "mfn", "status": "GOOD", "rate": 0.004304, "targetValue": 0.01, "targetCondition": "LESS_THAN"},
        "afn": {"reportingDateRange": {"reportingDateFrom": "2026-05-27T00:00:00Z", "reportingDateTo": "2026-07-25T23:59:59Z"}, "orderCount": 7215, "orderWithDefects": {"count": 19, "status": "GOOD"}, "claims": {"count": 4, "status": "NONE"}, "chargebacks": {"count": 2, "status": "NONE"}, "negativeFeedback": {"count": 14, "status": "NONE"}, "fulfillmentType": "afn", "status": "GOOD", "rate": 0.002633, "targetValue": 0.01, "targetCondition": "LESS_THAN"}
      },
      "invoiceDefectRate": {"reportingDateRange": {"reportingDateFrom": "2026-08-03T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "orderCount": 212, "invoiceDefect": {"count": 3, "status": "GOOD"}, "missingInvoice": {"count": 2, "status": "NONE"}, "lateInvoice": {"count": 1, "status": "NONE"}, "status": "GOOD", "rate": 0.014151, "targetValue": 0.05, "targetCondition": "LESS_THAN"},
      "warningStates": [],
      "listingPolicyViolations": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"},
      "productAuthenticityCustomerComplaints": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"},
      "productConditionCustomerComplaints": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"},
      "productSafetyCustomerComplaints": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"},
      "receivedIntellectualPropertyComplaints": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"},
      "restrictedProductPolicyViolations": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"},
      "suspectedIntellectualPropertyViolations": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"},
      "foodAndProductSafetyIssues": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"},
      "otherPolicyViolations": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"},
      "documentRequests": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"}
    },
    {
      "marketplaceId": "A21TJRUUN4KGV",
      "accountHealthRating": {"ahrStatus": "WARNED", "reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}},
      "preFulfillmentCancellationRate": {"reportingDateRange": {"reportingDateFrom": "2026-08-03T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "orderCount": 1320, "cancellationCount": 47, "status": "BAD", "rate": 0.035606, "targetValue": 0.02, "targetCondition": "LESS_THAN"},
      "lateShipmentRate": {"reportingDateRange": {"reportingDateFrom": "2026-07-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "orderCount": 5690, "lateShipmentCount": 171, "status": "GOOD", "rate": 0.030053, "targetValue": 0.04, "targetCondition": "LESS_THAN"},
      "validTrackingRate": {"reportingDateRange": {"reportingDateFrom": "2026-07-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "shipmentCount": 5540, "validTrackingCount": 5391, "status": "GOOD", "rate": 0.973105, "targetValue": 0.95, "targetCondition": "GREATER_THAN"},
      "onTimeDeliveryRate": {"reportingDateRange": {"reportingDateFrom": "2026-07-01T00:00:00Z", "reportingDateTo": "2026-07-30T23:59:59Z"}, "shipmentCountWithValidTracking": 5330, "onTimeDeliveryCount": 4882, "status": "GOOD", "rate": 0.915947, "targetValue": 0.9, "targetCondition": "GREATER_THAN"},
      "unitOnTimeDeliveryRate": {"reportingDateRange": {"reportingDateFrom": "2026-07-17T00:00:00Z", "reportingDateTo": "2026-07-30T23:59:59Z"}, "totalUnitCount": 0, "unitOnTimeDeliveryCount": 0, "status": "NONE", "rate": 0, "targetValue": 0.9, "targetCondition": "GREATER_THAN"},
      "orderDefectRate": {
        "mfn": {"reportingDateRange": {"reportingDateFrom": "2026-05-27T00:00:00Z", "reportingDateTo": "2026-07-25T23:59:59Z"}, "orderCount": 11240, "orderWithDefects": {"count": 83, "status": "GOOD"}, "claims": {"count": 31, "status": "NONE"}, "chargebacks": {"count": 0, "status": "NONE"}, "negativeFeedback": {"count": 57, "status": "NONE"}, "fulfillmentType": "mfn", "status": "GOOD", "rate": 0.007384, "targetValue": 0.01, "targetCondition": "LESS_THAN"},
        "afn": {"reportingDateRange": {"reportingDateFrom": "2026-05-27T00:00:00Z", "reportingDateTo": "2026-07-25T23:59:59Z"}, "orderCount": 0, "orderWithDefects": {"count": 0, "status": "NONE"}, "claims": {"count": 0, "status": "NONE"}, "chargebacks": {"count": 0, "status": "NONE"}, "negativeFeedback": {"count": 0, "status": "NONE"}, "fulfillmentType": "afn", "status": "NONE", "rate": 0, "targetValue": 0.01, "targetCondition": "LESS_THAN"}
      },
      "invoiceDefectRate": {"reportingDateRange": {"reportingDateFrom": "2026-08-03T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "orderCount": 0, "invoiceDefect": {"count": 0, "status": "NONE"}, "missingInvoice": {"count": 0, "status": "NONE"}, "lateInvoice": {"count": 0, "status": "NONE"}, "status": "NONE", "rate": 0, "targetValue": 0.05, "targetCondition": "LESS_THAN"},
      "warningStates": [],
      "listingPolicyViolations": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 2, "status": "BAD", "targetValue": 0, "targetCondition": "EQUALS"},
      "productAuthenticityCustomerComplaints": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"},
      "productConditionCustomerComplaints": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"},
      "productSafetyCustomerComplaints": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"},
      "receivedIntellectualPropertyComplaints": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"},
      "restrictedProductPolicyViolations": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"},
      "suspectedIntellectualPropertyViolations": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"},
      "foodAndProductSafetyIssues": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"},
      "otherPolicyViolations": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"},
      "documentRequests": {"reportingDateRange": {"reportingDateFrom": "2026-02-11T00:00:00Z", "reportingDateTo": "2026-08-09T23:59:59Z"}, "defectsCount": 0, "status": "GOOD", "targetValue": 0, "targetCondition": "EQUALS"}
    }
  ]
}
"""
EXAMPLE = json.loads(EXAMPLE_TEXT)


def envelope(report=None, **fields) -> bytes:
    value = {"schema_version": 1, "seller_id": "A1", "fetched_at": "2026-08-10T06:00:00Z",
             "report": EXAMPLE if report is None else report}
    value.update(fields)
    return json.dumps({key: field for key, field in value.items() if field is not ...}).encode()


def decoded(report=None, **fields) -> account_health.Envelope:
    return account_health.decode_envelope(envelope(report, **fields), NOW)


def refused(raw: bytes, now: datetime | None = NOW) -> BadReport:
    with pytest.raises(BadReport) as raised:
        account_health.decode_envelope(raw, now)
    return raised.value


def report_with(change) -> dict:
    """The example with `change(report)` applied to a deep copy."""
    report = copy.deepcopy(EXAMPLE)
    change(report)
    return report


def us_metrics(report: dict) -> dict:
    return report["performanceMetrics"][0]


def us_rate(report: dict) -> dict:
    return us_metrics(report)["preFulfillmentCancellationRate"]


# --- the example document --------------------------------------------------------------------


def test_the_example_decodes_with_its_us_and_in_entries():
    result = decoded()
    assert result.seller_id == "A1"
    assert result.fetched_at == datetime(2026, 8, 10, 6, tzinfo=timezone.utc)
    assert result.fetched_epoch == result.fetched_at.timestamp()
    assert result.skipped == 0
    assert list(result.marketplaces) == ["US", "IN"]
    us, india = result.marketplaces["US"], result.marketplaces["IN"]
    assert us == account_health.MarketplaceHealth(
        "US", account_health.CancellationRate(4760, 33, 0.006933, "GOOD", AUG_3, AUG_9_END), "NORMAL", "GREAT")
    assert india == account_health.MarketplaceHealth(
        "IN", account_health.CancellationRate(1320, 47, 0.035606, "BAD", AUG_3, AUG_9_END), "AT_RISK", "WARNED")
    assert not account_health.at_risk(us.account_status)
    assert account_health.at_risk(india.account_status)


def test_the_decoded_report_survives_a_msgpack_round_trip():
    """The worker keeps the latest report per seller and marketplace in a table."""
    india = decoded().marketplaces["IN"]
    raw = msgspec.msgpack.encode(india)
    assert msgspec.msgpack.decode(raw, type=account_health.MarketplaceHealth) == india


# --- the quirks of amazon-documents.md 1.6 ---------------------------------------------------


def test_1_the_misspelled_prefulfillment_cancel_rate_is_read():
    def misspell(report):
        metrics = us_metrics(report)
        metrics["prefulfillmentCancelRate"] = metrics.pop("preFulfillmentCancellationRate")
    assert decoded(report_with(misspell)).marketplaces == decoded().marketplaces


def test_1_the_schema_key_wins_over_the_misspelled_one():
    def both(report):
        us_metrics(report)["prefulfillmentCancelRate"] = {"orderCount": "junk"}
    assert decoded(report_with(both)).marketplaces == decoded().marketplaces


def test_2_misspelled_and_missing_other_metrics_are_accepted():
    def example_keys(report):
        for metrics in report["performanceMetrics"]:
            metrics["documentRequest"] = metrics.pop("documentRequests")
            metrics["warningState"] = metrics.pop("warningStates")
            del metrics["restrictedProductPolicyViolations"]
            del metrics["suspectedIntellectualPropertyViolations"]
    assert decoded(report_with(example_keys)).marketplaces == decoded().marketplaces


def test_3_an_account_status_outside_the_enum_is_kept_and_suspended_alerts():
    def suspended(report):
        report["accountStatuses"][0]["status"] = "SUSPENDED"
        report["accountStatuses"][1]["status"] = "UNDER_REVIEW"
    result = decoded(report_with(suspended))
    assert result.marketplaces["US"].account_status == "SUSPENDED"
    assert result.marketplaces["IN"].account_status == "UNDER_REVIEW"
    assert account_health.at_risk("SUSPENDED") and account_health.at_risk("DEACTIVATED")
    assert not account_health.at_risk("UNDER_REVIEW") and not account_health.at_risk(None)


def test_3_a_marketplace_without_an_account_status_has_none():
    def no_statuses(report):
        del report["accountStatuses"]
    result = decoded(report_with(no_statuses))
    assert [health.account_status for health in result.marketplaces.values()] == [None, None]


@pytest.mark.parametrize("rating, expected", [
    ({"ahrStatus": "WARNED"}, "WARNED"),
    ({"accountHealthRatingStatus": "GREAT"}, "GREAT"),
    ({"ahrStatus": "WARNED", "accountHealthRatingStatus": "GREAT"}, "WARNED"),
    ({"ahrScore": 180, "reportingDateRange": {"dateOffset": {"duration": 181, "offset": 0}}}, None),
    ("WARNED", None),
    (None, None),
    (..., None),
])
def test_4_either_health_rating_key_is_read_and_a_bad_one_ignored(rating, expected):
    def rate(report):
        if rating is ...:
            del us_metrics(report)["accountHealthRating"]
        else:
            us_metrics(report)["accountHealthRating"] = rating
    assert decoded(report_with(rate)).marketplaces["US"].health_rating == expected


def test_4_an_untyped_fulfillment_type_is_not_read():
    def odd(report):
        us_metrics(report)["orderDefectRate"]["afn"]["fulfillmentType"] = 42
        del us_metrics(report)["orderDefectRate"]["mfn"]["fulfillmentType"]
    assert decoded(report_with(odd)).marketplaces == decoded().marketplaces


def test_5_nonsense_in_other_metrics_is_not_read():
    def nonsense(report):
        metrics = us_metrics(report)
        metrics["validTrackingRate"]["validTrackingCount"] = metrics["validTrackingRate"]["shipmentCount"] + 1
        metrics["lateShipmentRate"]["reportingDateRange"] = {"reportingDateFrom": "2020-11-21T00:00Z",
                                                             "reportingDateTo": "2020-11-19T23:59Z"}
        metrics["onTimeDeliveryRate"]["shipmentCountWithValidTracking"] = 19540.5
    assert decoded(report_with(nonsense)).marketplaces == decoded().marketplaces


def test_5_a_cancellation_range_that_ends_before_it_starts_is_refused():
    def backwards(report):
        us_rate(report)["reportingDateRange"] = {"reportingDateFrom": "2020-11-21T00:00Z",
                                                 "reportingDateTo": "2020-11-19T23:59Z"}
    error = refused(envelope(report_with(backwards)))
    assert "performanceMetrics[0].preFulfillmentCancellationRate.reportingDateRange" in error.reason
    assert "after" in error.reason


def test_6_missing_metrics_other_than_the_cancellation_rate_are_accepted():
    def bare(report):
        for metrics in report["performanceMetrics"]:
            for key in list(metrics):
                if key not in ("marketplaceId", "preFulfillmentCancellationRate"):
                    del metrics[key]
    result = decoded(report_with(bare))
    assert [health.cancellation for health in result.marketplaces.values()] == \
        [health.cancellation for health in decoded().marketplaces.values()]
    assert [health.health_rating for health in result.marketplaces.values()] == [None, None]


@pytest.mark.parametrize("start, end", [
    ("2026-08-03T00:00Z", "2026-08-09T23:59Z"),                # the schema's examples: minutes
    ("2026-08-03T00:00:00Z", "2026-08-09T23:59:00Z"),          # a real report: seconds
    ("2026-08-03T00:00:00.000Z", "2026-08-09T23:59:00.999Z"),
    ("2026-08-03T02:00:00+02:00", "2026-08-09T16:59-07:00"),
    ("2026-08-03t00:00:00z", "2026-08-09t23:59:00z"),
])
def test_7_dates_with_or_without_seconds_are_read(start, end):
    def dated(report):
        us_rate(report)["reportingDateRange"] = {"reportingDateFrom": start, "reportingDateTo": end}
    cancellation = decoded(report_with(dated)).marketplaces["US"].cancellation
    assert (cancellation.reporting_from, cancellation.reporting_to) == (AUG_3, AUG_9_END - 59)


def test_8_each_metric_keeps_its_own_range():
    """The cancellation range is the metric's own, not another metric's or the report request's."""
    def other_ranges(report):
        us_metrics(report)["lateShipmentRate"]["reportingDateRange"]["reportingDateFrom"] = "2026-01-01T00:00:00Z"
    assert decoded(report_with(other_ranges)).marketplaces["US"].cancellation.reporting_from == AUG_3


def test_9_unknown_keys_anywhere_are_ignored():
    def extra(report):
        report["reportVersion"] = "2"
        report["accountStatuses"][0]["since"] = "2026-01-01"
        metrics = us_metrics(report)
        metrics["accountHealthRating"]["ahrScore"] = 230
        metrics["lateShipmentRateList"] = [{"rate": 0.1}]
        metrics["customerProductReviewsPolicyViolations"] = {"defectsCount": 0}
        metrics["policyViolationWarnings"] = {"warningsCount": 1, "reportingDateRange": {}}
        metrics["warningStates"] = ["LATE_SHIPMENT"]
        us_rate(report)["reportingDateRange"]["dateOffset"] = {"duration": 7, "offset": 0}
        us_rate(report)["comment"] = "new"
    result = account_health.decode_envelope(envelope(report_with(extra), producer="poller 1.2"), NOW)
    assert result.marketplaces == decoded().marketplaces


def test_a_rate_given_as_a_whole_number_is_read():
    assert decoded().marketplaces["IN"].cancellation.rate == 0.035606
    def zero(report):
        us_rate(report).update(orderCount=0, cancellationCount=0, rate=0, status="NONE")
    assert decoded(report_with(zero)).marketplaces["US"].cancellation.rate == 0.0


# --- marketplaces outside the contract -------------------------------------------------------


def test_entries_of_marketplaces_outside_the_contract_are_skipped_and_counted():
    def foreign(report):
        for marketplace_id in ("A28R8C7NBKEWEA", "AE08WJ6YKNBMC"):      # Ireland, South Africa
            entry = copy.deepcopy(us_metrics(report))
            entry["marketplaceId"] = marketplace_id
            report["performanceMetrics"].append(entry)
            report["accountStatuses"].append({"marketplaceId": marketplace_id, "status": "AT_RISK"})
        report["performanceMetrics"].append({"marketplaceId": "XYZ", "preFulfillmentCancellationRate": "junk"})
    result = decoded(report_with(foreign))
    assert result.skipped == 3
    assert result.marketplaces == decoded().marketplaces


def test_a_report_of_foreign_marketplaces_only_is_refused_naming_them():
    def only_foreign(report):
        for metrics in report["performanceMetrics"]:
            metrics["marketplaceId"] = "A28R8C7NBKEWEA"
        report["performanceMetrics"].pop()
    error = refused(envelope(report_with(only_foreign)))
    assert error.kind == "invalid_event"
    assert error.reason.startswith("report.performanceMetrics: no entry of a contract marketplace")
    assert "1 skipped" in error.reason


def test_every_contract_marketplace_id_is_read():
    from cancelwatch import names
    from cancelwatch.core.amazon_orders import MARKETPLACE_IDS
    def every(report):
        template = us_metrics(report)
        report["performanceMetrics"] = [dict(template, marketplaceId=marketplace_id)
                                        for marketplace_id in MARKETPLACE_IDS]
    assert sorted(decoded(report_with(every)).marketplaces) == sorted(names.MARKETPLACES)


# --- bad envelopes -----------------------------------------------------------------------------


@pytest.mark.parametrize("fields, field", [
    ({"schema_version": 2}, "schema_version"),
    ({"schema_version": ...}, "schema_version"),
    ({"schema_version": "1"}, "schema_version"),
    ({"seller_id": ""}, "seller_id"),
    ({"seller_id": "S" * 65}, "seller_id"),
    ({"seller_id": ...}, "seller_id"),
    ({"seller_id": 7}, "seller_id"),
    ({"fetched_at": ...}, "fetched_at"),
    ({"fetched_at": "2026-08-10T06:00:00"}, "fetched_at"),          # no offset
    ({"fetched_at": "2026-08-10T06:00Z"}, "fetched_at"),            # the envelope is RFC 3339: seconds
    ({"fetched_at": "yesterday"}, "fetched_at"),
    ({"report": ...}, "report"),
])
def test_a_bad_envelope_is_refused_naming_the_field(fields, field):
    raw = envelope(**fields) if "report" not in fields else \
        json.dumps({"schema_version": 1, "seller_id": "A1", "fetched_at": "2026-08-10T06:00:00Z"}).encode()
    error = refused(raw)
    assert error.kind == "invalid_event"
    assert error.reason.startswith(f"{field}:"), error.reason
    assert str(error) == error.reason


@pytest.mark.parametrize("report, field", [
    ([], "report"),
    (None, "report"),
    ("report", "report"),
    ({}, "report.performanceMetrics"),
    ({"performanceMetrics": {}}, "report.performanceMetrics"),
    ({"performanceMetrics": []}, "report.performanceMetrics"),
    ({"performanceMetrics": [7]}, "report.performanceMetrics[0]"),
    ({"performanceMetrics": [{}]}, "report.performanceMetrics[0].marketplaceId"),
    ({"performanceMetrics": [], "accountStatuses": {}}, "report.accountStatuses"),
])
def test_a_report_of_the_wrong_shape_is_refused_naming_the_field(report, field):
    raw = json.dumps({"schema_version": 1, "seller_id": "A1", "fetched_at": "2026-08-10T06:00:00Z",
                      "report": report}).encode()
    error = refused(raw)
    assert error.kind == "invalid_event"
    assert error.reason.startswith(f"{field}:"), error.reason


def test_a_message_that_is_not_json_or_too_big_or_a_tombstone_is_invalid_json():
    for raw in (b"{", b"\xff\xfe", b"{\"report\": " + b"[" * 100_000, b"x" * (events.MAX_MESSAGE_BYTES + 1)):
        assert refused(raw).kind == "invalid_json"
    assert "tombstone" in refused(None).reason


def test_a_report_fetched_in_the_future_is_refused_with_the_given_clock_only():
    ahead = (NOW + timedelta(minutes=5, seconds=1)).isoformat()
    error = refused(envelope(fetched_at=ahead))
    assert error.kind == "future" and "fetched_at" in error.reason
    assert account_health.decode_envelope(envelope(fetched_at=ahead), None).seller_id == "A1"
    at_limit = (NOW + timedelta(minutes=5)).isoformat()
    assert account_health.decode_envelope(envelope(fetched_at=at_limit), NOW).seller_id == "A1"


# --- bad cancellation metrics ----------------------------------------------------------------

RATE = "report.performanceMetrics[0].preFulfillmentCancellationRate"


@pytest.mark.parametrize("change, field", [
    (lambda m: m.pop("preFulfillmentCancellationRate"), RATE),
    (lambda m: m.update(preFulfillmentCancellationRate=None), RATE),
    (lambda m: m.update(preFulfillmentCancellationRate=[]), RATE),
    (lambda m: m["preFulfillmentCancellationRate"].pop("orderCount"), f"{RATE}.orderCount"),
    (lambda m: m["preFulfillmentCancellationRate"].update(orderCount=-1), f"{RATE}.orderCount"),
    (lambda m: m["preFulfillmentCancellationRate"].update(orderCount=4760.5), f"{RATE}.orderCount"),
    (lambda m: m["preFulfillmentCancellationRate"].update(orderCount="4760"), f"{RATE}.orderCount"),
    (lambda m: m["preFulfillmentCancellationRate"].update(cancellationCount=-2), f"{RATE}.cancellationCount"),
    (lambda m: m["preFulfillmentCancellationRate"].update(cancellationCount=4761), f"{RATE}.cancellationCount"),
    (lambda m: m["preFulfillmentCancellationRate"].update(rate=1.5), f"{RATE}.rate"),
    (lambda m: m["preFulfillmentCancellationRate"].update(rate=-0.1), f"{RATE}.rate"),
    (lambda m: m["preFulfillmentCancellationRate"].pop("rate"), f"{RATE}.rate"),
    (lambda m: m["preFulfillmentCancellationRate"].pop("status"), f"{RATE}.status"),
    (lambda m: m["preFulfillmentCancellationRate"].update(status=""), f"{RATE}.status"),
    (lambda m: m["preFulfillmentCancellationRate"].pop("reportingDateRange"), f"{RATE}.reportingDateRange"),
    (lambda m: m["preFulfillmentCancellationRate"]["reportingDateRange"].pop("reportingDateTo"),
     f"{RATE}.reportingDateRange.reportingDateTo"),
    (lambda m: m["preFulfillmentCancellationRate"]["reportingDateRange"].update(reportingDateFrom="2026-08-03"),
     f"{RATE}.reportingDateRange.reportingDateFrom"),
    (lambda m: m["preFulfillmentCancellationRate"]["reportingDateRange"].update(
        reportingDateFrom="2026-08-03T00:00:00"), f"{RATE}.reportingDateRange.reportingDateFrom"),
    (lambda m: m["preFulfillmentCancellationRate"]["reportingDateRange"].update(reportingDateTo="20260809T2359Z"),
     f"{RATE}.reportingDateRange.reportingDateTo"),
    (lambda m: m["preFulfillmentCancellationRate"]["reportingDateRange"].update(reportingDateTo=1786319999),
     f"{RATE}.reportingDateRange.reportingDateTo"),
    (lambda m: m.update(marketplaceId=""), "report.performanceMetrics[0].marketplaceId"),
])
def test_a_bad_cancellation_metric_is_refused_naming_the_field(change, field):
    error = refused(envelope(report_with(lambda report: change(us_metrics(report)))))
    assert error.kind == "invalid_event"
    assert error.reason.startswith(f"{field}:"), error.reason


def test_the_misspelled_key_is_named_when_it_is_the_one_at_fault():
    def misspelled_and_bad(report):
        metrics = us_metrics(report)
        metrics["prefulfillmentCancelRate"] = metrics.pop("preFulfillmentCancellationRate")
        metrics["prefulfillmentCancelRate"]["orderCount"] = -1
    error = refused(envelope(report_with(misspelled_and_bad)))
    assert error.reason.startswith("report.performanceMetrics[0].prefulfillmentCancelRate.orderCount:")


def test_two_different_entries_or_statuses_of_one_marketplace_are_refused():
    def twice(report):
        entry = copy.deepcopy(us_metrics(report))
        entry["preFulfillmentCancellationRate"]["orderCount"] = 4761
        report["performanceMetrics"].append(entry)
    error = refused(envelope(report_with(twice)))
    assert error.reason.startswith("report.performanceMetrics[2]:") and "(US)" in error.reason

    def identical(report):
        report["performanceMetrics"].append(copy.deepcopy(us_metrics(report)))
        report["accountStatuses"].append(dict(report["accountStatuses"][0]))
    assert decoded(report_with(identical)).marketplaces == decoded().marketplaces

    def conflicting(report):
        report["accountStatuses"].append({"marketplaceId": "ATVPDKIKX0DER", "status": "AT_RISK"})
    error = refused(envelope(report_with(conflicting)))
    assert error.reason.startswith("report.accountStatuses[2]:") and "NORMAL" in error.reason


@pytest.mark.parametrize("status, field", [
    ({"marketplaceId": "ATVPDKIKX0DER"}, "report.accountStatuses[0].status"),
    ({"status": "NORMAL"}, "report.accountStatuses[0].marketplaceId"),
    ({"marketplaceId": "ATVPDKIKX0DER", "status": 3}, "report.accountStatuses[0].status"),
    ("NORMAL", "report.accountStatuses[0]"),
])
def test_a_bad_account_status_is_refused_naming_the_field(status, field):
    def bad(report):
        report["accountStatuses"][0] = status
    error = refused(envelope(report_with(bad)))
    assert error.reason.startswith(f"{field}:"), error.reason


# --- hostile input: an answer or a BadReport, never anything else -----------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=10)


def paths(value, prefix=()):
    """Every path to a value inside the example."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from paths(child, prefix + (index,))


WRAPPED = {"schema_version": 1, "seller_id": "A1", "fetched_at": "2026-08-10T06:00:00Z", "report": EXAMPLE}
PATHS = [path for path in paths(WRAPPED) if path]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(PATHS), JSON_VALUES), min_size=1, max_size=3))
def test_a_mutated_report_decodes_or_is_refused_with_a_reason(mutations):
    document = copy.deepcopy(WRAPPED)
    for path, value in mutations:
        parent = document
        try:
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    try:
        result = account_health.decode_envelope(json.dumps(document).encode(), NOW)
    except BadReport as error:
        assert error.kind in ("invalid_event", "invalid_json", "future") and error.reason
    else:
        for health in result.marketplaces.values():
            cancellation = health.cancellation
            assert 0 <= cancellation.cancellation_count <= cancellation.order_count
            assert 0 <= cancellation.rate <= 1 and cancellation.reporting_from <= cancellation.reporting_to
