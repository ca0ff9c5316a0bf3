"""Integration tier: a management client on the session's private RabbitMQ node (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from matchenv.devservices.rabbitmq import RabbitMQNode
from matchenv.topology.client import ManagementClient


@pytest.fixture
def broker(rabbitmq: RabbitMQNode) -> Iterator[ManagementClient]:
    ep = rabbitmq.endpoints
    client = ManagementClient(ep.management_url, ep.username, ep.password)
    yield client
    client.close()
