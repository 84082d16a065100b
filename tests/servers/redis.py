"""redis-server of a test's own, on free loopback ports: one server, a primary
with replicas, three Sentinels, a three-node Cluster. The shared Redis of
``REDIS_URL`` is never touched; everything here is started and stopped by the
test that uses it (``redis-server`` from Debian's redis-server package, which
scripts/lib.sh installs; Sentinel is ``redis-server --sentinel``)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.servers import free_port

if TYPE_CHECKING:  # redis-py is imported when used: the suite runs without it too
    import redis


def _until(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    from redis import RedisError

    deadline = time.monotonic() + seconds
    while True:
        try:
            value = condition()
        except (RedisError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Node:
    """One redis-server (or Sentinel) process with its own config file."""

    directory: Path
    port: int = field(default_factory=free_port)
    lines: list[str] = field(default_factory=list)
    sentinel: bool = False
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def config(self) -> Path:
        return self.directory / f"{'sentinel' if self.sentinel else 'redis'}-{self.port}.conf"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/lib.sh installs it)")
        if not self.config.exists():  # a restart keeps what Sentinel rewrote
            self.config.write_text(
                "\n".join(
                    [
                        f"port {self.port}",
                        "bind 127.0.0.1",
                        f"dir {self.directory}",
                        "save ''",
                        "appendonly no",
                        "loglevel warning",
                        f"logfile {self.directory / f'log-{self.port}.txt'}",
                        *self.lines,
                        "",
                    ]
                )
            )
        args = [binary, str(self.config)] + (["--sentinel"] if self.sentinel else [])
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, cwd=self.directory)
        _until(lambda: self.client().ping(), 15, f"redis on {self.port}")

    def client(self, **kwargs: Any) -> redis.Redis:
        import redis

        return redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=2, **kwargs)

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients or replicas, nothing saved."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def log(self) -> str:
        path = self.directory / f"log-{self.port}.txt"
        return path.read_text() if path.exists() else ""


@contextmanager
def redis_server() -> Iterator[Node]:
    """One redis-server, in a temporary directory, killed afterwards."""
    with tempfile.TemporaryDirectory(prefix="idempotency-redis-") as directory:
        node = Node(Path(directory))
        try:
            node.start()
            yield node
        finally:
            node.kill()


def replica_of(directory: Path, primary: Node, *lines: str) -> Node:
    return Node(directory, lines=[f"replicaof 127.0.0.1 {primary.port}", *lines])


def wait_in_sync(primary: Node, replicas: int) -> None:
    """Until ``replicas`` replicas are connected and online at the primary."""

    def synced() -> bool:
        info = primary.client().info("replication")
        online = [
            v
            for k, v in info.items()
            if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
        ]
        return len(online) >= replicas

    _until(synced, 30, f"{replicas} replica(s) in sync with {primary.port}")

    def acknowledged() -> bool:
        # "online" comes before the first acknowledgement: a write must be WAITed.
        pipe = primary.client().pipeline(transaction=False)
        pipe.set("replication-probe", 1)
        pipe.wait(replicas, 200)
        pipe.delete("replication-probe")
        return int(pipe.execute()[1]) >= replicas

    _until(acknowledged, 30, f"{replicas} replica(s) acknowledging {primary.port}")


@dataclass
class Replicated:
    primary: Node
    replicas: list[Node]


@contextmanager
def replicated(directory: Path, replicas: int = 1) -> Iterator[Replicated]:
    """A primary and ``replicas`` replicas, in sync."""
    primary = Node(directory)
    nodes = [primary]
    try:
        primary.start()
        for _ in range(replicas):
            node = replica_of(directory, primary)
            nodes.append(node)
            node.start()
        wait_in_sync(primary, replicas)
        yield Replicated(primary, nodes[1:])
    finally:
        for node in nodes:
            node.kill()


@dataclass
class SentinelSet:
    """A primary, a replica and three Sentinels watching them as ``service``
    (a name of its own: django-redis keeps connection pools per URL, and the
    URL of a Sentinel cache is the service name)."""

    nodes: list[Node]
    sentinels: list[Node]
    service: str

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def primary_port(self) -> int:
        _host, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(self.service)
        return int(port)

    def node(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def role(self, node: Node) -> str:
        return str(node.client().info("replication")["role"])

    def wait_primary(self, not_port: int, seconds: float = 60) -> int:
        """Until the Sentinels name a primary other than ``not_port`` and it answers."""

        def promoted() -> int | None:
            port = self.primary_port()
            if port == not_port:
                return None
            return port if self.role(self.node(port)) == "master" else None

        return int(_until(promoted, seconds, "a new primary"))


@contextmanager
def sentinel_set(directory: Path, down_after_ms: int = 1000) -> Iterator[SentinelSet]:
    with replicated(directory, replicas=1) as pair:
        nodes = [pair.primary, *pair.replicas]
        service = f"idempotency-{pair.primary.port}"
        sentinels = []
        try:
            for _ in range(3):
                sentinel = Node(
                    directory,
                    sentinel=True,
                    lines=[
                        f"sentinel monitor {service} 127.0.0.1 {pair.primary.port} 2",
                        f"sentinel down-after-milliseconds {service} {down_after_ms}",
                        f"sentinel failover-timeout {service} 10000",
                        f"sentinel parallel-syncs {service} 1",
                    ],
                )
                sentinels.append(sentinel)
                sentinel.start()
            # Until every Sentinel knows the replica and the other Sentinels.
            _until(
                lambda: all(
                    int(s.client().sentinel_master(service)["num-other-sentinels"]) == 2
                    and int(s.client().sentinel_master(service)["num-slaves"]) == 1
                    for s in sentinels
                ),
                60,
                "the Sentinels to find each other",
            )
            yield SentinelSet(nodes, sentinels, service)
        finally:
            for sentinel in sentinels:
                sentinel.kill()


@dataclass
class Cluster:
    nodes: list[Node]

    @property
    def location(self) -> str:
        return ",".join(f"redis://127.0.0.1:{n.port}/0" for n in self.nodes)

    def master_of(self, slot: int) -> Node:
        """The node that serves ``slot`` now, as a live node sees it."""
        for node in self.nodes:
            if node.process is None:
                continue
            for start, end, master, *_replicas in node.client().cluster("slots"):
                if start <= slot <= end:
                    return next(n for n in self.nodes if n.port == int(master[1]))
        raise RuntimeError(f"no live node knows slot {slot}")


@contextmanager
def redis_cluster(directory: Path, size: int = 3, replicas: int = 0) -> Iterator[Cluster]:
    """A Redis Cluster of ``size`` primaries, slots spread over all, each with
    ``replicas`` replicas (which the cluster promotes when their primary dies)."""
    nodes = [Node(directory) for _ in range(size * (1 + replicas))]
    for node in nodes:
        node.lines = [
            "cluster-enabled yes",
            f"cluster-config-file nodes-{node.port}.conf",
            f"cluster-port {free_port()}",
            "cluster-node-timeout 5000",
        ]
    try:
        for node in nodes:
            node.start()
        subprocess.run(
            [
                shutil.which("redis-cli") or "redis-cli",
                "--cluster",
                "create",
                *[f"127.0.0.1:{n.port}" for n in nodes],
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        _until(
            lambda: (
                all(n.client().cluster("info")["cluster_state"] == "ok" for n in nodes)
                and all(
                    int(n.client().cluster("info")["cluster_known_nodes"]) == len(nodes)
                    for n in nodes
                )
            ),
            60,
            "the cluster to form",
        )
        _until(
            lambda: all(
                len(shard) - 2 == 1 + replicas
                for n in nodes
                for shard in n.client().cluster("slots")
            ),
            60,
            "every primary's replicas to attach",
        )
        yield Cluster(nodes)
    finally:
        for node in nodes:
            with contextlib.suppress(Exception):
                node.kill()
