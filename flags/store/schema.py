"""Schema management: run the Alembic migrations, tell whether a database is current, and
compare the database with the table models (drift).

The migrations are the only thing that makes the schema. They live in ``migrations/`` at
the repository root; an installed wheel ships the same files as ``flags/store/migrations``
(mapped by ``pyproject.toml``), so no top-level ``migrations`` package is installed.
:func:`migrations_directory` finds whichever is there.

:data:`metadata` (``flags.store.tables.metadata``) is the one ``MetaData`` every table
model belongs to: the core tables, the SDK telemetry tables and the plans table are all
defined in ``flags.store.tables``, so the metadata is complete wherever it is read
(``migrations/env.py``, :func:`schema_drift`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import SQLAlchemyError

from flags.errors import SchemaOutdatedError, StoreUnavailableError, ValidationError
from flags.store.tables import metadata

__all__ = [
    "COMPARE_OPTIONS",
    "alembic_config",
    "check_schema",
    "database_revisions",
    "describe_difference",
    "grant_app_role",
    "head_revision",
    "head_revisions",
    "metadata",
    "migrations_directory",
    "schema_drift",
    "upgrade",
]

# How the models are compared with a database, here and by `alembic check` (migrations/env.py):
# tables, columns, types, nullability, server defaults, indexes, unique and foreign-key
# constraints. (Triggers, such as history's append-only ones, are not compared.)
COMPARE_OPTIONS: dict[str, Any] = {"compare_type": True, "compare_server_default": True}

_PACKAGED = Path(__file__).resolve().parent / "migrations"
_CHECKOUT = Path(__file__).resolve().parent.parent.parent / "migrations"


def migrations_directory() -> Path:
    """The directory holding ``env.py`` and ``versions/``.

    ``flags/store/migrations`` in an installed wheel, else ``migrations/`` at the root of a
    source checkout (which is also what an editable install sees).

    Raises ``SchemaOutdatedError`` when neither exists (a broken install).
    """
    for candidate in (_PACKAGED, _CHECKOUT):
        if (candidate / "env.py").is_file():
            return candidate
    raise SchemaOutdatedError(
        f"no migrations found at {_PACKAGED} or {_CHECKOUT}: reinstall flagrail[server]"
    )


def alembic_config(url: str | None = None) -> Config:
    """An Alembic ``Config`` for flagrail's migrations, bound to ``url`` when given."""
    config = Config()
    config.set_main_option("script_location", str(migrations_directory()))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revisions() -> set[str]:
    """Every head of the migration history (one, unless a branch is left unmerged)."""
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def head_revision() -> str:
    """The single head revision the code expects.

    Raises ``SchemaOutdatedError`` if the history has several heads (two revisions written
    on the same parent without a merge revision): that is a bug in the migrations.
    """
    heads = sorted(head_revisions())
    if len(heads) != 1:
        raise SchemaOutdatedError(
            f"the migrations have {len(heads)} heads ({', '.join(heads)}): add a merge revision"
        )
    return heads[0]


def database_revisions(engine: Engine) -> set[str]:
    """Revisions the database is at (empty for a database never migrated).

    Raises ``StoreUnavailableError`` when the database cannot be read.
    """
    try:
        with engine.connect() as conn:
            return set(MigrationContext.configure(conn).get_current_heads())
    except SQLAlchemyError as exc:
        raise StoreUnavailableError(f"cannot read the schema version: {_reason(exc)}") from exc


def upgrade(url: str) -> None:
    """Bring the database at ``url`` to the head revision, in one transaction. Idempotent.

    Raises ``StoreUnavailableError`` when the database cannot be reached or a migration
    fails (nothing is changed then on databases with transactional DDL).
    """
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            config = alembic_config(url)
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise StoreUnavailableError(f"migration failed: {_reason(exc)}") from exc
    finally:
        engine.dispose()


def check_schema(engine: Engine) -> None:
    """Raise ``SchemaOutdatedError`` unless the database is at the head revision."""
    current = database_revisions(engine)
    heads = head_revisions()
    if current != heads:
        raise SchemaOutdatedError(
            f"database schema is at {sorted(current) or 'nothing'}, this flagrail needs "
            f"{sorted(heads)}: run `flagrail db upgrade`"
        )


def schema_drift(url: str) -> list[str]:
    """Compare the table models with the database at ``url``; one readable line per difference.

    An empty list means the models and the database agree (what ``alembic check`` calls
    "no new upgrade operations detected"). Compared: see :data:`COMPARE_OPTIONS`.

    Raises ``SchemaOutdatedError`` when the database is not at the head revision (upgrade
    first: comparing an old schema only lists what the pending migrations add), and
    ``StoreUnavailableError`` when it cannot be reached.
    """
    engine = create_engine(url)
    try:
        check_schema(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts=dict(COMPARE_OPTIONS))
            differences = compare_metadata(context, metadata)
    except SQLAlchemyError as exc:
        raise StoreUnavailableError(f"cannot compare the schema: {_reason(exc)}") from exc
    finally:
        engine.dispose()
    return [describe_difference(diff) for diff in differences]


