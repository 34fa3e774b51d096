"""Every setting of cancelwatch, read once from the environment.

`SETTINGS` is the one table of settings: name, default, meaning. The
reference in docs/settings.md is generated from it (`cancelwatch settings`)
and a test fails when the two drift. A bad value stops start-up with a
`SettingError` that names the variable and says why.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from importlib import resources
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

from cancelwatch import compiled, names


class SettingError(ValueError):
    """A setting has a value cancelwatch cannot use."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"setting {variable}: {reason}")
        self.variable = variable


@dataclasses.dataclass(frozen=True)
class Setting:
    variable: str
    default: str
    meaning: str


DEFAULT_POLICY = "(packaged streams/cancelwatch/core/policy.yaml)"

SETTINGS: tuple[Setting, ...] = (
    Setting("CANCELWATCH_BROKER", "kafka://127.0.0.1:9092",
            "Kafka bootstrap servers, `kafka://host:port`, several separated by `;` or `,`."),
    Setting("CANCELWATCH_ALERTMANAGER_URL", "http://127.0.0.1:9093",
            "Alertmanager base URL; several (an HA set) separated by `,`. Empty turns delivery off."),
    Setting("CANCELWATCH_WEB_PORT", "6066", "Port of the worker's HTTP API and `/metrics`."),
    Setting("CANCELWATCH_WEB_HOST", "127.0.0.1",
            "Address the HTTP API and `/metrics` bind to (`0.0.0.0` to expose them)."),
    Setting("CANCELWATCH_WEB_ADVERTISED_URL", "",
            "URL other workers use to reach this one (request routing); empty: "
            "`http://<CANCELWATCH_WEB_HOST>:<port>`, or this machine's host name when binding `0.0.0.0`."),
    Setting("CANCELWATCH_CLOCK", "wall",
            "`wall`: windows move with the wall clock (live). `event`: now is the largest "
            "`occurred_at` processed (replay, backfill): by any worker of the cluster, which "
            "share it through `<app id>-event-clock`."),
    Setting("CANCELWATCH_POLICY", DEFAULT_POLICY,
            "Path of the counting policy (limits, windows, what counts, alert thresholds)."),
    Setting("CANCELWATCH_ORDERS_TOPIC", names.ORDERS_TOPIC, "Topic of order events."),
    Setting("CANCELWATCH_CANCELLATIONS_TOPIC", names.CANCELLATIONS_TOPIC,
            "Topic of cancellation events."),
    Setting("CANCELWATCH_DEAD_LETTER_TOPIC", names.DEAD_LETTER_TOPIC,
            "Topic that receives malformed events with the reason."),
    Setting("CANCELWATCH_REROUTE_TOPIC", names.REROUTE_TOPIC,
            "Internal topic: events keyed by something other than their seller_id are "
            "forwarded here keyed by seller_id."),
    Setting("CANCELWATCH_TARGETS_TOPIC", names.TARGETS_TOPIC,
            "Compacted topic of seller targets (a seller's own limit and warning level per "
            "marketplace); `cancelwatch target` writes it and creates it if missing."),
    Setting("CANCELWATCH_PARTITIONS", str(names.DEFAULT_PARTITIONS),
            "Partitions of the source, reroute and state topics (created if missing; must "
            "match existing source topics)."),
    Setting("CANCELWATCH_APP_ID", names.APP_ID,
            "Consumer group and prefix of the worker's internal topics (its state's changelog, and "
            "with CANCELWATCH_CLOCK=event `<app id>-event-clock`, the clock the workers share)."),
    Setting("CANCELWATCH_DATA_DIR", ".state",
            "Directory of the worker's local state (RocksDB); rebuilt from Kafka if lost."),
    Setting("CANCELWATCH_TOP_K", "50", "How many sellers at risk get per-seller metric series."),
    Setting("CANCELWATCH_GRAFANA_URL", "http://127.0.0.1:3000",
            "Grafana base URL used in the dashboard link of every alert."),
    Setting("CANCELWATCH_ALERT_RESEND_SECONDS", "60",
            "How often firing alerts are re-sent to Alertmanager; `endsAt` is 4 of these ahead."),
    Setting("CANCELWATCH_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT",
            "`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`."),
    Setting("CANCELWATCH_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512",
            "`SCRAM-SHA-256`, `SCRAM-SHA-512` or `PLAIN` (with SASL protocols)."),
    Setting("CANCELWATCH_KAFKA_USERNAME", "", "SASL user name."),
    Setting("CANCELWATCH_KAFKA_PASSWORD", "",
            "SASL password (prefer `CANCELWATCH_KAFKA_PASSWORD_FILE`); never logged."),
    Setting("CANCELWATCH_KAFKA_PASSWORD_FILE", "", "File holding the SASL password."),
    Setting("CANCELWATCH_KAFKA_CA_FILE", "", "CA certificate (PEM) that signed the broker's certificate."),
    Setting("CANCELWATCH_LOG_LEVEL", "info", "`crit`, `error`, `warn`, `info` or `debug`."),
    Setting("CANCELWATCH_SESSION_TIMEOUT_SECONDS", "10",
            "How long the consumer group waits for a silent (crashed) worker before moving its "
            "partitions to the others, and a restarted worker waits for its old session to end."),
    Setting("CANCELWATCH_ACCOUNT_HEALTH_TOPIC", names.ACCOUNT_HEALTH_TOPIC,
            "Topic of Amazon account-health reports (contract section 11), keyed by seller_id, "
            "with as many partitions as the source topics."),
    Setting("CANCELWATCH_CATCHUP_LAG", "1000",
            "A partition whose lag on any source topic (orders, cancellations, reroute) is above this "
            "many messages is catching up: its counts are partial, so it sends no new alert and "
            "resolves none until caught up (contract section 9). A worker keeping up stays under "
            "one fetch (1,000 records) behind; see docs/alerts.md."),
    Setting("CANCELWATCH_CATCHUP_AGE_SECONDS", "300",
            "Live (wall-clock) mode: a partition applying events that occurred more than this long "
            "ago is replaying history (a bulk backfill, a producer's outage) and is catching up too, "
            "even while the worker keeps up with the producer, until it applies a current event or "
            "its topics stay quiet for 5 s. Event-clock mode uses the lag alone."),
    Setting(compiled.VARIABLE, "compiled",
            "`compiled`: run the core's compiled modules where `make install` built them (see "
            "docs/design.md, \"The compiled core\"); `python`: run its Python source. Both give the "
            "same answers; `cancelwatch_build_info{core}` says which runs."),
    Setting("CANCELWATCH_FAILPOINT", "",
            "For tests only: `after-changelog`, `after-local-write` or `before-commit` makes the worker "
            "exit hard (code 70) at that point of a state commit, to prove each crash point; `drop-fetch` "
            "makes the agent give up one fetch unapplied and unacknowledged, to prove such records are "
            "read again; `pause-before-changelog` makes the worker stop itself (SIGSTOP) before that "
            "commit's changelog, until it is continued, to prove a worker that stood still past its "
            "session writes nothing; `hold-fetch` makes the agent hold one fetch until partitions are "
            "revoked, to prove a fetch of a revoked assignment is not applied."),
    Setting("CANCELWATCH_FAILPOINT_AT", "1",
            "For tests only: which state commit (1 = the first that writes) reaches the fail point; for "
            "`drop-fetch`, which fetch holding the only copy of its records is given up; for `hold-fetch`, "
            "which fetch the agent takes is held."),
)

