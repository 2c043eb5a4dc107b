"""Throwaway Redis topologies for scale and failover tests: Sentinel and Cluster.

Every process is a child of ours, on free ports of 127.0.0.1, with persistence off
and its files in a temporary directory; the machine's own Redis (6379) is never
touched. Both classes are context managers; ``close()`` kills what they started.

* ``SentinelSet``: a master, a replica of it and three sentinels (the same
  ``redis-server`` binary with ``--sentinel``) monitoring it as ``mymaster``, with a
  1 s down-after so a killed master is replaced within a few seconds. A sentinel
  whose timer is starved for 2 s (a busy test machine) enters TILT mode, by default
  for 30 s; by then the replica's link has been down for longer than Sentinel lets a
  replica be promoted (ten down-afters), so no failover would ever happen. The set
  shortens TILT to 1 s (``SENTINEL DEBUG tilt-period``, Redis 7+).
* ``ClusterSet``: three masters, each with a replica, joined by
  ``redis-cli --cluster create``, with a 1 s node timeout.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from flags.testing.redis_server import find_redis_server, free_port

SERVICE = "mymaster"
TILT_PERIOD_MS = 1000


class TopologyError(RuntimeError):
    """A topology did not come up (a binary is missing or a node did not answer)."""


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TopologyError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def _port_pair_free(port: int) -> bool:
    """``port`` and its cluster bus ``port + 10000`` are both free on 127.0.0.1."""
    for candidate in (port, port + 10000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 < 65536 and _port_pair_free(port):
            return port
    for port in range(20000, 55000, 7):
        if _port_pair_free(port):
            return port
    raise TopologyError("no free port pair for a cluster node")


class Node:
    """One ``redis-server`` process (data node or sentinel) on ``port``."""

    def __init__(self, binary: str, port: int, directory: Path, args: list[str]) -> None:
        self.binary = binary
        self.port = port
        self.directory = directory
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, *self.args],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_up(self, timeout: float = 10.0) -> None:
        _wait(lambda: self.running and _ping(self.port), timeout, f"redis on {self.port}")

    def kill(self) -> None:
        """SIGKILL: no goodbye to replicas or sentinels, as a crashed host."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)


def _data_args(port: int, *extra: str) -> list[str]:
    return [
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", ".",
        *extra,
    ]  # fmt: skip


