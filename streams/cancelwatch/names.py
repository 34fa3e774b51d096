"""Every name the outside world sees, spelled once.

Topic names, metric names, alert names, label and annotation keys live here.
Rule files, dashboards, docs and tests import or are checked against this
module, so a rename cannot leave a dangling query behind.
"""

from __future__ import annotations

# --- Kafka topics (defaults; the names themselves are settings) -------------
ORDERS_TOPIC = "orders"
CANCELLATIONS_TOPIC = "cancellations"
DEAD_LETTER_TOPIC = "cancelwatch-dlq"
# Internal: events whose Kafka key/partition does not match their seller are
# forwarded here, keyed by seller_id, so one seller's state is never split.
REROUTE_TOPIC = "cancelwatch-reroute"
# Amazon's account-health reports, one envelope per fetched report (contract section 11).
ACCOUNT_HEALTH_TOPIC = "account-health"
# Compacted: a seller's own stricter limit per marketplace (contract section 10),
# key `{seller_id}/{marketplace}`; every worker reads all of it.
TARGETS_TOPIC = "seller-targets"
APP_ID = "cancelwatch"
# Compacted, internal to the workers in event-clock mode: `{app id}-event-clock`, each
# partition's event clock (worker/feeds.py), so every worker answers at the cluster's clock.
CLOCK_TOPIC_SUFFIX = "event-clock"
DEFAULT_PARTITIONS = 4

# --- Event vocabulary (contract sections 2 and 3) ----------------------------
MARKETPLACES = (
    "US", "CA", "MX", "BR", "UK", "DE", "FR", "IT", "ES", "NL", "SE", "PL",
    "BE", "TR", "AE", "SA", "EG", "IN", "JP", "AU", "SG",
)
FULFILLMENT_CHANNELS = ("MFN", "AFN")
INITIATORS = ("seller", "buyer", "amazon")
SELLER_REASONS = (
    "NoInventory", "ShippingAddressUndeliverable", "CustomerExchange",
    "BuyerCanceled", "GeneralAdjustment", "CarrierCreditDecision",
    "RiskAssessmentInformationNotValid", "CarrierCoverageFailure",
    "CustomerReturn", "MerchandiseNotReceived",
)
AMAZON_REASONS = ("ShipmentNotConfirmed", "PaymentNotCompleted", "PolicyViolation")
REASONS = SELLER_REASONS + AMAZON_REASONS + ("Other",)

# Reason groups (domain.md) and the action an alert suggests for each.
REASON_GROUPS = {
    "inventory": ("NoInventory",),
    "order_error": (
        "ShippingAddressUndeliverable", "GeneralAdjustment", "CustomerExchange",
        "CarrierCoverageFailure", "CarrierCreditDecision",
    ),
    "payment": ("RiskAssessmentInformationNotValid", "PaymentNotCompleted"),
    "policy": ("PolicyViolation",),
    "buyer": ("BuyerCanceled", "CustomerReturn", "MerchandiseNotReceived"),
    "amazon": ("ShipmentNotConfirmed",),
    "other": ("Other",),
}
REASON_GROUP_OF = {reason: group for group, reasons in REASON_GROUPS.items() for reason in reasons}
GROUP_ACTIONS = {
    "inventory": "Monitor stock in real time and replenish; forecast demand from history; "
                 "raise handling time or pause offers that are low on stock.",
    "order_error": "Check each order's address and product data before processing; "
                   "contact the buyer to confirm.",
    "payment": "Offer several payment methods; tighten payment security against fraud.",
    "policy": "Learn the policy; stop selling counterfeit or infringing products.",
    "buyer": "Have buyers use Amazon's request-cancellation flow; never use BuyerCanceled "
             "without a buyer request.",
    "amazon": "Confirm shipment on time; fix the ship-confirmation integration.",
    "other": "Review the seller's recent cancellations and their reasons.",
}

# Causes under which a cancellation is excluded from the rate (API "excluded").
# `other`: a seller cancel that an operator's policy does not count (never with the default policy)
EXCLUDED_CAUSES = ("buyer_requested", "buyer_initiated", "pending", "amazon_other", "other")

