"""Real services for the integration tier: a private RabbitMQ node on loopback, started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from matchenv.devservices.rabbitmq import RabbitMQNode
from matchenv.topology.client import ManagementClient


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQNode]:
    node = RabbitMQNode(tmp_path_factory.mktemp("rabbitmq"), name="itest")
    try:
        node.start()
    except Exception as exc:
        pytest.fail(f"RabbitMQ did not start: {exc}", pytrace=False)
    yield node
    node.stop()


@pytest.fixture
def broker(rabbitmq: RabbitMQNode) -> Iterator[ManagementClient]:
    ep = rabbitmq.endpoints
    client = ManagementClient(ep.management_url, ep.username, ep.password)
    yield client
    client.close()
