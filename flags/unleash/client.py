"""UnleashFlagClient: the flagrail SDK backed by an Unleash server, through UnleashClient.

Checks go to the official Python SDK (PyPI ``UnleashClient`` 6.x) with the
context ``{"tenantId": tenant}``, so they answer exactly what every other
Unleash SDK answers for the same server. Everything built on ``FlagClient``
(the cache toolkit, the pytest plugin, the OpenFeature provider) works on top.

Contract, as for every ``FlagClient``:

* ``is_enabled`` / ``evaluate`` never raise and never do I/O (UnleashClient
  evaluates in process on its last fetched state). An invalid tenant or key
  gives the default with reason ``error``; before the first successful fetch
  every check gives the default with reason ``default``; a flag the server does
  not know gives the default with reason ``missing``.
* Reasons are best effort: a feature in the shape flagrail serves
  (``flags.unleash.mapping``) gets ``disabled`` / ``tenant_off`` / ``tenant_on`` /
  ``rollout`` exactly; any other enabled feature reports ``rollout``. Unleash
  has no kill switch, so ``killed`` never appears (a killed flagrail flag reads
  as ``disabled``).
* ``snapshot`` / ``state()`` hold the features in flagrail's shape (others are
  known to ``flag_keys()`` but have no ``state()``); ``on_change`` callbacks run
  after each fetch that brought a new payload, once UnleashClient evaluates it.

Requires ``pip install 'flagrail[unleash]'`` (the ``UnleashClient`` package; the
PyPI name ``unleash-client`` is an unrelated placeholder).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from UnleashClient import UnleashClient
from UnleashClient.cache import BaseCache
from UnleashClient.constants import FEATURES_URL
from UnleashClient.events import BaseEvent, UnleashEventType
from UnleashClient.utils import InstanceAllowType

from flags.client import FlagClient
from flags.errors import ValidationError
from flags.model import Evaluation, FlagState, Reason, Snapshot, is_valid_tenant
from flags.unleash.mapping import TENANT_FIELD, state_from_feature

__all__ = ["MemoryCache", "UnleashFlagClient"]

log = logging.getLogger("flagrail.unleash")

_DEFAULT = {True: Evaluation(True, Reason.DEFAULT), False: Evaluation(False, Reason.DEFAULT)}
_MISSING = {True: Evaluation(True, Reason.MISSING), False: Evaluation(False, Reason.MISSING)}
_BAD_KEY = {
    True: Evaluation(True, Reason.ERROR, 0, "bad argument"),
    False: Evaluation(False, Reason.ERROR, 0, "bad argument"),
}
_BAD_TENANT = {
    True: Evaluation(True, Reason.ERROR, 0, "invalid tenant"),
    False: Evaluation(False, Reason.ERROR, 0, "invalid tenant"),
}


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


class UnleashFlagClient(FlagClient):
    """A ``FlagClient`` whose checks UnleashClient answers from an Unleash server.

    ``url`` is what UnleashClient takes (the server's API root, ending in
    ``/api``); ``token`` goes in ``Authorization`` as is. Constructing does no
    I/O; ``start()`` registers, fetches once and starts polling every
    ``refresh_interval`` seconds. Checks are thread-safe and never block.
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
            environment: this client's environment, also UnleashClient's
                ``environment`` context field (which flags are served is decided on
                the server, by the token).
            refresh_interval: seconds between polls (an integer, UnleashClient's unit).
            metrics_interval: seconds between metrics reports to the server.
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
        # No url for FlagClient itself: its own sync (flagrail's /sdk/v1 API) must
        # not start; UnleashClient does the fetching here.
        super().__init__(
            None,
            token,
            environment,
            poll_interval=refresh_interval,
            metrics_interval=metrics_interval,
            app_name=app_name,
        )
        self.url = url.rstrip("/")
        self.send_metrics = send_metrics
        self.register = register
        self.request_timeout = request_timeout
        self.request_retries = request_retries
        self._unleash: UnleashClient | None = None
        self._cache = MemoryCache()
        # name -> (enabled, flagrail state or None when not in flagrail's shape)
        self._features: Mapping[str, tuple[bool, FlagState | None]] = {}
        self._raw: str | None = None
        self._revision = 0
        self._adopt_lock = threading.Lock()
        self._start_lock = threading.Lock()

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> UnleashFlagClient:
        """Register, fetch the features once (two requests, each waiting at most
        ``request_timeout`` seconds) and poll from then on. Idempotent; returns the client.

        An unreachable server does not raise: checks give defaults (reason
        ``default``) until a fetch succeeds. Raises ``ValidationError`` if
        UnleashClient rejects the URL as malformed.
        """
        with self._start_lock:
            if self._unleash is not None or self._closed:
                return self
            assert self.url is not None and self.token is not None and self.app_name is not None
            client = UnleashClient(
                url=self.url,
                app_name=self.app_name,
                environment=self.environment,
                instance_id=f"flagrail-{uuid.uuid4().hex[:12]}",
                refresh_interval=int(self.poll_interval),
                metrics_interval=int(self.metrics_interval),
                disable_metrics=not self.send_metrics,
                disable_registration=not self.register,
                custom_headers={"Authorization": self.token},
                request_timeout=self.request_timeout,
                request_retries=self.request_retries,
                cache=self._cache,
                multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
                event_callback=self._on_event,
                sdk_flavor="flagrail",
            )
            try:
                client.initialize_client()
            except Exception as exc:  # UnleashClient raises bare exceptions for bad URLs
                client.destroy()
                raise ValidationError(f"UnleashClient refused url: {exc}", field="url") from exc
            self._unleash = client
        # The first fetch ran inside initialize_client: UnleashClient already
        # evaluates it, so take it now rather than when its event arrives.
        self._adopt(self._cache.get(FEATURES_URL))
        return self

    def close(self) -> None:
        """Stop polling (UnleashClient sends its last metrics). Checks keep answering
        from the last state. Idempotent."""
        with self._start_lock:
            if self._closed:
                return
            super().close()
            client = self._unleash
        if client is not None:
            try:
                client.destroy()
            except Exception:  # shutting down: a failing flush must not fail close()
                log.warning("closing UnleashClient failed", exc_info=True)

    def _on_event(self, event: BaseEvent) -> None:
        # Runs on UnleashClient's event thread, after the engine took the payload.
        if event.event_type is UnleashEventType.FETCHED:
            self._adopt(getattr(event, "raw_features", None))

    def _adopt(self, raw: object) -> None:
        """Adopt a fetched features payload as this client's snapshot (once per payload)."""
        if not isinstance(raw, str):
            return
        with self._adopt_lock:
            if raw == self._raw:
                return
            try:
                payload = json.loads(raw)
                features = payload.get("features", [])
                if not isinstance(features, list):
                    raise TypeError("features is not a list")
            except (ValueError, TypeError, AttributeError):
                self._errors += 1
                log.warning("Unleash features payload is not valid JSON of the v2 shape")
                return
            parsed: dict[str, tuple[bool, FlagState | None]] = {}
            for feature in features:
                if isinstance(feature, dict) and isinstance(feature.get("name"), str):
                    parsed[feature["name"]] = (
                        feature.get("enabled") is True,
                        state_from_feature(feature),
                    )
            self._raw = raw
            self._revision += 1
            self._features = parsed
            states = {name: state for name, (_, state) in parsed.items() if state is not None}
            snapshot = Snapshot(self.environment, self._revision, states)
        self.load_snapshot(snapshot, source="unleash")

    # ----------------------------------------------------------------- checks
    def is_enabled(self, key: str, tenant: str | None = None, default: bool = False) -> bool:
        """True when ``key`` is on for ``tenant``, as UnleashClient answers. Never raises."""
        return self.evaluate(key, tenant, default).enabled

    def evaluate(self, key: str, tenant: str | None = None, default: bool = False) -> Evaluation:
        """UnleashClient's answer with a best-effort reason (see the module doc). Never raises."""
        try:
            default = default is True
            if type(key) is not str:
                self._errors += 1
                return _BAD_KEY[default]
            if tenant is not None and not is_valid_tenant(tenant):
                self._errors += 1
                return _BAD_TENANT[default]
            client = self._unleash
            if client is None or self._compiled is None:
                return _DEFAULT[default]
            found = True

            def fallback(_name: str, _context: dict[str, Any]) -> bool:
                nonlocal found
                found = False
                return default

            context = {TENANT_FIELD: tenant} if tenant is not None else {}
            on = client.is_enabled(key, context, fallback_function=fallback) is True
            slot = self._counts.get(key)
            if slot is None:
                slot = self._counts[key] = [0, 0]
            if not found:
                slot[default] += 1
                return _MISSING[default]
            slot[on] += 1
            return Evaluation(on, self._reason(key, tenant, on))
        except Exception:
            # The SDK's one broad except: a check must never take the caller down.
            self._errors += 1
            log.debug("Unleash flag check failed; serving the default", exc_info=True)
            return _BAD_KEY[default is True]

    def _reason(self, key: str, tenant: str | None, on: bool) -> Reason:
        known = self._features.get(key)
        if known is None:
            return Reason.ROLLOUT  # fetched after our last sync: no shape to read yet
        enabled, state = known
        if not enabled:
            reason = Reason.DISABLED
        elif state is None or tenant is None:
            reason = Reason.ROLLOUT
        elif tenant in state.tenants_off:
            reason = Reason.TENANT_OFF
        elif tenant in state.tenants_on:
            reason = Reason.TENANT_ON
        else:
            reason = Reason.ROLLOUT
        # A payload newer than our parse can disagree with the answer: the answer wins.
        if (reason in (Reason.DISABLED, Reason.TENANT_OFF) and on) or (
            reason is Reason.TENANT_ON and not on
        ):
            return Reason.ROLLOUT
        return reason

    # ----------------------------------------------------------------- status
    def flag_keys(self) -> list[str]:
        """Every feature the server sent, flagrail-shaped or not."""
        return sorted(self._features)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "source": "unleash", "flags": len(self._features)}
