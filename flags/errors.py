"""Every exception flagrail raises.

Each one also subclasses the nearest builtin, so generic handlers keep working::

    FlagrailError (Exception)
    ├── ValidationError (ValueError)            bad input; ``field`` names it
    │   └── InvalidRuleError                    a state or plan that cannot hold
    ├── NotFoundError (LookupError)
    │   ├── FlagNotFoundError
    │   ├── EnvironmentNotFoundError
    │   ├── TokenNotFoundError
    │   ├── PlanNotFoundError
    │   ├── ChangeRequestNotFoundError
    │   └── ReviewItemNotFoundError
    ├── ConflictError
    │   ├── AlreadyExistsError                  create of a name that exists
    │   ├── VersionConflictError                If-Match was stale; carries the current state
    │   ├── PlanStateError                      plan cannot take that step now
    │   └── ChangeRequestStateError             change request cannot take that step
    │       └── StaleChangeRequestError         its flag moved since it was made
    ├── AuthError (PermissionError)
    │   ├── UnauthenticatedError                no or unknown token
    │   └── ForbiddenError                      wrong role or environment scope
    │       └── SelfApprovalError               approving one's own change request
    ├── StoreUnavailableError (ConnectionError) the database did not answer
    ├── ServerUnavailableError (ConnectionError) the admin API did not answer (admin client)
    ├── SchemaOutdatedError (RuntimeError)      database schema behind the code
    ├── ApprovalRequiredError                   not a failure: held as a change request (202)
    └── CacheError
        └── CorruptEntryError (ValueError)      an envelope failed to decode or verify

``api/errors.py`` maps these to HTTP statuses in one table.
"""

from __future__ import annotations

from collections.abc import Sequence
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


class ChangeRequestNotFoundError(NotFoundError):
    """No change request of that id (or none the caller may see)."""

    code = "change_request_not_found"


class ReviewItemNotFoundError(NotFoundError):
    """No break-glass review item of that id."""

    code = "review_item_not_found"


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


class ChangeRequestStateError(ConflictError):
    """A change request cannot take that step in its status (e.g. approve an applied
    one), or the person already approved this revision."""

    code = "change_request_state"


class StaleChangeRequestError(ChangeRequestStateError):
    """The flag changed since the request was made; the request is now ``stale``."""

    code = "change_request_stale"


class AuthError(FlagrailError, PermissionError):
    code = "auth"


class UnauthenticatedError(AuthError):
    code = "unauthenticated"


class ForbiddenError(AuthError):
    code = "forbidden"


class SelfApprovalError(ForbiddenError):
    """The author may not approve their own change request (unless the environment's
    policy allows self-approval), nor acknowledge their own break-glass."""

    code = "self_approval"


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


class ApprovalRequiredError(FlagrailError):
    """Not a failure: the change did not apply because its environment requires
    approvals; it waits as the change request(s) ``request_ids``.

    Raised by the admin operations (so no caller can mistake a held change for an
    applied one); the HTTP API answers it ``202`` with ``body`` (the request's JSON,
    or for an unkill over several environments ``{"status": "pending",
    "change_requests": [...], ...}``); the CLI prints its message and exits 0.
    """

    code = "approval_required"

    def __init__(self, request_ids: Sequence[int], body: dict[str, Any]) -> None:
        ids = ", ".join(str(i) for i in request_ids)
        noun = "change request" if len(request_ids) == 1 else "change requests"
        super().__init__(f"pending approval: {noun} {ids}")
        self.request_ids = tuple(request_ids)
        self.body = body

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ApprovalRequiredError:
        """Rebuild it from a ``202`` answer's JSON (``flags.admin_client``)."""
        if "change_requests" in body:
            ids = [int(r["id"]) for r in body["change_requests"]]
        else:
            ids = [int(body["id"])]
        return cls(ids, body)


class CacheError(FlagrailError):
    code = "cache_error"


class CorruptEntryError(CacheError, ValueError):
    """A cached envelope failed to decode or verify. Always treated as a miss."""

    code = "corrupt_entry"
