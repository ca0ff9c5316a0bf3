"""Hands off: under ``matchenv.io/reconcile: "false"`` the operator changes nothing for the environment — no repair,
no scaling, no deletion — says so once, and repairs everything when the annotation goes."""

from __future__ import annotations

from typing import Any

import pytest

from matchenv.operator.errors import TeardownIncomplete
from matchenv.operator.handsoff import RECONCILE_ANNOTATION, hands_off, held, switched
from tests.unit.test_environment_metrics import _series, _value
from tests.unit.world import World

OFF = {"metadata": {"annotations": {RECONCILE_ANNOTATION: "false"}}}
ON = {"metadata": {"annotations": {RECONCILE_ANNOTATION: None}}}


def bound(world: World, queue: str = "matches.prod") -> bool:
    return any(b.destination == queue and b.source == "matches-fanout" for b in world.broker.bindings)


def events(world: World, reason: str) -> list[str]:
    return [m for _, r, m in world.kube.events if r == reason]


def test_hands_off_leaves_what_an_engineer_changed_by_hand_and_says_so_once(world: World) -> None:
    world.add("prod", workers={"image": "matchenv:0.1.0", "databaseSecretRef": {"name": "matchenv-db-prod"},
                               "replicas": 2})
    world.converge("prod")
    world.kube.patch_environment("default", "prod", OFF)
    # the engineer's changes during the incident: a binding removed, the workers scaled down by hand
    world.broker.unbind_queue("/", "matches-fanout", "matches.prod", "~")
    world.kube.edit_deployment("default", "prod-workers")["spec"]["replicas"] = 0
    writes = world.kube.writes["status"]
    for _ in range(3):  # however often a watch, a broker event or the resync pass asks
        world.converge("prod")
    world.reconciler.resync_all()
    assert not bound(world)
    assert world.kube.deployments[("default", "prod-workers")]["spec"]["replicas"] == 0
    paused = world.condition("prod", "ReconciliationPaused")
    assert (paused["status"], paused["reason"]) == ("True", "HandsOff")
    assert RECONCILE_ANNOTATION in paused["message"]
    assert world.condition("prod", "TopologyReady")["status"] == "True"  # what was last seen stays visible
    assert world.kube.writes["status"] == writes + 1  # written once, then unchanged
    assert len(events(world, "ReconciliationPaused")) == 1
    series = _series(world.reconciler.environments)
    assert _value(series, "matchenv_environment_condition", namespace="default", name="prod",
                  condition="ReconciliationPaused", status="true") == 1

    world.kube.patch_environment("default", "prod", ON)
    world.converge("prod")
    assert bound(world)
    assert world.kube.deployments[("default", "prod-workers")]["spec"]["replicas"] == 2
    assert "ReconciliationPaused" not in {c["type"] for c in world.status("prod")["conditions"]}
    assert len(events(world, "ReconciliationResumed")) == 1


def test_a_deletion_under_hands_off_removes_nothing_and_waits_until_the_annotation_goes(world: World) -> None:
    world.add("prod", deletionPolicy="Delete")
    world.converge("prod")
    world.kube.patch_environment("default", "prod", OFF)
    world.kube.patch_environment("default", "prod", {"metadata": {"deletionTimestamp": "2026-12-03T16:00:00Z"}})
    for _ in range(2):  # kopf retries
        with pytest.raises(TeardownIncomplete, match="deletion waits"):
            world.reconciler.teardown(world.kube.environment("default", "prod"))
    assert bound(world)
    assert ("/", "matches.prod") in world.broker.queues
    assert "matchenv-env.c1.default.prod" in world.broker.users
    assert ("default", "prod-workers") in world.kube.deployments
    assert "remove the annotation" in world.condition("prod", "ReconciliationPaused")["message"]
    world.kube.patch_environment("default", "prod", ON)
    world.delete("prod")
    assert ("/", "matches.prod") not in world.broker.queues
    assert "matchenv-env.c1.default.prod" not in world.broker.users


@pytest.mark.parametrize(("annotations", "conditions", "deleting", "want"), [
    ({RECONCILE_ANNOTATION: "false"}, [], False, True),  # just set: hold now
    ({RECONCILE_ANNOTATION: "False "}, [{"type": "ReconciliationPaused", "status": "True"}], False, False),
    ({}, [{"type": "ReconciliationPaused", "status": "True"}], False, True),  # just removed: repair now
    ({RECONCILE_ANNOTATION: "true"}, [], False, False),  # anything but "false" leaves the operator on
    ({}, [{"type": "ReconciliationPaused", "status": "True"}], True, False),  # a deletion is kopf's to retry
])
def test_the_watch_converges_only_when_the_annotation_and_the_status_disagree(
        annotations: dict[str, str], conditions: list[dict[str, Any]], deleting: bool, want: bool) -> None:
    env: dict[str, Any] = {"metadata": {"annotations": annotations}, "status": {"conditions": conditions}}
    if deleting:
        env["metadata"]["deletionTimestamp"] = "2026-12-03T16:00:00Z"
    assert switched(env) is want
    assert hands_off(env) is (annotations.get(RECONCILE_ANNOTATION, "").strip().lower() == "false")
    assert held(env["status"]) is bool(conditions)


def test_a_stale_read_never_says_it_twice(world: World) -> None:
    """A resync pass lists every environment before it converges them: its copy may predate the status a converge
    wrote a moment ago. Each change is said in one Event all the same."""
    world.add("prod")
    world.converge("prod")
    world.kube.patch_environment("default", "prod", OFF)
    stale = world.kube.environment("default", "prod")  # annotated, its status not yet saying so
    world.reconciler.converge(stale)
    world.reconciler.converge(stale)
    assert len(events(world, "ReconciliationPaused")) == 1
    world.kube.patch_environment("default", "prod", ON)
    stale = world.kube.environment("default", "prod")  # no annotation, its status still saying hands off
    world.reconciler.converge(stale)
    world.reconciler.converge(stale)
    assert len(events(world, "ReconciliationResumed")) == 1
