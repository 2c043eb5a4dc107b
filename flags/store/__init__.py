"""Flag storage: the ``FlagStore`` protocol and its SQL implementation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from flags.history import Actor, HistoryPage, HistoryQuery
from flags.model import (
    Environment,
    FlagKind,
    FlagRecord,
    FlagState,
    FlagType,
    Role,
    Snapshot,
    StateChange,
    TokenInfo,
)

__all__ = ["FlagPage", "FlagStore", "KillResult"]


@dataclass(frozen=True, slots=True)
class KillResult:
    """Outcome of a kill or unkill: the states now, the environments it changed, and
    the environment version each change produced."""

    flag: str
    states: dict[str, FlagState]
    changed: list[str] = field(default_factory=list)
    env_versions: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FlagPage:
    """One page of flags (``list_flags_page``): the page's records, how many flags
    match in all, the page number (1-based) and how many pages there are."""

    items: list[FlagRecord]
    total: int
    page: int
    pages: int


class FlagStore(Protocol):
    """What the admin API, the CLI and the rollout scheduler need from storage.

    Every mutation records its history row(s) atomically with the change.
    """

    def ping(self) -> None: ...
    def list_environments(self) -> list[Environment]: ...
    def get_environment(self, name: str) -> Environment: ...
    def create_environment(
        self, name: str, *, actor: str | Actor, request_id: str | None = None
    ) -> Environment: ...
    def list_flags(
        self,
        *,
        kind: str | None = None,
        tag: str | None = None,
        archived: bool | None = None,
        q: str | None = None,
        scope: Sequence[str] | None = None,
    ) -> list[FlagRecord]: ...
    def list_flags_page(
        self,
        *,
        kind: str | None = None,
        tag: str | None = None,
        archived: bool | None = None,
        q: str | None = None,
        owner: str | None = None,
        state: str | None = None,
        scope: Sequence[str] | None = None,
        page: int = 1,
        page_size: int = 50,
    ) -> FlagPage: ...
    def get_flag(self, key: str, *, scope: Sequence[str] | None = None) -> FlagRecord: ...
    def create_flag(
        self,
        key: str,
        *,
        description: str = "",
        kind: FlagKind | str = ...,
        owner: str | None = None,
        tags: Sequence[str] = (),
        actor: str | Actor,
        request_id: str | None = None,
        type: FlagType | str = ...,
        variants: Sequence[Any] | None = None,
        off_variant: str | None = None,
        on_variant: str | None = None,
    ) -> FlagRecord: ...
    # Typed flags' variants (#19): shared by every environment.
    def add_variant(
        self, key: str, name: str, value: Any, *, actor: str | Actor, request_id: str | None = None
    ) -> FlagRecord: ...
    def rename_variant(
        self,
        key: str,
        name: str,
        new_name: str,
        *,
        actor: str | Actor,
        request_id: str | None = None,
    ) -> FlagRecord: ...
    def set_variant_value(
        self, key: str, name: str, value: Any, *, actor: str | Actor, request_id: str | None = None
    ) -> FlagRecord: ...
    def remove_variant(
        self, key: str, name: str, *, actor: str | Actor, request_id: str | None = None
    ) -> FlagRecord: ...
    def update_flag(
        self,
        key: str,
        changes: dict[str, Any],
        *,
        actor: str | Actor,
        request_id: str | None = None,
    ) -> FlagRecord: ...
    def archive_flag(
        self, key: str, *, actor: str | Actor, request_id: str | None = None
    ) -> FlagRecord: ...
    def update_state(
        self,
        key: str,
        env: str,
        change: StateChange,
        *,
        actor: str | Actor,
        expected_version: int | None = None,
        reason: str | None = None,
        request_id: str | None = None,
    ) -> FlagState: ...
    def kill(
        self,
        key: str,
        environments: Sequence[str] | None,
        *,
        reason: str,
        actor: str | Actor,
        request_id: str | None = None,
    ) -> KillResult: ...
    def unkill(
        self,
        key: str,
        environments: Sequence[str] | None,
        *,
        reason: str,
        actor: str | Actor,
        request_id: str | None = None,
    ) -> KillResult: ...
    def snapshot(self, env: str) -> Snapshot: ...
    def list_history(self, query: HistoryQuery) -> HistoryPage: ...
    def create_token(
        self,
        name: str,
        role: Role | str,
        environments: Sequence[str] | None,
        *,
        actor: str | Actor,
        request_id: str | None = None,
        flags: Sequence[str] | None = None,
        user: str | None = None,
    ) -> tuple[TokenInfo, str]: ...
    def list_tokens(self) -> list[TokenInfo]: ...
    def revoke_token(
        self, token_id: str, *, actor: str | Actor, request_id: str | None = None
    ) -> TokenInfo: ...
    def authenticate(self, secret: str) -> TokenInfo | None: ...
