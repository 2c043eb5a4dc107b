"""Schemathesis against /openapi.json, in process, authenticated as admin: no request it
generates, valid or not, gets a 5xx; every error answer has the one error shape. Then
boundary values (2**63, 2**64, -2**63-1, 1e308, NaN, ...) in every integer/number
parameter and body field, every admin string holding a number, and every numeric slot
of plan and schedule bodies; one character past every path parameter's maxLength.

Bounded: a fixed number of examples per operation and mode, derandomized, so the run is
deterministic and short; the cases are drawn once (kept in .cache/schemathesis, keyed by
the schema, the libraries' versions and the drawing code) and sent to each database.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import importlib.metadata
import inspect
import json
import math
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.control import SkipTest

# Examples per operation: negative generation costs more CPU per example than positive.
EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 6}
# Endpoints that hold the connection open by design (server-sent events).
STREAMING = {("GET", "/sdk/v1/stream")}
# Operations fuzzed in negative mode (at 6 examples each): an operation with no input that
# can be made invalid (say, GET /healthz, or one string path parameter of any length) has
# none. 46 of the 59 have cases today; fewer means the schema or schemathesis lost some.
# (Draws rarely make a path parameter too long: the boundary test sends one per operation.)
NEGATABLE_AT_LEAST = 45
# The admin token in generated cases; each test's own replaces it on the wire.
TOKEN = "<admin token>"
# Generated requests, kept across runs (git-ignored); see _generated.
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "schemathesis"
CACHE_KEY_DISTRIBUTIONS = ("schemathesis", "hypothesis", "jsonschema_rs")


def _request(case: Any) -> dict[str, Any]:
    """A generated case as plain request data (requests-style kwargs, its curl command)."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    content = kwargs.get("data")
    return {
        "method": kwargs["method"],
        "url": kwargs["url"],
        "headers": {k: str(v) for k, v in (kwargs.get("headers") or {}).items()},
        "params": kwargs.get("params"),
        "json": kwargs.get("json"),
        "content": content if isinstance(content, (bytes, str)) else None,
        "data": content if isinstance(content, dict) else None,
        "curl": case.as_curl_command(),
    }


def _send(api: Any, request: dict[str, Any]) -> Any:
    """Send a generated request through the test's own client, with the test's admin
    token where it holds TOKEN."""
    headers = {k: v.replace(TOKEN, api.admin) for k, v in request["headers"].items()}
    return api.client.request(
        request["method"],
        request["url"],
        headers=headers,
        params=request["params"],
        json=request["json"],
        content=request["content"],
        data=request["data"],
    )


Generated = list[tuple[str, list[dict[str, Any]]]]


def _generated(openapi: dict[str, Any], mode: GenerationMode) -> Generated:
    """(operation, its requests) for every operation of ``openapi`` but STREAMING,
    EXAMPLES[mode] each, derandomized: a pure function of the schema, the libraries and
    this module's drawing code. So it is drawn once and kept in CACHE under a key of all
    of those: xdist workers (under a lock) and later runs send the same requests to SQLite
    and to PostgreSQL without drawing again. An operation with nothing to vary (say,
    negative mode and no input that can be made invalid) has none."""
    text = json.dumps(openapi, sort_keys=True)
    key = hashlib.sha256()
    for part in (
        text,
        mode.value,
        str(EXAMPLES[mode]),
        *(f"{d}=={importlib.metadata.version(d)}" for d in CACHE_KEY_DISTRIBUTIONS),
        *(inspect.getsource(f) for f in (_request, _draw, _draw_cases)),
    ):
        key.update(part.encode() + b"\0")
    path = CACHE / f"{mode.value}-{key.hexdigest()[:24]}.pickle"
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return pickle.loads(path.read_bytes())  # type: ignore[no-any-return]
        generated = _draw(text, mode)
        partial = path.with_suffix(f".tmp-{os.getpid()}")
        partial.write_bytes(pickle.dumps(generated))
        partial.rename(path)
    return generated


def _draw(openapi: str, mode: GenerationMode) -> Generated:
    """What ``_generated`` keeps: the drawing itself (``openapi`` is JSON text)."""
    schema = schemathesis.openapi.from_dict(json.loads(openapi))
    # Only ``mode``: then a negative draw with nothing to negate ends the operation at once
    # (SkipTest) instead of being rejected ~460 times until Hypothesis gives up.
    schema.config.generation.update(modes=[mode])
    generated = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) not in STREAMING:
            label = f"{operation.method.upper()} {operation.path}"
            generated.append((label, [_request(c) for c in _draw_cases(operation, mode)]))
    return generated


