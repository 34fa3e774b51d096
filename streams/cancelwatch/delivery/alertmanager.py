"""Delivery of alerts to Alertmanager (API v2), the way Prometheus's notifier does it.

The alert engine decides what fires; this module carries its decisions out:

- `fire(alert)` and `resolve(labels)` are synchronous and never block. A new or
  changed alert is queued for every Alertmanager and the senders are woken at
  once; everything queued when a sender wakes goes out in one POST.
- Firing alerts carry `endsAt = now + 4 * resend_seconds` and are re-sent every
  `resend_seconds`, so Alertmanager keeps them active while the worker lives and
  lets them expire when it dies. A resolved alert is sent once with
  `endsAt = resolution time`.
- Every URL (an HA set is a list) has its own queue and its own sender task:
  one Alertmanager down never delays another. A queue holds the latest state
  per alert key, so it grows with the number of distinct alerts, never with
  retries. A failed POST is retried with capped exponential backoff until it is
  accepted; failures are reported through `on_delivery("failed", n)`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import threading
import types
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, Mapping, Sequence

import aiohttp

from cancelwatch import names

log = logging.getLogger(__name__)

API_PATH = "/api/v2/alerts"
OUTCOME_SENT = "sent"
OUTCOME_FAILED = "failed"
# Most alerts in one POST; a longer queue goes out in several posts back to back.
MAX_ALERTS_PER_POST = 1000
# Firing alerts are valid in Alertmanager for this many resend periods.
ENDS_AT_RESEND_PERIODS = 4
FIRST_BACKOFF_SECONDS = 0.25

AlertKey = frozenset
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    """Alertmanager's RFC 3339 time (nanoseconds cut to microseconds); the epoch when unreadable."""
    match = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})", text or "")
    if match is None:
        return datetime.fromtimestamp(0, timezone.utc)
    fraction = (match.group(2) or ".0")[:7]
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(match.group(1) + fraction + zone)


@dataclasses.dataclass(frozen=True)
class Alert:
    """One alert as Alertmanager sees it. Labels identify it; the rest describes it."""

    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime
    generator_url: str = ""

    def __post_init__(self) -> None:
        for field, mapping in (("labels", self.labels), ("annotations", self.annotations)):
            bad = [key for key, value in mapping.items()
                   if not isinstance(key, str) or not isinstance(value, str)]
            if bad:
                raise ValueError(f"alert {field} must map strings to strings; {bad!r} do not "
                                 "(convert numbers with str() before building the Alert)")
        invalid = [key for key in self.labels if not _LABEL_NAME.fullmatch(key)]
        if invalid:
            raise ValueError(f"alert label names {invalid!r} are not valid Prometheus label names "
                             "(letters, digits and '_', not starting with a digit)")
        if not self.labels.get(names.LABEL_ALERTNAME):
            raise ValueError(f"alert labels {dict(self.labels)!r} have no "
                             f"{names.LABEL_ALERTNAME!r}; Alertmanager needs one to route it")
        if self.starts_at.tzinfo is None or self.starts_at.utcoffset() is None:
            raise ValueError(f"alert {self.labels[names.LABEL_ALERTNAME]} starts_at "
                             f"{self.starts_at!r} has no timezone; pass an aware datetime "
                             "(datetime.now(timezone.utc))")
        object.__setattr__(self, "labels", types.MappingProxyType(dict(self.labels)))
        object.__setattr__(self, "annotations", types.MappingProxyType(dict(self.annotations)))

    @property
    def key(self) -> AlertKey:
        return frozenset(self.labels.items())

    def payload(self, ends_at: datetime) -> dict:
        """The JSON object Alertmanager's POST /api/v2/alerts takes for this alert.

        Alertmanager rejects an alert that ends before it starts, so `ends_at`
        is never earlier than `starts_at` (a starts_at ahead of the clock).
        """
        ends_at = max(ends_at, self.starts_at)
        body = {
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": _rfc3339(self.starts_at),
            "endsAt": _rfc3339(ends_at),
        }
        if self.generator_url:
            body["generatorURL"] = self.generator_url
        return body


@dataclasses.dataclass(frozen=True, eq=False)
class _Update:
    """The latest state of one alert waiting for one Alertmanager.

    `resolved_at` None means firing: its endsAt is computed when it is posted.
    Identity matters: a sender removes an update after a successful POST only
    if no newer update replaced it meanwhile.
    """

    alert: Alert
    resolved_at: datetime | None