class SentinelSet:
    """Master + replica + three sentinels. ``url`` is the ``redis+sentinel://`` URL."""

    def __init__(self, down_after_ms: int = 1000, failover_timeout_ms: int = 3000) -> None:
        binary = find_redis_server()
        if binary is None:
            raise TopologyError("no redis-server binary")
        self.binary = binary
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self._tmp = tempfile.TemporaryDirectory(prefix="flagrail-sentinel-")
        root = Path(self._tmp.name)
        mport, rport = free_port(), free_port()
        self.master = Node(binary, mport, root / "master", _data_args(mport))
        self.replica = Node(
            binary,
            rport,
            root / "replica",
            _data_args(rport, "--replicaof", "127.0.0.1", str(mport)),
        )
        self.sentinels = [
            Node(binary, port, root / f"sentinel-{port}", [])
            for port in (free_port(), free_port(), free_port())
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(s.address for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0?socket_timeout=0.5"

    @property
    def data_nodes(self) -> list[Node]:
        return [self.master, self.replica]

    def start(self) -> SentinelSet:
        try:
            self.master.start()
            self.master.wait_up()
            self.replica.start()
            self.replica.wait_up()
            _wait(self._replica_in_sync, 10, "the replica to sync")
            for sentinel in self.sentinels:
                sentinel.directory.mkdir(parents=True, exist_ok=True)
                conf = sentinel.directory / "sentinel.conf"
                conf.write_text(
                    f"port {sentinel.port}\n"
                    "bind 127.0.0.1\n"
                    f"dir {sentinel.directory}\n"
                    f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
                    f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {SERVICE} 1\n"
                    "logfile sentinel.log\n"
                )
                sentinel.args = [str(conf), "--sentinel"]
                sentinel.start()
            for sentinel in self.sentinels:
                sentinel.wait_up()
                self._shorten_tilt(sentinel.port)
            _wait(self._sentinels_agree, 15, "the sentinels to see the replica and each other")
        except BaseException:
            self.close()
            raise
        return self

    @staticmethod
    def _shorten_tilt(port: int) -> None:
        import redis

        client = redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)
        with contextlib.closing(client), contextlib.suppress(redis.ResponseError):
            client.execute_command("SENTINEL", "DEBUG", "tilt-period", TILT_PERIOD_MS)

    def sentinel_logs(self, lines: int = 30) -> str:
        """The last ``lines`` lines of each sentinel's log, for a failure message."""
        parts = []
        for sentinel in self.sentinels:
            log = sentinel.directory / "sentinel.log"
            tail = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
            parts.append(f"--- sentinel {sentinel.port}\n" + "\n".join(tail))
        return "\n".join(parts)

    def _replica_in_sync(self) -> bool:
        info = self.info(self.replica.port, "replication")
        return info.get("master_link_status") == "up"

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            info = self.sentinel_master(sentinel.port)
            if int(info.get("num-slaves", 0)) < 1 or int(info.get("num-other-sentinels", 0)) < 2:
                return False
        return True

    def master_port(self) -> int | None:
        """The port the sentinels name as master now (the first that answers)."""
        for sentinel in self.sentinels:
            info = self.sentinel_master(sentinel.port)
            if info.get("port"):
                return int(info["port"])
        return None

    def kill_master(self) -> Node:
        """SIGKILL whichever data node is master now; return it."""
        port = self.master_port()
        node = next(n for n in self.data_nodes if n.port == port)
        node.kill()
        return node

    def wait_promoted(self, old_port: int, timeout: float = 20.0) -> int:
        """Wait until every sentinel names a master other than ``old_port`` that
        answers as a master; return its port."""
        promoted: list[int] = []

        def done() -> bool:
            ports = {self.sentinel_master(s.port).get("port") for s in self.sentinels}
            if len(ports) != 1:
                return False
            port = ports.pop()
            if port is None or int(port) == old_port:
                return False
            if self.info(int(port), "replication").get("role") != "master":
                return False
            promoted[:] = [int(port)]
            return True

        try:
            _wait(done, timeout, "a replica's promotion")
        except TopologyError as exc:
            raise TopologyError(f"{exc}\n{self.sentinel_logs()}") from None
        return promoted[0]

    @staticmethod
    def info(port: int, section: str) -> dict[str, str]:
        import redis

        try:
            client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
            with contextlib.closing(client):
                raw = client.info(section)
        except redis.RedisError:
            return {}
        return {k: str(v) for k, v in raw.items()}

    @staticmethod
    def sentinel_master(port: int) -> dict[str, str]:
        import redis

        try:
            client = redis.Redis(
                port=port, socket_timeout=0.5, socket_connect_timeout=0.5, decode_responses=True
            )
            with contextlib.closing(client):
                raw = client.execute_command("SENTINEL", "MASTER", SERVICE)
        except redis.RedisError:
            return {}
        if isinstance(raw, dict):
            return {str(k): str(v) for k, v in raw.items()}
        items = list(raw)
        return {str(items[i]): str(items[i + 1]) for i in range(0, len(items) - 1, 2)}

    def close(self) -> None:
        for node in [*self.sentinels, *self.data_nodes]:
            node.kill()
        self._tmp.cleanup()

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClusterSet:
    """Three masters with a replica each. ``url`` is the ``redis+cluster://`` URL."""

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        binary = find_redis_server()
        cli = shutil.which("redis-cli")
        if binary is None or cli is None:
            raise TopologyError("no redis-server or redis-cli binary")
        self.binary = binary
        self.cli = cli
        self.masters = masters
        self.replicas = replicas
        self._tmp = tempfile.TemporaryDirectory(prefix="flagrail-cluster-")
        root = Path(self._tmp.name)
        self.nodes: list[Node] = []
        for _ in range(masters * (1 + replicas)):
            port = cluster_port()
            args = _data_args(
                port,
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-replica-validity-factor", "0",
            )  # fmt: skip
            self.nodes.append(Node(binary, port, root / f"node-{port}", args))

    @property
    def url(self) -> str:
        hosts = ",".join(n.address for n in self.nodes[: self.masters])
        return f"redis+cluster://{hosts}/0?socket_timeout=0.5"

    def start(self) -> ClusterSet:
        try:
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                node.wait_up()
            subprocess.run(
                [
                    self.cli,
                    "--cluster",
                    "create",
                    *(n.address for n in self.nodes),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
            )
            _wait(self._healthy, 30, "the cluster to be ok on every node")
        except BaseException:
            self.close()
            raise
        return self

    def _healthy(self) -> bool:
        for node in self.nodes:
            if not node.running:
                continue
            if self.cluster_info(node.port).get("cluster_state") != "ok":
                return False
        return len(self.master_ports()) == self.masters

    def master_ports(self) -> list[int]:
        """Ports of the running nodes that are masters owning slots (per any live node)."""
        import redis

        for node in self.nodes:
            if not node.running:
                continue
            try:
                client = redis.Redis(port=node.port, socket_timeout=0.5, decode_responses=True)
                with contextlib.closing(client):
                    text = client.execute_command("CLUSTER", "NODES")
            except redis.RedisError:
                continue
            ports = []
            for line in str(text).splitlines():
                parts = line.split()
                if len(parts) >= 9 and "master" in parts[2] and "fail" not in parts[2]:
                    ports.append(int(parts[1].split("@")[0].rsplit(":", 1)[1]))
            return sorted(ports)
        return []

    def node(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def wait_healthy(self, timeout: float = 20.0) -> None:
        _wait(self._healthy, timeout, "the cluster to be ok again")

    @staticmethod
    def cluster_info(port: int) -> dict[str, str]:
        import redis

        try:
            client = redis.Redis(port=port, socket_timeout=0.5, decode_responses=True)
            with contextlib.closing(client):
                text = client.execute_command("CLUSTER", "INFO")
        except redis.RedisError:
            return {}
        if isinstance(text, dict):
            return {str(k): str(v) for k, v in text.items()}
        out = {}
        for line in str(text).splitlines():
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
        return out

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        self._tmp.cleanup()

    def __enter__(self) -> ClusterSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
