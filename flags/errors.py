"""Every exception flagrail raises.

Each one also subclasses the nearest builtin, so generic handlers keep working::

    FlagrailError (Exception)
    ├── ValidationError (ValueError)            bad input; ``field`` names it
    │   └── InvalidRuleError                    a state or plan that cannot hold
    ├── NotFoundError (LookupError)
    │   ├── FlagNotFoundError
    │   ├── EnvironmentNotFoundError
    │   ├── TokenNotFoundError
    │   └── PlanNotFoundError
    ├── ConflictError
    │   ├── AlreadyExistsError                  create of a name that exists
    │   ├── VersionConflictError                If-Match was stale; carries the current state
    │   └── PlanStateError                      plan cannot take that step now
    ├── AuthError (PermissionError)
    │   ├── UnauthenticatedError                no or unknown token
    │   └── ForbiddenError                      wrong role or environment scope
    ├── StoreUnavailableError (ConnectionError) the database did not answer
    ├── ServerUnavailableError (ConnectionError) the admin API did not answer (admin client)
    ├── SchemaOutdatedError (RuntimeError)      database schema behind the code
    └── CacheError
        └── CorruptEntryError (ValueError)      an envelope failed to decode or verify

``api/errors.py`` maps these to HTTP statuses in one table.
"""

from __future__ import annotations

from typing import Any


class FlagrailError(Exception):
    """Base of every flagrail error. ``code`` is a stable machine-readable name."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ValidationError(FlagrailError, ValueError):
    """Input that does not fit the model; ``field`` names the offending field."""

    code = "validation_error"


class InvalidRuleError(ValidationError):
    """A state change or rollout plan that is well-formed but cannot be applied."""

    code = "invalid_rule"


class NotFoundError(FlagrailError, LookupError):
    code = "not_found"


class FlagNotFoundError(NotFoundError):
    code = "flag_not_found"


class EnvironmentNotFoundError(NotFoundError):
    code = "environment_not_found"


class TokenNotFoundError(NotFoundError):
    code = "token_not_found"


class PlanNotFoundError(NotFoundError):
    code = "plan_not_found"


class ConflictError(FlagrailError):
    code = "conflict"


class AlreadyExistsError(ConflictError):
    code = "already_exists"


class VersionConflictError(ConflictError):
    """The expected version did not match; ``current`` is the state as it is now."""

    code = "version_conflict"

    def __init__(self, message: str, *, current: dict[str, Any], field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.current = current


class PlanStateError(ConflictError):
    code = "plan_state"


class AuthError(FlagrailError, PermissionError):
    code = "auth"


class UnauthenticatedError(AuthError):
    code = "unauthenticated"


class ForbiddenError(AuthError):
    code = "forbidden"


class StoreUnavailableError(FlagrailError, ConnectionError):
    """The database could not be reached or failed mid-transaction; nothing was written."""

    code = "store_unavailable"


class ServerUnavailableError(FlagrailError, ConnectionError):
    """The flagrail server could not be reached, did not answer in time, or answered
    with something that is not its API (``flags.admin_client``)."""

    code = "server_unavailable"


class SchemaOutdatedError(FlagrailError, RuntimeError):
    """The database schema is older than this code; run ``flagrail db upgrade``."""

    code = "schema_outdated"


class CacheError(FlagrailError):
    code = "cache_error"


class CorruptEntryError(CacheError, ValueError):
    """A cached envelope failed to decode or verify. Always treated as a miss."""

    code = "corrupt_entry"