def _draw_cases(operation: Any, mode: GenerationMode) -> tuple[Any, ...]:
    """EXAMPLES[mode] cases of ``operation`` as Hypothesis draws them (none: nothing to
    vary)."""
    strategy = operation.as_strategy(
        generation_mode=mode, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    cases: list[Any] = []

    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def draw(case: Any) -> None:
        cases.append(case)

    try:
        draw()
    except (Unsatisfiable, SkipTest):
        return ()
    return tuple(cases)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi__generated_requests__never_5xx(api: Any, mode: GenerationMode) -> None:
    """Every operation of /openapi.json, fuzzed, answers below 500 in the error shape."""
    api.create_flag("a.b")
    openapi = api.get("/openapi.json").json()
    generated = _generated(openapi, mode)
    failures: list[str] = []
    for label, requests in generated:
        for request in requests:
            response = _send(api, request)
            problem = None
            if response.status_code >= 500:
                problem = f"{response.status_code} {response.text[:300]}"
            elif response.status_code >= 400 and response.status_code != 405:
                error = response.json()["error"]
                if not {"code", "message", "field"} <= set(error):
                    problem = f"no error shape: {response.text[:300]}"
            if problem:
                failures.append(f"{label}: {request['curl']} -> {problem}")
                break  # one per operation
    exercised = sum(1 for _, requests in generated if requests)
    assert len(generated) >= 15
    assert failures == [], "\n".join(failures)
    assert exercised >= (len(generated) if mode.is_positive else NEGATABLE_AT_LEAST), exercised


# ---------------------------------------------------------------- boundary values
# Numbers just past what a signed 64-bit column, a float or a JSON parser holds.
BOUNDARY_NUMBERS: tuple[float | int, ...] = (
    2**63,
    2**64,
    -(2**63) - 1,
    2**63 - 1,
    10**30,
    1e308,
    -1e308,
    float("nan"),
    float("inf"),
    -1,
    0,
)
BOUNDARY_TEXT = (
    *(json.dumps(n) for n in BOUNDARY_NUMBERS if isinstance(n, int) or math.isfinite(n)),
    *("NaN", "Infinity", "-Infinity", "1e309", "99999999999999999999d", "-1s", "0s"),
)
# History cursors as the API makes them (h:<id>), around an id's 64-bit bound.
BOUNDARY_CURSORS = tuple(
    base64.urlsafe_b64encode(f"h:{n}".encode()).decode().rstrip("=")
    for n in (2**63 - 1, 2**63, 2**64, 10**30, -1)
)
# Admin inputs that are strings holding numbers: (method, path, where, name).
NUMERIC_STRINGS = [
    ("GET", "/admin/history", "query", "since"),
    ("GET", "/admin/history", "query", "until"),
    ("GET", "/admin/history", "query", "cursor"),
    ("GET", "/admin/reports/unused", "query", "since"),
    ("POST", "/admin/flags/a.b/kill", "query", "wait"),
    ("PATCH", "/admin/flags/a.b/environments/beta", "header", "If-Match"),
]


def _numeric(schema: dict[str, Any], components: dict[str, Any]) -> bool:
    if "$ref" in schema:
        return _numeric(components[schema["$ref"].rsplit("/", 1)[1]], components)
    if schema.get("type") in ("integer", "number"):
        return True
    return any(_numeric(s, components) for s in schema.get("anyOf", []))


def _body_properties(schema: dict[str, Any] | None, components: dict[str, Any]) -> list[str]:
    """The numeric properties of a request body schema (one level; refs resolved)."""
    if not schema:
        return []
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    for option in schema.get("anyOf", []):
        if "$ref" in option:
            return _body_properties(option, components)
    return [n for n, s in schema.get("properties", {}).items() if _numeric(s, components)]


def _plan_bodies(value: Any) -> list[tuple[str, dict[str, Any]]]:
    """Plan and schedule bodies (free-form objects) with ``value`` in each numeric slot."""
    stage = {"rollout": 10, "hold": "1m"}
    guard = {"metric": "a.b.errors", "threshold": 1}
    plan = {"environment": "beta", "stages": [stage]}
    return [
        ("plans", {**plan, "stages": [{**stage, "rollout": value}]}),
        ("plans", {**plan, "stages": [{**stage, "hold": value}]}),
        ("plans", {**plan, "start_at": value}),
        *[("plans", {**plan, "guard": {**guard, name: value}}) for name in guard_fields()],
        ("schedules", {"environment": "beta", "at": value, "change": {"enabled": True}}),
        (
            "schedules",
            {"environment": "beta", "at": "2099-01-01T00:00:00Z", "change": {"rollout": value}},
        ),
    ]


def guard_fields() -> tuple[str, ...]:
    return ("threshold", "min_samples", "window", "per")


def _concrete(template: str) -> str:
    """A path template with the test's flag, environment and token id filled in."""
    path = template.replace("{key}", "a.b").replace("{env}", "beta")
    return path.replace("{token_id}", "nope")


def _answer_problem(response: Any) -> str | None:
    if response.status_code >= 500:
        return f"{response.status_code} {response.text[:200]}"
    if response.status_code >= 400:
        error = response.json().get("error", {})
        if not {"code", "message", "field"} <= set(error):
            return f"no error shape: {response.text[:200]}"
    return None


def test_openapi__boundary_numbers__never_5xx(api: Any) -> None:
    """Every integer/number parameter and body field of every operation, and every admin
    string that holds a number, given 2**63, 2**64, -2**63-1, 1e308, NaN, inf...; every
    path parameter with a maxLength given one character more: each answer is below 500
    in the error shape (a 4xx names the field)."""
    api.create_flag("a.b")
    openapi = api.get("/openapi.json").json()
    components = openapi.get("components", {}).get("schemas", {})
    problems: list[str] = []
    sent = 0

    def send(method: str, path: str, label: str, **kwargs: Any) -> None:
        nonlocal sent
        sent += 1
        headers = kwargs.pop("headers", {})
        if "body" in kwargs:  # NaN and inf as JSON allows them on the wire (json.dumps)
            kwargs["content"] = json.dumps(kwargs.pop("body"))
            headers["content-type"] = "application/json"
        response = api.request(method, path, headers=headers, **kwargs)
        problem = _answer_problem(response)
        if problem:
            problems.append(f"{method} {path} {label}: {problem}")

    for template, operations in openapi["paths"].items():
        for method, operation in operations.items():
            if (method.upper(), template) in STREAMING:
                continue
            path = _concrete(template)
            params = operation.get("parameters", [])
            for param in params:
                limit = param["schema"].get("maxLength")
                if param["in"] == "path" and limit is not None:  # one character past it
                    name, too_long = param["name"], "x" * (limit + 1)
                    concrete = _concrete(template.replace(f"{{{name}}}", too_long))
                    send(method.upper(), concrete, f"{name} of {limit + 1} characters")
                if not _numeric(param["schema"], components):
                    continue
                for value in BOUNDARY_TEXT:
                    where = param["in"]
                    if where == "path":
                        send(method.upper(), path.replace(f"{{{param['name']}}}", value), value)
                    elif where == "query":
                        send(
                            method.upper(),
                            path.replace("{plan_id}", "1"),
                            value,
                            params={param["name"]: value},
                        )
            path = path.replace("{plan_id}", "1")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            for name in _body_properties(body.get("schema"), components):
                for number in BOUNDARY_NUMBERS:
                    send(method.upper(), path, f"{name}={number}", body={name: number})
    for method, path, where, name in NUMERIC_STRINGS:
        for value in BOUNDARY_TEXT:
            if where == "header":
                header = f'"{value}"'
                send(
                    method,
                    path,
                    f"{name}: {header}",
                    headers={name: header},
                    body={"enabled": True},
                )
            else:
                body = {"reason": "r"} if method == "POST" else None
                send(method, path, f"{name}={value}", params={name: value}, body=body)
    for cursor in BOUNDARY_CURSORS:
        send("GET", "/admin/history", f"cursor={cursor}", params={"cursor": cursor})
    for value in (*BOUNDARY_NUMBERS, *BOUNDARY_TEXT):
        for kind, body in _plan_bodies(value):
            send("POST", f"/admin/flags/a.b/{kind}", f"{kind} {body}", body=body)
    assert sent > 500
    assert problems == [], "\n".join(problems[:20])
