"""Schemathesis against /openapi.json, in process, authenticated as admin: no request it
generates, valid or not, gets a 5xx; every error answer has the one error shape.

Bounded: a fixed number of examples per operation and mode, derandomized, so the run is
deterministic and short.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

# Examples per operation: negative generation costs more CPU per example than positive.
EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 6}
# Endpoints that hold the connection open by design (server-sent events).
STREAMING = {("GET", "/sdk/v1/stream")}


def _send(api: Any, case: Any) -> Any:
    """Send a generated case through the test's own client (requests-style kwargs -> httpx)."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    content = kwargs.get("data")
    return api.client.request(
        kwargs["method"],
        kwargs["url"],
        headers={k: str(v) for k, v in (kwargs.get("headers") or {}).items()},
        params=kwargs.get("params"),
        json=kwargs.get("json"),
        content=content if isinstance(content, (bytes, str)) else None,
        data=content if isinstance(content, dict) else None,
    )


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi__generated_requests__never_5xx(api: Any, mode: GenerationMode) -> None:
    """Every operation of /openapi.json, fuzzed, answers below 500 in the error shape."""
    api.create_flag("a.b")
    openapi = api.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(openapi)
    auth = {"Authorization": f"Bearer {api.admin}"}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in STREAMING:
            continue
        operations += 1
        strategy = operation.as_strategy(generation_mode=mode, headers=auth)

        @settings(
            max_examples=EXAMPLES[mode],
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def check(case: Any) -> None:
            response = _send(api, case)
            assert response.status_code < 500, (
                f"{case.as_curl_command(headers=auth)} -> {response.status_code} "
                f"{response.text[:300]}"
            )
            if response.status_code >= 400 and response.status_code != 405:
                error = response.json()["error"]
                assert {"code", "message", "field"} <= set(error), response.text[:300]

        try:
            check()
        except Unsatisfiable:
            continue  # nothing to vary (say, negative mode on an operation without inputs)
        except AssertionError as exc:
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert operations >= 15
    assert failures == [], "\n".join(failures)
