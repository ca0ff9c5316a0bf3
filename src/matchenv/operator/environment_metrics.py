"""Per-environment metrics, for the person on call: what each MatchEnvironment's last converge saw (its queue's
ready and unacknowledged messages, consumers, dead letters, a quorum queue's members running, replicas, phase and
conditions, the autoscaler's backlog and decision, backfill progress), when it last converged without a broker
error, and its broker errors by reason.

Labels are ``namespace`` and ``name`` (plus ``phase``, ``condition``/``status`` or ``reason`` where said): one
series set per environment, removed when the environment is torn down; no match ids. A count the broker did not
report is left out, never exported as 0. Exported by the leader (the replica that converges)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from matchenv.api import BackfillPhase, Phase
from matchenv.topology.planner import QueueObservation

CONDITION_STATES = ("true", "false", "unknown")
LABELS = ("namespace", "name")


@dataclass(frozen=True)
class EnvironmentSample:
    """What one environment's last converge saw; None: not known."""

    phase: str
    conditions: dict[str, str] = field(default_factory=dict)  # type → True, False or Unknown
    exchange: str = ""  # the feed it is bound to (status.exchange), for comparing environments of one feed
    queue: str = ""
    ready: int | None = None
    unacknowledged: int | None = None
    consumers: int | None = None
    dead_letters: int | None = None
    queue_members: int | None = None  # a quorum queue's replicas (None: another queue type)
    queue_members_online: int | None = None
    replicas_desired: int | None = None
    replicas_ready: int | None = None
    autoscaler_backlog: int | None = None
    autoscaler_replicas: int | None = None
    backfill_delivered: int | None = None
    backfill_phase: str | None = None  # Pending, Running, Complete, Failed; None: no backfill
    converged_at: float | None = None  # wall clock of the last converge without a broker error
    broker_errors: Counter[str] = field(default_factory=Counter)  # reason → count, since the operator started


def sample_of(status: dict[str, Any], seen: QueueObservation | None, error_reason: str | None, now: float,
              previous: EnvironmentSample | None = None, converged: bool = True) -> EnvironmentSample:
    """The sample of a converge that wrote (or kept) ``status``, saw ``seen`` on the broker (None: it did not reach
    it), and failed with ``error_reason`` if it did (``converged``: it ran its steps; False for a spec the model
    refused)."""
    errors = Counter(previous.broker_errors) if previous else Counter()
    if error_reason:
        errors[error_reason] += 1
    counts = seen if seen is not None and seen.exists else None
    autoscaling = status.get("autoscaling") or {}
    backfill = status.get("backfill") or {}
    return EnvironmentSample(
        phase=str(status.get("phase") or Phase.PENDING.value),
        exchange=str(status.get("exchange") or (previous.exchange if previous else "")),
        queue=str(status.get("queue") or ""),
        conditions={str(c["type"]): str(c.get("status", "Unknown")) for c in status.get("conditions") or []},
        ready=counts.ready if counts else _kept(previous, "ready", seen),
        unacknowledged=counts.unacknowledged if counts else _kept(previous, "unacknowledged", seen),
        consumers=counts.consumers if counts else _kept(previous, "consumers", seen),
        dead_letters=counts.dead_letter_messages if counts else _kept(previous, "dead_letters", seen),
        queue_members=(len(counts.members) or None) if counts else _kept(previous, "queue_members", seen),
        queue_members_online=(counts.running if counts.members else None) if counts
        else _kept(previous, "queue_members_online", seen),
        replicas_desired=status.get("replicas"),
        replicas_ready=status.get("readyReplicas"),
        autoscaler_backlog=autoscaling.get("backlog"),
        autoscaler_replicas=autoscaling.get("replicas"),
        backfill_delivered=backfill.get("delivered"),
        backfill_phase=backfill.get("phase"),
        converged_at=now if converged and error_reason is None else (previous.converged_at if previous else None),
        broker_errors=errors,
    )


def _kept(previous: EnvironmentSample | None, what: str, seen: QueueObservation | None) -> int | None:
    """A count the converge could not read: the last one known while the broker is away (as status keeps it);
    gone with the queue when the broker said there is none."""
    if seen is not None or previous is None:
        return None
    value: int | None = getattr(previous, what)
    return value


