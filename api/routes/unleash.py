"""The Unleash client API, so every Unleash SDK evaluates flagrail flags.

* ``GET /api/client/features``: the environment's flags as Unleash client API v2
  features (``flags.unleash.mapping``; a string, number or json flag as strategy
  variants with ``stickiness: tenantId`` and typed payloads, so ``get_variant`` in
  every Unleash SDK serves flagrail's variant), gzipped when accepted, with a strong
  ``ETag`` per representation; ``If-None-Match`` with a current tag answers 304
  without a body.
* ``POST /api/client/register`` and ``POST /api/client/metrics``: 202. Reported
  evaluations of flags the environment knows count into the SDK telemetry store
  (``app.state.telemetry.record_metrics``, when installed: the flag's evaluation
  facts and the unused-flag report) and into the Prometheus counter
  ``flagrail_unleash_evaluations_total{environment, flag, result}``.

``Authorization`` carries the token as Unleash SDKs send it, raw or with
``Bearer ``. The token's environment picks the state: a token scoped to exactly
one environment needs nothing more; any other token must name one with
``?environment=<name>`` within its scope (422 without it, 403 outside it).

The rendered payload of each environment is kept per environment version, so a
request costs two indexed reads (token, environment version) unless a flag
changed since the last render.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Principal, authenticate, store_dependency
from api.routes.sdk import MAX_COUNT, MAX_REPORT_TOTAL, MAX_REPORTED_FLAGS
from flags.errors import ValidationError
from flags.model import TokenInfo, validate_environment_name
from flags.store import FlagStore
from flags.unleash.mapping import features_payload

router = APIRouter(prefix="/api/client", tags=["unleash"])

Store = Annotated[FlagStore, Depends(store_dependency)]


def unleash_token(request: Request) -> TokenInfo:
    """The caller's token, raw or ``Bearer`` (checked before the body is read)."""
    return authenticate(request, allow_raw=True)


ClientToken = Annotated[TokenInfo, Depends(unleash_token)]

# A day, in milliseconds: the longest report interval a registration may state.
MAX_INTERVAL_MS = 86_400_000

EVALUATIONS = Counter(
    "flagrail_unleash_evaluations",
    "Flag evaluations reported by Unleash SDKs through /api/client/metrics.",
    ["environment", "flag", "result"],
)


@dataclass(frozen=True, slots=True)
class RenderedFeatures:
    """One environment's features payload at one environment version, as JSON and
    gzipped (each representation with its own strong ETag)."""

    version: int
    etag: str
    body: bytes
    gzip_etag: str
    gzip_body: bytes
    flags: frozenset[str]


class FeaturesCache:
    """The newest ``RenderedFeatures`` per environment. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, RenderedFeatures] = {}

    def get(self, environment: str, version: int) -> RenderedFeatures | None:
        """The rendering at ``version`` or newer, else None."""
        item = self._items.get(environment)
        return item if item is not None and item.version >= version else None

    def put(self, environment: str, item: RenderedFeatures) -> None:
        with self._lock:
            current = self._items.get(environment)
            if current is None or current.version < item.version:
                self._items[environment] = item


_cache_lock = threading.Lock()


def features_cache(request: Request) -> FeaturesCache:
    """The app's ``FeaturesCache`` (created on first use, kept in ``app.state``)."""
    cache = getattr(request.app.state, "unleash_features", None)
    if cache is None:
        with _cache_lock:
            cache = getattr(request.app.state, "unleash_features", None)
            if cache is None:
                cache = request.app.state.unleash_features = FeaturesCache()
    return cache  # type: ignore[no-any-return]


def client_environment(token: TokenInfo, requested: str | None) -> str:
    """The environment a client API call reads: ``requested`` (within the token's
    scope) or the token's only environment.

    Raises ``ValidationError`` (field ``environment``) when neither names one, and
    ``ForbiddenError`` when ``requested`` is outside the token's scope.
    """
    if requested is not None:
        validate_environment_name(requested)
        Principal.from_token(token).check_env(requested)
        return requested
    if token.environments is not None and len(token.environments) == 1:
        return token.environments[0]
    scope = "every environment" if token.environments is None else "several environments"
    raise ValidationError(
        f"token {token.name!r} covers {scope}; the Unleash client API needs a token scoped "
        "to exactly one environment, or ?environment=<name>",
        field="environment",
    )


def render(store: FlagStore, environment: str) -> RenderedFeatures:
    """Render ``environment``'s current snapshot; the ETag is a hash of the body."""
    snapshot = store.snapshot(environment)
    body = json.dumps(features_payload(snapshot), separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )
    digest = hashlib.sha256(body).hexdigest()[:32]
    return RenderedFeatures(
        version=snapshot.version,
        etag=f'"{digest}"',
        body=body,
        gzip_etag=f'"{digest}-gzip"',
        gzip_body=gzip.compress(body, compresslevel=6, mtime=0),
        flags=frozenset(snapshot.flags),
    )


