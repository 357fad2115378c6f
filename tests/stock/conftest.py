"""Stock engine fixtures: every test runs on the embedded engine, on Redis (the database of
``INCENTIVE_TEST_REDIS_URL``: runs sharing a machine keep apart by their own database numbers;
pools are named per test) and on a real 3-master Redis Cluster started for the session."""

from __future__ import annotations

import random
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from incentive.stock.engine import StockEngine, stock_engine_from_url


@dataclass
class RedisServer:
    """A ``redis-server`` of our own on a loopback port, without persistence."""

    port: int
    directory: Path
    cluster: bool = False
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        if self.cluster:
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(self.directory / "nodes.conf"),
                "--cluster-node-timeout",
                "5000",
            ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.2) as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.05)

    def wait_stopped(self) -> None:
        if self.process is not None:
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
        self.wait_stopped()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    rng = random.SystemRandom()
    while True:
        port = rng.randrange(20000, 30000)
        if port not in taken and _bindable(port) and _bindable(port + 10000):
            taken.add(port)
            return port


def start_cluster(directory: Path, masters: int = 3) -> list[RedisServer]:
    taken: set[int] = set()
    nodes = [
        RedisServer(cluster_port(taken), directory / f"node{i}", cluster=True)
        for i in range(masters)
    ]
    try:
        for node in nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create"]
            + [f"127.0.0.1:{node.port}" for node in nodes]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        for node in nodes:
            with redis.Redis(port=node.port) as client:
                while _cluster_state(client) != "ok":
                    if time.monotonic() > deadline:
                        raise RuntimeError("Redis Cluster did not reach cluster_state:ok")
                    time.sleep(0.1)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def _cluster_state(client: redis.Redis) -> str:
    info = client.cluster("INFO")
    if isinstance(info, dict):  # redis-py parses the reply into a dict
        return str(info.get("cluster_state"))
    text = info.decode() if isinstance(info, bytes) else str(info)
    return text.split("cluster_state:", 1)[-1].split()[0]


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    nodes = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield nodes
    for node in nodes:
        node.stop()


@pytest.fixture
def stock_redis_url(redis_url: str | None) -> str:
    if not redis_url:
        pytest.skip("set INCENTIVE_TEST_REDIS_URL")
    return redis_url


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.redis),
    ]
)
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[StockEngine]:
    kind = request.param
    if kind == "embedded":
        built = stock_engine_from_url(None)
    elif kind == "redis":
        # 5,000 callers share 16 connections: on a loaded CI machine the last ones wait past
        # the 5 s default (a 503 by design); the tests are about counts, not that wait.
        built = stock_engine_from_url(request.getfixturevalue("stock_redis_url"), pool_timeout=30)
    else:
        nodes: list[RedisServer] = request.getfixturevalue("redis_cluster")
        built = stock_engine_from_url(f"redis://127.0.0.1:{nodes[0].port}?cluster=1")
    yield built
    await built.aclose()


@pytest.fixture
async def pool(engine: StockEngine) -> AsyncIterator[str]:
    """A fresh pool name, dropped (with its quotas) after the test."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    yield name
    await engine.drop(name)