GAUGES: tuple[tuple[str, str, str], ...] = (
    ("ready", "matchenv_environment_messages_ready", "Messages ready for the environment's workers in its queue."),
    ("unacknowledged", "matchenv_environment_messages_unacknowledged",
     "Messages delivered to the environment's workers and not yet acknowledged."),
    ("consumers", "matchenv_environment_consumers", "Consumers of the environment's queue."),
    ("dead_letters", "matchenv_environment_dead_letter_messages", "Messages in the environment's dead-letter queue."),
    ("queue_members", "matchenv_environment_queue_members",
     "Replicas of the environment's quorum queue (none for other queue types)."),
    ("queue_members_online", "matchenv_environment_queue_members_online",
     "Replicas of the environment's quorum queue that run: fewer than half the members and it stops."),
    ("replicas_desired", "matchenv_environment_replicas_desired", "Worker pods the environment asks for."),
    ("replicas_ready", "matchenv_environment_replicas_ready", "Worker pods ready."),
    ("autoscaler_backlog", "matchenv_environment_autoscaler_backlog_messages",
     "The backlog the autoscaler last decided on."),
    ("autoscaler_replicas", "matchenv_environment_autoscaler_replicas", "Worker pods the autoscaler last decided on."),
    ("backfill_delivered", "matchenv_environment_backfill_delivered_messages",
     "Archived matches the environment's backfill delivered to its queue so far."),
    ("converged_at", "matchenv_environment_last_converge_timestamp_seconds",
     "When the environment last converged without a broker error (Unix time)."),
)


class EnvironmentMetrics(Collector):
    """The per-environment series, from the samples the converges record."""

    def __init__(self) -> None:
        self._samples: dict[tuple[str, str], EnvironmentSample] = {}
        self._lock = threading.Lock()

    def record(self, namespace: str, name: str, status: dict[str, Any], seen: QueueObservation | None,
               error_reason: str | None, now: float, converged: bool = True) -> EnvironmentSample:
        with self._lock:
            sample = sample_of(status, seen, error_reason, now, self._samples.get((namespace, name)), converged)
            self._samples[(namespace, name)] = sample
            return sample

    def record_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """A status written without a converge (the workers followed): its phase, conditions and replicas."""
        with self._lock:
            previous = self._samples.get((namespace, name))
            if previous is None:
                return
            # no broker read: the queue counts and the last converge are kept from ``previous``
            self._samples[(namespace, name)] = sample_of(status, None, None, 0.0, previous, converged=False)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._samples.pop((namespace, name), None)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            samples = sorted(self._samples.items())
        for attribute, metric, documentation in GAUGES:
            family = GaugeMetricFamily(metric, documentation, labels=LABELS)
            for (namespace, name), sample in samples:
                value = getattr(sample, attribute)
                if value is not None:
                    family.add_metric([namespace, name], float(value))
            yield family
        info = GaugeMetricFamily("matchenv_environment_info",
                                 "1 per environment, with the exchange it is bound to (its feed) and its queue.",
                                 labels=(*LABELS, "exchange", "queue"))
        for (namespace, name), sample in samples:
            info.add_metric([namespace, name, sample.exchange, sample.queue], 1.0)
        yield info
        phases = GaugeMetricFamily("matchenv_environment_phase", "1 for the environment's phase, 0 for the others.",
                                   labels=(*LABELS, "phase"))
        conditions = GaugeMetricFamily("matchenv_environment_condition",
                                       "1 for each condition's status (true, false, unknown), 0 for the others.",
                                       labels=(*LABELS, "condition", "status"))
        backfills = GaugeMetricFamily("matchenv_environment_backfill_phase",
                                      "1 for the phase of the environment's backfill, 0 for the others; none without "
                                      "a backfill.", labels=(*LABELS, "phase"))
        errors = CounterMetricFamily("matchenv_environment_broker_errors",
                                     "Converges that failed to reach or use the environment's broker, by reason.",
                                     labels=(*LABELS, "reason"))
        for (namespace, name), sample in samples:
            for phase in Phase:
                phases.add_metric([namespace, name, phase.value], float(sample.phase == phase.value))
            for condition, state in sorted(sample.conditions.items()):
                for candidate in CONDITION_STATES:
                    conditions.add_metric([namespace, name, condition, candidate],
                                          float(state.lower() == candidate))
            if sample.backfill_phase is not None:
                for backfill_phase in BackfillPhase:
                    backfills.add_metric([namespace, name, backfill_phase.value],
                                         float(sample.backfill_phase == backfill_phase.value))
            for reason, count in sorted(sample.broker_errors.items()):
                errors.add_metric([namespace, name, reason], float(count))
        yield phases
        yield conditions
        yield backfills
        yield errors
