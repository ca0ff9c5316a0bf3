"""The backlog probe with the operator as users run it: an autoscaled environment's backlog scales its workers up
between two resyncs. The resync here runs every 120 s, so nothing but the probe's passive declares can have seen
the backlog in time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from matchenv_devkit.cluster.kubectl import Kubectl
from matchenv_devkit.services.postgres import PostgresServer
from matchenv_devkit.services.process import wait_for
from matchenv_devkit.services.rabbitmq import RabbitMQNode
from tests.e2e.harness import scale_steps
from tests.e2e.pipeline import Pipeline

RESYNC = 120.0


@pytest.fixture(scope="module")
def stack(crd_installed: Kubectl, rabbitmq: RabbitMQNode, postgres: PostgresServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    stack = Pipeline(crd_installed, rabbitmq, postgres, tmp_path_factory.mktemp("backlog"), resync_seconds=RESYNC)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def _replicas(stack: Pipeline, name: str) -> int:
    return int(stack.kubectl.get_json("menv", name)["spec"]["workers"]["replicas"])


def test_a_backlog_wakes_an_environment_at_zero_workers_between_two_resyncs_and_every_match_is_stored(
        stack: Pipeline) -> None:
    stack.apply("burst", autoscaling={"enabled": True, "minReplicas": 0, "maxReplicas": 5, "messagesPerReplica": 100,
                                      "scaleDownStabilizationSeconds": 600}, workers={"replicas": 0})
    stack.wait_ready("burst")
    assert _replicas(stack, "burst") == 0
    assert stack.operator is not None
    woken = stack.operator.metric("matchenv_backlog_wakes_total") or 0.0
    result = stack.scrape("--synthetic", "350", "--queue", "matches.burst")
    assert result.returncode == 0, result.stderr
    # 350 ready messages ask for 4 workers of 100; the next resync is up to two minutes away
    wait_for(lambda: _replicas(stack, "burst") == 4, timeout=RESYNC / 3, what="4 workers for 350 messages")
    assert (stack.operator.metric("matchenv_backlog_wakes_total") or 0.0) > woken
    scaled = stack.kubectl.wait_event("burst", "Scaled", containing=" -> 4 workers for a backlog of 350 messages")
    steps = scale_steps(scaled)  # in steps if it looked while the scrape still published
    assert (steps[0], steps[-1]) == (0, 4), steps
    stack.wait_rows({"burst": 350})
    assert stack.duplicates("burst") == 0
