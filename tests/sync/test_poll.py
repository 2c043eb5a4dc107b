"""The SDK's short requests: ``PlainHttp`` (kept-alive ``http.client``), the choice
between it and httpx, and ``SnapshotFetcher`` over it, against a stub server."""

from __future__ import annotations

import httpx
import pytest

from flags.errors import StoreUnavailableError, UnauthenticatedError
from flags.model import Snapshot
from flags.sync.poll import HttpxHttp, PlainHttp, SnapshotFetcher, sdk_http
from flags.testing.redis_server import free_port

from .stub_server import ENV, stub_server


class TestPlainHttp:
    def test_request__many__one_kept_alive_connection(self) -> None:
        """Back-to-back requests reuse one connection."""
        with stub_server() as (url, state, _server):
            http = PlainHttp(url)
            try:
                for _ in range(5):
                    answer = http.request("POST", "/sdk/v1/instances", body={"a": 1})
                    assert answer.status_code == 202 and answer.json() == {"accepted": True}
            finally:
                http.close()
            assert state.connections == 1
            assert state.requests[0][2]["Content-Type"] == "application/json"

    def test_request__server_closes_after_each_answer__next_request_reconnects(self) -> None:
        """A connection the server closed is replaced, and the request still answered."""
        with stub_server() as (url, state, _server):
            state.close_after_answer = True
            http = PlainHttp(url)
            try:
                statuses = [http.request("POST", "/sdk/v1/instances").status_code for _ in range(3)]
            finally:
                http.close()
            assert statuses == [202, 202, 202]
            assert state.connections == 3

    def test_request__nothing_listening__store_unavailable(self) -> None:
        """A refused connection is a StoreUnavailableError, not an OSError."""
        http = PlainHttp(f"http://127.0.0.1:{free_port()}", connect_timeout=0.5)
        with pytest.raises(StoreUnavailableError, match="unreachable"):
            http.request("GET", "/sdk/v1/snapshot")

    def test_init__https_url__value_error(self) -> None:
        """Only plain http:// URLs."""
        with pytest.raises(ValueError, match="http://"):
            PlainHttp("https://flags.example.com")


class TestSdkHttp:
    @pytest.mark.parametrize(
        ("url", "env", "expected"),
        [
            ("http://127.0.0.1:8000", {}, PlainHttp),
            ("http://flags.internal/base", {}, PlainHttp),
            ("https://flags.example.com", {}, HttpxHttp),
            ("http://user:pw@flags.internal", {}, HttpxHttp),
            ("http://flags.internal", {"HTTP_PROXY": "http://proxy:3128"}, HttpxHttp),
            ("http://flags.internal", {"ALL_PROXY": "http://proxy:3128"}, HttpxHttp),
            (
                "http://flags.internal",
                {"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "flags.internal"},
                PlainHttp,
            ),
        ],
        ids=["local", "path", "https", "userinfo", "http-proxy", "all-proxy", "no-proxy"],
    )
    def test_sdk_http__url_and_proxy_settings__plain_only_when_direct(
        self,
        monkeypatch: pytest.MonkeyPatch,
        url: str,
        env: dict[str, str],
        expected: type,
    ) -> None:
        """http.client is used only where httpx would go direct over plain HTTP."""
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with httpx.Client() as client:
            http = sdk_http(url, client)
            try:
                assert type(http) is expected
            finally:
                http.close()


class TestSnapshotFetcher:
    @pytest.mark.parametrize("transport", ["plain", "httpx"])
    def test_fetch__200_then_304_then_bad_token__same_on_both_transports(
        self, transport: str
    ) -> None:
        """A snapshot, None for the version held, UnauthenticatedError for a 401."""
        with stub_server() as (url, state, _server), httpx.Client() as client:
            state.snapshot = Snapshot(ENV, 7, {})
            http = PlainHttp(url) if transport == "plain" else HttpxHttp(client, url)
            try:
                fetcher = SnapshotFetcher(http, "good", ENV)
                snapshot = fetcher.fetch(None, min_version=7)
                assert snapshot is not None and snapshot.version == 7
                assert fetcher.publishes == "none"
                assert fetcher.fetch(7) is None
                with pytest.raises(UnauthenticatedError, match="bad token"):
                    SnapshotFetcher(http, "bad", ENV).fetch()
            finally:
                http.close()
            path = state.requests[0][1]
            assert path == f"/sdk/v1/snapshot?environment={ENV}&min_version=7"
