"""flags.redis_url: parsing every URL form, and clients that follow Sentinel and Cluster.

Parsing tests do no I/O. Client tests run against a throwaway server, a Sentinel set
or a Cluster of their own (never the machine's Redis), for the sync and the asyncio
client alike.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from flags.errors import ValidationError
from flags.redis_url import (
    InvalidRedisUrlError,
    RedisKind,
    async_redis_client,
    parse_redis_url,
    redact_redis_url,
    redis_client,
)
from flags.testing import wait_for
from flags.testing.redis_server import RedisServer

from .topology import ClusterSet, SentinelSet


class TestParse:
    def test_parse__plain_url__server_kind_untouched(self) -> None:
        """redis://, rediss:// and unix:// are redis-py's own forms."""
        for url in ("redis://h:1/2", "rediss://u:p@h/0?ssl_cert_reqs=none", "unix:///tmp/r.sock"):
            target = parse_redis_url(url)
            assert target.kind is RedisKind.SERVER
            assert target.url == url

    def test_parse__sentinel__hosts_service_db(self) -> None:
        """The documented form: sentinels, service name, database."""
        target = parse_redis_url("redis+sentinel://host:26379,host:26380/mymaster/0")
        assert target.kind is RedisKind.SENTINEL
        assert target.nodes == (("host", 26379), ("host", 26380))
        assert target.service == "mymaster"
        assert target.db == 0
        assert not target.tls

    def test_parse__sentinel_defaults__port_26379_db_0(self) -> None:
        target = parse_redis_url("redis+sentinel://a,b:1/svc")
        assert target.nodes == (("a", 26379), ("b", 1))
        assert target.db == 0

    def test_parse__sentinel_credentials_and_tls__split_between_nodes_and_sentinels(self) -> None:
        """The URL's user part is the data nodes'; sentinel_* options are the sentinels'."""
        target = parse_redis_url(
            "rediss+sentinel://app:s%40cret@[::1]:26379/svc/3"
            "?sentinel_password=sp&sentinel_ssl=true&ssl_ca_certs=/ca.pem&socket_timeout=0.25"
        )
        assert target.nodes == (("::1", 26379),)
        assert (target.username, target.password, target.db) == ("app", "s@cret", 3)
        assert target.tls and target.sentinel_tls
        options = target.connection_options()
        assert options["ssl"] is True and options["ssl_ca_certs"] == "/ca.pem"
        assert options["password"] == "s@cret" and options["socket_timeout"] == 0.25
        sentinel = target.sentinel_options({"socket_connect_timeout": 1.0})
        assert sentinel == {
            "socket_connect_timeout": 1.0,
            "socket_timeout": 0.25,
            "password": "sp",
            "ssl": True,
            "ssl_ca_certs": "/ca.pem",
        }

    def test_parse__sentinel_db_in_query__accepted(self) -> None:
        assert parse_redis_url("redis+sentinel://h/svc?db=4").db == 4

    def test_parse__cluster__startup_nodes(self) -> None:
        target = parse_redis_url("redis+cluster://a:7000,b:7001")
        assert target.kind is RedisKind.CLUSTER
        assert target.nodes == (("a", 7000), ("b", 7001))
        assert parse_redis_url("rediss+cluster://a/0").nodes == (("a", 6379),)

    @pytest.mark.parametrize(
        ("url", "names"),
        [
            ("localhost:6379", "redis://host"),
            ("http://h", "unknown Redis URL scheme"),
            ("redis+replica://h/svc", "unknown Redis URL scheme"),
            ("redis+sentinel:///svc", "no host"),
            ("redis+sentinel://h:1", "names the master's service"),
            ("redis+sentinel://h/svc/0/9", "/service[/db]"),
            ("redis+sentinel://h/svc/x", "whole number"),
            ("redis+sentinel://h/svc/1?db=2", "given twice"),
            ("redis+sentinel://h:0/svc", "1..65535"),
            ("redis+sentinel://h:99999/svc", "1..65535"),
            ("redis+sentinel://[::1/svc", "IPv6"),
            ("redis+sentinel://h/svc?sentinel_pasword=x", "unknown Redis URL option"),
            ("redis+sentinel://h/svc?sentinel_ssl=maybe", "true or false"),
            ("redis+sentinel://h/svc?socket_timeout=-1", "socket_timeout"),
            ("redis+sentinel://h/svc?ssl_cert_reqs=sometimes", "ssl_cert_reqs"),
            ("redis+sentinel://h/svc?ssl_ca_certs=", "is empty"),
            ("redis+sentinel://h/svc?db=1&db=1", "given twice"),
            ("redis+cluster://h/1", "only database 0"),
            ("redis+cluster://h/0/1", "at most /0"),
        ],
    )
    def test_parse__bad_url__invalid_redis_url_error_naming_it(self, url: str, names: str) -> None:
        """Every mistake is an InvalidRedisUrlError (a ValueError) on field redis_url."""
        with pytest.raises(InvalidRedisUrlError) as caught:
            parse_redis_url(url)
        assert names in str(caught.value)
        assert isinstance(caught.value, ValidationError | ValueError)
        assert caught.value.field == "redis_url"

    def test_parse__bad_url_with_password__message_redacts_it(self) -> None:
        with pytest.raises(InvalidRedisUrlError) as caught:
            parse_redis_url("redis+sentinel://u:hunter2@/svc")
        assert "hunter2" not in str(caught.value)

    def test_redact__passwords__replaced(self) -> None:
        assert (
            redact_redis_url("redis+sentinel://u:pw@h/svc?sentinel_password=sp&db=1")
            == "redis+sentinel://u:***@h/svc?sentinel_password=***&db=1"
        )
        assert redact_redis_url("redis://h:1/0") == "redis://h:1/0"


