"""`alerting.decide`: what to fire, resolve or keep, from (previous alerts, wanted alerts).

Pure, no Kafka: the hand-off between owners and the catch-up hold are
decided here, so every case is a value in, value out test."""

from __future__ import annotations

from hypothesis import given, strategies as st

from cancelwatch import names

from cancelwatch.core import alerting


def wanted(alertname: str, seller: str = "A1", days: str = "7", rate: str = "2.6%") -> alerting.Wanted:
    labels = {names.LABEL_ALERTNAME: alertname, names.LABEL_SELLER: seller, names.LABEL_MARKETPLACE: "US",
              names.LABEL_SEVERITY: names.ALERT_SEVERITY[alertname], names.LABEL_WINDOW_DAYS: days}
    return alerting.Wanted(labels, {"rate": rate})


def firing(alert: alerting.Wanted, starts_at: float = 100.0) -> alerting.Firing:
    return alerting.Firing(alert.labels, alert.annotations, starts_at)


BREACH = wanted(names.ALERT_BREACHED)
WARNING = wanted(names.ALERT_WARNING, rate="2.1%")


def test_a_new_alert_fires_now_and_the_set_changed():
    decision = alerting.decide({}, {BREACH.key: BREACH}, now=200.0)
    assert [alert.starts_at for alert in decision.fire] == [200.0]
    assert decision.resolve == [] and decision.changed


def test_an_alert_still_wanted_keeps_its_start_and_is_not_resent_when_unchanged():
    previous = {BREACH.key: firing(BREACH, 100.0)}
    decision = alerting.decide(previous, {BREACH.key: BREACH}, now=200.0)
    assert decision.fire == [] and decision.resolve == [] and not decision.changed
    assert decision.firing[BREACH.key].starts_at == 100.0


def test_changed_annotations_are_sent_again_with_the_same_start():
    previous = {BREACH.key: firing(BREACH, 100.0)}
    worse = wanted(names.ALERT_BREACHED, rate="3.0%")
    decision = alerting.decide(previous, {worse.key: worse}, now=200.0)
    [sent] = decision.fire
    assert sent.annotations["rate"] == "3.0%" and sent.starts_at == 100.0 and not decision.changed


def test_an_alert_no_longer_wanted_resolves():
    decision = alerting.decide({BREACH.key: firing(BREACH)}, {WARNING.key: WARNING}, now=200.0)
    assert [alert.labels[names.LABEL_ALERTNAME] for alert in decision.resolve] == [names.ALERT_BREACHED]
    assert list(decision.firing) == [WARNING.key] and decision.changed


def test_a_takeover_resolves_a_restored_alert_whose_condition_cleared():
    restored = alerting.firing_from_identity("A1", "US", alerting.firing_identity({BREACH.key: firing(BREACH)}))
    assert restored == {BREACH.key: firing(BREACH)}
    decision = alerting.decide(restored, {}, now=300.0)
    assert [alert.key for alert in decision.resolve] == [BREACH.key]


def test_holding_fires_nothing_new_and_resolves_nothing():
    previous = {BREACH.key: firing(BREACH)}
    decision = alerting.decide(previous, {WARNING.key: WARNING}, now=200.0, hold=True)
    assert decision.fire == [] and decision.resolve == [] and not decision.changed
    assert list(decision.firing) == [BREACH.key]


def test_holding_sends_nothing_even_for_changed_annotations():
    previous = {BREACH.key: firing(BREACH)}
    worse = wanted(names.ALERT_BREACHED, rate="3.0%")
    decision = alerting.decide(previous, {worse.key: worse}, now=200.0, hold=True)
    assert decision.fire == [] and decision.firing == previous


ALERTS = [wanted(name, days=days) for name in names.SELLER_ALERTS for days in ("7", "30")]


@given(st.sets(st.integers(0, len(ALERTS) - 1)), st.sets(st.integers(0, len(ALERTS) - 1)), st.booleans())
def test_after_a_decision_firing_is_what_was_fired_and_not_resolved(before, now_wanted, hold):
    previous = {ALERTS[i].key: firing(ALERTS[i]) for i in before}
    want = {ALERTS[i].key: ALERTS[i] for i in now_wanted}
    decision = alerting.decide(previous, want, now=500.0, hold=hold)
    resolved = {alert.key for alert in decision.resolve}
    assert set(decision.firing) | resolved == (set(previous) | (set(want) if not hold else set(previous) & set(want)))
    assert not set(decision.firing) & resolved
    if not hold:
        assert set(decision.firing) == set(want)
    else:
        assert set(decision.firing) == set(previous)
    assert decision.changed == (set(decision.firing) != set(previous))


def test_the_durable_form_round_trips_labels_and_start():
    alerts = {alert.key: firing(alert, 123.5) for alert in ALERTS[:3]}
    listing = alerting.Wanted({**wanted(names.ALERT_LISTING, days="30").labels, names.LABEL_SKU: "SKU-1"}, {})
    alerts[listing.key] = firing(listing, 99.0)
    back = alerting.firing_from_identity("A1", "US", alerting.firing_identity(alerts))
    assert back == alerts
