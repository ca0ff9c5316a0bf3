"""The teardown: unbind, wait for the workers, then drop the user; a gone broker Secret waits for the abandon
annotation; nothing outside the bounds deleted; a teardown never undone by a converge."""

from __future__ import annotations

import pytest

from matchenv.operator.errors import TeardownIncomplete
from tests.unit.world import ADMIN, World


def test_deletion_unbinds_then_waits_for_the_workers_then_drops_the_user(world: World) -> None:
    world.add("prod", deletionPolicy="Delete")
    world.converge("prod")
    env = world.kube.environment("default", "prod")
    with pytest.raises(TeardownIncomplete):
        world.reconciler.teardown(env)
    assert not any(b.destination == "matches.prod" and b.source == "matches-fanout" for b in world.broker.bindings)
    assert "matchenv-env.c1.default.prod" in world.broker.users  # the workers still finish their messages
    assert world.kube.deployments[("default", "prod-workers")]["metadata"]["deletionTimestamp"]
    with pytest.raises(TeardownIncomplete):
        world.reconciler.teardown(env)  # pods still terminating
    world.kube.finish_deletions()
    world.reconciler.teardown(env)
    assert "matchenv-env.c1.default.prod" not in world.broker.users
    assert ("/", "matches.prod") not in world.broker.queues
    assert ("default", "prod-broker") not in world.kube.secrets


def test_a_deletion_whose_broker_secret_is_gone_waits_until_the_annotation_lets_it_go(world: World) -> None:
    world.kube.add_secret("team", "team-broker", ADMIN)
    world.add("prod", namespace="team", broker={"connectionSecretRef": {"name": "team-broker"}})
    world.converge("prod", namespace="team")
    del world.kube.secrets[("team", "team-broker")]  # the namespace is being deleted with the Secret in it
    env = world.kube.environment("team", "prod")
    for _ in range(3):  # however often kopf retries
        with pytest.raises(TeardownIncomplete):
            world.reconciler.teardown(env)
    last_error = world.status("prod", namespace="team")["lastError"]
    assert "kubectl annotate menv prod matchenv.io/abandon-broker=true" in last_error
    world.kube.patch_environment("team", "prod", {"metadata": {"annotations": {
        "matchenv.io/abandon-broker": "true"}}})
    world.delete("prod", namespace="team")
    abandoned = [m for n, r, m in world.kube.events if r == "BrokerAbandoned"]
    assert len(abandoned) == 1
    assert "Left on it, in vhost /: queue matches.prod with its messages" in abandoned[0]
    assert "user matchenv-env.c1.team.prod" in abandoned[0]
    assert ("team", "prod-broker") not in world.kube.secrets
    assert ("team", "prod-workers") not in world.kube.deployments
    assert ("/", "matches.prod") in world.broker.queues  # left as said


def test_an_out_of_bounds_environment_never_deletes_the_queue_it_named(world: World) -> None:
    world.broker.declare_queue("/", "orders", {"x-queue-type": "classic"})  # another application's queue
    world.add("grabber", queue={"name": "orders", "adopt": True}, deletionPolicy="Delete")
    world.converge("grabber")
    assert world.reason("grabber") == "NotAllowed"
    world.delete("grabber")
    assert ("/", "orders") in world.broker.queues
    assert any(e[1] == "QueueLeftAlone" for e in world.kube.events)


def test_a_teardown_waiting_for_its_workers_is_not_undone_by_a_converge(world: World) -> None:
    world.add("dev")
    world.converge("dev")
    env = world.kube.environment("default", "dev")
    with pytest.raises(TeardownIncomplete):
        world.reconciler.teardown(env)  # unbound, Deployment deleting, pods still running
    assert world.reconciler.converge(env) is None
    assert not any(b.destination == "matches.dev" and b.source == "matches-fanout" for b in world.broker.bindings)
    assert world.kube.deployments[("default", "dev-workers")]["metadata"]["deletionTimestamp"]


def test_a_deletion_that_ends_at_once_says_what_it_did_in_one_event_and_writes_no_status(world: World) -> None:
    """Four Events per deletion overflowed the operator's Event backlog when 650 were deleted at once."""
    world.add("prod", workers={"image": "matchenv:0.1.0", "replicas": 0,
                               "databaseSecretRef": {"name": "matchenv-db-prod"}})
    world.converge("prod")
    events, statuses = len(world.kube.events), dict(world.kube.environment("default", "prod").get("status") or {})
    world.reconciler.teardown(world.kube.environment("default", "prod"))  # no pod to wait for: done at once
    [(_, reason, message)] = world.kube.events[events:]
    assert reason == "TornDown"
    for part in ("unbound queue matches.prod from exchange matches-fanout", "deleted broker user",
                 "deleted Secret prod-broker", "kept queue matches.prod and its messages (deletionPolicy Retain)"):
        assert part in message
    assert (world.kube.environment("default", "prod").get("status") or {}).get("phase") == statuses.get("phase")


def test_what_a_teardown_removes_meanwhile_is_not_repaired(world: World) -> None:
    from matchenv.operator.drift import Changed

    world.add("prod", deletionPolicy="Delete")
    world.converge("prod")
    env = world.kube.environment("default", "prod")
    uid = env["metadata"]["uid"]
    with pytest.raises(TeardownIncomplete):
        world.reconciler.teardown(env)  # unbound; waits for its workers
    # the broker says the binding went, and the Deployment the teardown deleted moved: neither is drift
    assert world.reconciler.owner_of(Changed("queue", "/", "matches.prod")) is None
    reads = world.kube.reads["environment"]
    assert world.reconciler.repair("default", "prod", uid=uid) is None
    assert world.kube.reads["environment"] == reads  # not even a read of the environment
    assert not any(b.destination == "matches.prod" and b.source == "matches-fanout" for b in world.broker.bindings)
