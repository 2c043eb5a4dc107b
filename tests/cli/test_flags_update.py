"""``flagrail flags update``: flag-level metadata, on the database directly (break-glass).

The same operation over HTTP is compared with this path by the conformance suite.
"""

from __future__ import annotations

import json

import pytest

from api.cli import main
from flags.history import HistoryQuery
from flags.store.sql import SqlFlagStore, cli_actor


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_flags_update__database_url__changes_metadata_with_history(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each option changes its field; an empty --owner clears it; history names the CLI."""
    db = ("--database-url", database_url)
    assert run(capsys, "flags", "create", "a.b", "--owner", "web", *db)[0] == 0
    # When
    code, out, err = run(
        capsys, "flags", "update", "a.b", "-d", "new", "--tag", "x", "--tag", "y", *db, "--json"
    )
    cleared, out2, _ = run(capsys, "flags", "update", "a.b", "--owner", "", *db, "--json")
    # Then
    assert code == 0, err
    flag = json.loads(out)
    assert (flag["description"], flag["tags"], flag["owner"]) == ("new", ["x", "y"], "web")
    assert (cleared, json.loads(out2)["owner"]) == (0, None)
    store = SqlFlagStore(database_url)
    try:
        rows = store.list_history(HistoryQuery(action="flag.update")).items
    finally:
        store.close()
    assert [(r.actor, r.after["owner"]) for r in rows] == [
        (cli_actor(), None),
        (cli_actor(), "web"),
    ]


def test_flags_update__nothing_or_bad_kind__one_line_error(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ("--database-url", database_url)
    assert run(capsys, "flags", "create", "a.b", *db)[0] == 0
    code, out, err = run(capsys, "flags", "update", "a.b", *db)
    assert (code, out) == (2, "")
    assert err.startswith("flagrail: error: nothing to change") and err.count("\n") == 1
    code, _, err = run(capsys, "flags", "update", "a.b", "--kind", "nope", *db)
    assert code == 1 and "kind" in err and err.count("\n") == 1
