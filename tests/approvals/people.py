"""Principals of distinct people for the approvals tests, and the flag they act on."""

from __future__ import annotations

from datetime import UTC, datetime

from api.service.principal import Principal
from flags.model import Role, TokenInfo

FLAG = "checkout.v2"
ENV = "production"


def token(token_id: str, role: Role, environments: tuple[str, ...] | None = None) -> Principal:
    """A principal of an API token without a user: its own person."""
    info = TokenInfo(token_id, f"{token_id}-name", role, environments, datetime.now(UTC))
    return Principal.from_token(info)


def user(name: str, role: Role) -> Principal:
    """A console user's principal (no token): person ``user:<name>``."""
    return Principal(token_id=None, name=f"user:{name}", role=role)
