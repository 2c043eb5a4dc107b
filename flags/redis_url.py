"""One place that turns a Redis URL into redis-py clients: a server, Sentinel or a Cluster.

Every Redis use in flagrail (the server's change fan-out, the SDK's sync, the cache's
remote layer and its invalidation channel) can take any of these forms::

    redis://[[user]:password@]host[:port][/db]          one server (redis-py's own form;
    rediss://...                                         every query option it knows works)
    unix:///path/to/redis.sock?db=0

    redis+sentinel://[[user]:password@]h1:26379,h2:26380/mymaster[/db][?options]
    rediss+sentinel://...                                TLS to the master (and replicas)

    redis+cluster://[[user]:password@]h1:7000,h2:7001[/0][?options]
    rediss+cluster://...                                 TLS to every node

Sentinel: the hosts are the *sentinels* (port 26379 if left out), the first path
segment is the master's service name, the second the database (default 0). The
client asks the sentinels for the current master on every (re)connect, so it
follows a failover without a word from the application: commands fail while the
old master is gone, then reach the promoted replica. The user and password in the
URL are the *data nodes'*; the sentinels' own are the options below.

Cluster: the hosts are startup nodes (port 6379 if left out); the client learns the
rest of the cluster from them. Only database 0 exists on a cluster. Multi-key
commands and scripts must touch one hash slot (``{tag}`` keys; the cache's remote
layer does).

Options for the ``+sentinel`` and ``+cluster`` forms, in the query string
(percent-encoded):

=========================== =========================================================
``sentinel_password``       password of the sentinels (``requirepass`` in sentinel.conf)
``sentinel_username``       ACL user of the sentinels
``sentinel_ssl``            ``true``: TLS to the sentinels too (default: plain)
``ssl_ca_certs``            CA bundle path for ``rediss+`` (and ``sentinel_ssl``)
``ssl_cert_reqs``           ``required`` (default), ``optional`` or ``none``
``ssl_certfile``            client certificate (mutual TLS)
``ssl_keyfile``             its key
``ssl_check_hostname``      ``false`` to skip the host name check
``socket_timeout``          seconds; overrides the caller's default
``socket_connect_timeout``  seconds; overrides the caller's default
``db``                      the database (Sentinel; same as the second path segment)
=========================== =========================================================

Anything else in the query is an error naming it (a typo must not silently drop TLS).
Plain ``redis://`` URLs go to redis-py's ``from_url`` untouched.

Errors: ``InvalidRedisUrlError`` (a ``ValidationError``, so a ``ValueError``) with
``field="redis_url"``, raised by ``parse_redis_url``, ``redis_client`` and
``async_redis_client`` before any I/O. Building a client does no I/O (but for redis-py's
sync cluster client, which learns the slot map at once); the first command connects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, unquote

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.exceptions
import redis.sentinel

from flags.errors import ValidationError

__all__ = [
    "InvalidRedisUrlError",
    "RedisKind",
    "RedisTarget",
    "async_redis_client",
    "parse_redis_url",
    "redact_redis_url",
    "redis_client",
]

SENTINEL_PORT = 26379
REDIS_PORT = 6379

# Query options the +sentinel / +cluster forms accept, with their converters.
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_CERT_REQS = {"required", "optional", "none"}
_FLOAT_OPTIONS = ("socket_timeout", "socket_connect_timeout")
_STRING_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_KNOWN_OPTIONS = frozenset(
    {
        "sentinel_password",
        "sentinel_username",
        "sentinel_ssl",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "db",
        *_FLOAT_OPTIONS,
        *_STRING_OPTIONS,
    }
)
# Keyword arguments redis.asyncio.cluster.RedisCluster does not take.
_ASYNC_CLUSTER_UNSUPPORTED = frozenset({"retry_on_timeout", "connection_pool"})


class InvalidRedisUrlError(ValidationError):
    """A Redis URL that cannot be used; the message names the part that is wrong."""

    code = "invalid_redis_url"

    def __init__(self, message: str) -> None:
        super().__init__(message, field="redis_url")


class RedisKind(StrEnum):
    """Which topology a URL names."""

    SERVER = "server"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL. ``nodes`` are sentinels (SENTINEL) or startup nodes (CLUSTER);
    for SERVER only ``url`` matters (redis-py parses it)."""

    kind: RedisKind
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    sentinel_tls: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)

    def connection_options(self) -> dict[str, Any]:
        """Keyword arguments for a data node's connection (credentials, TLS, timeouts)."""
        out: dict[str, Any] = {}
        if self.username is not None:
            out["username"] = self.username
        if self.password is not None:
            out["password"] = self.password
        if self.tls:
            out["ssl"] = True
            out.update(_tls_options(self.options))
        for name in _FLOAT_OPTIONS:
            if name in self.options:
                out[name] = self.options[name]
        return out

    def sentinel_options(self, defaults: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments for a connection to a sentinel."""
        out: dict[str, Any] = {
            k: defaults[k] for k in _FLOAT_OPTIONS if defaults.get(k) is not None
        }
        for name in _FLOAT_OPTIONS:
            if name in self.options:
                out[name] = self.options[name]
        if self.sentinel_username is not None:
            out["username"] = self.sentinel_username
        if self.sentinel_password is not None:
            out["password"] = self.sentinel_password
        if self.sentinel_tls:
            out["ssl"] = True
            out.update(_tls_options(self.options))
        return out


def _tls_options(options: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: options[k]
        for k in (
            "ssl_ca_certs",
            "ssl_certfile",
            "ssl_keyfile",
            "ssl_cert_reqs",
            "ssl_check_hostname",
        )
        if k in options
    }


def parse_redis_url(url: str) -> RedisTarget:
    """Parse ``url`` (any form in the module docstring) without I/O.

    Raises ``InvalidRedisUrlError`` naming what is wrong: an unknown scheme, no host,
    a bad port, no Sentinel service name, a database that is not a whole number
    (or not 0 on a cluster), an unknown or malformed query option.
    """
    if not isinstance(url, str) or "://" not in url:
        raise InvalidRedisUrlError(f"a Redis URL looks like redis://host:6379/0, got {url!r}")
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme in {"redis", "rediss", "unix"}:
        return RedisTarget(RedisKind.SERVER, url)
    base, _, kind_name = scheme.partition("+")
    if base not in {"redis", "rediss"} or kind_name not in {"sentinel", "cluster"}:
        raise InvalidRedisUrlError(
            f"unknown Redis URL scheme {scheme!r}: expected redis, rediss, unix, "
            "redis+sentinel, rediss+sentinel, redis+cluster or rediss+cluster"
        )
    kind = RedisKind(kind_name)
    rest = rest.partition("#")[0]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    default_port = SENTINEL_PORT if kind is RedisKind.SENTINEL else REDIS_PORT
    nodes = tuple(_parse_node(part, default_port) for part in hostlist.split(",") if part)
    if not nodes:
        raise InvalidRedisUrlError(f"no host in Redis URL {redact_redis_url(url)!r}")
    options = _parse_options(query)
    segments = [unquote(s) for s in path.split("/") if s]
    service: str | None = None
    db_text: str | None = None
    if kind is RedisKind.SENTINEL:
        if not segments:
            raise InvalidRedisUrlError(
                "a Sentinel URL names the master's service: "
                "redis+sentinel://host:26379,host:26380/mymaster/0"
            )
        if len(segments) > 2:
            raise InvalidRedisUrlError(f"a Sentinel URL's path is /service[/db], got /{path}")
        service = segments[0]
        db_text = segments[1] if len(segments) == 2 else None
    else:
        if len(segments) > 1:
            raise InvalidRedisUrlError(f"a Cluster URL's path is at most /0, got /{path}")
        db_text = segments[0] if segments else None
    if "db" in options:
        query_db = options.pop("db")
        if db_text is not None and db_text != query_db:
            raise InvalidRedisUrlError(
                f"the database is given twice and differs: /{db_text} and db={query_db}"
            )
        db_text = query_db
    db = _parse_db(db_text)
    if kind is RedisKind.CLUSTER and db != 0:
        raise InvalidRedisUrlError(f"a Redis Cluster has only database 0, got {db}")
    return RedisTarget(
        kind,
        url,
        nodes=nodes,
        service=service,
        db=db,
        username=username,
        password=password,
        tls=base == "rediss",
        sentinel_username=options.pop("sentinel_username", None),
        sentinel_password=options.pop("sentinel_password", None),
        sentinel_tls=options.pop("sentinel_ssl", False),
        options=options,
    )


def _parse_node(text: str, default_port: int) -> tuple[str, int]:
    host, port_text = text, ""
    if text.startswith("["):  # [::1]:26379
        end = text.find("]")
        if end < 0:
            raise InvalidRedisUrlError(f"unclosed IPv6 bracket in Redis host {text!r}")
        host, port_text = text[1:end], text[end + 1 :].removeprefix(":")
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
    if not host:
        raise InvalidRedisUrlError(f"empty host in Redis host list entry {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidRedisUrlError(f"port of Redis host {text!r} must be 1..65535")
    return host, int(port_text)


def _parse_db(text: str | None) -> int:
    if text is None or text == "":
        return 0
    if not text.isdigit():
        raise InvalidRedisUrlError(f"the Redis database must be a whole number, got {text!r}")
    return int(text)


def _parse_options(query: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _KNOWN_OPTIONS:
            raise InvalidRedisUrlError(
                f"unknown Redis URL option {name!r}; known: {', '.join(sorted(_KNOWN_OPTIONS))}"
            )
        if name in out:
            raise InvalidRedisUrlError(f"Redis URL option {name!r} is given twice")
        out[name] = _convert_option(name, value)
    return out


def _convert_option(name: str, value: str) -> Any:
    if name in _FLOAT_OPTIONS:
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds < 3600:
            raise InvalidRedisUrlError(f"{name} must be seconds in (0, 3600), got {value!r}")
        return seconds
    if name in {"sentinel_ssl", "ssl_check_hostname"}:
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise InvalidRedisUrlError(f"{name} must be true or false, got {value!r}")
    if name == "ssl_cert_reqs":
        if value.lower() not in _CERT_REQS:
            raise InvalidRedisUrlError(
                f"ssl_cert_reqs must be one of {', '.join(sorted(_CERT_REQS))}, got {value!r}"
            )
        return value.lower()
    if not value and name != "sentinel_password":
        raise InvalidRedisUrlError(f"Redis URL option {name!r} is empty")
    return value


def redact_redis_url(url: str) -> str:
    """``url`` with any password in the user part and the query replaced by ``***``
    (for logs and error messages)."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    netloc, sep, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    head, q, query = (sep + tail).partition("?")
    if q:
        parts = []
        for item in query.split("&"):
            key, eq, _value = item.partition("=")
            parts.append(f"{key}=***" if eq and "password" in key.lower() else item)
        query = "&".join(parts)
    return f"{scheme}://{netloc}{head}{q}{query}"


def redis_client(url: str, **options: Any) -> redis.Redis | redis.cluster.RedisCluster:
    """A synchronous client for ``url`` (any form). ``options`` are redis-py client
    keyword arguments (``socket_timeout``, ``retry``, ``decode_responses`` ...); the
    URL's own ``socket_timeout``/``socket_connect_timeout`` win over them.

    SERVER: ``redis.Redis.from_url``. SENTINEL: a ``redis.Redis`` on a
    ``SentinelConnectionPool`` (the master is looked up on every new connection).
    CLUSTER: a ``redis.cluster.RedisCluster``. No I/O here, except for a cluster:
    redis-py's sync cluster client learns the slot map when it is built.

    Raises ``InvalidRedisUrlError``; for a cluster none of whose startup nodes
    answers, ``redis.ConnectionError`` (a ``RedisError``, like any outage).
    """
    target = parse_redis_url(url)
    if target.kind is RedisKind.SERVER:
        return redis.Redis.from_url(url, **options)
    merged = {**options, **target.connection_options()}
    if target.kind is RedisKind.SENTINEL:
        assert target.service is not None
        sentinel = redis.sentinel.Sentinel(
            list(target.nodes), sentinel_kwargs=target.sentinel_options(merged)
        )
        return sentinel.master_for(target.service, db=target.db, **merged)
    nodes = [redis.cluster.ClusterNode(host, port) for host, port in target.nodes]
    # retry_on_timeout is deprecated on clusters (timeouts are retried per the retry).
    kwargs = {k: v for k, v in merged.items() if k != "retry_on_timeout"}
    try:
        return redis.cluster.RedisCluster(startup_nodes=nodes, **kwargs)
    except redis.exceptions.RedisClusterException as exc:
        # Not a RedisError: callers that survive an outage by catching RedisError
        # must see this one too.
        raise redis.ConnectionError(f"no Redis Cluster node answered: {exc}") from exc


def async_redis_client(
    url: str, **options: Any
) -> redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster:
    """``redis_client`` for redis.asyncio: same forms, same options, same errors.

    A client belongs to the event loop that first uses it. No I/O here (the asyncio
    cluster client learns the slot map on its first command).
    """
    target = parse_redis_url(url)
    if target.kind is RedisKind.SERVER:
        return redis.asyncio.Redis.from_url(url, **options)
    merged = {**options, **target.connection_options()}
    if target.kind is RedisKind.SENTINEL:
        assert target.service is not None
        sentinel = redis.asyncio.sentinel.Sentinel(
            list(target.nodes), sentinel_kwargs=target.sentinel_options(merged)
        )
        return sentinel.master_for(target.service, db=target.db, **merged)
    nodes = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in target.nodes]
    kwargs = {k: v for k, v in merged.items() if k not in _ASYNC_CLUSTER_UNSUPPORTED}
    return redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, **kwargs)
