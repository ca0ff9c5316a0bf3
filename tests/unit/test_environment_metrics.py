"""The per-environment metrics the person on call reads: each environment's queue, workers, phase and conditions as
its last converge saw them, in Prometheus' text format; unknown counts left out; gone with the environment."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from matchenv.operator.environment_metrics import EnvironmentMetrics
from matchenv.topology.planner import QueueObservation
from tests.unit.world import World


def _fill(world: World, queue: str, ready: int, unacknowledged: int = 0) -> None:
    key = ("/", queue)
    world.broker.queues[key] = replace(world.broker.queues[key], messages=ready + unacknowledged,
                                       messages_ready=ready, messages_unacknowledged=unacknowledged)


def _series(metrics: EnvironmentMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(metrics)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(series: dict[tuple[str, tuple[tuple[str, str], ...]], float], metric: str, /, **labels: str
           ) -> float | None:
    return series.get((metric, tuple(sorted(labels.items()))))


def test_each_environment_has_its_queue_workers_phase_and_conditions(world: World) -> None:
    world.add("prod")
    world.add("dev", queue={"maxLength": 10})
    world.converge("prod")
    world.converge("dev")
    _fill(world, "matches.prod", 7, 2)
    world.converge("prod")
    series = _series(world.reconciler.environments)
    prod = {"namespace": "default", "name": "prod"}
    assert _value(series, "matchenv_environment_messages_ready", **prod) == 7
    assert _value(series, "matchenv_environment_messages_unacknowledged", **prod) == 2
    assert _value(series, "matchenv_environment_consumers", **prod) == 0
    assert _value(series, "matchenv_environment_replicas_desired", **prod) == 2
    assert _value(series, "matchenv_environment_phase", **prod, phase="Pending") == 1
    assert _value(series, "matchenv_environment_phase", **prod, phase="Ready") == 0
    assert _value(series, "matchenv_environment_condition", **prod, condition="TopologyReady", status="true") == 1
    assert _value(series, "matchenv_environment_condition", **prod, condition="WorkersReady", status="false") == 1
    assert _value(series, "matchenv_environment_messages_ready", namespace="default", name="dev") == 0
    assert _value(series, "matchenv_environment_info", **prod, exchange="matches-fanout", queue="matches.prod") == 1
    assert (_value(series, "matchenv_environment_last_converge_timestamp_seconds", **prod) or 0) > 1.7e9


def test_a_broker_outage_is_counted_by_reason_and_keeps_the_last_counts(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    _fill(world, "matches.prod", 3)
    world.converge("prod")
    converged = _value(_series(world.reconciler.environments),
                       "matchenv_environment_last_converge_timestamp_seconds", namespace="default", name="prod")
    world.broker.down = True
    world.converge("prod")
    world.converge("prod")
    series = _series(world.reconciler.environments)
    prod = {"namespace": "default", "name": "prod"}
    assert _value(series, "matchenv_environment_broker_errors_total", **prod, reason="BrokerUnreachable") == 2
    assert _value(series, "matchenv_environment_messages_ready", **prod) == 3  # the last known, as status keeps
    assert _value(series, "matchenv_environment_last_converge_timestamp_seconds", **prod) == converged
    assert _value(series, "matchenv_environment_phase", **prod, phase="Degraded") == 1


def test_a_deleted_environment_leaves_no_series(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    world.delete("prod")
    assert not [key for key in _series(world.reconciler.environments) if ("name", "prod") in key[1]]


def test_counts_the_broker_did_not_report_are_left_out_not_zero() -> None:
    unknown = QueueObservation(exists=True, messages=None, consumers=None, dead_letter_messages=None, ready=None,
                               unacknowledged=None)
    metrics = EnvironmentMetrics()
    metrics.record("default", "prod", {"phase": "Ready"}, unknown, None, now=100.0)
    series = _series(metrics)
    assert _value(series, "matchenv_environment_messages_ready", namespace="default", name="prod") is None
    assert _value(series, "matchenv_environment_phase", namespace="default", name="prod", phase="Ready") == 1


def test_a_backfill_reports_its_phase_and_progress() -> None:
    status = {"phase": "Ready", "backfill": {"phase": "Failed", "delivered": 120}}
    metrics = EnvironmentMetrics()
    metrics.record("default", "staging", status, None, None, now=100.0)
    series = _series(metrics)
    staging = {"namespace": "default", "name": "staging"}
    assert _value(series, "matchenv_environment_backfill_phase", **staging, phase="Failed") == 1
    assert _value(series, "matchenv_environment_backfill_phase", **staging, phase="Complete") == 0
    assert _value(series, "matchenv_environment_backfill_delivered_messages", **staging) == 120


def test_a_status_the_workers_watch_writes_moves_the_series_and_keeps_the_queue_counts(world: World) -> None:
    # replicas written out, as the API server's defaulting does: the watch follows only a spec it can compare
    world.add("prod", workers={"image": "matchenv:0.1.0", "databaseSecretRef": {"name": "matchenv-db-prod"},
                               "replicas": 2})
    world.converge("prod")
    _fill(world, "matches.prod", 4)
    world.converge("prod")
    converged = _value(_series(world.reconciler.environments), "matchenv_environment_last_converge_timestamp_seconds",
                       namespace="default", name="prod")
    key = ("default", "prod-workers")
    world.reconciler.workers_changed(world.kube.get_deployment(*key) or {})  # first sight
    live = world.kube.deployments[key]
    live["status"] = {"observedGeneration": live["metadata"].get("generation", 1), "replicas": 2,
                      "readyReplicas": 2, "updatedReplicas": 2, "availableReplicas": 2}
    calls = world.broker.calls
    world.reconciler.workers_changed(world.kube.get_deployment(*key) or {})  # followed, no converge
    assert world.broker.calls == calls
    series = _series(world.reconciler.environments)
    prod = {"namespace": "default", "name": "prod"}
    assert _value(series, "matchenv_environment_replicas_ready", **prod) == 2
    assert _value(series, "matchenv_environment_phase", **prod, phase="Ready") == 1
    assert _value(series, "matchenv_environment_messages_ready", **prod) == 4
    assert _value(series, "matchenv_environment_last_converge_timestamp_seconds", **prod) == converged


def test_a_quorum_queue_reports_its_members_running_and_a_classic_one_none() -> None:
    nodes = ("rabbit@n1", "rabbit@n2", "rabbit@n3")
    metrics = EnvironmentMetrics()
    metrics.record("default", "prod", {"phase": "Ready"},
                   QueueObservation(exists=True, members=nodes, online=nodes[1:]), None, now=100.0)
    metrics.record("default", "dev", {"phase": "Ready"}, QueueObservation(exists=True), None, now=100.0)
    series = _series(metrics)
    assert _value(series, "matchenv_environment_queue_members", namespace="default", name="prod") == 3
    assert _value(series, "matchenv_environment_queue_members_online", namespace="default", name="prod") == 2
    assert _value(series, "matchenv_environment_queue_members", namespace="default", name="dev") is None
    metrics.record("default", "prod", {"phase": "Degraded"}, None, "BrokerUnreachable", now=200.0)
    series = _series(metrics)  # the broker away: the last counts stay, as for the messages
    assert _value(series, "matchenv_environment_queue_members_online", namespace="default", name="prod") == 2


def test_every_management_call_is_counted_handlers_and_passes_alike() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from matchenv.operator.metrics import ManagementCallsCollector

    calls = [0]
    registry = CollectorRegistry()
    registry.register(ManagementCallsCollector(lambda: calls[0]))
    calls[0] = 42
    assert "matchenv_management_calls_total 42.0" in generate_latest(registry).decode()
