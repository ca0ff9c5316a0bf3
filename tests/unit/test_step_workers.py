"""The workers step: the Deployment built, applied only when it drifted, never taken from someone else, refused writes
reported, why a pod is not ready, paused and fresh environments."""

from __future__ import annotations

from typing import Any

from tests.unit.world import World


def test_a_hand_made_deployment_is_not_taken_over(world: World) -> None:
    world.kube.deployments[("default", "prod-workers")] = {"metadata": {"name": "prod-workers", "uid": "x"},
                                                           "spec": {"replicas": 5}}
    world.add("prod")
    world.converge("prod")
    assert world.reason("prod", "WorkersReady") == "DeploymentNotOwned"
    assert world.kube.deployments[("default", "prod-workers")]["spec"] == {"replicas": 5}


def test_a_deployment_the_api_server_refuses_is_reported(world: World) -> None:
    world.add("prod")
    world.kube.refuse_deployments = 'Deployment.apps "prod-workers" is invalid: spec.template...: Invalid value'
    world.converge("prod")
    assert world.status("prod")["phase"] == "Degraded"
    assert world.reason("prod", "WorkersReady") == "DeploymentRefused"
    assert "is invalid" in world.status("prod")["lastError"]


def _pod(name: str, ready: bool, waiting: dict[str, str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "worker", "ready": ready,
                                 "state": {"waiting": waiting} if waiting else {"running": {}}}
    return {"metadata": {"name": name, "namespace": "default"},
            "status": {"conditions": [{"type": "Ready", "status": str(ready)}], "containerStatuses": [container]}}


def _unhealthy(pod: str, message: str, at: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "default", "name": f"{pod}.1"}, "reason": "Unhealthy", "message": message,
            "involvedObject": {"kind": "Pod", "name": pod}, "lastTimestamp": at}