# Tables the application only appends to and reads: no UPDATE, DELETE or TRUNCATE for it.
APPEND_ONLY_TABLES = frozenset({"history"})
# Read by the application to check the schema version, written only by migrations.
READ_ONLY_TABLES = frozenset({"alembic_version"})


def grant_app_role(url: str, role: str) -> list[str]:
    """Give the PostgreSQL ``role`` exactly what ``flagrail serve`` needs; returns the statements.

    Run as the tables' owner (the role that ran the migrations), after ``upgrade``. The
    application role gets SELECT, INSERT, UPDATE and DELETE on the tables it maintains,
    SELECT and INSERT only on history (append-only by privilege, so not even a dropped
    trigger lets it rewrite or TRUNCATE the log), SELECT on ``alembic_version``, and the
    sequences its inserts draw from. It owns nothing and can change no schema.

    Raises ``ValidationError`` for a malformed role name or a non-PostgreSQL URL, and
    ``StoreUnavailableError`` when the database refuses (e.g. the role does not exist).
    """
    from sqlalchemy import inspect

    if not role.replace("_", "").isalnum() or not role[:1].isalpha() or len(role) > 63:
        raise ValidationError(
            f"role must be a PostgreSQL identifier (letters, digits, _), got {role!r}",
            field="role",
        )
    engine = create_engine(url)
    try:
        if engine.dialect.name != "postgresql":
            raise ValidationError(
                f"grants are for PostgreSQL; {engine.dialect.name} has no roles",
                field="database_url",
            )
        with engine.begin() as conn:
            check_schema(engine)
            tables = sorted(inspect(conn).get_table_names())
            statements = [f'GRANT USAGE ON SCHEMA public TO "{role}"']
            for table in tables:
                if table in APPEND_ONLY_TABLES:
                    rights = "SELECT, INSERT"
                elif table in READ_ONLY_TABLES:
                    rights = "SELECT"
                else:
                    rights = "SELECT, INSERT, UPDATE, DELETE"
                statements.append(f'REVOKE ALL ON TABLE "{table}" FROM "{role}"')
                statements.append(f'GRANT {rights} ON TABLE "{table}" TO "{role}"')
            statements.append(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
            for statement in statements:
                conn.exec_driver_sql(statement)
    except SQLAlchemyError as exc:
        raise StoreUnavailableError(f"cannot grant to {role!r}: {_reason(exc)}") from exc
    finally:
        engine.dispose()
    return statements


def describe_difference(diff: tuple[Any, ...] | Sequence[tuple[Any, ...]]) -> str:
    """One line for one entry of Alembic's ``compare_metadata`` result.

    "models" is what the table definitions say, "database" what the database has; an
    ``add_*`` entry is something the models have and the database lacks.
    """
    if isinstance(diff, list):  # column modifications come as a list of one or more tuples
        return "; ".join(describe_difference(item) for item in diff)
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        return f"table {diff[1].name}: {_where(kind)}"
    if kind in ("add_column", "remove_column"):
        return f"column {diff[2]}.{diff[3].name}: {_where(kind)}"
    if kind in ("add_index", "remove_index"):
        index = diff[1]
        columns = ", ".join(str(getattr(c, "name", c)) for c in index.expressions)
        return f"index {index.name} on {index.table.name} ({columns}): {_where(kind)}"
    if kind in ("add_constraint", "remove_constraint", "add_fk", "remove_fk"):
        constraint = diff[1]
        columns = ", ".join(c.name for c in constraint.columns)
        label = "foreign key" if kind.endswith("_fk") else "constraint"
        name = f" {constraint.name}" if constraint.name else ""
        return f"{label}{name} on {constraint.table.name} ({columns}): {_where(kind)}"
    if kind.startswith("modify_"):
        _kind, _schema, table, column, _existing, in_database, in_models = diff
        what = kind.removeprefix("modify_")
        if what == "default":
            in_database, in_models = _default_text(in_database), _default_text(in_models)
        return (
            f"column {table}.{column} {what}: database has {in_database!s}, "
            f"models say {in_models!s}"
        )
    return " ".join(str(part) for part in diff)


def _default_text(default: Any) -> str:
    """A server default as SQL text ("none" for no default)."""
    if default is None:
        return "none"
    argument = getattr(default, "arg", default)
    return argument if isinstance(argument, str) else str(argument)


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's message on one line (without SQLAlchemy's background link)."""
    original = getattr(exc, "orig", None)
    return " ".join(str(original if original is not None else exc).split())


def _where(kind: str) -> str:
    if kind.startswith("add_"):
        return "in the models, missing from the database"
    return "in the database, missing from the models"