_DEFAULTS = {setting.variable: setting.default for setting in SETTINGS}


@dataclasses.dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)
    ca_file: str = ""

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL")

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def kafka_python_options(self) -> dict:
        """Keyword arguments for kafka-python clients (producer, admin, consumer)."""
        options: dict = {"security_protocol": self.protocol}
        if self.uses_sasl:
            options.update(sasl_mechanism=self.sasl_mechanism,
                           sasl_plain_username=self.username,
                           sasl_plain_password=self.password)
        if self.uses_tls and self.ca_file:
            options["ssl_cafile"] = self.ca_file
        return options


@dataclasses.dataclass(frozen=True)
class Settings:
    broker_urls: tuple[str, ...]
    alertmanager_urls: tuple[str, ...]
    web_port: int
    web_host: str
    web_advertised_url: str
    clock: str
    policy_path: Path
    orders_topic: str
    cancellations_topic: str
    dead_letter_topic: str
    reroute_topic: str
    partitions: int
    app_id: str
    data_dir: Path
    top_k: int
    grafana_url: str
    alert_resend_seconds: float
    kafka_security: KafkaSecurity
    log_level: str
    session_timeout_seconds: float = 60.0
    account_health_topic: str = names.ACCOUNT_HEALTH_TOPIC
    catchup_lag: int = 1000
    catchup_age_seconds: float = 300.0
    failpoint: str = ""
    failpoint_at: int = 1
    targets_topic: str = names.TARGETS_TOPIC
    core: str = "compiled"

    @property
    def bootstrap_servers(self) -> list[str]:
        """`host:port` strings for kafka-python and aiokafka."""
        return [url.split("://", 1)[-1] for url in self.broker_urls]

    @property
    def clock_topic(self) -> str:
        """The compacted topic through which workers share the event clock (`worker/feeds.py`)."""
        return f"{self.app_id}-{names.CLOCK_TOPIC_SUFFIX}"

    @property
    def faust_broker(self) -> str:
        return ";".join(self.broker_urls)

    @property
    def source_topics(self) -> dict[str, str]:
        """Topic role (names.ORDERS_TOPIC, names.CANCELLATIONS_TOPIC) -> the configured topic name."""
        return {names.ORDERS_TOPIC: self.orders_topic, names.CANCELLATIONS_TOPIC: self.cancellations_topic}


