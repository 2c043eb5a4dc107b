"""UnleashSource: an Unleash server as a ``FlagClient``'s snapshot source, through UnleashClient.

The official Python SDK (PyPI ``UnleashClient`` 6.x) registers, fetches and
polls the client API (``/api/client/features``); each new payload is mapped to
flagrail states (``flags.unleash.mapping.state_from_feature``) and handed to the
client as one snapshot. The client then evaluates as every ``FlagClient`` does
(``flags.compiled``), and for every feature in flagrail's shape that is exactly
what every Unleash SDK answers (the mapping's contract, held by the agreement
tests).

* A feature in another shape (other strategies, other context fields,
  segments, dependencies) has no flagrail state and is not in the snapshot:
  UnleashClient's engine answers it, in process, with the context
  ``{"tenantId": tenant}``; its reason is best effort (``disabled`` for a
  disabled feature, else ``rollout``). The source logs the names of such
  features when they change.
* Unleash has no kill switch: a killed flagrail flag reads as ``disabled``.
* Before the first successful fetch every check gives the default with reason
  ``default``.
* Evaluation counts go to the server's ``/api/client/metrics`` every
  ``metrics_interval`` seconds and on ``close()``, from the client's own
  counters (UnleashClient evaluates nothing here, so its own metrics are off).

Requires ``pip install 'flagrail[unleash]'`` (the ``UnleashClient`` package; the
PyPI name ``unleash-client`` is an unrelated placeholder).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
from UnleashClient import UnleashClient
from UnleashClient.cache import BaseCache
from UnleashClient.constants import FEATURES_URL
from UnleashClient.events import BaseEvent, UnleashEventType
from UnleashClient.utils import InstanceAllowType

from flags.errors import ValidationError
from flags.model import Evaluation, FlagState, Reason, Snapshot, is_valid_tenant
from flags.sync import SnapshotSink
from flags.unleash.mapping import TENANT_FIELD, state_from_feature

__all__ = ["MemoryCache", "UnleashSource"]

log = logging.getLogger("flagrail.unleash")

SOURCE = "unleash"


class MemoryCache(BaseCache):
    """An in-process UnleashClient cache: no files, nothing shared between clients.

    (UnleashClient's default ``FileCache`` writes to a per-app-name directory on
    disk, which two clients of one app name would share.) Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {}

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._data[key] = value

    def mset(self, data: dict[str, Any]) -> None:
        with self._lock:
            self._data.update(data)

    def get(self, key: str, default: Any | None = None) -> Any:
        with self._lock:
            return self._data.get(key, default)

    def exists(self, key: str) -> bool:
        with self._lock:
            return key in self._data

    def destroy(self) -> None:
        with self._lock:
            self._data.clear()


def _check_text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 2000:
        raise ValidationError(f"{field} must be a non-empty string, got {value!r:.80}", field=field)
    return value


def parse_features(raw: str, environment: str, version: int) -> tuple[Snapshot, dict[str, bool]]:
    """The snapshot a client API v2 payload expresses, at ``version``, and the features
    not in flagrail's shape (left out of the snapshot), name -> ``enabled``.

    Pure. Raises ``ValidationError`` (field ``features``) for a payload that is not
    JSON of the v2 shape.
    """
    try:
        payload = json.loads(raw)
        features = payload.get("features", [])
        if not isinstance(features, list):
            raise TypeError("features is not a list")
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValidationError(
            f"Unleash features payload is not JSON of the v2 shape: {exc}", field="features"
        ) from exc
    states: dict[str, FlagState] = {}
    foreign: dict[str, bool] = {}
    for feature in features:
        if isinstance(feature, dict) and isinstance(feature.get("name"), str):
            state = state_from_feature(feature)
            if state is None:
                foreign[feature["name"]] = feature.get("enabled") is True
            else:
                states[feature["name"]] = state
    return Snapshot(environment, version, states), foreign


