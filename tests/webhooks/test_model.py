"""api.webhooks.model: subscription bodies, validated with the field named."""

from __future__ import annotations

import pytest

from api.webhooks.model import (
    MAX_PATTERNS,
    Format,
    SubscriptionSpec,
    parse_subscription,
    parse_update,
    validate_url,
)
from flags.errors import ValidationError


def _body(**over: object) -> dict[str, object]:
    return {"url": "https://hooks.example.com/x", "events": ["flag.*"], **over}


def test_parse_subscription__minimal_body__defaults() -> None:
    """url and events alone: every environment and flag, standard format."""
    spec = parse_subscription(_body())
    assert spec == SubscriptionSpec(url="https://hooks.example.com/x", events=("flag.*",))
    assert spec.format is Format.STANDARD


def test_parse_subscription__full_body__kept() -> None:
    """Every field is read; duplicate patterns collapse."""
    spec = parse_subscription(
        _body(
            events=["state.killed", "state.killed", "plan.*"],
            environments=["prod"],
            flags=["checkout.*"],
            format="slack",
            description="on-call",
        )
    )
    assert spec.events == ("state.killed", "plan.*")
    assert spec.environments == ("prod",)
    assert spec.flags == ("checkout.*",)
    assert spec.format is Format.SLACK


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": ["*"]}, "url"),
        ({"url": "https://x.example"}, "events"),
        (_body(url="ftp://x.example/a"), "url"),
        (_body(url="file:///etc/passwd"), "url"),
        (_body(url="https://user:pw@x.example/"), "url"),
        (_body(url="https:///nohost"), "url"),
        (_body(url="http://x.example:99999/"), "url"),
        (_body(url="https://x.example/" + "a" * 2000), "url"),
        (_body(url=5), "url"),
        (_body(events=[]), "events"),
        (_body(events="flag.*"), "events"),
        (_body(events=["flags.*"]), "events"),
        (_body(events=["FLAG.*"]), "events"),
        (_body(events=["*"] * (MAX_PATTERNS + 1)), "events"),
        (_body(environments=["Prod"]), "environments"),
        (_body(environments=[]), "environments"),
        (_body(flags=["a" * 101]), "flags"),
        (_body(flags=[1]), "flags"),
        (_body(format="teams"), "format"),
        (_body(description=3), "description"),
        (_body(secret="whsec_x"), "secret"),
        ([], "body"),
    ],
)
def test_parse_subscription__bad_field__names_it(body: object, field: str) -> None:
    """Each bad input raises ValidationError naming its field."""
    with pytest.raises(ValidationError) as info:
        parse_subscription(body)
    assert info.value.field == field


def test_parse_update__partial__only_named_fields_change() -> None:
    """An update keeps what it does not name; null clears a filter."""
    spec = parse_subscription(_body(environments=["prod"], flags=["a*"]))
    changed = parse_update(spec, {"flags": None, "format": "slack"})
    assert changed.flags is None
    assert changed.environments == ("prod",)
    assert changed.format is Format.SLACK
    assert changed.url == spec.url


def test_validate_url__http_and_https__accepted() -> None:
    """Both schemes with a host and a port pass unchanged."""
    assert validate_url("http://127.0.0.1:8080/h?x=1") == "http://127.0.0.1:8080/h?x=1"
    assert validate_url("https://example.com") == "https://example.com"