FAILPOINTS = ("after-changelog", "after-local-write", "before-commit", "drop-fetch", "pause-before-changelog", "hold-fetch")


def _failpoint(env: Mapping[str, str]) -> str:
    value = _get(env, "CANCELWATCH_FAILPOINT")
    if value and value not in FAILPOINTS:
        raise SettingError("CANCELWATCH_FAILPOINT", f"{value!r} is not one of {', '.join(FAILPOINTS)} "
                                                    "(or empty: no fail point)")
    return value


def _get(env: Mapping[str, str], variable: str) -> str:
    value = env.get(variable)
    if value is None:
        return _DEFAULTS[variable]
    return value.strip()


def _number(env: Mapping[str, str], variable: str, low, high, kind: type, what: str, unit: str = ""):
    raw = _get(env, variable)
    try:
        value = kind(raw)
    except ValueError:
        raise SettingError(variable, f"{raw!r} is not {what}") from None
    if not low <= value <= high:
        raise SettingError(variable, f"{value} is outside {low}..{high}{unit}")
    return value


def _integer(env: Mapping[str, str], variable: str, low: int, high: int) -> int:
    return _number(env, variable, low, high, int, "a whole number")


def _seconds(env: Mapping[str, str], variable: str, low: float, high: float) -> float:
    return _number(env, variable, low, high, float, "a number of seconds", " seconds")


def _choice(env: Mapping[str, str], variable: str, choices: tuple[str, ...]) -> str:
    value = _get(env, variable)
    if value not in choices:
        raise SettingError(variable, f"{value!r} is not one of {', '.join(choices)}")
    return value


def _topic(env: Mapping[str, str], variable: str) -> str:
    value = _get(env, variable)
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    if not value or len(value) > 249 or not set(value) <= allowed:
        raise SettingError(variable, f"{value!r} is not a valid Kafka topic name "
                                     "(1..249 of letters, digits, '.', '_', '-')")
    return value


def _broker_urls(env: Mapping[str, str]) -> tuple[str, ...]:
    variable = "CANCELWATCH_BROKER"
    raw = _get(env, variable)
    urls = []
    for part in raw.replace(",", ";").split(";"):
        part = part.strip()
        if not part:
            continue
        if "://" not in part:
            part = "kafka://" + part
        parsed = urlparse(part)
        if parsed.scheme != "kafka" or not parsed.hostname or parsed.port is None:
            raise SettingError(variable, f"{part!r} is not kafka://host:port")
        urls.append(f"kafka://{parsed.hostname}:{parsed.port}")
    if not urls:
        raise SettingError(variable, "no broker given")
    return tuple(urls)


def _http_urls(env: Mapping[str, str], variable: str) -> tuple[str, ...]:
    urls = []
    for part in _get(env, variable).split(","):
        part = part.strip().rstrip("/")
        if not part:
            continue
        parsed = urlparse(part)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise SettingError(variable, f"{part!r} is not an http(s) URL")
        urls.append(part)
    return tuple(urls)


def _advertised_url(env: Mapping[str, str]) -> str:
    given = _http_urls(env, "CANCELWATCH_WEB_ADVERTISED_URL")
    if given:
        return given[0]
    host = _get(env, "CANCELWATCH_WEB_HOST") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    return f"http://{host}:{_integer(env, 'CANCELWATCH_WEB_PORT', 1, 65535)}"


def _policy_path(env: Mapping[str, str]) -> Path:
    raw = _get(env, "CANCELWATCH_POLICY")
    if raw in ("", DEFAULT_POLICY):
        return Path(str(resources.files("cancelwatch.core") / "policy.yaml"))
    path = Path(raw)
    if not path.is_file():
        raise SettingError("CANCELWATCH_POLICY", f"{raw!r} is not a readable file")
    return path


