"""Issue #14, finding 10: ``/metrics`` (flag names in its labels) needs a reader token
unless ``FLAGRAIL_METRICS_PUBLIC=true``; ``FLAGRAIL_DOCS=false`` turns off ``/docs``,
``/redoc`` and ``/openapi.json``. Through real servers.
"""

from __future__ import annotations

import pytest
from security.admin_server import AdminServer, error_field

from flags.settings import Settings

DOC_PATHS = ("/docs", "/redoc", "/openapi.json")


def test_metrics__default__needs_a_reader_token(sqlite_url: str) -> None:
    """No token: 401; a client token (shipped in every app): 403; a reader: 200."""
    with AdminServer(sqlite_url) as server:
        client = server.token("sdk", "client", ["production"])
        reader = server.token("dash", "reader")
        anonymous = server.request("GET", "/metrics")
        assert anonymous.status_code == 401 and error_field(anonymous) == "Authorization"
        assert server.request("GET", "/metrics", client).status_code == 403
        answer = server.request("GET", "/metrics", reader)
        assert answer.status_code == 200 and "# HELP" in answer.text


def test_metrics__public_setting__open(sqlite_url: str) -> None:
    with AdminServer(sqlite_url, metrics_public=True) as server:
        assert server.request("GET", "/metrics").status_code == 200


def test_docs__default__served(sqlite_url: str) -> None:
    with AdminServer(sqlite_url) as server:
        assert [server.request("GET", p).status_code for p in DOC_PATHS] == [200, 200, 200]


def test_docs__turned_off__404(sqlite_url: str) -> None:
    """FLAGRAIL_DOCS=false: none of the three answers, the API still does."""
    with AdminServer(sqlite_url, docs=False) as server:
        assert [server.request("GET", p).status_code for p in DOC_PATHS] == [404, 404, 404]
        assert server.request("GET", "/admin/flags", server.admin).status_code == 200


def test_settings__environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """The two switches read FLAGRAIL_METRICS_PUBLIC and FLAGRAIL_DOCS."""
    monkeypatch.setenv("FLAGRAIL_METRICS_PUBLIC", "true")
    monkeypatch.setenv("FLAGRAIL_DOCS", "false")
    settings = Settings()
    assert (settings.metrics_public, settings.docs) == (True, False)