def test_workers_ready_says_why_a_worker_is_not_ready_in_its_own_words(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    key = ("default", "prod-workers")
    live = world.kube.deployments[key]
    live["status"] = {"observedGeneration": live["metadata"].get("generation", 1), "replicas": 2,
                      "readyReplicas": 1, "updatedReplicas": 2, "availableReplicas": 1}
    selector = "app.kubernetes.io/component=worker,matchenv.io/environment=prod"
    world.kube.worker_pods[("default", selector)] = [_pod("prod-workers-a", True), _pod("prod-workers-b", False)]
    world.kube.pod_events = [
        _unhealthy("prod-workers-b", "Readiness probe failed: not consuming yet", "2026-12-02T10:00:00Z"),
        _unhealthy("prod-workers-b", "Readiness probe failed: holding messages: the database refuses every write "
                   "(permission denied): InsufficientPrivilege: permission denied for table matches",
                   "2026-12-02T10:01:00Z"),
        _unhealthy("prod-workers-a", "Liveness probe failed: HTTP probe failed with statuscode: 503",
                   "2026-12-02T10:02:00Z")]
    world.converge("prod")
    conditions = {c["type"]: c for c in world.status("prod")["conditions"]}
    assert conditions["WorkersReady"]["message"] == (
        "1/2 workers ready; pod prod-workers-b: holding messages: the database refuses every write (permission "
        "denied): InsufficientPrivilege: permission denied for table matches")
    # a container that cannot start says so first, without any event read
    world.kube.worker_pods[("default", selector)] = [
        _pod("prod-workers-b", False, {"reason": "CreateContainerConfigError",
                                       "message": 'secret "matchenv-db-prod" not found'})]
    world.converge("prod")
    conditions = {c["type"]: c for c in world.status("prod")["conditions"]}
    assert conditions["WorkersReady"]["message"].endswith(
        'pod prod-workers-b: CreateContainerConfigError: secret "matchenv-db-prod" not found')


def test_kubectl_scale_on_the_deployment_is_put_back_and_says_where_the_size_comes_from(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    world.kube.edit_deployment("default", "prod-workers")["spec"]["replicas"] = 7  # kubectl scale
    world.converge("prod")
    assert world.kube.deployments[("default", "prod-workers")]["spec"]["replicas"] == 2
    rescaled = [message for _, reason, message in world.kube.events if reason == "DeploymentRescaled"]
    assert rescaled == ["set Deployment prod-workers back to 2 replicas: its size is the MatchEnvironment's "
                        "spec.workers.replicas, which kubectl scale menv/prod changes"]


def test_a_paused_environment_runs_no_workers_and_keeps_its_queue_bound(world: World) -> None:
    from dataclasses import replace

    world.add("prod", paused=True, queue={"maxLength": 5000, "overflow": "drop-head"},
              autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 5})
    world.converge("prod")
    assert world.kube.deployments[("default", "prod-workers")]["spec"]["replicas"] == 0
    assert any(b.destination == "matches.prod" for b in world.broker.bindings)
    assert world.broker.policies[("/", "matchenv.matches.prod")].definition["overflow"] == "drop-head"
    status = world.status("prod")
    assert status["phase"] == "Paused"
    assert world.reason("prod", "Ready") == "Paused"
    # a backlog does not wake it: the pause decides, not the autoscaler
    key = ("/", "matches.prod")
    world.broker.queues[key] = replace(world.broker.queues[key], messages=1000, messages_ready=1000)
    world.reconciler.resync_all()
    assert world.kube.deployments[("default", "prod-workers")]["spec"]["replicas"] == 0
    assert [r for _, r, _ in world.kube.events if r in ("Paused", "Resumed", "Scaled")] == ["Paused"]
    world.kube.environments[("default", "prod")]["spec"]["paused"] = False
    world.converge("prod")
    assert world.kube.deployments[("default", "prod-workers")]["spec"]["replicas"] == 5  # the backlog's
    assert world.status("prod")["phase"] != "Paused"
    assert [r for _, r, _ in world.kube.events if r in ("Paused", "Resumed")] == ["Paused", "Resumed"]


def test_a_fresh_environments_deployment_waits_for_its_credentials_so_its_first_revision_is_its_only_one(
        world: World) -> None:
    """The broker not up yet (an install applied all at once): no Deployment until the worker's Secret holds its
    password, so its pod template never changes when it arrives."""
    world.add("prod")
    world.broker.down = True
    world.converge("prod")
    assert ("default", "prod-workers") not in world.kube.deployments
    assert world.reason("prod", "WorkersReady") == "DeploymentMissing"
    world.broker.down = False
    world.converge("prod")
    first = world.kube.deployments[("default", "prod-workers")]["spec"]["template"]
    world.converge("prod")
    assert world.kube.deployments[("default", "prod-workers")]["spec"]["template"] == first
    assert world.kube.writes["deployment"] == 1


def test_updated_replicas_count_only_once_the_controller_saw_the_generation() -> None:
    from matchenv.operator.steps.workers import counts

    deployment = {"metadata": {"generation": 3}, "spec": {"replicas": 2},
                  "status": {"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 2}}
    assert (counts(deployment).ready_replicas, counts(deployment).updated_replicas) == (2, 0)
    deployment["status"]["observedGeneration"] = 3
    assert counts(deployment).updated_replicas == 2
    assert not counts(None).exists


def test_stopping_the_workers_waits_for_their_pods_then_is_done(world: World) -> None:
    import pytest

    from matchenv.operator.errors import TeardownIncomplete
    from matchenv.operator.steps.workers import stop_workers

    world.add("prod")
    world.converge("prod")
    with pytest.raises(TeardownIncomplete, match="waiting for the pods of Deployment prod-workers"):
        stop_workers(world.services, world.context("prod"), wait=0)
    assert world.kube.deployments[("default", "prod-workers")]["metadata"]["deletionTimestamp"]
    world.kube.finish_deletions()
    stop_workers(world.services, world.context("prod"), wait=0)  # gone: done
    assert [e[1] for e in world.kube.events].count("WorkersStopping") == 1


def test_stopping_workers_that_have_no_pod_does_not_wait_for_the_garbage_collector(world: World) -> None:
    """Nothing can be using the credentials: the teardown goes on at once (waiting for the Deployment to go held a
    converge thread for seconds each, and 300 environments deleted at once took minutes)."""
    from matchenv.operator.steps.workers import stop_workers

    world.add("prod", workers={"image": "matchenv:0.1.0", "replicas": 0,
                               "databaseSecretRef": {"name": "matchenv-db-prod"}})
    world.converge("prod")
    assert not stop_workers(world.services, world.context("prod"), wait=0)  # no TeardownIncomplete, no wait
    # none wanted, none running: deleted in the background, gone at once (a foreground deletion is two more writes
    # and watch events for each, in a burst of deletions)
    assert world.kube.deployment_deletions == [("default", "prod-workers", "Background")]
    assert ("default", "prod-workers") not in world.kube.deployments


def test_workers_wanted_but_not_yet_running_are_deleted_in_the_foreground_and_a_late_pod_waited_for(
        world: World) -> None:
    """A Deployment that wants pods may start one between the read and the delete: it is deleted in the foreground,
    and a pod started meanwhile is waited for before its credentials go."""
    import pytest

    from matchenv.operator.errors import TeardownIncomplete
    from matchenv.operator.steps.workers import stop_workers

    world.add("prod")
    world.converge("prod")
    selector = world.context("prod").names.selector
    world.kube.worker_pods[("default", selector)] = []  # none started yet
    delete = world.kube.delete_deployment

    def started_meanwhile(namespace: str, name: str, uid: str, foreground: bool = True) -> bool:
        world.kube.worker_pods[("default", selector)] = [{"metadata": {"name": "prod-workers-1"}}]
        return delete(namespace, name, uid, foreground)

    world.kube.delete_deployment = started_meanwhile  # type: ignore[method-assign]
    with pytest.raises(TeardownIncomplete, match="waiting for the pods of Deployment prod-workers"):
        stop_workers(world.services, world.context("prod"), wait=0)
    assert world.kube.deployment_deletions == [("default", "prod-workers", "Foreground")]
    assert world.kube.deployments[("default", "prod-workers")]["metadata"]["deletionTimestamp"]


def test_a_deployment_found_as_built_is_not_built_and_compared_again_until_it_or_its_inputs_change(
        world: World, monkeypatch: Any) -> None:
    from matchenv.operator import builders

    built: list[str] = []
    real = builders.build_deployment
    monkeypatch.setattr(builders, "build_deployment", lambda names, *a: built.append(names.deployment) or real(
        names, *a))
    world.add("prod")
    world.converge("prod")
    world.converge("prod")
    assert built == ["prod-workers"]  # the second converge found the same version, built from the same spec
    world.kube.environments[("default", "prod")]["spec"]["workers"]["taskEvents"] = True
    world.converge("prod")
    assert len(built) == 2  # the spec changed
    env = {e["name"] for e in
           world.kube.deployments[("default", "prod-workers")]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "MATCHENV_TASK_EVENTS" in env
    world.kube.edit_deployment("default", "prod-workers")["spec"]["replicas"] = 9  # by hand: a new version
    world.converge("prod")
    assert len(built) == 3
    assert world.kube.deployments[("default", "prod-workers")]["spec"]["replicas"] == 2
