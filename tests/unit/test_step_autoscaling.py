"""The autoscaling step: the worker count follows the backlog, holds on unknown counts, and a hand-set count is put back
with a warning."""

from __future__ import annotations

from tests.unit.world import World


def test_unknown_queue_counts_hold_the_autoscaler(world: World) -> None:
    from dataclasses import replace

    world.add("prod", autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 10,
                                   "scaleDownStabilizationSeconds": 0},
              workers={"image": "matchenv:0.1.0", "replicas": 6, "databaseSecretRef": {"name": "matchenv-db-prod"}})
    world.converge("prod")
    key = ("/", "matches.prod")
    world.broker.queues[key] = replace(world.broker.queues[key], messages=600, messages_ready=600)
    world.reconciler.resync_all()
    assert world.kube.environments[("default", "prod")]["spec"]["workers"]["replicas"] == 6
    world.broker.queues[key] = replace(world.broker.queues[key], messages=None, messages_ready=None,
                                       messages_unacknowledged=None, consumers=None)
    world.reconciler.resync_all()
    assert world.kube.environments[("default", "prod")]["spec"]["workers"]["replicas"] == 6  # held, not 1
    assert "unknown" in next(c["message"] for c in world.status("prod")["conditions"]
                             if c["type"] == "TopologyReady")
    world.broker.queues[key] = replace(world.broker.queues[key], messages=0, messages_ready=0,
                                       messages_unacknowledged=0, consumers=0)
    world.reconciler.resync_all()
    assert world.kube.environments[("default", "prod")]["spec"]["workers"]["replicas"] == 1  # known: scaled down


def test_kubectl_scale_on_an_autoscaled_environment_is_put_back_with_a_warning(world: World) -> None:
    from dataclasses import replace

    world.add("prod", autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 5})
    world.converge("prod")
    key = ("/", "matches.prod")
    world.broker.queues[key] = replace(world.broker.queues[key], messages=1000, messages_ready=1000)
    world.reconciler.resync_all()
    env = world.kube.environments[("default", "prod")]
    assert env["spec"]["workers"]["replicas"] == 5
    assert env["metadata"]["annotations"]["matchenv.io/autoscaled-replicas"] == "5"
    assert world.status("prod")["autoscaling"]["replicas"] == 5
    env["spec"]["workers"]["replicas"] = 2  # kubectl scale menv/prod --replicas=2
    world.converge("prod")  # the update handler
    assert env["spec"]["workers"]["replicas"] == 5
    deployment = world.kube.deployments[("default", "prod-workers")]
    assert deployment["spec"]["replicas"] == 5  # never went to 2
    warning = [message for _, reason, message in world.kube.events if reason == "ManualScaleReverted"]
    assert len(warning) == 1
    assert "set to 2 by hand" in warning[0]
    assert world.status("prod")["autoscaling"]["message"] == warning[0]
    # turned off: the count is the user's again, and the bookkeeping goes
    env["spec"]["autoscaling"]["enabled"] = False
    env["spec"]["workers"]["replicas"] = 2
    world.converge("prod")
    assert env["spec"]["workers"]["replicas"] == 2
    assert "matchenv.io/autoscaled-replicas" not in env["metadata"].get("annotations", {})
    assert "autoscaling" not in world.status("prod")


def test_the_step_holds_on_unknown_counts_and_stands_aside_while_paused(world: World) -> None:
    from matchenv.operator.steps.autoscaling import autoscale
    from matchenv.topology.planner import QueueObservation

    world.add("prod", autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 5, "messagesPerReplica": 10})
    assert autoscale(world.services, world.context("prod"), None) is None  # nothing known, nothing decided
    status = autoscale(world.services, world.context("prod"), QueueObservation(exists=True, messages=45))
    assert status is not None
    assert status["backlog"] == 45
    assert status["replicas"] == 5
    assert world.kube.environment("default", "prod")["spec"]["workers"]["replicas"] == 5
    world.kube.environments[("default", "prod")]["status"] = {"autoscaling": status}
    unknown = QueueObservation(exists=True, messages=None)
    assert autoscale(world.services, world.context("prod"), unknown) == status  # held
    world.kube.environments[("default", "prod")]["spec"]["paused"] = True
    paused = autoscale(world.services, world.context("prod"), QueueObservation(exists=True, messages=900))
    assert paused is not None
    assert paused["message"].startswith("paused (spec.paused)")
    assert world.kube.environment("default", "prod")["spec"]["workers"]["replicas"] == 5


