"""Issue 10: every part of alchemy works on a Redis Cluster and on Sentinel, as an operator
uses it: a worker process (consumers, Lua steps, the events and records writers, the HTTP
listener), and every command of the command line (enqueue, status, job, dead list / retry /
purge, pause / resume, check-config), each a real ``python -m alchemy`` against the
session's Cluster or Sentinel set."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from alchemy.config import parse_config
from alchemy.queue.keys import QueueKeys
from alchemy.queue.topology import RedisClient
from alchemy.worker.connections import RedisClients
from tests.conftest import REPO, WorkerProcess, queue_table, wait_for, wait_started
from tests.fakes.redis_topologies import MASTER_NAME, LocalCluster, LocalSentinel
from tests.ops.test_cli import clean_env
from tests.ports import free_port

QUEUE = "topo"


@dataclass(frozen=True)
class Ran:
    status: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.status == 0, self
        return json.loads(self.out)


@pytest.fixture(params=["cluster", "sentinel"])
def topology_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        return {"topology": "cluster", "cluster_nodes": cluster.seeds}
    sentinel: LocalSentinel = request.getfixturevalue("redis_sentinel")
    return {
        "topology": "sentinel",
        "sentinels": sentinel.addresses,
        "sentinel_master": MASTER_NAME,
    }


@pytest.fixture
async def topology_client(
    topology_settings: dict[str, Any], prefix: str
) -> AsyncIterator[RedisClient]:
    async with RedisClients(parse_config({"redis": topology_settings}).redis) as clients:
        client = clients.shared
        yield client
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            await client.delete(key)


def cli_in(tmp_path: Path) -> Callable[..., Awaitable[Ran]]:
    """``python -m alchemy --config worker0.toml ...``: the first worker's own config."""

    async def run(*args: str) -> Ran:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "alchemy",
            "--config",
            str(tmp_path / "worker0.toml"),
            *args,
            cwd=REPO,
            env=clean_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return Ran(proc.returncode, out.decode(), err.decode())

    return run


async def test_worker_cli_and_http_work_on_each_topology(
    redis: Redis,
    topology_client: RedisClient,
    topology_settings: dict[str, Any],
    spawn_worker: Callable[..., WorkerProcess],
    prefix: str,
    tmp_path: Path,
) -> None:
    port = free_port()
    worker = spawn_worker(
        queue_table(QUEUE, backoff_initial=0.05), redis=topology_settings, http={"port": port}
    )
    await wait_started(worker)
    cli = cli_in(tmp_path)
    record = f"{prefix}:rec"
    ok = await cli("enqueue", QUEUE, json.dumps({"record": record}), "--id", "ok-1", "--json")
    assert ok.json() == {"queue": QUEUE, "id": "ok-1"}
    failing = {"record": record, "fail_until_attempt": -1, "error": "permanent"}
    assert (await cli("enqueue", QUEUE, json.dumps(failing), "--id", "bad-1")).status == 0
    await wait_for(lambda: redis.llen(f"{record}:done"), within=10)

    async def recorded() -> Any:
        found = await cli("job", QUEUE, "ok-1", "--json")
        return found.status == 0 and found.json()["state"] == "completed"

    await wait_for(recorded, within=10, interval=0.3)  # the records writer's batch
    dead = await cli("dead", "list", QUEUE, "--json")
    [entry] = [json.loads(line) for line in dead.out.splitlines()]
    assert (entry["id"], entry["reason"]) == ("bad-1", "permanent_error")

    [status] = (await cli("status", "--json")).json()["queues"]
    assert (status["wait"], status["dead"], status["paused"]) == (0, 1, False)
    assert [c["alive"] for c in status["consumers"]] == [True]

    keys = QueueKeys(prefix, QUEUE)
    events = await topology_client.xrange(keys.events)
    seen = {(f[b"job_id"], f[b"event"]) for _, f in events}
    assert {(b"ok-1", b"completed"), (b"bad-1", b"dead")} <= seen

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/api/queues") as response:
            assert response.status == 200
            queues = {q["queue"]: q for q in (await response.json())["queues"]}
        assert queues[QUEUE]["dead"] == 1
        async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
            assert response.status == 200, await response.text()
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            metrics = await response.text()
        assert 'alchemy_queue_jobs{queue="topo",state="dead"} 1.0' in metrics
        assert "alchemy_redis_up 1.0" in metrics
        # The dashboard's reads: the overview, the dead letters' groups, and the live feed,
        # which on a Cluster reads each queue's stream on its own (one slot each).
        base = f"http://127.0.0.1:{port}"
        async with http.get(f"{base}/api/dashboard") as response:
            assert response.status == 200, await response.text()
        async with http.get(f"{base}/api/queues/{QUEUE}/dead/groups") as response:
            assert response.status == 200, await response.text()
        async with http.get(f"{base}/api/live") as live:
            assert live.status == 200
            await live.content.readline()  # the first message: the overview now
            await cli("enqueue", QUEUE, json.dumps({"record": record}), "--id", "ok-2")
            assert await _change_seen(live, QUEUE), "the live feed saw no change"

    assert (await cli("pause", QUEUE)).status == 0
    [paused] = (await cli("status", "--json")).json()["queues"]
    assert paused["paused"] is True
    assert (await cli("resume", QUEUE)).status == 0
    retried = await cli("dead", "retry", QUEUE, "--id", "bad-1", "--json")
    assert retried.json()["retried"] == 1
    await wait_for(lambda: _dead_again(topology_client, keys.dead), within=10)
    purged = await cli("dead", "purge", QUEUE, "--all", "--json")
    assert purged.json()["purged"] == 1

    checked = await cli("check-config")
    assert checked.status == 0, checked
    assert f"redis.topology = {topology_settings['topology']}" in checked.out
    assert worker.proc.poll() is None


async def _dead_again(client: RedisClient, key: str) -> bool:
    return int(await client.llen(key)) == 1


async def test_commands_say_where_redis_is_when_it_is_unreachable(tmp_path: Path) -> None:
    """A Cluster whose seeds do not answer, a Sentinel set that does not answer: exit 69,
    one line naming what was tried."""
    dead_ports = [free_port(), free_port()]
    for settings, where in (
        (
            {"topology": "cluster", "cluster_nodes": [f"127.0.0.1:{p}" for p in dead_ports]},
            f"the Redis Cluster of 127.0.0.1:{dead_ports[0]}, 127.0.0.1:{dead_ports[1]}",
        ),
        (
            {
                "topology": "sentinel",
                "sentinels": [f"127.0.0.1:{dead_ports[0]}"],
                "sentinel_master": "mymaster",
            },
            f"the master 'mymaster' of the sentinels 127.0.0.1:{dead_ports[0]}",
        ),
    ):
        path = tmp_path / "worker0.toml"
        redis_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
        path.write_text(
            f"[redis]\n{redis_lines}\nsocket_timeout = 0.5\n[worker]\nreconcile_interval = 7.0\n"
            '[queues.q]\nhandler = "alchemy.handlers.noop:handle"\n'
        )
        result = await cli_in(tmp_path)("status")
        assert result.status == 69, result
        assert result.err.startswith(f"alchemy: redis unreachable at {where}: "), result.err
        assert len(result.err.splitlines()) == 1


async def _change_seen(live: aiohttp.ClientResponse, queue: str) -> bool:
    """A server-sent overview whose changes name ``queue``, within 5 s."""
    async with asyncio.timeout(5):
        while True:
            line = (await live.content.readline()).decode()
            if line.startswith("data:") and json.loads(line[5:]).get("changes", {}).get(queue):
                return True