# --- Alerts (contract section 9) ---------------------------------------------
ALERT_WARNING = "SellerCancelRateWarning"
ALERT_HEADROOM_LOW = "SellerCancelRateHeadroomLow"
ALERT_FORECAST_BREACH = "SellerCancelRateForecastBreach"
ALERT_BREACHED = "SellerCancelRateBreached"
ALERT_LISTING = "ListingConsecutiveSellerCancellations"
# Reconciliation with Amazon's account-health report (contract section 11).
ALERT_DRIFT = "SellerCancelRateDrift"
ALERT_ACCOUNT_AT_RISK = "SellerAccountAtRisk"
RECONCILIATION_ALERTS = (ALERT_DRIFT, ALERT_ACCOUNT_AT_RISK)
SELLER_ALERTS = (ALERT_WARNING, ALERT_HEADROOM_LOW, ALERT_FORECAST_BREACH, ALERT_BREACHED)
WARNING_FAMILY = (ALERT_WARNING, ALERT_HEADROOM_LOW, ALERT_FORECAST_BREACH)
ALERT_SEVERITY = {
    ALERT_WARNING: "warning",
    ALERT_HEADROOM_LOW: "warning",
    ALERT_FORECAST_BREACH: "warning",
    ALERT_BREACHED: "critical",
    ALERT_LISTING: "warning",
    ALERT_DRIFT: "warning",
    ALERT_ACCOUNT_AT_RISK: "critical",
}
LABEL_ALERTNAME = "alertname"
LABEL_SELLER = "seller_id"
LABEL_MARKETPLACE = "marketplace"
LABEL_SEVERITY = "severity"
LABEL_WINDOW_DAYS = "window_days"
LABEL_SKU = "sku"
ANNOTATION_KEYS = (
    "summary", "description", "rate", "headroom", "dominant_reason", "action", "dashboard",
)
# SellerCancelRateDrift adds Amazon's numbers and cancelwatch's over the report's range;
# SellerAccountAtRisk adds the report's account status (no window_days label).
DRIFT_ANNOTATION_KEYS = (
    "amazon_rate", "cancelwatch_rate", "amazon_cancelled", "cancelwatch_cancelled",
    "amazon_orders", "cancelwatch_orders",
)
ANNOTATION_ACCOUNT_STATUS = "account_status"
# The limit in force for the alert's window, and where it comes from: the seller's
# target or the marketplace (contract section 10).
ANNOTATION_LIMIT = "limit"
ANNOTATION_LIMIT_SOURCE = "limit_source"

STATUS_OK = "ok"
STATUS_WARNING = "warning"
STATUS_BREACH = "breach"
STATUSES = (STATUS_OK, STATUS_WARNING, STATUS_BREACH)