class UnleashSource:
    """Feed one ``FlagClient`` from an Unleash server (a ``flags.sync.SnapshotSource``).

    ``url`` is what UnleashClient takes (the server's API root, ending in
    ``/api``); ``token`` goes in ``Authorization`` as is. Constructing validates
    the arguments and does no I/O; ``start()`` registers, fetches once and
    starts UnleashClient's polling every ``refresh_interval`` seconds.
    """

    def __init__(
        self,
        url: str,
        token: str,
        app_name: str,
        *,
        environment: str = "default",
        refresh_interval: int = 15,
        metrics_interval: int = 60,
        send_metrics: bool = True,
        register: bool = True,
        request_timeout: int = 5,
        request_retries: int = 0,
    ) -> None:
        """Configure; no I/O (see ``start()``).

        Args:
            environment: the client's environment, also UnleashClient's
                ``environment`` context field (which flags are served is decided on
                the server, by the token).
            refresh_interval: seconds between polls (an integer, UnleashClient's unit).
            metrics_interval: seconds between UnleashClient's metrics reports.
            send_metrics / register: UnleashClient's metrics and registration calls.
            request_timeout / request_retries: per request to the server.

        Raises ``ValidationError`` naming the bad argument (``url`` must be http(s)).
        """
        _check_text(url, "url")
        if not url.startswith(("http://", "https://")):
            raise ValidationError(
                f"url must start with http:// or https://, got {url!r}", field="url"
            )
        _check_text(token, "token")
        _check_text(app_name, "app_name")
        _check_text(environment, "environment")
        for name, value in (
            ("refresh_interval", refresh_interval),
            ("metrics_interval", metrics_interval),
            ("request_timeout", request_timeout),
        ):
            if type(value) is not int or value < 1:
                raise ValidationError(f"{name} must be a positive integer of seconds", field=name)
        if type(request_retries) is not int or request_retries < 0:
            raise ValidationError(
                "request_retries must be a non-negative integer", field="request_retries"
            )
        self.url = url.rstrip("/")
        self.token = token
        self.app_name = app_name
        self.environment = environment
        self.refresh_interval = refresh_interval
        self.metrics_interval = metrics_interval
        self.send_metrics = send_metrics
        self.register = register
        self.request_timeout = request_timeout
        self.request_retries = request_retries
        self.instance_id = f"flagrail-{uuid.uuid4().hex[:12]}"
        self._sink: SnapshotSink | None = None
        self._unleash: UnleashClient | None = None
        # UnleashClient answering foreign features; kept after close (its engine still
        # answers from the last payload, as the snapshot does).
        self._engine: UnleashClient | None = None
        self._stop = threading.Event()
        self._metrics_thread: threading.Thread | None = None
        self._reported: dict[str, tuple[int, int]] = {}
        self._bucket_start = datetime.now(UTC)
        self._metrics_failed = False
        self._cache = MemoryCache()
        self._raw: str | None = None
        self._foreign: Mapping[str, bool] = {}
        self._revision = 0
        self._adopt_lock = threading.Lock()

    def start(self, sink: SnapshotSink) -> None:
        """Register and fetch the features once (two requests, each waiting at most
        ``request_timeout`` seconds: this blocks), then poll from UnleashClient's
        scheduler thread; with ``send_metrics``, a daemon thread
        ``flagrail-unleash-metrics`` reports evaluation counts.

        An unreachable server does not raise: checks give defaults (reason
        ``default``) until a fetch succeeds. Raises ``ValidationError`` (field
        ``url``) if UnleashClient rejects the URL as malformed.
        """
        client = UnleashClient(
            url=self.url,
            app_name=self.app_name,
            environment=self.environment,
            instance_id=self.instance_id,
            refresh_interval=self.refresh_interval,
            metrics_interval=self.metrics_interval,
            disable_metrics=True,  # it evaluates nothing here; see _send_metrics
            disable_registration=not self.register,
            custom_headers={"Authorization": self.token},
            request_timeout=self.request_timeout,
            request_retries=self.request_retries,
            cache=self._cache,
            multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
            event_callback=self._on_event,
            sdk_flavor="flagrail",
        )
        self._sink = sink
        try:
            client.initialize_client()
        except Exception as exc:  # UnleashClient raises bare exceptions for bad URLs
            client.destroy()
            self._sink = None
            raise ValidationError(f"UnleashClient refused url: {exc}", field="url") from exc
        self._unleash = self._engine = client
        self._reported = dict(sink.counts())
        if self.send_metrics:
            self._metrics_thread = threading.Thread(
                target=self._metrics_loop, name="flagrail-unleash-metrics", daemon=True
            )
            self._metrics_thread.start()
        # The first fetch ran inside initialize_client: take it now rather than
        # when its event arrives.
        self._adopt(self._cache.get(FEATURES_URL))

    def close(self) -> None:
        """Stop polling and send the last evaluation counts (at most
        ``request_timeout`` seconds). Idempotent."""
        client, self._unleash = self._unleash, None
        if client is None:
            return
        self._stop.set()
        thread = self._metrics_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.request_timeout + 1.0)
        try:
            client.destroy()
        except Exception:  # shutting down: a failing UnleashClient must not fail close()
            log.warning("closing UnleashClient failed", exc_info=True)
        if self.send_metrics:
            self._send_metrics()

    def _metrics_loop(self) -> None:
        while not self._stop.wait(self.metrics_interval):
            try:
                self._send_metrics()
            except Exception:  # keep reporting alive whatever happens
                log.exception("Unleash metrics report failed")

    def metrics_payload(self, counts: dict[str, tuple[int, int]]) -> dict[str, Any] | None:
        """The ``/api/client/metrics`` body for ``counts`` (the client's evaluation counts)
        less what the last accepted report held, or None when nothing is new. Pure."""
        toggles: dict[str, dict[str, Any]] = {}
        for name, (off, on) in counts.items():
            was_off, was_on = self._reported.get(name, (0, 0))
            if off > was_off or on > was_on:
                toggles[name] = {"yes": on - was_on, "no": off - was_off, "variants": {}}
        if not toggles:
            return None
        return {
            "appName": self.app_name,
            "instanceId": self.instance_id,
            "environment": self.environment,
            "bucket": {
                "start": self._bucket_start.isoformat(),
                "stop": datetime.now(UTC).isoformat(),
                "toggles": toggles,
            },
        }

    def _send_metrics(self) -> None:
        if self._sink is None:
            return
        counts = self._sink.counts()
        payload = self.metrics_payload(counts)
        if payload is None:
            return
        try:
            response = httpx.post(
                f"{self.url}/client/metrics",
                json=payload,
                headers={
                    "Authorization": self.token,
                    "UNLEASH-APPNAME": self.app_name,
                    "UNLEASH-INSTANCEID": self.instance_id,
                },
                timeout=self.request_timeout,
            )
        except httpx.HTTPError as exc:
            self._metrics_warning(f"{type(exc).__name__}: {exc}")
            return
        if response.status_code >= 300:
            self._metrics_warning(f"answered {response.status_code}")
            return
        self._reported = counts
        self._bucket_start = datetime.now(UTC)
        self._metrics_failed = False

    def _metrics_warning(self, what: str) -> None:
        """Logged once per run of failures; the counts wait for the next report."""
        if not self._metrics_failed:
            self._metrics_failed = True
            log.warning("Unleash metrics report to %s failed: %s", self.url, what)

    def resync(self) -> None:
        """Nothing to do: every poll fetches the whole payload."""

    def applied(self) -> None:
        """Nothing to do: UnleashClient reports on its own schedule."""

    def live(self) -> str | None:
        """Always None: UnleashClient polls; nothing is pushed."""
        return None

    def evaluate_foreign(self, key: str, tenant: object, default: bool) -> Evaluation | None:
        """UnleashClient's answer for a feature not in flagrail's shape, with the context
        ``{"tenantId": tenant}``; None for any other key. In process (its engine holds
        the last payload); an invalid tenant gives ``default`` with reason ``error``."""
        enabled = self._foreign.get(key)
        client = self._engine
        if enabled is None or client is None:
            return None
        if tenant == "" and type(tenant) is str:
            tenant = None  # "" is no tenant, as everywhere in flagrail
        if tenant is not None and not is_valid_tenant(tenant):
            return Evaluation(default, Reason.ERROR, 0, "invalid tenant")
        found = True

        def fallback(_name: str, _context: dict[str, Any]) -> bool:
            nonlocal found
            found = False
            return default

        context = {TENANT_FIELD: tenant} if tenant is not None else {}
        on = client.is_enabled(key, context, fallback_function=fallback) is True
        if not found:
            return None
        return Evaluation(on, Reason.ROLLOUT if enabled else Reason.DISABLED)

    def after_fork(self) -> None:
        """UnleashClient's scheduler does not survive a fork: the child keeps serving
        the last snapshot and does not poll."""
        return None

    def _on_event(self, event: BaseEvent) -> None:
        # Runs on UnleashClient's event thread, after its engine took the payload.
        if event.event_type is UnleashEventType.FETCHED:
            self._adopt(getattr(event, "raw_features", None))

    def _adopt(self, raw: object) -> None:
        """Hand a fetched payload to the sink as the next snapshot (once per payload)."""
        sink = self._sink
        if not isinstance(raw, str) or sink is None:
            return
        with self._adopt_lock:
            if raw == self._raw:
                return
            try:
                snapshot, foreign = parse_features(raw, self.environment, self._revision + 1)
            except ValidationError as exc:
                log.warning("%s", exc)
                return
            self._raw = raw
            self._revision += 1
            if foreign and foreign.keys() != self._foreign.keys():
                names = sorted(foreign)
                log.warning(
                    "Unleash features not in flagrail's shape, answered by UnleashClient: %s",
                    ", ".join(names[:20]) + (" ..." if len(names) > 20 else ""),
                )
            self._foreign = foreign
        # Outside the lock: on_change callbacks run in here. A late, older payload
        # cannot win: the sink drops snapshots older than the applied one.
        sink.receive_snapshot(snapshot, SOURCE)
