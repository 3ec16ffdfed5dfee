"""Fixtures: a real Redis, a private key prefix per test, configs, in-process and
subprocess workers.

Tests that take ``redis_topology`` (parametrized indirectly with "single" and "cluster")
run their queues on the shared Redis or on the session's Redis Cluster
(:mod:`tests.fakes.redis_topologies`); ``queue_redis`` is a client of wherever the queues
are, while ``redis`` stays the shared server, where the test handlers record what they
did."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from alchemy.config import Config, node_address, parse_config
from alchemy.process import Worker
from alchemy.queue.keys import QueueKeys
from alchemy.queue.topology import RedisClient
from alchemy.worker.health import process_health
from tests.fakes.redis_topologies import LocalCluster, LocalSentinel
from tests.fakes.s3_server import ACCESS_KEY, REGION, SECRET_KEY, LocalS3

REPO = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("ALCHEMY_TEST_REDIS_URL", REDIS_URL)


@pytest.fixture(autouse=True)
def fresh_process_health() -> Iterator[None]:
    """The registry behind /readyz is the process's; a worker a test stopped in the middle
    of a failure episode (a Redis failover, say) leaves its entry there: clear it."""
    yield
    for problem in process_health.problems():
        process_health.clear(problem.what)


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis(prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-master Redis Cluster with one replica, started once for the session (~3 s);
    tests keep to their own prefix and never kill its nodes (failover tests start their
    own)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSentinel]:
    """A master with one replica and three sentinels, started once for the session
    (~2 s); tests keep to their own prefix and never kill its nodes (failover tests start
    their own)."""
    sentinel = LocalSentinel(tmp_path_factory.mktemp("redis-sentinel"))
    try:
        sentinel.start()
        yield sentinel
    finally:
        sentinel.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """A real S3-compatible server (SeaweedFS ``weed mini``), started once for the session
    (~1 s; ~2 s to stop); each test gets a bucket of its own (``s3_media``)."""
    server = LocalS3(tmp_path_factory.mktemp("s3"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
async def s3_media(s3_server: LocalS3) -> dict[str, Any]:
    """The ``[media]`` settings of an S3 store in a new bucket of this test's own."""
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    async with s3_server.client() as client:
        await client.create_bucket(Bucket=bucket)
    return {
        "store": "s3",
        "s3_endpoint": s3_server.endpoint,
        "s3_region": REGION,
        "s3_bucket": bucket,
        "s3_prefix": "media/",
        "s3_path_style": True,
        "s3_access_key_id": ACCESS_KEY,
        "s3_secret_access_key": SECRET_KEY,
    }


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A Cluster of this test's own (~3 s), for a test that kills or fails over a node."""
    cluster = LocalCluster(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_sentinel(tmp_path: Path) -> Iterator[LocalSentinel]:
    """A Sentinel set of this test's own (~2 s), for a test that kills its master."""
    sentinel = LocalSentinel(tmp_path / "sentinel")
    try:
        sentinel.start()
        yield sentinel
    finally:
        sentinel.stop()


@pytest.fixture
def redis_topology(request: pytest.FixtureRequest) -> str:
    """ "single" unless a test parametrizes it (indirect=True) with "cluster"."""
    return str(getattr(request, "param", "single"))


@pytest.fixture
def redis_section(redis_topology: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The ``[redis]`` settings that put a worker's queues on ``redis_topology``."""
    if redis_topology == "single":
        return {}
    cluster: LocalCluster = request.getfixturevalue("redis_cluster")
    return {"topology": "cluster", "cluster_nodes": cluster.seeds}


def cluster_client(seeds: Sequence[str]) -> RedisCluster:
    return RedisCluster(startup_nodes=[ClusterNode(*node_address(s)) for s in seeds])


@pytest.fixture
async def queue_redis(
    redis: Redis, redis_section: dict[str, Any], prefix: str
) -> AsyncIterator[RedisClient]:
    """A client of where the queues are: ``redis`` itself, or the session's Cluster (its
    keys under ``prefix`` are deleted afterwards)."""
    if not redis_section:
        yield redis
        return
    client = cluster_client(redis_section["cluster_nodes"])
    yield client
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    for key in keys:
        await client.delete(key)
    await client.aclose()


def queue_table(name: str, **settings: Any) -> dict[str, Any]:
    return {name: {"handler": "tests.support.handlers:scripted", **settings}}


def build_config_dict(
    prefix: str, queues: dict[str, Any], worker: dict[str, Any] | None = None, **sections: Any
) -> dict[str, Any]:
    return {
        "redis": {"url": REDIS_URL, "prefix": prefix, **sections.pop("redis", {})},
        "worker": {
            "name": "w1",
            "shutdown_timeout": 5.0,
            "heartbeat_interval": 0.5,
            "heartbeat_ttl": 2.0,
            "recovery_interval": 0.5,
            "reconcile_interval": 7.0,  # > block_timeout + socket_timeout (config.py)
            **(worker or {}),
        },
        "log": {"format": "json", "level": "info"},
        "queues": queues,
        **sections,
    }


def to_toml(config: dict[str, Any]) -> str:
    lines: list[str] = []

    def emit(path: str, table: dict[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if scalars:
            lines.append(f"[{path}]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in scalars.items())
        for k, v in table.items():
            if isinstance(v, dict):
                emit(f"{path}.{k}" if path else k, v)

    for section, table in config.items():
        emit(section, table)
    return "\n".join(lines) + "\n"


@pytest.fixture
def make_config(prefix: str, redis_section: dict[str, Any]) -> Callable[..., Config]:
    def make(queues: dict[str, Any], worker: dict[str, Any] | None = None) -> Config:
        return parse_config(build_config_dict(prefix, queues, worker, redis=redis_section))

    return make


@pytest.fixture
async def run_worker() -> AsyncIterator[Callable[[Config], Worker]]:
    """Start a worker in this event loop; every one started is stopped at teardown."""
    running: list[tuple[Worker, asyncio.Task[int]]] = []

    def start(
        config: Config,
        queues: list[str] | None = None,
        observers: Sequence[Any] = (),
        extensions: Sequence[Any] = (),
    ) -> Worker:
        worker = Worker(
            config, queues, handle_signals=False, observers=observers, extensions=extensions
        )
        task = asyncio.create_task(worker.run())
        worker.task = task  # type: ignore[attr-defined]
        running.append((worker, task))
        return worker

    yield start
    for supervisor, _ in running:
        supervisor.request_stop("test teardown")
    for _, task in running:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)


async def plant_dying_job(
    redis: Redis, config: Config, queue: str, job: dict[str, Any], *, attempt: int = 1
) -> int:
    """Leave ``job`` in this worker identity's processing list of ``queue`` as a process that
    died running it would, after it had already died ``max_recoveries`` times: the next
    recovery dead-letters it as poison. Returns that count."""
    deaths = config.worker.max_recoveries
    meta = {"v": 1, "id": job["id"], "attempt": attempt, "recoveries": deaths}
    envelope = {"_alchemy": meta, "job": json.dumps(job)}
    processing = QueueKeys(config.redis.prefix, queue).processing(config.worker.identity)
    await redis.lpush(processing, json.dumps(envelope))
    return deaths


async def wait_for(
    predicate: Callable[[], Any], *, within: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll an (async) predicate until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


class WorkerProcess:
    """``python -m alchemy run`` as a real subprocess, its JSON log in a file."""

    def __init__(
        self,
        config_path: Path,
        log_path: Path,
        env: dict[str, str],
        wrapper: Sequence[str] = (),
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.wrapped = bool(wrapper)
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "alchemy", "--config", str(config_path), "run"],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        """The worker's pid (for a wrapped worker, such as ``unshare --fork``: its child's)."""
        if not self.wrapped:
            return self.proc.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            with contextlib.suppress(OSError):
                found = children.read_text().split()
                if found:
                    return int(found[0])
            time.sleep(0.01)
        raise AssertionError("the wrapped worker has no child process")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def has_event(self, name: str) -> bool:
        return any(e.get("event") == name for e in self.events())

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            if self.wrapped:
                os.kill(self.pid, signum)
            else:
                self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            if self.wrapped:
                with contextlib.suppress(ProcessLookupError, AssertionError):
                    os.kill(self.pid, signal.SIGKILL)
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def spawn_worker(
    tmp_path: Path, prefix: str, redis_section: dict[str, Any]
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker subprocesses from a config dict; all are killed at teardown."""
    started: list[WorkerProcess] = []

    def spawn(
        queues: dict[str, Any],
        worker: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        wrapper: Sequence[str] = (),
        **sections: Any,
    ) -> WorkerProcess:
        n = len(started)
        sections["redis"] = {**redis_section, **sections.get("redis", {})}
        config = build_config_dict(prefix, queues, worker, **sections)
        config_path = tmp_path / f"worker{n}.toml"
        config_path.write_text(to_toml(config))
        full_env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "ALCHEMY_TEST_REDIS_URL": REDIS_URL,
            **(env or {}),
        }
        for variable in ("REDIS_URL", "ALCHEMY_WORKER_NAME", "ALCHEMY_REDIS_PREFIX"):
            if variable not in (env or {}):
                full_env.pop(variable, None)
        process = WorkerProcess(config_path, tmp_path / f"worker{n}.log", full_env, wrapper)
        started.append(process)
        return process

    yield spawn
    for process in started:
        process.kill()


async def wait_started(process: WorkerProcess, within: float = 15.0) -> None:
    def ready() -> bool:
        if process.proc.poll() is not None:
            raise AssertionError(
                f"worker exited {process.proc.returncode}: {process.log_path.read_text()}"
            )
        return process.has_event("worker_started")

    await wait_for(ready, within=within, interval=0.05)


async def wait_exited(process: WorkerProcess, within: float = 15.0) -> int:
    """Poll (without blocking the event loop) until the subprocess has exited; its status."""

    def exited() -> bool:
        return process.proc.poll() is not None

    await wait_for(exited, within=within, interval=0.02)
    return process.proc.returncode


async def read_records(redis: Redis, key: str) -> list[dict[str, Any]]:
    """The JSON entries the ``scripted`` handler appended to ``key``."""
    return [json.loads(raw) for raw in await redis.lrange(key, 0, -1)]
