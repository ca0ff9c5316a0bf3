"""Pure status computation: phases, conditions and their transition times."""

from __future__ import annotations

import pytest

from matchenv.api import MatchEnvironmentStatus
from matchenv.operator.status import Observation, WorkersObservation, build_status, status_changed
from matchenv.topology.planner import QueueObservation, Refusal

BOUND = QueueObservation(exists=True, messages=5, consumers=2, dead_letter_messages=1, bound=True)
READY_WORKERS = WorkersObservation(exists=True, replicas=2, ready_replicas=2, updated_replicas=2)


def seen(**changes: object) -> Observation:
    base = {"generation": 3, "exchange": "matches-fanout", "queue": "matches.staging",
            "selector": "app.kubernetes.io/component=worker,matchenv.io/environment=staging",
            "topology": BOUND, "workers": READY_WORKERS}
    base.update(changes)
    return Observation(**base)  # type: ignore[arg-type]


def conditions(status: dict[str, object]) -> dict[str, dict[str, str]]:
    return {c["type"]: c for c in status["conditions"]}  # type: ignore[attr-defined, index]


def test_ready_when_topology_and_workers_are() -> None:
    status = build_status(seen(), None, now="2026-01-01T00:00:00Z")
    assert status["phase"] == "Ready"
    assert status["ready"] == "2/2"
    assert (status["messages"], status["consumers"], status["deadLetterMessages"]) == (5, 2, 1)
    assert status["observedGeneration"] == 3
    assert status["lastError"] is None
    assert {t: c["status"] for t, c in conditions(status).items()} == {
        "TopologyReady": "True", "WorkersReady": "True", "Ready": "True"}


def test_pending_while_workers_start() -> None:
    status = build_status(seen(workers=WorkersObservation(True, 2, 0, 2)), None)
    assert status["phase"] == "Pending"
    ready = conditions(status)["Ready"]
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "WorkersUnavailable", "0/2 workers ready")


def test_broker_outage_is_degraded_and_keeps_the_last_counts() -> None:
    old = build_status(seen(), None)
    status = build_status(seen(topology=None, broker_error="GET /api/queues: broker unreachable",
                               error_reason="BrokerUnreachable"), old)
    assert status["phase"] == "Degraded"
    assert status["lastError"] == "GET /api/queues: broker unreachable"
    assert conditions(status)["TopologyReady"]["reason"] == "BrokerUnreachable"
    assert status["messages"] == 5


def test_conflicts_and_database_problems_are_degraded() -> None:
    status = build_status(seen(problems=("queue x exists as a classic queue",)), None)
    assert status["phase"] == "Degraded"
    assert conditions(status)["TopologyReady"]["reason"] == "BrokerConflict"
    status = build_status(seen(worker_problem=Refusal("DatabaseSecretInvalid", "database Secret db not found")),
                          None)
    assert status["phase"] == "Degraded"
    assert conditions(status)["WorkersReady"]["reason"] == "DatabaseSecretInvalid"
    assert status["lastError"] == "database Secret db not found"


def test_a_refused_environment_is_degraded_with_the_reason_and_no_exchange() -> None:
    refusal = Refusal("QueueClaimed", "queue matches.prod (vhost /) belongs to MatchEnvironment default/prod")
    status = build_status(seen(refusal=refusal, topology=None), {"exchange": "matches-fanout"})
    assert status["phase"] == "Degraded"
    topology = conditions(status)["TopologyReady"]
    assert (topology["status"], topology["reason"]) == ("False", "QueueClaimed")
    assert "default/prod" in status["lastError"]
    assert conditions(status)["Ready"]["reason"] == "QueueClaimed"


def test_status_exchange_is_what_the_queue_is_bound_to() -> None:
    unbound = build_status(seen(topology=QueueObservation(exists=True, bound=False)), {"exchange": "old"})
    assert unbound["exchange"] is None
    assert build_status(seen(), None)["exchange"] == "matches-fanout"
    # broker unreadable: nothing new is known, the last observed exchange stays
    assert build_status(seen(topology=None, broker_error="down"), {"exchange": "old"})["exchange"] == "old"


def test_unknown_counts_are_unknown_and_said_so() -> None:
    status = build_status(seen(topology=QueueObservation(exists=True, messages=None, consumers=None, bound=True)),
                          {"messages": 7})
    assert status["messages"] is None
    assert "unknown" in conditions(status)["TopologyReady"]["message"]


