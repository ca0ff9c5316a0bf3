"""What a deletion does with the messages left: Drain waits (saying why) for the workers to empty the queue and then
deletes it only if the broker finds it empty; past drain.timeout it follows drain.onTimeout; deletionGuard bounds
what any deletion may drop unless the annotation allows it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from matchenv.operator.drain import DROP_ANNOTATION
from matchenv.operator.errors import TeardownIncomplete
from tests.unit.world import World

QUEUE = ("/", "matches.prev")


def backlog(world: World, messages: int, consumers: int = 2) -> None:
    world.broker.queues[QUEUE] = dataclasses.replace(world.broker.queues[QUEUE], messages=messages,
                                                     messages_ready=messages, consumers=consumers)


def deleted(world: World, ago: dt.timedelta = dt.timedelta(0)) -> dict[str, Any]:
    """The environment as the delete handler gets it, its deletion asked for ``ago``."""
    stamp = (dt.datetime.now(dt.UTC) - ago).strftime("%Y-%m-%dT%H:%M:%SZ")
    world.kube.environments[("default", "prev")]["metadata"]["deletionTimestamp"] = stamp
    return world.kube.environment("default", "prev")


def bound(world: World) -> bool:
    return any(b.destination == QUEUE[1] and b.source == "matches-fanout" for b in world.broker.bindings)


def test_drain_unbinds_keeps_the_workers_until_the_queue_is_empty_then_deletes_it(world: World) -> None:
    world.add("prev", deletionPolicy="Drain")
    world.converge("prev")
    backlog(world, 2000)
    for _ in range(2):  # kopf retries every few seconds
        with pytest.raises(TeardownIncomplete, match="draining: 2000 messages left") as waiting:
            world.reconciler.teardown(deleted(world))
        assert waiting.value.delay == 5.0
    assert not bound(world)  # nothing new arrives
    deployment = world.kube.deployments[("default", "prev-workers")]
    assert not deployment["metadata"].get("deletionTimestamp")  # the workers go on
    drained = world.condition("prev", "Drained")
    assert (drained["status"], drained["reason"]) == ("False", "Draining")
    assert "2 consumer(s) reading it" in drained["message"]
    assert world.status("prev")["phase"] == "Deleting"
    backlog(world, 0, consumers=2)
    world.delete("prev")
    assert QUEUE not in world.broker.queues
    assert "matchenv-env.c1.default.prev" not in world.broker.users
    [torn] = [m for _, r, m in world.kube.events if r == "TornDown"]
    assert "deleted queue matches.prev (0 messages)" in torn


def test_a_queue_nobody_reads_is_said_to_be_so_and_after_the_timeout_kept(world: World) -> None:
    world.add("prev", deletionPolicy="Drain", drain={"timeout": "10m"})
    world.converge("prev")
    backlog(world, 40, consumers=0)
    with pytest.raises(TeardownIncomplete):
        world.reconciler.teardown(deleted(world, ago=dt.timedelta(minutes=2)))
    drained = world.condition("prev", "Drained")
    assert drained["reason"] == "NoConsumers"
    assert "until 20" in drained["message"]
    assert "no worker reads it" in world.status("prev")["lastError"]
    for _ in range(3):  # kopf retries with the object as it is then
        try:
            world.reconciler.teardown(deleted(world, ago=dt.timedelta(minutes=11)))
            break
        except TeardownIncomplete:
            world.kube.finish_deletions()
    assert QUEUE in world.broker.queues  # onTimeout Retain (the default): kept with its 40 messages
    assert [m for _, r, m in world.kube.events if r == "DrainTimedOut"] == [
        "40 messages still in queue matches.prev after drain.timeout 10m: the queue is handled as drain.onTimeout "
        "says (Retain)"]
    [torn] = [m for _, r, m in world.kube.events if r == "TornDown"]
    assert "kept queue matches.prev and its messages (deletionPolicy Drain, drain.onTimeout Retain)" in torn


def test_the_guard_keeps_a_deletion_from_dropping_more_than_allowed_until_told(world: World) -> None:
    world.add("prev", deletionPolicy="Delete", deletionGuard={"maxMessages": 100})
    world.converge("prev")
    backlog(world, 101, consumers=0)
    with pytest.raises(TeardownIncomplete, match="waiting for the pods"):  # the workers stop first
        world.reconciler.teardown(deleted(world))
    world.kube.finish_deletions()
    for _ in range(2):
        with pytest.raises(TeardownIncomplete, match=r"would drop 101 messages, more than deletionGuard\.maxMessages"):
            world.reconciler.teardown(deleted(world))
    assert QUEUE in world.broker.queues
    assert world.condition("prev", "Drained")["reason"] == "TooManyToDrop"
    assert f"kubectl annotate menv prev {DROP_ANNOTATION}=true" in world.status("prev")["lastError"]
    world.kube.patch_environment("default", "prev", {"metadata": {"annotations": {DROP_ANNOTATION: "true"}}})
    world.delete("prev")
    assert QUEUE not in world.broker.queues


def test_within_the_guard_a_delete_goes_at_once(world: World) -> None:
    world.add("prev", deletionPolicy="Delete", deletionGuard={"maxMessages": 100})
    world.converge("prev")
    backlog(world, 100, consumers=0)
    world.delete("prev")
    assert QUEUE not in world.broker.queues


def test_a_drained_queue_is_deleted_only_if_the_broker_finds_it_empty(world: World) -> None:
    world.add("prev", deletionPolicy="Drain")
    world.converge("prev")
    backlog(world, 0)
    real_delete = world.broker.delete_queue

    def late_arrival(vhost: str, name: str, if_empty: bool = False) -> None:
        if name == QUEUE[1]:  # a message the statistics had not counted yet
            backlog(world, 1, consumers=0)
        real_delete(vhost, name, if_empty=if_empty)

    world.broker.delete_queue = late_arrival  # type: ignore[method-assign]
    with pytest.raises(TeardownIncomplete):
        world.reconciler.teardown(deleted(world))
    world.kube.finish_deletions()
    with pytest.raises(TeardownIncomplete):
        world.reconciler.teardown(deleted(world))
    assert QUEUE in world.broker.queues
    assert world.broker.queues[QUEUE].messages == 1  # nothing dropped


def test_a_paused_environments_workers_are_started_to_drain_it(world: World) -> None:
    world.add("prev", deletionPolicy="Drain", paused=True,
              workers={"image": "matchenv:0.1.0", "databaseSecretRef": {"name": "matchenv-db-prev"}, "replicas": 2})
    world.converge("prev")
    assert world.kube.deployments[("default", "prev-workers")]["spec"]["replicas"] == 0
    backlog(world, 2000, consumers=0)
    for _ in range(2):
        with pytest.raises(TeardownIncomplete, match="no worker reads it"):
            world.reconciler.teardown(deleted(world))
    assert world.kube.deployments[("default", "prev-workers")]["spec"]["replicas"] == 2
    assert world.kube.writes["deployment-scale"] == 1
    [started] = [m for _, r, m in world.kube.events if r == "Draining"]
    assert started.startswith("started 2 worker(s) (Deployment prev-workers) to empty queue matches.prev")
