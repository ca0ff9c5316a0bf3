"""``matchenv dlq`` acts only on an environment's own dead letters: the broker's ownership markers decide, as they
do for the operator (real RabbitMQ)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from matchenv.api import MatchEnvironmentSpec
from matchenv.connection import BrokerConnection
from matchenv.dlq.target import TargetError, check_owner
from matchenv.topology.desired import desired_topology
from matchenv_devkit.services.rabbitmq import RabbitMQNode
from tests.cases import CLUSTER, environment
from tests.integration.harness import Environment


def test_an_environment_naming_another_ones_queue_may_not_touch_its_dead_letters(
        make_env: Callable[..., Environment], rabbitmq: RabbitMQNode) -> None:
    owner = make_env()
    ep = rabbitmq.endpoints
    admin = BrokerConnection(ep.amqp_url, ep.management_url, ep.username, ep.password)
    check_owner({}, owner.topology, admin)  # its own: fine
    body = environment("thief", queue={"name": owner.queue}, exchange={"name": owner.topology.exchange})
    thief = desired_topology(CLUSTER, "itest", "thief", MatchEnvironmentSpec.model_validate(body["spec"]))
    with pytest.raises(TargetError) as refused:
        check_owner({}, thief, admin)
    assert refused.value.usage  # exit code 2
    names = owner.topology.names
    assert f"belongs to MatchEnvironment {names.namespace}/{names.name} of cluster {CLUSTER}" in str(refused.value)
    assert owner.depth(owner.dlq) == 0
    # without the management API, only the operator's verdict at the current generation lets it through
    away = BrokerConnection(ep.amqp_url, "http://127.0.0.1:1", ep.username, ep.password)
    ready = {"metadata": {"generation": 3}, "status": {"conditions": [
        {"type": "TopologyReady", "status": "True", "reason": "Converged", "observedGeneration": 3}]}}
    check_owner(ready, owner.topology, away)
    claimed = {"metadata": {"generation": 3}, "status": {"conditions": [
        {"type": "TopologyReady", "status": "False", "reason": "QueueClaimed", "observedGeneration": 3}]}}
    with pytest.raises(TargetError, match="QueueClaimed"):
        check_owner(claimed, thief, away)
