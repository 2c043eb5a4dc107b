"""``flagrail`` on typed flags (#19), through a real server and directly on the database:
``flags create --type``, the issue's ``set prices.tier --env production --on-variant gold
--split gold=200,silver=800``, pins, ``variant add|set|rename|remove``, and the variant
changes readable in ``flagrail history``."""

from __future__ import annotations

from tests.cli.test_cli import Cli, Server, assert_one_line_error, server  # noqa: F401

KEY = "prices.tier"


def test_cli__typed_flag_lifecycle__same_on_both_paths(flagrail: Cli) -> None:
    """Create, set (the issue's exact command), pin, edit variants, read history."""
    created = flagrail(
        "flags",
        "create",
        KEY,
        "--type",
        "string",
        "--variant",
        "bronze=b",
        "--variant",
        "silver=s",
        "--variant",
        "gold=g",
        "--off-variant",
        "bronze",
    )
    assert created.code == 0, created
    assert created.out.startswith(f"{KEY}  (string; release)")
    assert 'variants: bronze="b", silver="s", gold="g"' in created.out

    result = flagrail(
        "set", KEY, "--env", "production", "--on-variant", "gold", "--split", "gold=200,silver=800"
    )
    assert result.code == 0, result
    assert "serves gold; split gold=200,silver=800; off bronze" in result.out

    result = flagrail("set", KEY, "--env", "production", "--pin", "acme=silver", "--json")
    assert result.code == 0, result
    assert result.json()["tenant_variants"] == {"acme": "silver"}
    result = flagrail("set", KEY, "--env", "production", "--pin", "initech=gold", "--json")
    assert result.json()["tenant_variants"] == {"acme": "silver", "initech": "gold"}
    result = flagrail("set", KEY, "--env", "production", "--unpin", "acme", "--json")
    assert result.json()["tenant_variants"] == {"initech": "gold"}

    assert flagrail("variant", "add", KEY, "platinum", "p").code == 0
    assert flagrail("variant", "set", KEY, "platinum", "pt").code == 0
    renamed = flagrail("variant", "rename", KEY, "gold", "gilded", "--json")
    assert renamed.code == 0, renamed
    assert renamed.json()["environments"]["production"]["on_variant"] == "gilded"
    assert_one_line_error(
        flagrail("variant", "remove", KEY, "gilded"), "production on_variant", "production split"
    )
    assert flagrail("variant", "remove", KEY, "platinum").code == 0

    history = flagrail("history", KEY, "--limit", "20")
    assert history.code == 0, history
    assert "-variant platinum" in history.out
    assert "variant gold->gilded (renamed)" in history.out
    assert 'variant platinum "p"->"pt"' in history.out
    assert "on_variant bronze->gold" in history.out
    assert "split none->gold=200,silver=800" in history.out
    assert "+pin acme=silver" in history.out and "-pin acme" in history.out


def test_cli__typed_flag_bad_input__one_line_errors(flagrail: Cli) -> None:
    """Bad typed input fails in one line naming what is wrong, never a traceback."""
    assert_one_line_error(
        flagrail("flags", "create", "n.ttl", "--type", "number", "--variant", "a=1"),
        "off_variant",
    )
    assert_one_line_error(
        flagrail(
            "flags",
            "create",
            "n.ttl",
            "--type",
            "number",
            "--variant",
            "a=soon",
            "--off-variant",
            "a",
        ),
        "--variant a",
        code=2,
    )
    flagrail(
        "flags", "create", "n.ttl", "--type", "number", "--variant", "a=1", "--off-variant", "a"
    )
    assert_one_line_error(flagrail("set", "n.ttl", "--env", "beta", "--split", "a=999"), "split")
    assert_one_line_error(flagrail("set", "n.ttl", "--env", "beta", "--split", "a=x"), code=2)
    assert_one_line_error(flagrail("variant", "add", "n.ttl", "b", '"x"'), "value")
    flagrail("flags", "create", "plain.flag")
    assert_one_line_error(flagrail("variant", "add", "plain.flag", "b", "1"), "boolean")
