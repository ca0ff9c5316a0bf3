"""The status step: the status built from what the other steps saw is written only when it changed, each new refusal
is one Warning event, a pause says how much the queue keeps, and a spec the model refuses names its field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from matchenv.api import MatchEnvironmentSpec
from matchenv.operator.status import WorkersObservation
from matchenv.operator.steps.status import invalid_spec_status, write_status
from matchenv.operator.steps.topology import TopologyOutcome
from matchenv.topology.planner import QueueObservation, Refusal
from tests.cases import environment
from tests.unit.world import World

BOUND = TopologyOutcome(observation=QueueObservation(exists=True, messages=3, consumers=1, bound=True))
RUNNING = WorkersObservation(exists=True, replicas=1, ready_replicas=1, updated_replicas=1)


def test_the_status_is_written_once_and_not_again_while_nothing_changed(world: World) -> None:
    world.add("prod")
    status = write_status(world.services, world.context("prod"), BOUND, RUNNING, None)
    assert status["phase"] == "Ready"
    assert world.status("prod")["messages"] == 3
    assert world.kube.writes["status"] == 1
    write_status(world.services, world.context("prod"), BOUND, RUNNING, None)  # reads the status it wrote
    assert world.kube.writes["status"] == 1
    more = TopologyOutcome(observation=QueueObservation(exists=True, messages=9, consumers=1, bound=True))
    write_status(world.services, world.context("prod"), more, RUNNING, None)
    assert world.kube.writes["status"] == 2
    assert world.status("prod")["messages"] == 9


def test_a_refusal_is_one_warning_event_however_often_it_is_seen(world: World) -> None:
    world.add("prod")
    refused = TopologyOutcome(refusal=Refusal("QueueClaimed", "queue matches.prod belongs to default/other"))
    for _ in range(3):
        write_status(world.services, world.context("prod"), refused, WorkersObservation(exists=False), None)
    assert [e for e in world.kube.events if e[1] == "QueueClaimed"] == [
        ("prod", "QueueClaimed", "queue matches.prod belongs to default/other")]
    assert world.status("prod")["phase"] == "Degraded"
    assert world.reason("prod") == "QueueClaimed"


@pytest.mark.parametrize(("queue", "says"), [
    ({}, "(unbounded: set queue.maxLength to bound it)"),
    ({"maxLength": 1000, "overflow": "reject-publish"}, "(at most 1000, then reject-publish)"),
])
def test_a_pause_says_what_the_queue_keeps_meanwhile(world: World, queue: dict[str, object], says: str) -> None:
    world.add("prod", queue=queue)
    write_status(world.services, world.context("prod"), BOUND, RUNNING, None)
    world.kube.environments[("default", "prod")]["spec"]["paused"] = True
    paused = WorkersObservation(exists=True, replicas=0)
    write_status(world.services, world.context("prod"), BOUND, paused, None)
    assert world.status("prod")["phase"] == "Paused"
    assert ("prod", "Paused", f"workers stopped; messages wait in queue matches.prod {says}") in world.kube.events
    world.kube.environments[("default", "prod")]["spec"]["paused"] = False
    write_status(world.services, world.context("prod"), BOUND, RUNNING, None)
    assert ("prod", "Resumed", "workers started again on queue matches.prod") in world.kube.events


def test_a_spec_the_model_refuses_is_degraded_naming_the_field() -> None:
    with pytest.raises(ValidationError) as refused:
        MatchEnvironmentSpec.model_validate(environment("prod", workers={"image": "w:1", "replicas": "many",
                                                                          "databaseSecretRef": {"name": "db"}})["spec"])
    status = invalid_spec_status(refused.value)
    assert status["phase"] == "Degraded"
    assert status["lastError"].startswith("invalid spec: ('workers', 'replicas'):")
