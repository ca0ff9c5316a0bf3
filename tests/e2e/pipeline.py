"""The whole system for the pipeline and chaos tests, on the session's control plane, RabbitMQ and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from matchenv_devkit.cluster.kubectl import Kubectl
from matchenv_devkit.cluster.stack import LocalStack
from matchenv_devkit.services.postgres import PostgresServer
from matchenv_devkit.services.rabbitmq import RabbitMQNode

Pipeline = LocalStack


def pipeline_fixture(kubectl: Kubectl, rabbitmq: RabbitMQNode, postgres: PostgresServer, tmp: Path
                     ) -> Iterator[LocalStack]:
    stack = LocalStack(kubectl, rabbitmq, postgres, tmp).start()
    try:
        yield stack
    finally:
        stack.stop()
