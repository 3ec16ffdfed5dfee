"""A Redis Cluster and a Sentinel set of a test's own, started from the machine's
redis-server binary on free loopback ports under a temporary directory, and stopped by pid.

- :class:`LocalCluster`: three masters and one replica (of the first master), made with
  ``redis-cli --cluster create`` and ``--cluster add-node --cluster-slave``. Each node runs
  with ``cluster-node-timeout`` 2000 ms (the default is 15000), so a master killed with
  SIGKILL is replaced by its replica in about 3 s instead of about 20 s.
- :class:`LocalSentinel`: one master, one replica and three sentinels (quorum 2) watching
  it as ``mymaster`` with ``down-after-milliseconds`` 1000, so a master killed with SIGKILL
  is replaced in about 2-3 s.

Start-up takes about 1-2 s for either. Nothing here is a fake: the servers are real; only
their data is thrown away (no AOF, no snapshots) unless a test asks otherwise.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import redis as sync_redis
from redis.crc import key_slot

from tests.ports import free_port_pair

REDIS_SERVER: Final = "/usr/bin/redis-server"
REDIS_CLI: Final = "/usr/bin/redis-cli"
NODE_TIMEOUT_MS: Final = 2000  # cluster-node-timeout: a failover in ~3 s, not ~20 s
DOWN_AFTER_MS: Final = 1000  # sentinel down-after-milliseconds
MASTER_NAME: Final = "mymaster"


def wait_until(check: object, *, within: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(Exception):
            if check():  # type: ignore[operator]
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        time.sleep(interval)


class ServerProcess:
    """One redis-server (or sentinel) process of ours, on 127.0.0.1 only."""

    def __init__(self, directory: Path, port: int, arguments: Sequence[str]) -> None:
        self.directory = directory
        self.port = port
        self.arguments = list(arguments)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        with (self.directory / f"server-{self.starts}.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [REDIS_SERVER, *self.arguments],
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def client(self, **kwargs: object) -> sync_redis.Redis:
        return sync_redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, **kwargs)  # type: ignore[arg-type]

    def wait_answers(self, within: float = 10.0) -> None:
        def answers() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, "redis-server died"
            with self.client() as client:
                return bool(client.ping())

        wait_until(answers, within=within, what=f"redis at {self.address}")

    def kill(self) -> None:
        """SIGKILL, as a crash would, and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _data_node_arguments(port: int, extra: Sequence[str]) -> list[str]:
    return [
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--maxmemory-policy", "noeviction",
        "--repl-diskless-sync-delay", "0",  # a replica syncs at once, not after 5 s
        *extra,
    ]  # fmt: skip


