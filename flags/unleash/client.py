"""``UnleashFlagClient``: a ``FlagClient`` fed by an Unleash server (kept entry point).

There is no Unleash subclass of ``FlagClient``: a client reading an Unleash
server is a plain ``FlagClient`` whose snapshot source is
``flags.unleash.source.UnleashSource``, and it evaluates like every other
client. ``FlagClient.from_unleash`` is the public way in; ``UnleashFlagClient``
builds the same client without starting it.

Requires ``pip install 'flagrail[unleash]'``.
"""

from __future__ import annotations

from flags.client import FlagClient
from flags.unleash.source import MemoryCache, UnleashSource

__all__ = ["MemoryCache", "UnleashFlagClient", "UnleashSource"]


def UnleashFlagClient(  # a CamelCase name kept from when this was a subclass
    url: str,
    token: str,
    app_name: str,
    *,
    environment: str = "default",
    refresh_interval: int = 15,
    metrics_interval: int = 60,
    send_metrics: bool = True,
    register: bool = True,
    request_timeout: int = 5,
    request_retries: int = 0,
) -> FlagClient:
    """A ``FlagClient`` fed by an ``UnleashSource`` with these arguments; not started.

    Constructing does no I/O; ``start()`` registers and fetches once (blocking, at
    most ``request_timeout`` seconds per request) and polls from then on. Raises
    ``ValidationError`` naming the bad argument.
    """
    source = UnleashSource(
        url,
        token,
        app_name,
        environment=environment,
        refresh_interval=refresh_interval,
        metrics_interval=metrics_interval,
        send_metrics=send_metrics,
        register=register,
        request_timeout=request_timeout,
        request_retries=request_retries,
    )
    return FlagClient(None, None, environment, source=source, app_name=app_name)
