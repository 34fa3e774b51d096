"""Settings: one table, documented, checked at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from cancelwatch import settings

ROOT = Path(__file__).resolve().parent.parent


def test_docs_settings_is_generated_from_the_settings_table():
    assert (ROOT / "docs" / "settings.md").read_text() == settings.reference_markdown(), \
        "docs/settings.md is stale: run `cancelwatch settings > docs/settings.md`"


def test_contract_defaults():
    loaded = settings.load({})
    assert loaded.broker_urls == ("kafka://127.0.0.1:9092",)
    assert loaded.alertmanager_urls == ("http://127.0.0.1:9093",)
    assert loaded.web_port == 6066
    assert loaded.clock == "wall"
    assert loaded.policy_path.name == "policy.yaml" and loaded.policy_path.is_file()
    assert loaded.web_host == "127.0.0.1"


@pytest.mark.parametrize("variable, value, words", [
    ("CANCELWATCH_WEB_PORT", "70000", "outside"),
    ("CANCELWATCH_CLOCK", "sundial", "not one of"),
    ("CANCELWATCH_BROKER", "http://x:1", "kafka://host:port"),
    ("CANCELWATCH_POLICY", "/nonexistent/policy.yaml", "not a readable file"),
    ("CANCELWATCH_ORDERS_TOPIC", "bad topic!", "not a valid Kafka topic"),
    ("CANCELWATCH_KAFKA_SECURITY_PROTOCOL", "SASL_SSL", "needs CANCELWATCH_KAFKA_USERNAME"),
])
def test_bad_setting_names_the_variable_and_why(variable, value, words):
    with pytest.raises(settings.SettingError) as caught:
        settings.load({variable: value})
    message = str(caught.value)
    assert variable.split("_KAFKA_SECURITY")[0] in message and words in message


def test_several_alertmanagers_and_brokers():
    loaded = settings.load({"CANCELWATCH_ALERTMANAGER_URL": "http://a:9093, http://b:9093",
                            "CANCELWATCH_BROKER": "kafka://k1:9092;kafka://k2:9092"})
    assert loaded.alertmanager_urls == ("http://a:9093", "http://b:9093")
    assert loaded.bootstrap_servers == ["k1:9092", "k2:9092"]
    assert settings.load({"CANCELWATCH_ALERTMANAGER_URL": ""}).alertmanager_urls == ()


def test_unknown_variables_are_reported_not_fatal(capsys):
    env = {"CANCELWATCH_TYPO": "1", "CANCELWATCH_WEB_PORT": "7000", "OTHER": "x"}
    assert settings.load(env).web_port == 7000
    assert settings.unknown_variables(env) == ["CANCELWATCH_TYPO"]
    settings.warn_unknown("worker", env)
    assert "CANCELWATCH_TYPO is not a cancelwatch setting" in capsys.readouterr().err


def test_source_topics_map_each_role_to_its_configured_topic():
    loaded = settings.load({"CANCELWATCH_ORDERS_TOPIC": "shop-orders"})
    assert loaded.source_topics == {"orders": "shop-orders", "cancellations": "cancellations"}
