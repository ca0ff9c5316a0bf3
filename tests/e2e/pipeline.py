"""The whole system for the pipeline, chaos and tenancy tests: operator, node, RabbitMQ and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from matchenv_devkit.cluster.cluster import LocalCluster
from matchenv_devkit.cluster.kubectl import Kubectl
from matchenv_devkit.cluster.nodeconfig import NODE_IP
from matchenv_devkit.cluster.realnode import RealNode
from matchenv_devkit.cluster.stack import LocalStack
from matchenv_devkit.services.postgres import PostgresServer
from matchenv_devkit.services.rabbitmq import RabbitMQNode

Pipeline = LocalStack


def pipeline_fixture(kubectl: Kubectl, rabbitmq: RabbitMQNode, postgres: PostgresServer, tmp: Path
                     ) -> Iterator[LocalStack]:
    """On the session's control plane, broker and database, with the process node (worker pods as processes)."""
    stack = LocalStack(kubectl, rabbitmq, postgres, tmp).start()
    try:
        yield stack
    finally:
        stack.stop()


def real_node_pipeline_fixture(tmp: Path) -> Iterator[LocalStack]:
    """Its own control plane, real node (worker pods are containers of the project's image), broker and database:
    the broker and database listen on the node's bridge, which exists only while the node runs."""
    try:
        stack, shutdown = LocalStack.create(tmp, log=lambda m: print(f"[real node] {m}"), node="real")
    except Exception as exc:  # the suite fails, never skips, without its node
        pytest.fail(f"the real node did not start: {exc}", pytrace=False)
    try:
        yield stack.start()
    finally:
        shutdown()


def real_node_fixture(tmp: Path) -> Iterator[tuple[Kubectl, RealNode]]:
    """Its own control plane and real node, nothing installed: for what users install themselves."""
    cluster = LocalCluster(tmp, node_ip=NODE_IP, log=print)
    try:
        cluster.start()
        real = RealNode(cluster, log=print).start()
    except Exception as exc:  # the suite fails, never skips, without its node
        cluster.stop()
        pytest.fail(f"the real node did not start: {exc}", pytrace=False)
    try:
        yield Kubectl(cluster), real
    finally:
        real.stop()
        cluster.stop()
