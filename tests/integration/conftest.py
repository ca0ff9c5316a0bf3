"""Integration tier: a management client on the session's private RabbitMQ node (tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from matchenv.topology.client import ManagementClient
from matchenv.workers.migrate import migrate
from matchenv_devkit.services.postgres import PostgresServer
from matchenv_devkit.services.rabbitmq import RabbitMQNode
from matchenv_devkit.services.rabbitmq_cluster import RabbitMQCluster
from matchenv_devkit.services.rabbitmq_releases import release
from tests.integration.harness import Environment, WorkerProcess


@pytest.fixture
def broker(rabbitmq: RabbitMQNode) -> Iterator[ManagementClient]:
    ep = rabbitmq.endpoints
    client = ManagementClient(ep.management_url, ep.username, ep.password)
    yield client
    client.close()


@pytest.fixture
def database(postgres: PostgresServer) -> str:
    url = postgres.create_database(f"db_{uuid.uuid4().hex[:10]}")
    migrate(url)
    return url


@pytest.fixture
def make_env(rabbitmq: RabbitMQNode) -> Iterator[Callable[..., Environment]]:
    """Environments on the real broker (a fanout of their own each), removed afterwards."""
    made: list[Environment] = []

    def make(**spec: Any) -> Environment:
        spec.setdefault("exchange", {"name": f"fan-{uuid.uuid4().hex[:6]}"})
        environment = Environment(rabbitmq, f"w{uuid.uuid4().hex[:8]}", **spec)
        made.append(environment)
        return environment

    yield make
    for environment in made:
        admin = environment.admin
        for queue in (environment.queue, environment.dlq):
            admin.delete_queue("/", queue)
        admin.delete_exchange("/", environment.topology.exchange)
        names, events = environment.topology.names, environment.topology.events is not None
        for exchange in (names.dead_letter_exchange, *((names.events_exchange,) if events else ())):
            admin.delete_exchange("/", exchange)
        for user in (names.broker_user, *((names.events_user,) if events else ())):
            admin.delete_user(user)


@pytest.fixture
def env(make_env: Callable[..., Environment]) -> Environment:
    return make_env()


@pytest.fixture
def workers(env: Environment, database: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(concurrency: int = 1, wait: bool = True, extra: dict[str, str] | None = None,
              environment: Environment | None = None) -> WorkerProcess:
        proc = WorkerProcess(environment or env, {"DATABASE_URL": database, **(extra or {})},
                             tmp_path / f"worker-{len(started)}.log", concurrency)
        started.append(proc)
        return proc.start(wait=wait)

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def rabbitmq_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQCluster]:
    """Three RabbitMQ 4 nodes (Debian 13's), each in a network namespace of its own, clustered; for one module."""
    cluster = RabbitMQCluster(tmp_path_factory.mktemp("rabbitmq-cluster"), release=release("4"))
    try:
        cluster.start()
    except Exception as exc:
        cluster.stop()
        pytest.fail(f"the three-node RabbitMQ cluster did not form: {exc}", pytrace=False)
    yield cluster
    cluster.stop()