# --- Prometheus metrics exported by the worker -------------------------------
# name -> (type, labels, help). docs/metrics.md is generated from this (dashboards/metrics_reference.py).
METRIC_PREFIX = "cancelwatch_"
METRICS = {
    "cancelwatch_events_total": (
        "counter", ("topic", "outcome"),
        "Events consumed, by source topic and outcome "
        "(applied, unchanged, late, afn, rerouted, dead_letter); on the account-health topic, "
        "reports read (report) and performanceMetrics entries of marketplaces outside the "
        "contract, skipped (skipped_marketplace).",
    ),
    "cancelwatch_dead_letters_total": (
        "counter", ("topic", "kind"),
        "Messages sent to the dead-letter topic, by source topic and kind "
        "(invalid_json, invalid_event, wrong_topic, future), account-health reports included.",
    ),
    "cancelwatch_reads_again_total": (
        "counter", ("topic",),
        "Times a source partition was read again from its commit position because records read "
        "were not applied for 10 s (a fetch or group given up with no seek behind it), by "
        "source topic. The records are applied then; a rising count means the worker keeps losing "
        "fetches (rebalances in a loop, a fault).",
    ),
    "cancelwatch_orders_total": (
        "counter", ("marketplace",),
        "Seller-fulfilled orders that entered a seller's rate denominator.",
    ),
    "cancelwatch_seller_fault_cancellations_total": (
        "counter", ("marketplace", "reason_group"),
        "Orders that became seller-fault cancelled (rate numerator), by reason group.",
    ),
    "cancelwatch_excluded_cancellations_total": (
        "counter", ("marketplace", "cause"),
        "Cancelled orders excluded from the rate, by cause "
        "(" + ", ".join(EXCLUDED_CAUSES) + ").",
    ),
    "cancelwatch_processing_latency_seconds": (
        "histogram", ("topic",),
        "Time from an event's occurred_at to the worker having applied it, for current events "
        "(replayed history, older than CANCELWATCH_CATCHUP_AGE_SECONDS, is not processing delay).",
    ),
    "cancelwatch_consumer_lag_messages": (
        "gauge", ("topic", "partition"),
        "Messages in a source partition not yet processed by this worker.",
    ),
    "cancelwatch_partition_catching_up": (
        "gauge", ("partition",),
        "1 while a partition this worker owns is catching up on a backlog (lag above "
        "CANCELWATCH_CATCHUP_LAG on a source topic, events another worker reroutes while it "
        "catches up, a pause of this worker, or no fetch response for 10 s): its new alerts are held; "
        "0 once caught up.",
    ),
    "cancelwatch_sellers": (
        "gauge", ("marketplace", "status"),
        "Seller-marketplaces owned by this worker, by status (ok, warning, breach).",
    ),
    "cancelwatch_seller_rate_band": (
        "gauge", ("marketplace", "band"),
        "Seller-marketplaces by the band their 7-day rate falls in against the limit in force: "
        "low (under half the warning level), moderate, warning, breach.",
    ),
    "cancelwatch_fleet_window_orders": (
        "gauge", ("marketplace", "window_days"),
        "Orders in the window summed over this worker's sellers.",
    ),
    "cancelwatch_fleet_window_cancelled": (
        "gauge", ("marketplace", "window_days"),
        "Seller-fault cancelled orders in the window summed over this worker's sellers.",
    ),
    "cancelwatch_seller_rate": (
        "gauge", ("seller_id", "marketplace", "window_days"),
        "Cancellation rate of the top-K sellers at risk only (bounded).",
    ),
    "cancelwatch_seller_limit": (
        "gauge", ("seller_id", "marketplace", "window_days"),
        "Limit in force (a fraction: the seller's own target, or the marketplace's) of the top-K "
        "sellers at risk only; rate / limit is the share of the limit.",
    ),
    "cancelwatch_seller_hours_to_breach": (
        "gauge", ("seller_id", "marketplace", "window_days"),
        "Hours until the window is projected to breach (the forecast of "
        "SellerCancelRateForecastBreach; 0 when breached now) of the top-K sellers at risk, "
        "only for windows breached or projected to breach within the horizon.",
    ),
    "cancelwatch_seller_headroom": (
        "gauge", ("seller_id", "marketplace", "window_days"),
        "Headroom (more seller-fault cancels absorbable) of the top-K sellers at risk only.",
    ),
    "cancelwatch_seller_window_orders": (
        "gauge", ("seller_id", "marketplace", "window_days"),
        "Orders in the window of the top-K sellers at risk only.",
    ),
    "cancelwatch_seller_window_cancelled": (
        "gauge", ("seller_id", "marketplace", "window_days"),
        "Seller-fault cancelled orders in the window of the top-K sellers at risk only.",
    ),
    "cancelwatch_table_keys": (
        "gauge", ("table",),
        "Order buckets plus sellers held in each state table on this worker (its keys, near enough).",
    ),
    "cancelwatch_alerts_active": (
        "gauge", ("alertname", "severity"),
        "Alerts currently firing from this worker.",
    ),
    "cancelwatch_alert_deliveries_total": (
        "counter", ("outcome",),
        "Alert batches posted to Alertmanager, by outcome (sent, failed).",
    ),
    "cancelwatch_stray_alerts_resolved_total": (
        "counter", (),
        "Alerts of this worker's sellers that Alertmanager held and the worker did not hold firing, "
        "resolved by its sweep (at every re-send period and once partitions catch up): sent by a "
        "previous owner after the handover (a worker that had not noticed the rebalance yet, or "
        "one stopped past its session). Rare; a steady rise means workers keep sending alerts of "
        "partitions they lost.",
    ),
    "cancelwatch_alert_queue_alerts": (
        "gauge", (),
        "Alert updates waiting for delivery to Alertmanager.",
    ),
    "cancelwatch_clock_seconds": (
        "gauge", (),
        "The worker's notion of now (wall clock, or largest occurred_at in event-clock mode).",
    ),
    "cancelwatch_build_info": (
        "gauge", ("version", "clock", "core"),
        "Always 1; labels carry the version, the clock mode and how the core runs (`compiled`: "
        "its modules are the compiled extensions; `python`: the source, uncompiled; `mixed`).",
    ),
}
# A seller's first-window rate against the limit in force there (policy or seller target):
# under half the warning level, under the warning level, at the warning level, at the limit.
RATE_BANDS = ("low", "moderate", "warning", "breach")
EVENT_OUTCOMES = ("applied", "unchanged", "late", "afn", "rerouted", "dead_letter", "report", "skipped_marketplace")
DEAD_LETTER_KINDS = ("invalid_json", "invalid_event", "wrong_topic", "future")