def current_features(request: Request, store: FlagStore, environment: str) -> RenderedFeatures:
    """The environment's payload as of now (rendered again only after a change)."""
    cache = features_cache(request)
    version = store.get_environment(environment).version
    item = cache.get(environment, version)
    if item is None:
        item = render(store, environment)
        cache.put(environment, item)
    return item


def etag_matches(if_none_match: str | None, *etags: str) -> bool:
    """``If-None-Match`` semantics (weak comparison, lists, ``*``) against ``etags``."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag in etags:
            return True
    return False


def accepts_gzip(accept_encoding: str | None) -> bool:
    """True when ``Accept-Encoding`` lists ``gzip`` (or ``*``) without ``q=0``."""
    for part in (accept_encoding or "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().lower().replace(" ", "")
            return not (q.startswith("q=") and q[2:].strip("0.") == "")
    return False


EnvironmentParam = Query(
    default=None,
    max_length=40,
    description="Needed unless the token is scoped to exactly one environment.",
)


@router.get("/features")
def client_features(
    request: Request,
    token: ClientToken,
    store: Store,
    environment: str | None = EnvironmentParam,
    if_none_match: str | None = Header(default=None, max_length=2048),
    accept_encoding: str | None = Header(default=None, max_length=512),
) -> Response:
    """Every flag of the token's environment as Unleash client API v2 features,
    gzipped when the client accepts it (every Unleash SDK does)."""
    env = client_environment(token, environment)
    item = current_features(request, store, env)
    gzipped = accepts_gzip(accept_encoding)
    headers = {
        "ETag": item.gzip_etag if gzipped else item.etag,
        "Cache-Control": "no-cache",
        "Vary": "Accept-Encoding",
    }
    if etag_matches(if_none_match, item.etag, item.gzip_etag):
        return Response(status_code=304, headers=headers)
    if gzipped:
        headers["Content-Encoding"] = "gzip"
        return Response(item.gzip_body, media_type="application/json", headers=headers)
    return Response(item.body, media_type="application/json", headers=headers)


class _UnleashBody(BaseModel):
    # Unleash SDKs send more fields than these, and new ones over time: keep them.
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ClientRegistration(_UnleashBody):
    app_name: str = Field(alias="appName", min_length=1, max_length=200)
    instance_id: str | None = Field(default=None, alias="instanceId", max_length=200)
    sdk_version: str | None = Field(default=None, alias="sdkVersion", max_length=200)
    strategies: list[str] = Field(default_factory=list, max_length=100)
    # Milliseconds between an SDK's reports; not stored, bounded like any input.
    interval: int | None = Field(default=None, ge=0, le=MAX_INTERVAL_MS)


class ToggleCount(_UnleashBody):
    # Counts of one report: bounded as flagrail SDK reports are (a 422 naming the field).
    yes: int = Field(default=0, ge=0, le=MAX_COUNT)
    no: int = Field(default=0, ge=0, le=MAX_COUNT)


class MetricsBucket(_UnleashBody):
    start: str | None = Field(default=None, max_length=64)
    stop: str | None = Field(default=None, max_length=64)
    toggles: dict[str, ToggleCount] = Field(default_factory=dict, max_length=MAX_REPORTED_FLAGS)


class ClientMetrics(_UnleashBody):
    app_name: str = Field(alias="appName", min_length=1, max_length=200)
    instance_id: str | None = Field(default=None, alias="instanceId", max_length=200)
    bucket: MetricsBucket | None = None


@router.post("/register", status_code=202)
def client_register(token: ClientToken, body: ClientRegistration) -> Response:
    """Accept an SDK's registration (202). Any valid token may register."""
    return Response(status_code=202)


@router.post("/metrics", status_code=202)
def client_metrics(
    request: Request,
    token: ClientToken,
    body: ClientMetrics,
    store: Store,
    environment: str | None = EnvironmentParam,
) -> Response:
    """Count an SDK's reported evaluations of known flags (202)."""
    env = client_environment(token, environment)
    if body.bucket is None or not body.bucket.toggles:
        return Response(status_code=202)
    total = sum(c.yes + c.no for c in body.bucket.toggles.values())
    if total > MAX_REPORT_TOTAL:
        raise ValidationError(
            f"bucket.toggles counts sum to {total}; a report may hold at most {MAX_REPORT_TOTAL}",
            field="bucket.toggles",
        )
    known = current_features(request, store, env).flags
    # Unknown names are dropped: they must not grow the metric's label set or the table.
    evaluations = {
        flag: (count.no, count.yes)
        for flag, count in body.bucket.toggles.items()
        if flag in known and (count.no or count.yes)
    }
    for flag, (off, on) in evaluations.items():
        if on:
            EVALUATIONS.labels(env, flag, "on").inc(on)
        if off:
            EVALUATIONS.labels(env, flag, "off").inc(off)
    telemetry = getattr(request.app.state, "telemetry", None)
    if telemetry is not None and evaluations:
        telemetry.record_metrics(env, evaluations)
    return Response(status_code=202)
