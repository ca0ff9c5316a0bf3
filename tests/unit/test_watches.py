"""The Deployment watch: WorkersReady follows the pods without a resync, a hand-edited or deleted Deployment is put back
at once, someone else's is not followed."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest

from tests.unit.world import World


def test_workers_ready_follows_the_deployment_without_a_resync(world: World) -> None:
    world.add("prod", workers={"image": "matchenv:0.1.0", "databaseSecretRef": {"name": "matchenv-db-prod"},
                               "replicas": 2})
    world.converge("prod")
    assert world.status("prod")["phase"] != "Ready"
    key = ("default", "prod-workers")
    assert world.reconciler.workers_changed(world.kube.get_deployment(*key) or {}) is None  # first sight: noted
    writes = dict(world.kube.writes)
    assert world.reconciler.workers_changed(world.kube.get_deployment(*key) or {}) is None  # nothing moved
    assert dict(world.kube.writes) == writes
    live = world.kube.deployments[key]
    live["status"] = {"observedGeneration": live["metadata"].get("generation", 1), "replicas": 2,
                      "readyReplicas": 2, "updatedReplicas": 2, "availableReplicas": 2}
    calls, writes = world.broker.calls, dict(world.kube.writes)
    assert world.reconciler.workers_changed(world.kube.get_deployment(*key) or {}) is not None
    assert world.status("prod")["phase"] == "Ready"
    assert world.status("prod")["ready"] == "2/2"
    # followed, not converged: no broker call, one status write
    assert world.broker.calls == calls
    assert world.kube.writes["status"] == writes.get("status", 0) + 1
    live["status"] = {**live["status"], "readyReplicas": 1, "availableReplicas": 1}  # a pod went unready
    world.reconciler.workers_changed(world.kube.get_deployment(*key) or {})
    assert world.status("prod")["phase"] == "Pending"
    assert world.status("prod")["ready"] == "1/2"
    assert world.reason("prod", "Ready") == "WorkersUnavailable"


def test_a_hand_edited_deployment_seen_by_the_watch_is_put_back_at_once(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    key = ("default", "prod-workers")
    world.reconciler.workers_changed(world.kube.get_deployment(*key) or {})  # first sight
    live = world.kube.edit_deployment(*key)
    live["spec"]["template"]["spec"]["containers"][0]["args"][1] = "other"
    live["metadata"]["generation"] = live["metadata"].get("generation", 1) + 1
    world.reconciler.workers_changed(world.kube.get_deployment(*key) or {})
    assert world.kube.deployments[key]["spec"]["template"]["spec"]["containers"][0]["args"][1] == "matches.prod"


def test_a_deleted_worker_deployment_is_put_back_at_once(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    key = ("default", "prod-workers")
    gone = world.kube.deployments.pop(key)
    world.reconciler.workers_changed(gone, deleted=True)
    assert key in world.kube.deployments


def test_a_deployment_of_someone_else_is_not_followed(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    foreign = {"metadata": {"namespace": "default", "name": "x", "uid": "u1",
                            "ownerReferences": [{"kind": "ReplicaSet", "name": "prod", "uid": "z"}]}}
    writes = dict(world.kube.writes)
    assert world.reconciler.workers_changed(foreign, deleted=True) is None
    assert dict(world.kube.writes) == writes


def test_a_deployment_event_during_a_converge_follows_the_status_it_wrote(world: World) -> None:
    """The Deployment controller answers a new environment's Deployment while its converge still runs: the event
    waits for the environment's lock and follows the status that converge wrote, rather than converging it again."""
    world.add("prod", workers={"image": "matchenv:0.1.0", "databaseSecretRef": {"name": "matchenv-db-prod"},
                               "replicas": 2})
    key = ("default", "prod-workers")
    apply, answers, followed = world.kube.apply_deployment, [], []

    def apply_and_answer(body: dict[str, Any]) -> dict[str, Any]:
        applied = apply(body)
        live = world.kube.deployments[key]
        world.reconciler.workers_changed(copy.deepcopy(live))  # the watch's first sight: noted
        live["status"] = {"observedGeneration": live["metadata"].get("generation", 1), "replicas": 2,
                          "readyReplicas": 0, "updatedReplicas": 2, "unavailableReplicas": 2}
        answer = copy.deepcopy(live)
        event = threading.Thread(target=lambda: followed.append(world.reconciler.workers_changed(answer)))
        event.start()
        event.join(0.3)  # the event is read while this converge has yet to write its status
        answers.append(event)
        return applied

    world.kube.apply_deployment = apply_and_answer  # type: ignore[method-assign]
    world.converge("prod")
    world.kube.apply_deployment = apply  # type: ignore[method-assign]
    calls, writes = world.broker.calls, dict(world.kube.writes)
    answers[0].join(5)
    assert world.broker.calls == calls  # followed: no second converge, no broker call
    assert dict(world.kube.writes) == writes  # the status the converge wrote holds already
    assert followed[0] is not None  # it followed the Deployment
    assert world.status("prod")["ready"] == "0/2"


@pytest.mark.parametrize("deployments", ["watched", "listed"])
def test_a_pass_that_read_the_deployment_before_its_pods_were_ready_does_not_take_ready_back(
        world: World, deployments: str) -> None:
    """The pods become ready after a resync pass took its Deployments (from the watch, or its own list) and before
    it listed the environments: the Deployment follow writes Ready at once, and the pass's converge of that
    environment keeps it (it read that status, and must not pair it with the Deployment as it was before)."""
    world.add("prod", workers={"image": "matchenv:0.1.0", "databaseSecretRef": {"name": "matchenv-db-prod"},
                               "replicas": 2})
    world.converge("prod")
    key = ("default", "prod-workers")
    world.reconciler.resync_all()  # the pass's view of the Deployments is whole from now on
    live = world.kube.deployments[key]
    live["status"] = {"observedGeneration": live["metadata"].get("generation", 1), "replicas": 2,
                      "readyReplicas": 0, "updatedReplicas": 2, "unavailableReplicas": 2}
    world.reconciler.workers_changed(copy.deepcopy(live))
    assert world.reason("prod", "Ready") == "WorkersUnavailable"
    list_environments, list_deployments = world.kube.list_environments, world.kube.list_deployments
    deployments_read = threading.Event()

    def listing_deployments(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        listed = list_deployments(*args, **kwargs)  # the pods not ready yet
        deployments_read.set()
        return listed

    def listing_environments(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        assert deployments == "watched" or deployments_read.wait(5)
        live["status"] = {**live["status"], "readyReplicas": 2, "availableReplicas": 2, "unavailableReplicas": 0}
        world.reconciler.workers_changed(copy.deepcopy(live))  # the watch reports them ready: followed at once
        assert world.condition("prod", "Ready")["status"] == "True"
        return list_environments(*args, **kwargs)

    if deployments == "listed":
        world.reconciler.deployments.relist_every = 1  # this pass lists them
    world.kube.list_deployments = listing_deployments  # type: ignore[method-assign]
    world.kube.list_environments = listing_environments  # type: ignore[method-assign]
    report = world.reconciler.resync_all()
    world.kube.list_environments, world.kube.list_deployments = list_environments, list_deployments  # type: ignore[method-assign]
    assert report.failures == 0
    assert world.condition("prod", "Ready")["status"] == "True"
    assert world.status("prod")["ready"] == "2/2"
