"""api/routes/unleash.py: the Unleash client API, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from api.app import create_app
from flags.model import StateChange
from flags.settings import Settings
from flags.store.sql import SqlFlagStore
from flags.store.telemetry import TelemetryStore
from flags.unleash.mapping import features_payload


@dataclass
class Env:
    http: TestClient
    store: SqlFlagStore
    production: str  # a client token scoped to production
    staging: str  # a client token scoped to staging
    admin: str  # an admin token over every environment


@pytest.fixture
def env(database_url: str) -> Iterator[Env]:
    store = SqlFlagStore(database_url)
    _, production = store.create_token("prod-sdk", "client", ["production"], actor="test")
    _, staging = store.create_token("staging-sdk", "client", ["staging"], actor="test")
    _, admin = store.create_token("admin", "admin", None, actor="test")
    store.create_flag("new-ui", actor="test")
    store.create_flag("beta-search", actor="test")
    store.update_state(
        "new-ui",
        "production",
        StateChange(enabled=True, rollout=25, tenants_off=frozenset({"prod-excluded"})),
        actor="test",
    )
    store.update_state(
        "beta-search",
        "staging",
        StateChange(enabled=True, rollout=0, tenants_on=frozenset({"staging-only-tenant"})),
        actor="test",
    )
    with TestClient(create_app(Settings(database_url=database_url))) as http:
        yield Env(http, store, production, staging, admin)
    store.close()


def features(env: Env, token: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    response = env.http.get("/api/client/features", headers={"Authorization": token, **headers})
    return response.status_code, dict(response.headers), response.content


class TestClientFeatures:
    def test_client_features__production_token__the_production_state_mapped(self, env: Env) -> None:
        """The body is exactly the mapping of the token's environment snapshot."""
        status, headers, body = features(env, env.production)
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == features_payload(env.store.snapshot("production"))

    def test_client_features__bearer_prefix__accepted_like_the_raw_token(self, env: Env) -> None:
        raw = features(env, env.production)
        bearer = features(env, f"Bearer {env.production}")
        assert bearer[0] == 200
        assert bearer[2] == raw[2]

    def test_client_features__production_token__nothing_of_staging(self, env: Env) -> None:
        """Staging's states and tenants never reach a production token."""
        _, _, body = features(env, env.production)
        assert b"staging-only-tenant" not in body
        response = env.http.get(
            "/api/client/features",
            params={"environment": "staging"},
            headers={"Authorization": env.production},
        )
        assert response.status_code == 403
        assert response.json()["error"]["field"] == "environment"
        assert b"staging-only-tenant" not in response.content
        _, _, staging_body = features(env, env.staging)
        assert b"staging-only-tenant" in staging_body

    def test_client_features__admin_token_without_environment__422_naming_environment(
        self, env: Env
    ) -> None:
        status, _, body = features(env, env.admin)
        assert status == 422
        error = json.loads(body)["error"]
        assert error["field"] == "environment"
        assert "exactly one environment" in error["message"]

    def test_client_features__admin_token_with_environment__that_environment(
        self, env: Env
    ) -> None:
        response = env.http.get(
            "/api/client/features",
            params={"environment": "staging"},
            headers={"Authorization": env.admin},
        )
        assert response.status_code == 200
        assert response.json() == features_payload(env.store.snapshot("staging"))

    @pytest.mark.parametrize(
        ("environment", "status"), [("Not An Env", 422), ("nowhere", 404)], ids=["bad", "unknown"]
    )
    def test_client_features__bad_or_unknown_environment__4xx_naming_environment(
        self, env: Env, environment: str, status: int
    ) -> None:
        response = env.http.get(
            "/api/client/features",
            params={"environment": environment},
            headers={"Authorization": env.admin},
        )
        assert response.status_code == status
        assert response.json()["error"]["field"] == "environment"

    @pytest.mark.parametrize(
        "authorization", [None, "nonsense-token", "Bearer ", "Basic abc def"], ids=str
    )
    def test_client_features__missing_or_unknown_token__401_naming_authorization(
        self, env: Env, authorization: str | None
    ) -> None:
        headers = {} if authorization is None else {"Authorization": authorization}
        response = env.http.get("/api/client/features", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["field"] == "Authorization"

    def test_client_features__revoked_token__401(self, env: Env) -> None:
        info = next(t for t in env.store.list_tokens() if t.name == "prod-sdk")
        env.store.revoke_token(info.id, actor="test")
        assert features(env, env.production)[0] == 401


class TestETag:
    def test_etag__current_tag_in_if_none_match__304_without_body(self, env: Env) -> None:
        _, headers, _ = features(env, env.production)
        etag = headers["etag"]
        assert etag.startswith('"') and not etag.startswith("W/")  # strong
        status, again, body = features(env, env.production, **{"If-None-Match": etag})
        assert status == 304
        assert body == b""
        assert again["etag"] == etag

    @pytest.mark.parametrize("form", ["weak", "list", "star"])
    def test_etag__weak_list_or_star_form__304(self, env: Env, form: str) -> None:
        etag = features(env, env.production)[1]["etag"]
        value = {"weak": f"W/{etag}", "list": f'"nope", {etag}', "star": "*"}[form]
        assert features(env, env.production, **{"If-None-Match": value})[0] == 304

    def test_etag__gzip_or_identity__same_json_each_with_its_own_strong_tag(self, env: Env) -> None:
        """Unleash SDKs accept gzip: they get it, under a tag of its own."""
        plain = env.http.get(
            "/api/client/features",
            headers={"Authorization": env.production, "Accept-Encoding": "identity"},
        )
        zipped = env.http.get(
            "/api/client/features",
            headers={"Authorization": env.production, "Accept-Encoding": "gzip, deflate"},
        )
        assert "content-encoding" not in plain.headers
        assert zipped.headers["content-encoding"] == "gzip"
        assert int(zipped.headers["content-length"]) < int(plain.headers["content-length"])
        assert zipped.json() == plain.json()  # httpx decoded the gzip body
        assert zipped.headers["etag"] != plain.headers["etag"]
        assert plain.headers["vary"] == zipped.headers["vary"] == "Accept-Encoding"
        for tag in (plain.headers["etag"], zipped.headers["etag"]):
            assert features(env, env.production, **{"If-None-Match": tag})[0] == 304

    def test_etag__after_a_change__old_tag_gets_200_and_a_new_tag(self, env: Env) -> None:
        _, headers, before = features(env, env.production)
        env.store.update_state("new-ui", "production", StateChange(rollout=60), actor="test")
        status, after_headers, after = features(
            env, env.production, **{"If-None-Match": headers["etag"]}
        )
        assert status == 200
        assert after_headers["etag"] != headers["etag"]
        assert after != before
        assert json.loads(after) == features_payload(env.store.snapshot("production"))

    def test_etag__a_change_in_staging__production_tag_unchanged(self, env: Env) -> None:
        etag = features(env, env.production)[1]["etag"]
        env.store.update_state("beta-search", "staging", StateChange(rollout=80), actor="test")
        assert features(env, env.production, **{"If-None-Match": etag})[0] == 304

    def test_etag__same_state_in_two_environments__same_tag(self, env: Env) -> None:
        """The tag is a function of the body alone (strong validator)."""
        for key in ("new-ui", "beta-search"):
            env.store.update_state(
                key,
                "production",
                StateChange(
                    enabled=False, rollout=0, tenants_on=frozenset(), tenants_off=frozenset()
                ),
                actor="test",
            )
            env.store.update_state(
                key,
                "staging",
                StateChange(
                    enabled=False, rollout=0, tenants_on=frozenset(), tenants_off=frozenset()
                ),
                actor="test",
            )
        assert features(env, env.production)[1]["etag"] == features(env, env.staging)[1]["etag"]


class TestRegisterAndMetrics:
    def test_register__sdk_payload__202(self, env: Env) -> None:
        body = {
            "appName": "checkout",
            "instanceId": "i-1",
            "sdkVersion": "unleash-python-sdk:6.9.1",
            "strategies": ["default", "flexibleRollout"],
            "started": "2025-01-01T00:00:00+00:00",
            "interval": 60000,
            "platformName": "CPython",
        }
        response = env.http.post(
            "/api/client/register", json=body, headers={"Authorization": env.production}
        )
        assert response.status_code == 202

    def test_register__app_name_missing__422_naming_app_name(self, env: Env) -> None:
        response = env.http.post(
            "/api/client/register",
            json={"instanceId": "i-1"},
            headers={"Authorization": env.production},
        )
        assert response.status_code == 422
        assert response.json()["error"]["field"] == "appName"

    def test_register__no_token_and_bad_body__401_first(self, env: Env) -> None:
        response = env.http.post("/api/client/register", json={"appName": 3})
        assert response.status_code == 401

    def test_metrics__known_and_unknown_flags__known_ones_counted_202(self, env: Env) -> None:
        """Reported evaluations feed the per-flag counter; unknown names are dropped."""

        def sample(flag: str, result: str) -> float:
            labels = {"environment": "production", "flag": flag, "result": result}
            return REGISTRY.get_sample_value("flagrail_unleash_evaluations_total", labels) or 0.0

        on, off = sample("new-ui", "on"), sample("new-ui", "off")
        body = {
            "appName": "checkout",
            "instanceId": "i-1",
            "bucket": {
                "start": "2025-01-01T00:00:00Z",
                "stop": "2025-01-01T00:01:00Z",
                "toggles": {
                    "new-ui": {"yes": 7, "no": 3, "variants": {}},
                    "no-such-flag-xyz": {"yes": 5, "no": 0},
                },
            },
        }
        response = env.http.post(
            "/api/client/metrics", json=body, headers={"Authorization": env.production}
        )
        assert response.status_code == 202
        assert sample("new-ui", "on") == on + 7
        assert sample("new-ui", "off") == off + 3
        assert sample("no-such-flag-xyz", "on") == 0.0

    def test_metrics__known_flags__evaluations_recorded_in_the_telemetry_store(
        self, env: Env
    ) -> None:
        """Unleash SDK reports feed flagrail's evaluation facts (the SDK telemetry store)."""
        state = env.http.app.state  # type: ignore[attr-defined]
        assert isinstance(state.telemetry, TelemetryStore)
        toggles = {"new-ui": {"yes": 4, "no": 6}, "no-such-flag-xyz": {"yes": 1, "no": 1}}
        for _ in range(2):
            response = env.http.post(
                "/api/client/metrics",
                json={"appName": "checkout", "bucket": {"toggles": toggles}},
                headers={"Authorization": env.production},
            )
            assert response.status_code == 202
        facts = state.telemetry.flag_environments("new-ui")
        assert set(facts) == {"production"}
        assert facts["production"]["evaluations_on"] == 8
        assert facts["production"]["evaluations_off"] == 12
        assert state.telemetry.flag_environments("no-such-flag-xyz") == {}

    def test_metrics__negative_count__422_naming_the_field(self, env: Env) -> None:
        body = {"appName": "a", "bucket": {"toggles": {"new-ui": {"yes": -1, "no": 0}}}}
        response = env.http.post(
            "/api/client/metrics", json=body, headers={"Authorization": env.production}
        )
        assert response.status_code == 422
        assert response.json()["error"]["field"] == "bucket.toggles.new-ui.yes"
