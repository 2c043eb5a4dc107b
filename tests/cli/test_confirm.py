"""``api.cli.confirm.format_confirmation``: the line ``flagrail kill --wait`` prints."""

from __future__ import annotations

from api.cli.confirm import format_confirmation


def _lagging(n: int, token_name: str | None) -> dict[str, object]:
    return {
        "instance_id": f"i{n}",
        "host": f"web-{n}",
        "pid": 4000 + n,
        "app": "checkout",
        "applied_version": 41,
        "token_id": None if token_name is None else f"tok{n}",
        "token_name": token_name,
    }


def test_format_confirmation__lagging_with_token__names_token() -> None:
    """A lagging instance the server names a token for shows the token's name."""
    # When one of two lagging instances has a token name
    line = format_confirmation(
        {
            "confirmed": 1,
            "live": 3,
            "elapsed_ms": 2000,
            "lagging": [_lagging(1, "ci-deploy"), _lagging(2, None)],
        }
    )
    # Then that one carries it, the other does not
    assert line == (
        "NOT confirmed: 1/3 SDK instances after 2000 ms; lagging: "
        "web-1:4001 (checkout) at version 41 (token ci-deploy), "
        "web-2:4002 (checkout) at version 41"
    )


def test_format_confirmation__older_server_without_token_fields__unchanged() -> None:
    """A lagging item without ``token_name`` (a server before #14) reads as before."""
    item = _lagging(1, None)
    del item["token_id"], item["token_name"]
    line = format_confirmation({"confirmed": 0, "live": 1, "elapsed_ms": 5, "lagging": [item]})
    assert line.endswith("lagging: web-1:4001 (checkout) at version 41")


def test_format_confirmation__all_applied__confirmed() -> None:
    """Every live instance applied: a one-line confirmation."""
    line = format_confirmation({"confirmed": 2, "live": 2, "elapsed_ms": 23, "lagging": []})
    assert line == "confirmed 2/2 SDK instances in 23 ms"
