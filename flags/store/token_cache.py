"""``TokenCache``: the tokens a store has authenticated recently, so a request whose
token was seen a moment ago costs no database read.

Every SDK poll, stream (re)connect and admin request authenticates its token. Reading
the token row each time costs a thread-pool hop and a query per request, which is
most of what a ``304`` poll costs the server, and what a reconnect storm queues on.

Contract:

* only live tokens are held (an unknown or revoked secret is read every time, so a
  token minted on another replica works at once);
* an entry lives at most ``ttl`` seconds;
* ``clear()`` drops every entry, and an authentication that read the database
  before the clear cannot store its (possibly stale) answer after it. There is one
  cache per database engine (``token_cache_for``), shared by the flag store and the
  console's user store, and each clears it after committing a token revocation or a
  user's disabling: revocation through this process takes effect at once;
* ``watch(mark)``: the store's revocation mark (what changes when any token is revoked
  or a console user disabled, in any process); a mark that moved clears the cache.
  The server reads it every ``TOKEN_MARK_INTERVAL`` seconds, which bounds how long a
  revocation made elsewhere (another replica, ``flagrail ... --database-url``) takes
  to reach this process.

Thread-safe: entries are replaced whole; readers take no lock.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any

from flags.background import Background
from flags.model import TokenInfo

__all__ = [
    "DEFAULT_TOKEN_TTL",
    "TOKEN_MARK_INTERVAL",
    "TokenCache",
    "TokenMarkWatch",
    "token_cache_for",
]

log = logging.getLogger("flagrail.store.tokens")

# Seconds an authenticated token is trusted without reading its row again.
DEFAULT_TOKEN_TTL = 30.0

# Seconds between the server's reads of the revocation mark.
TOKEN_MARK_INTERVAL = 0.5


class TokenCache:
    """Live tokens by secret digest (see the module docstring). ``ttl`` 0 holds nothing."""

    def __init__(
        self,
        ttl: float = DEFAULT_TOKEN_TTL,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self.hits = 0
        self.misses = 0
        self._entries: dict[str, tuple[TokenInfo, float]] = {}
        self._generation = 0
        self._mark: Hashable | None = None
        self._lock = threading.Lock()

    def get(self, digest: str) -> TokenInfo | None:
        """The live token of ``digest`` if held and not expired; no I/O."""
        entry = self._entries.get(digest)
        if entry is not None and entry[1] > self.clock():
            self.hits += 1
            return entry[0]
        self.misses += 1
        return None

    def generation(self) -> int:
        """Take before reading the database; hand to ``put``."""
        return self._generation

    def put(self, digest: str, token: TokenInfo, generation: int) -> None:
        """Hold ``token`` (live, just read) unless the cache was cleared since
        ``generation`` was taken."""
        if self.ttl <= 0 or token.revoked:
            return
        with self._lock:
            if generation != self._generation:
                return
            if len(self._entries) >= self.max_entries:
                self._evict(self.clock())
            self._entries[digest] = (token, self.clock() + self.ttl)

    def clear(self) -> None:
        """Forget every token (a revocation was committed, or may have been)."""
        with self._lock:
            self._generation += 1
            self._entries = {}

    def watch(self, mark: Hashable) -> bool:
        """Note the store's revocation mark; clear when it moved. True if cleared."""
        if mark == self._mark:
            return False
        self._mark = mark
        self.clear()  # the first mark too: what was held before it is unchecked
        return True

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self, now: float) -> None:
        """Under the lock: drop the expired entries, else the older half."""
        live = {k: v for k, v in self._entries.items() if v[1] > now}
        if len(live) >= self.max_entries:
            live = dict(list(live.items())[len(live) // 2 :])
        self._entries = live


_by_engine: weakref.WeakKeyDictionary[Any, TokenCache] = weakref.WeakKeyDictionary()
_by_engine_lock = threading.Lock()


def token_cache_for(engine: Any) -> TokenCache:
    """The one ``TokenCache`` of a database engine: every store on the same engine (the
    flag store, the console's users) shares it, so a revocation committed through
    any of them clears it."""
    with _by_engine_lock:
        cache = _by_engine.get(engine)
        if cache is None:
            cache = _by_engine[engine] = TokenCache()
        return cache


class TokenMarkWatch:
    """A server service: reads the revocation mark every ``interval`` seconds and hands
    it to ``cache.watch``. A read that fails clears the cache (nothing held is trusted
    while revocations cannot be seen). The loop survives any exception."""

    def __init__(
        self,
        cache: TokenCache,
        read_mark: Callable[[], Hashable],
        interval: float = TOKEN_MARK_INTERVAL,
    ) -> None:
        self.cache = cache
        self.read_mark = read_mark
        self.interval = interval
        self.failures = 0
        self._thread = Background("flagrail-token-mark", self._run)

    def start(self) -> None:
        self.check()
        self._thread.start()

    def close(self) -> None:
        self._thread.close()

    def check(self) -> None:
        """One read of the mark; never raises."""
        try:
            self.cache.watch(self.read_mark())
        except Exception as exc:  # the database is away: trust nothing held
            self.failures += 1
            self.cache.clear()
            log.debug("token revocation mark unreadable: %s", exc)

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            self.check()