class LocalCluster:
    """Three masters (slots 0-5460, 5461-10922, 10923-16383 in start order) and one
    replica of the first master."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.nodes: list[ServerProcess] = []
        for n in range(4):
            port = free_port_pair()
            arguments = _data_node_arguments(
                port,
                [
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                ],
            )  # fmt: skip
            self.nodes.append(ServerProcess(directory / f"node{n}", port, arguments))

    @property
    def seeds(self) -> list[str]:
        """Every node's address, as ``[redis] cluster_nodes`` takes them."""
        return [node.address for node in self.nodes]

    def start(self) -> None:
        started = time.monotonic()
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_answers()
        masters, replica = self.nodes[:3], self.nodes[3]
        self._cli("--cluster", "create", *(m.address for m in masters), "--cluster-yes")
        master_id = self._node_id(masters[0])
        self._cli(
            "--cluster", "add-node", replica.address, masters[0].address,
            "--cluster-slave", "--cluster-master-id", master_id,
        )  # fmt: skip
        wait_until(self._healthy, within=30, what="cluster_state:ok and the replica in sync")
        self.started_in = time.monotonic() - started

    def _cli(self, *arguments: str) -> None:
        subprocess.run(
            [REDIS_CLI, *arguments],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    @staticmethod
    def _node_id(node: ServerProcess) -> str:
        with node.client() as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def _healthy(self) -> bool:
        """Every running node says cluster_state:ok, sees the same three masters, and every
        replica's link to its master is up."""
        running = [node for node in self.nodes if node.running]
        for node in running:
            with node.client() as client:
                if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
                info = client.info("replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False
        return len(self.masters()) == 3

    def masters(self) -> list[ServerProcess]:
        """The running nodes that are masters now."""
        found = []
        for node in self.nodes:
            if not node.running:
                continue
            with node.client() as client:
                if client.info("replication")["role"] == "master":
                    found.append(node)
        return found

    def master_of(self, key_or_tag: str) -> ServerProcess:
        """The running node serving the slot of ``key_or_tag`` as a master now."""
        slot = key_slot(key_or_tag.encode())
        for node in self.masters():
            with node.client() as client:
                for first, last, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if first <= slot <= last:
                        return next(n for n in self.nodes if n.port == int(master[1]))
        raise AssertionError(f"no master serves slot {slot}")

    def replicated_master(self) -> ServerProcess:
        """The master that has the replica (the first node until a failover)."""
        replica = next(n for n in self.nodes if n.running and self._role(n) == "slave")
        with replica.client() as client:
            port = int(client.info("replication")["master_port"])
        return next(n for n in self.nodes if n.port == port)

    @staticmethod
    def _role(node: ServerProcess) -> str:
        with node.client() as client:
            return str(client.info("replication")["role"])

    def wait_promoted(self, killed: ServerProcess, within: float = 30.0) -> float:
        """After ``killed`` (a master) died: seconds until another node serves its slots and
        the cluster says ok everywhere."""
        started = time.monotonic()

        def replaced() -> bool:
            survivors = [n for n in self.nodes if n.running]
            for node in survivors:
                with node.client() as client:
                    if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                        return False
            return len(self.masters()) == 3

        wait_until(replaced, within=within, what=f"a replica promoted for {killed.address}")
        return time.monotonic() - started

    def flush(self) -> None:
        for node in self.masters():
            with node.client() as client:
                client.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


def tag_on(
    cluster: LocalCluster,
    master: ServerProcess,
    stem: str,
    tag: Callable[[str], str] = lambda name: name,
) -> str:
    """A name starting with ``stem`` whose hash tag (``tag(name)``: the name itself for a
    queue) lives on ``master``."""
    with master.client() as client:
        ranges = [
            (int(first), int(last))
            for first, last, owner, *_ in client.execute_command("CLUSTER", "SLOTS")
            if int(owner[1]) == master.port
        ]
    for n in range(100_000):
        name = f"{stem}{n}"
        slot = key_slot(tag(name).encode())
        if any(first <= slot <= last for first, last in ranges):
            return name
    raise AssertionError(f"no name for {master.address}")


class LocalSentinel:
    """A master, its replica, and three sentinels watching it as ``mymaster``."""

    def __init__(self, directory: Path, *, extra: Sequence[str] = ()) -> None:
        self.directory = directory
        master_port, replica_port = free_port_pair(), free_port_pair()
        self.master = ServerProcess(
            directory / "master", master_port, _data_node_arguments(master_port, extra)
        )
        self.replica = ServerProcess(
            directory / "replica",
            replica_port,
            _data_node_arguments(
                replica_port, [*extra, "--replicaof", "127.0.0.1", str(master_port)]
            ),
        )
        self.sentinels: list[ServerProcess] = []
        for n in range(3):
            port = free_port_pair()
            home = directory / f"sentinel{n}"
            home.mkdir(parents=True)
            conf = home / "sentinel.conf"
            conf.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                "daemonize no\n"
                f"dir {home}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self.sentinels.append(ServerProcess(home, port, [str(conf), "--sentinel"]))

    @property
    def addresses(self) -> list[str]:
        """The sentinels, as ``[redis] sentinels`` takes them."""
        return [s.address for s in self.sentinels]

    def start(self) -> None:
        started = time.monotonic()
        # The sentinels learn of the replica from the master's INFO, which they read when
        # they connect and then every 10 s: start them once the replica is in sync.
        for node in (self.master, self.replica):
            node.start()
        for node in (self.master, self.replica):
            node.wait_answers()
        wait_until(self._replica_in_sync, within=30, what="the replica in sync")
        for node in self.sentinels:
            node.start()
        for node in self.sentinels:
            node.wait_answers()
        wait_until(self._ready, within=30, what="the replica in sync and the sentinels agreed")
        self.started_in = time.monotonic() - started

    def _replica_in_sync(self) -> bool:
        with self.replica.client() as client:
            return bool(client.info("replication").get("master_link_status") == "up")

    def _ready(self) -> bool:
        if not self._replica_in_sync():
            return False
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                state = client.sentinel_master(MASTER_NAME)
                if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                    return False
        return True

    def master_port(self) -> int:
        """The master's port as the first sentinel that answers says it is now."""
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            with contextlib.suppress(Exception), sentinel.client() as client:
                _host, port = client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
                )
                return int(port)
        raise AssertionError("no sentinel answers")

    def wait_promoted(self, within: float = 30.0) -> float:
        """After the master was killed: seconds until the sentinels name the replica and it
        answers as a master."""
        started = time.monotonic()

        def promoted() -> bool:
            if self.master_port() != self.replica.port:
                return False
            with self.replica.client() as client:
                return bool(client.info("replication")["role"] == "master")

        wait_until(promoted, within=within, what="the replica promoted")
        return time.monotonic() - started

    def stop(self) -> None:
        for node in (*self.sentinels, self.master, self.replica):
            node.kill()


def move_slot(cluster: LocalCluster, tag: str, target: ServerProcess) -> None:
    """Migrate the slot of ``tag`` with its keys to the master ``target``, as
    ``redis-cli --cluster reshard`` does for each slot: IMPORTING / MIGRATING, MIGRATE the
    keys, then SETSLOT NODE on every master."""
    source = cluster.master_of(tag)
    slot = key_slot(tag.encode())
    source_id, target_id = LocalCluster._node_id(source), LocalCluster._node_id(target)
    with target.client() as dst, source.client() as src:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    for master in cluster.masters():
        with master.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