def test_missing_binding_after_ready_is_degraded_until_repaired() -> None:
    old = build_status(seen(), None)
    status = build_status(seen(topology=QueueObservation(exists=True, bound=False)), old)
    assert status["phase"] == "Degraded"
    assert conditions(status)["TopologyReady"]["reason"] == "BindingMissing"


def test_scaled_to_zero_is_ready() -> None:
    status = build_status(seen(workers=WorkersObservation(True, 0, 0, 0)), None)
    assert status["phase"] == "Ready"
    assert conditions(status)["WorkersReady"]["reason"] == "ScaledToZero"


def test_transition_time_kept_while_status_unchanged() -> None:
    first = build_status(seen(), None, now="2026-01-01T00:00:00Z")
    second = build_status(seen(), first, now="2026-01-01T00:05:00Z")
    assert conditions(second)["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert not status_changed(second, first)
    third = build_status(seen(workers=WorkersObservation(True, 2, 1, 2)), second, now="2026-01-01T00:06:00Z")
    assert conditions(third)["Ready"]["lastTransitionTime"] == "2026-01-01T00:06:00Z"
    assert status_changed(third, second)


@pytest.mark.parametrize("observed", [
    seen(),
    seen(workers=WorkersObservation(True, 2, 0, 2)),
    seen(topology=None, broker_error="GET /api/queues: broker unreachable"),
    seen(problems=("queue x exists as a classic queue",)),
    seen(worker_problem=Refusal("DatabaseSecretInvalid", "database Secret db not found")),
    seen(refusal=Refusal("QueueClaimed", "queue matches.prod belongs to MatchEnvironment default/prod"),
         topology=None),
    seen(topology=QueueObservation(exists=True, messages=None, consumers=None, bound=True)),
    seen(workers=WorkersObservation(True, 0, 0, 0)),
], ids=["ready", "starting", "broker-away", "conflict", "database", "refused", "unknown-counts", "zero"])
def test_every_status_is_one_the_resource_s_schema_takes(observed: Observation) -> None:
    """What the operator writes is what the CRD's status schema (the typed model it is generated from) holds."""
    status = build_status(observed, build_status(seen(), None))
    typed = MatchEnvironmentStatus.model_validate(status)
    assert typed.phase is not None


def test_the_oldest_waiting_message_is_dated_while_messages_wait_and_kept_through_an_outage() -> None:
    from dataclasses import replace

    waiting = build_status(seen(topology=replace(BOUND, oldest_published=1_700_000_000)), None)
    assert waiting["oldestMessageTime"] == "2023-11-14T22:13:20Z"
    assert build_status(seen(topology=None), waiting)["oldestMessageTime"] == "2023-11-14T22:13:20Z"
    assert build_status(seen(), waiting)["oldestMessageTime"] is None  # nothing waits now (or not reported)


NODES = ("rabbit@n1", "rabbit@n2", "rabbit@n3")


def test_a_quorum_queue_that_lost_a_member_says_which_and_stays_ready_while_it_has_a_quorum() -> None:
    whole = QueueObservation(exists=True, bound=True, members=NODES, online=NODES, leader="rabbit@n1")
    status = build_status(seen(topology=whole), None)
    assert status["quorum"] == {"members": list(NODES), "online": list(NODES), "leader": "rabbit@n1",
                                "hasQuorum": True}
    assert "members" not in conditions(status)["TopologyReady"]["message"]

    one_down = QueueObservation(exists=True, bound=True, members=NODES, online=NODES[1:], leader="rabbit@n2")
    status = build_status(seen(topology=one_down), status)
    topology = conditions(status)["TopologyReady"]
    assert (status["phase"], topology["status"], topology["reason"]) == ("Ready", "True", "Converged")
    assert "has 2 of its 3 members running (rabbit@n1 not): it still has a quorum" in topology["message"]
    assert status["quorum"]["hasQuorum"] is True  # type: ignore[index]

    two_down = QueueObservation(exists=True, bound=True, members=NODES, online=NODES[2:])
    status = build_status(seen(topology=two_down), status)
    topology = conditions(status)["TopologyReady"]
    assert (status["phase"], topology["status"], topology["reason"]) == ("Degraded", "False", "QuorumLost")
    assert "rabbit@n1, rabbit@n2 not" in topology["message"]
    MatchEnvironmentStatus.model_validate(status)  # what the CRD's status schema takes

    healed = build_status(seen(topology=whole), status)
    assert (healed["phase"], conditions(healed)["TopologyReady"]["reason"]) == ("Ready", "Converged")


def test_a_classic_queue_reports_no_quorum() -> None:
    assert build_status(seen(), None)["quorum"] is None
