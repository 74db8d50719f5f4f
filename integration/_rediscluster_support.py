"""A Redis Cluster of the test's own: redis-server processes with cluster mode on free
ports, in a temporary directory, created with ``redis-cli --cluster create``. Never the
shared 6379."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import redis
from _net import free_port, wait_for

from evcore.errors import TransportError


def _binaries() -> tuple[str, str] | None:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    return (server, cli) if server and cli else None


def missing_binaries() -> str | None:
    """Why a cluster cannot be started here, or None."""
    return None if _binaries() else "redis-server and redis-cli are needed on PATH"


class ClusterNode:
    """One redis-server with cluster mode on, to stop and start at will (same port, same
    nodes.conf, so it rejoins as the node it was)."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bus_port = free_port()
        self.folder = folder / str(self.port)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binaries = _binaries()
        assert binaries is not None
        self._process = subprocess.Popen(
            [
                binaries[0],
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-port", str(self.bus_port),
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "1000",
                # A replica may take over however long it was away, and syncs at once.
                "--cluster-replica-validity-factor", "0",
                "--repl-diskless-sync-delay", "0",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert wait_for(self.answers, 10), f"redis-server on {self.port} did not start"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def info(self) -> dict[str, str]:
        with self.client() as client:
            text = client.execute_command("CLUSTER", "INFO")
        text = text.decode() if isinstance(text, bytes) else str(text)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def synced(self) -> bool:
        """Whether this replica's link to its primary is up."""
        with self.client() as client:
            return client.info("replication").get("master_link_status") == "up"

    def node_id(self) -> str:
        with self.client() as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
            self._process = None


class PrivateCluster:
    """Three primaries (and ``replicas`` replicas of the first ones) on free ports."""

    def __init__(self, replicas: int = 0) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="evcore-cluster-")
        folder = Path(self._tmp.name)
        self.primaries = [ClusterNode(folder) for _ in range(3)]
        self.replicas = [ClusterNode(folder) for _ in range(replicas)]

    @property
    def nodes(self) -> list[ClusterNode]:
        return self.primaries + self.replicas

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.primaries[0].port}"

    def start(self) -> None:
        binaries = _binaries()
        assert binaries is not None
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.primaries]
        subprocess.run(
            [binaries[1], "--cluster", "create", *addresses, "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        for primary, replica in zip(self.primaries, self.replicas, strict=False):
            with replica.client() as client:
                meet = ("CLUSTER", "MEET", "127.0.0.1", primary.port, primary.bus_port)
                client.execute_command(*meet)
            assert wait_for(lambda r=replica: int(r.info()["cluster_known_nodes"]) >= 4, 10)
            primary_id = primary.node_id()
            assert wait_for(lambda r=replica, p=primary_id: _replicate(r, p), 10)
            assert wait_for(replica.synced, 15), "the replica did not sync with its primary"
            # A primary ignores a failover vote request from a node it has not heard of
            # through gossip yet: wait until every node knows the replica as such.
            others = [node for node in self.nodes if node is not replica]
            replica_id = replica.node_id()
            assert wait_for(
                lambda o=others, r=replica_id, p=primary_id: all(
                    _sees_replica(node, r, p) for node in o
                ),
                15,
            ), "the other nodes did not learn of the replica"
        assert wait_for(self.healthy, 30), "the private cluster did not become healthy"

    def healthy(self) -> bool:
        try:
            running = [node for node in self.nodes if node.answers()]
            return bool(running) and all(
                node.info().get("cluster_state") == "ok" for node in running
            )
        except (redis.RedisError, TransportError):
            return False

    def primary_for(self, slot: int) -> ClusterNode:
        """The node serving ``slot`` as a primary now."""
        for node in self.nodes:
            if not node.answers():
                continue
            with node.client() as client:
                for start, end, owner, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(owner[1])
                        return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no node serves slot {slot}")

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        self._tmp.cleanup()


def _sees_replica(node: ClusterNode, replica_id: str, primary_id: str) -> bool:
    """Whether ``node`` lists ``replica_id`` as a replica of ``primary_id``."""
    with node.client() as client:
        listing = client.execute_command("CLUSTER", "NODES")
    text = listing.decode() if isinstance(listing, bytes) else str(listing)
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[0] == replica_id:
            return "slave" in fields[2].split(",") and fields[3] == primary_id
    return False


def _replicate(replica: ClusterNode, primary_id: str) -> bool:
    try:
        with replica.client() as client:
            client.execute_command("CLUSTER", "REPLICATE", primary_id)
        return True
    except redis.RedisError:
        return False
