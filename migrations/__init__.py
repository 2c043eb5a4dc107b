"""Alembic migrations: the only way flagrail's schema is made.

Nothing imports these modules except Alembic itself, which ``flags.store.schema`` points
at this directory (``alembic.ini`` does the same for the ``alembic`` command). A wheel
installs the directory as ``flags.store.migrations`` (see ``pyproject.toml``), so no
top-level ``migrations`` package is installed. The history has one head: a revision
written on an older one needs a merge revision (``tests/migrations`` checks).
"""