def _security(env: Mapping[str, str]) -> KafkaSecurity:
    protocol = _choice(env, "CANCELWATCH_KAFKA_SECURITY_PROTOCOL",
                       ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    mechanism = _choice(env, "CANCELWATCH_KAFKA_SASL_MECHANISM",
                        ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"))
    username = _get(env, "CANCELWATCH_KAFKA_USERNAME")
    password = _get(env, "CANCELWATCH_KAFKA_PASSWORD")
    password_file = _get(env, "CANCELWATCH_KAFKA_PASSWORD_FILE")
    if password_file:
        try:
            password = Path(password_file).read_text().strip()
        except OSError as error:
            raise SettingError("CANCELWATCH_KAFKA_PASSWORD_FILE",
                               f"cannot read {password_file!r}: {error.strerror}") from None
    ca_file = _get(env, "CANCELWATCH_KAFKA_CA_FILE")
    if ca_file and not Path(ca_file).is_file():
        raise SettingError("CANCELWATCH_KAFKA_CA_FILE", f"{ca_file!r} is not a readable file")
    if protocol.startswith("SASL") and not (username and password):
        raise SettingError("CANCELWATCH_KAFKA_USERNAME",
                           f"{protocol} needs CANCELWATCH_KAFKA_USERNAME and a password "
                           "(CANCELWATCH_KAFKA_PASSWORD or CANCELWATCH_KAFKA_PASSWORD_FILE)")
    return KafkaSecurity(protocol, mechanism, username, password, ca_file)


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """CANCELWATCH_* variables that are no setting (typos, or meant for another version).

    They are reported, not fatal: a deployment that sets one more variable than this
    version knows still starts."""
    env = os.environ if env is None else env
    return sorted(key for key in env if key.startswith("CANCELWATCH_") and key not in _DEFAULTS)


def warn_unknown(command: str, env: Mapping[str, str] | None = None) -> None:
    for variable in unknown_variables(env):
        print(f"cancelwatch {command}: warning: {variable} is not a cancelwatch setting and is ignored "
              "(see docs/settings.md)", file=sys.stderr)


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read and check every setting; raise SettingError on the first bad one."""
    env = os.environ if env is None else env
    return Settings(
        broker_urls=_broker_urls(env),
        alertmanager_urls=_http_urls(env, "CANCELWATCH_ALERTMANAGER_URL"),
        web_port=_integer(env, "CANCELWATCH_WEB_PORT", 1, 65535),
        web_host=_get(env, "CANCELWATCH_WEB_HOST") or "127.0.0.1",
        web_advertised_url=_advertised_url(env),
        clock=_choice(env, "CANCELWATCH_CLOCK", ("wall", "event")),
        policy_path=_policy_path(env),
        orders_topic=_topic(env, "CANCELWATCH_ORDERS_TOPIC"),
        cancellations_topic=_topic(env, "CANCELWATCH_CANCELLATIONS_TOPIC"),
        dead_letter_topic=_topic(env, "CANCELWATCH_DEAD_LETTER_TOPIC"),
        reroute_topic=_topic(env, "CANCELWATCH_REROUTE_TOPIC"),
        targets_topic=_topic(env, "CANCELWATCH_TARGETS_TOPIC"),
        partitions=_integer(env, "CANCELWATCH_PARTITIONS", 1, 1024),
        app_id=_topic(env, "CANCELWATCH_APP_ID"),
        data_dir=Path(_get(env, "CANCELWATCH_DATA_DIR") or ".state"),
        top_k=_integer(env, "CANCELWATCH_TOP_K", 0, 10_000),
        grafana_url=(_http_urls(env, "CANCELWATCH_GRAFANA_URL") or ("http://127.0.0.1:3000",))[0],
        alert_resend_seconds=_seconds(env, "CANCELWATCH_ALERT_RESEND_SECONDS", 0.1, 3600),
        kafka_security=_security(env),
        log_level=_choice(env, "CANCELWATCH_LOG_LEVEL", ("crit", "error", "warn", "info", "debug")),
        session_timeout_seconds=_seconds(env, "CANCELWATCH_SESSION_TIMEOUT_SECONDS", 6, 1800),
        account_health_topic=_topic(env, "CANCELWATCH_ACCOUNT_HEALTH_TOPIC"),
        catchup_lag=_integer(env, "CANCELWATCH_CATCHUP_LAG", 0, 100_000_000),
        catchup_age_seconds=_seconds(env, "CANCELWATCH_CATCHUP_AGE_SECONDS", 1, 30 * 86400),
        core=_choice(env, compiled.VARIABLE, compiled.CHOICES),
        failpoint=_failpoint(env),
        failpoint_at=_integer(env, "CANCELWATCH_FAILPOINT_AT", 1, 1_000_000),
    )


def reference_markdown() -> str:
    """The settings table of docs/settings.md."""
    lines = [
        "# Settings",
        "",
        "Every setting is an environment variable, read once at start-up. A bad value stops",
        "start-up with a message naming the variable and the reason.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for setting in SETTINGS:
        default = f"`{setting.default}`" if setting.default else "(empty)"
        lines.append(f"| `{setting.variable}` | {default} | {setting.meaning} |")
    return "\n".join(lines) + "\n"