class TestClients:
    def test_redis_client__plain_url__redis_from_url(self, redis_server: RedisServer) -> None:
        """A plain URL gets redis-py's own client, with the caller's options."""
        client = redis_client(redis_server.url, socket_timeout=1.0)
        assert isinstance(client, redis.Redis)
        assert client.ping()
        client.close()

    def test_clients__bad_url__raise_before_io(self) -> None:
        with pytest.raises(InvalidRedisUrlError):
            redis_client("redis+cluster://h/2")
        with pytest.raises(InvalidRedisUrlError):
            async_redis_client("redis+sentinel://h")

    def test_redis_client__cluster_nobody_answers__connection_error(self) -> None:
        """redis-py's sync cluster client learns the slots when built: an outage then
        is a redis.ConnectionError (a RedisError), like any other."""
        with pytest.raises(redis.ConnectionError):
            redis_client("redis+cluster://127.0.0.1:1", socket_connect_timeout=0.2)

    def test_async_redis_client__cluster_url__no_io_until_used(self) -> None:
        """The asyncio cluster client connects on its first command only."""
        aclient = async_redis_client("redis+cluster://127.0.0.1:1", retry_on_timeout=False)
        assert isinstance(aclient, redis.asyncio.cluster.RedisCluster)


def _write_until_ok(client: redis.Redis, key: str, value: str, timeout: float) -> float:
    """SET ``key`` until it succeeds; return the monotonic time it did."""

    def attempt() -> float | None:
        try:
            client.set(key, value)
        except redis.RedisError:
            return None
        return time.monotonic()

    return wait_for(attempt, timeout, f"a write of {key} to succeed", interval=0.05)


@pytest.mark.redis
@pytest.mark.slow
class TestSentinel:
    def test_sentinel__master_killed__client_follows_promotion(
        self, sentinel_set: SentinelSet
    ) -> None:
        """Sync and asyncio clients built from the URL write to the master, and write
        again to the promoted replica within 5 s of the promotion."""
        client = redis_client(sentinel_set.url, socket_connect_timeout=0.5)
        client.set("k", "before")
        assert client.get("k") == b"before"
        assert client.connection_pool.get_master_address()[1] == sentinel_set.master_port()

        old = sentinel_set.kill_master().port
        promoted = sentinel_set.wait_promoted(old)
        promoted_at = time.monotonic()
        ok_at = _write_until_ok(client, "k", "after", timeout=10)
        assert ok_at - promoted_at <= 5.0
        assert client.get("k") == b"after"
        assert client.connection_pool.get_master_address()[1] == promoted
        client.close()

        async def async_side() -> bytes | None:
            aclient = async_redis_client(sentinel_set.url, socket_connect_timeout=0.5)
            try:
                await aclient.set("a", "async")
                return await aclient.get("a")
            finally:
                await aclient.aclose()

        assert asyncio.run(async_side()) == b"async"

    def test_sentinel__pubsub__messages_flow_after_failover(
        self, sentinel_set: SentinelSet
    ) -> None:
        """A subscriber that resubscribes after its connection broke hears messages
        published through the promoted master."""
        publisher = redis_client(sentinel_set.url, socket_connect_timeout=0.5)
        subscriber = redis_client(sentinel_set.url, socket_connect_timeout=0.5)
        old = sentinel_set.kill_master().port
        sentinel_set.wait_promoted(old)

        def delivered() -> bool:
            try:
                pubsub = subscriber.pubsub()
                pubsub.subscribe("changes")
                pubsub.get_message(timeout=1.0)  # the subscribe confirmation
                publisher.publish("changes", "v2")
                message = pubsub.get_message(timeout=1.0)
                pubsub.close()
            except redis.RedisError:
                return False
            return bool(message and message["data"] == b"v2")

        wait_for(delivered, 10, "a message through the promoted master", interval=0.05)
        publisher.close()
        subscriber.close()


@pytest.mark.redis
@pytest.mark.slow
class TestCluster:
    def test_cluster__keys_on_every_master__read_back(self, cluster_set: ClusterSet) -> None:
        """Keys that hash to different slots land on different masters and read back,
        through the sync and the asyncio client."""
        client = redis_client(cluster_set.url)
        assert isinstance(client, redis.cluster.RedisCluster)
        for i in range(30):
            client.set(f"key-{i}", str(i))
        assert [client.get(f"key-{i}") for i in range(30)] == [str(i).encode() for i in range(30)]
        owners = {client.get_node_from_key(f"key-{i}").port for i in range(30)}
        assert owners == set(cluster_set.master_ports())
        client.close()

        async def async_side() -> list[bytes | None]:
            aclient = async_redis_client(cluster_set.url)
            try:
                return [await aclient.get(f"key-{i}") for i in range(3)]
            finally:
                await aclient.aclose()

        assert asyncio.run(async_side()) == [b"0", b"1", b"2"]

    def test_cluster__master_killed__replica_takes_over(self, cluster_set: ClusterSet) -> None:
        """Writes to a dead master's slots fail until its replica is promoted, then
        succeed through the same client."""
        client = redis_client(cluster_set.url, socket_connect_timeout=0.3)
        key = "{victim}k"
        client.set(key, "before")
        victim = client.get_node_from_key(key).port
        cluster_set.node(victim).kill()
        _write_until_ok(client, key, "after", timeout=20)
        assert client.get(key) == b"after"
        assert client.get_node_from_key(key).port != victim
        client.close()