def test_the_probes_fresher_ready_count_scales_up_at_once_and_never_down(world: World) -> None:
    import threading
    from dataclasses import replace

    from matchenv.operator.backlog import BacklogProbe
    from tests.unit.test_backlog import FakeCounts

    counts = FakeCounts({})
    probe = BacklogProbe(lambda ns, name: None, threading.Event(), counts)  # type: ignore[arg-type]
    world.services.backlog = probe
    world.add("prod", autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 5, "messagesPerReplica": 100,
                                   "scaleDownStabilizationSeconds": 0})
    world.converge("prod")
    env = world.kube.environments[("default", "prod")]
    uid = env["metadata"]["uid"]
    key = ("/", "matches.prod")
    world.broker.queues[key] = replace(world.broker.queues[key], messages=0, messages_ready=0,
                                       messages_unacknowledged=0)
    world.converge("prod")
    assert env["spec"]["workers"]["replicas"] == 1
    watch = probe.watching(uid)
    assert watch is not None
    assert (watch.queue, watch.wake_above) == ("matches.prod", 100)  # one worker takes 100
    assert watch.url.endswith("/%2F")  # the queue's vhost
    # the statistics still say 0; the probe reads 350 ready now
    counts.counts["matches.prod"] = 350
    probe.look()
    world.converge("prod")
    assert env["spec"]["workers"]["replicas"] == 4
    assert getattr(probe.watching(uid), "wake_above", "none") == 400
    # the probe's count falls (the workers took the messages) while the statistics say 350 are in hand: the
    # statistics' ready + unacknowledged decide, nothing is scaled away mid-message
    world.broker.queues[key] = replace(world.broker.queues[key], messages=350, messages_ready=0,
                                       messages_unacknowledged=350)
    counts.counts["matches.prod"] = 0
    probe.look()
    world.converge("prod")
    assert env["spec"]["workers"]["replicas"] == 4
    # at the maximum there is nothing to wake for; turned off, the watch goes
    counts.counts["matches.prod"] = 2_000
    probe.look()
    world.converge("prod")
    assert env["spec"]["workers"]["replicas"] == 5
    assert getattr(probe.watching(uid), "wake_above", "none") is None
    env["spec"]["autoscaling"]["enabled"] = False
    world.converge("prod")
    assert probe.watching(uid) is None


def test_a_new_queue_without_statistics_yet_is_watched_and_scaled_from_the_probe(world: World) -> None:
    import threading
    from dataclasses import replace

    from matchenv.operator.backlog import BacklogProbe
    from tests.unit.test_backlog import FakeCounts

    counts = FakeCounts({})
    probe = BacklogProbe(lambda ns, name: None, threading.Event(), counts)  # type: ignore[arg-type]
    world.services.backlog = probe
    world.add("dev", autoscaling={"enabled": True, "minReplicas": 0, "maxReplicas": 5, "messagesPerReplica": 100},
              workers={"image": "matchenv:0.1.0", "replicas": 0, "databaseSecretRef": {"name": "matchenv-db-dev"}})
    world.converge("dev")
    key = ("/", "matches.dev")
    world.broker.queues[key] = replace(world.broker.queues[key], messages=None, messages_ready=None,
                                       messages_unacknowledged=None)
    world.converge("dev")
    env = world.kube.environments[("default", "dev")]
    watch = probe.watching(env["metadata"]["uid"])
    assert watch is not None
    assert watch.wake_above == 0  # no workers: any ready message wakes it
    counts.counts["matches.dev"] = 250
    probe.look()
    world.converge("dev")
    assert env["spec"]["workers"]["replicas"] == 3