class _Target:
    """One Alertmanager: its queue and its sender state."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.endpoint = self.url + API_PATH
        self.queue: dict[AlertKey, _Update] = {}
        self.wake = asyncio.Event()
        self.failures = 0


class AlertSender:
    """Keeps Alertmanager's view of this worker's alerts equal to the engine's."""

    def __init__(self, urls: Sequence[str], resend_seconds: float = 60.0, *,
                 timeout_seconds: float = 5.0,
                 on_delivery: Callable[[str, int], None] | None = None,
                 clock: Callable[[], datetime] = _utc_now,
                 max_backoff_seconds: float = 30.0) -> None:
        if isinstance(urls, str):
            raise TypeError(f"urls must be a sequence of URLs, not the string {urls!r}; "
                            "wrap a single URL in a list")
        if resend_seconds <= 0:
            raise ValueError(f"resend_seconds must be positive, got {resend_seconds}")
        self.resend_seconds = resend_seconds
        self.timeout_seconds = timeout_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._on_delivery = on_delivery
        self._clock = clock
        self._targets = [_Target(url) for url in urls]
        self._firing: dict[AlertKey, Alert] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._progress = asyncio.Event()

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(target.url for target in self._targets)

    # --- the engine's side: synchronous, never blocking -----------------------

    def fire(self, alert: Alert) -> None:
        """Mark `alert` firing; a new or changed alert is sent at once."""
        key = alert.key
        if self._firing.get(key) == alert:
            return
        self._firing[key] = alert
        self._enqueue(key, _Update(alert, None))

    def resolve(self, labels: Mapping[str, str], alert: Alert | None = None) -> None:
        """Mark the alert with these labels resolved (endsAt = now), if it is firing.

        Labels that are not firing are ignored, so calling it on every
        evaluation for every clear condition costs a dictionary look-up;
        unless `alert` is given: an alert fired before this sender knew it (by
        the seller's previous owner, or before a restart) is resolved anyway.
        """
        key = frozenset(labels.items())
        firing = self._firing.pop(key, None) or alert
        if firing is None:
            return
        self._enqueue(key, _Update(firing, self._clock()))

    def forget(self, keys: Iterable[AlertKey]) -> int:
        """Stop re-sending these alerts WITHOUT resolving them: another worker owns them now
        and takes them over. Resolutions still queued are sent (they were decided while this
        worker owned the alert). Returns how many firing alerts were forgotten."""
        forgotten = 0
        for key in list(keys):
            if self._firing.pop(key, None) is not None:
                forgotten += 1
            for target in self._targets:
                update = target.queue.get(key)
                if update is not None and update.resolved_at is None:
                    del target.queue[key]
        return forgotten

    def firing(self) -> dict[AlertKey, Alert]:
        return dict(self._firing)

    async def still_active(self, keys: Iterable[AlertKey], margin_seconds: float = 1.0) -> set[AlertKey]:
        """Which of these alerts an Alertmanager still holds active for at least `margin_seconds`
        more: a new owner keeps exactly those alive. An Alertmanager that cannot be asked
        counts for none."""
        wanted = set(keys)
        if not wanted:
            return set()
        horizon = self._clock() + timedelta(seconds=margin_seconds)
        alertnames = {dict(key).get(names.LABEL_ALERTNAME, "") for key in wanted}
        return {alert.key for alert, ends_at in await self.active(
                    "the alerts this worker took over are sent once its partitions are caught up", alertnames)
                if alert.key in wanted and ends_at > horizon}

    async def active(self, unreadable: str, alertnames: Iterable[str] = ()) -> list[tuple[Alert, datetime]]:
        """The alerts every Alertmanager holds active now (silenced and inhibited ones too), with
        their endsAt; only those named `alertnames` when given. An Alertmanager that cannot be
        asked adds none; the warning says so, then `unreadable` (what that means for the caller)."""
        params = {}
        names_wanted = sorted(set(alertnames))
        if names_wanted:
            params["filter"] = f'{names.LABEL_ALERTNAME}=~"{"|".join(map(re.escape, names_wanted))}"'
        found: list[tuple[Alert, datetime]] = []
        timeout = aiohttp.ClientTimeout(total=self.timeout_seconds)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for target in self._targets:
                try:
                    async with session.get(target.endpoint, params=params) as response:
                        alerts = await response.json(content_type=None) if response.status == 200 else []
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as error:
                    log.warning("cannot read the active alerts of %s (%s): %s", target.endpoint, error, unreadable)
                    continue
                for alert in alerts if isinstance(alerts, list) else []:
                    try:
                        found.append((Alert(alert.get("labels") or {}, alert.get("annotations") or {},
                                            _parse_time(alert.get("startsAt", "")),
                                            alert.get("generatorURL") or ""),
                                      _parse_time(alert.get("endsAt", ""))))
                    except (ValueError, AttributeError, TypeError):
                        continue    # not an alert this module could have sent
        return found

    def pending(self) -> int:
        """Alert updates (distinct alerts) not yet accepted by every Alertmanager."""
        keys: set[AlertKey] = set()
        for target in self._targets:
            keys.update(target.queue)
        return len(keys)

    def _enqueue(self, key: AlertKey, update: _Update) -> None:
        for target in self._targets:
            target.queue[key] = update
            self._wake(target.wake)

    def _wake(self, event: asyncio.Event) -> None:
        if self._loop is None:
            return  # run() has not started; it sends whatever is queued when it does
        if threading.get_ident() == self._loop_thread:
            event.set()
        else:
            self._loop.call_soon_threadsafe(event.set)

    # --- the delivery side -------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled: one sender task per Alertmanager plus the resend timer."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        timeout = aiohttp.ClientTimeout(total=self.timeout_seconds)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            tasks = [asyncio.create_task(self._deliver(session, target), name=f"alerts->{target.url}")
                     for target in self._targets]
            tasks.append(asyncio.create_task(self._resend(), name="alerts-resend"))
            for target in self._targets:
                if target.queue:
                    target.wake.set()
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._loop = None
                self._loop_thread = None

    async def flush(self, timeout: float) -> bool:
        """Wait until every update is accepted by every Alertmanager; False on timeout."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.pending():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), remaining)
            except asyncio.TimeoutError:
                return not self.pending()
        return True

    async def _resend(self) -> None:
        while True:
            await asyncio.sleep(self.resend_seconds)
            for key, alert in list(self._firing.items()):
                for target in self._targets:
                    target.queue.setdefault(key, _Update(alert, None))
            for target in self._targets:
                if target.queue:
                    target.wake.set()

    async def _deliver(self, session: aiohttp.ClientSession, target: _Target) -> None:
        while True:
            await target.wake.wait()
            target.wake.clear()
            while target.queue:
                batch = list(target.queue.items())[:MAX_ALERTS_PER_POST]
                now = self._clock()
                ends_at_firing = now + timedelta(seconds=ENDS_AT_RESEND_PERIODS * self.resend_seconds)
                body = [update.alert.payload(update.resolved_at or ends_at_firing)
                        for _, update in batch]
                error, retry = await self._post(session, target, body)
                if not retry:
                    if error is not None:
                        log.error("Alertmanager %s rejected %d alert(s) as invalid and they are "
                                  "dropped: %s", target.endpoint, len(batch), error)
                    for key, update in batch:
                        if target.queue.get(key) is update:
                            del target.queue[key]
                    target.failures = 0
                    self._report(OUTCOME_FAILED if error else OUTCOME_SENT, len(batch))
                    self._progress.set()
                    continue
                target.failures += 1
                backoff = min(self.max_backoff_seconds,
                              FIRST_BACKOFF_SECONDS * 2 ** (target.failures - 1))
                log.warning("alert delivery to %s failed (%s); %d alert(s) kept, retry in %.2fs",
                            target.endpoint, error, len(target.queue), backoff)
                self._report(OUTCOME_FAILED, len(batch))
                self._progress.set()
                await asyncio.sleep(backoff)

    async def _post(self, session: aiohttp.ClientSession, target: _Target,
                    body: list[dict]) -> tuple[str | None, bool]:
        """POST one batch: (why it failed or None, whether a retry can succeed).

        Only HTTP 400 (Alertmanager says the alerts are invalid) is final:
        sending the same alerts again cannot succeed and would block the queue.
        """
        try:
            async with session.post(target.endpoint, json=body) as response:
                if response.status < 300:
                    return None, False
                text = (await response.text())[:500].strip()
                return f"HTTP {response.status}: {text}", response.status != 400
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            return f"{type(error).__name__}: {error or 'timed out'}", True

    def _report(self, outcome: str, count: int) -> None:
        if self._on_delivery is None:
            return
        try:
            self._on_delivery(outcome, count)
        except Exception:
            log.exception("on_delivery callback failed for outcome %s", outcome)