# --- Prometheus job and dashboard uids ---------------------------------------
PROMETHEUS_JOB = "cancelwatch"
DASHBOARD_UIDS = {
    "overview": "cancelwatch-overview",
    "seller": "cancelwatch-seller",
    "pipeline": "cancelwatch-pipeline",
}
PROMETHEUS_DATASOURCE_UID = "cancelwatch-prometheus"
ALERTMANAGER_DATASOURCE_UID = "cancelwatch-alertmanager"

# --- On-call webhook receiver (cancelwatch oncall) ---------------------------
ONCALL_ALERTS_PATH = "/alerts"
ONCALL_NOTIFICATIONS_PATH = "/notifications"

# --- Prometheus-side alerts and recording rules (alerts/rules/*.yml) ---------
# What only Prometheus sees (the worker itself, the pipeline, whole
# marketplaces). alertname -> severity; tests/test_alert_rules.py checks the
# rule files, docs/alerts.md and alerts/alertmanager.yml against these.
PROMETHEUS_ALERTS = {
    "CancelwatchWorkerDown": "critical",
    "CancelwatchWorkerNotScraped": "critical",
    "CancelwatchConsumerLagGrowing": "warning",
    "CancelwatchDeadLetters": "warning",
    "CancelwatchAlertDeliveryFailing": "critical",
    "CancelwatchProcessingLatencyHigh": "warning",
    "CancelwatchMarketplaceCancelBurnRateHigh": "critical",
    "CancelwatchMarketplaceCancelBurnRateElevated": "warning",
}
# Label every Prometheus-side alert carries; Alertmanager routes on it.
LABEL_TEAM = "team"
TEAM_OPS = "ops"
# Burn-rate windows: the SRE workbook's 30-day windows scaled to the 7-day
# period (x 7/30): 5m->1m10s, 30m->7m, 1h->14m, 6h->1h24m, 3d->16h48m.
BURN_RATE_WINDOWS = ("1m10s", "7m", "14m", "1h24m", "16h48m")
RECORDING_RULES = (
    "marketplace:cancelwatch_seller_fault_cancellations:rate5m",
    "marketplace:cancelwatch_orders:rate5m",
    *(f"marketplace:cancelwatch_seller_fault_cancellations_per_order:ratio_rate{window}"
      for window in BURN_RATE_WINDOWS),
    "job_topic:cancelwatch_consumer_lag_messages:sum",
    "job_topic_kind:cancelwatch_dead_letters:rate5m",
    "job_outcome:cancelwatch_alert_deliveries:rate5m",
    "job_topic:cancelwatch_processing_latency_seconds:p99_rate5m",
)
