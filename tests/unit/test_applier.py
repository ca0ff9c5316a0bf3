"""Applying a plan: neighbours of one stage side by side (a new environment's declares, then its bindings), every
other action on its own and in order; what failed is named, what came before it reported, nothing after it run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from matchenv.api import MatchEnvironmentSpec
from matchenv.topology.applier import ApplyError, apply_plan
from matchenv.topology.client import BrokerError
from matchenv.topology.desired import DesiredTopology, desired_topology
from matchenv.topology.planner import Plan, plan_converge
from tests.cases import environment
from tests.fakes import SimulatedBroker


def _new_environment_plan(broker: SimulatedBroker) -> tuple[DesiredTopology, Plan]:
    spec = MatchEnvironmentSpec.model_validate(environment("dev")["spec"])
    desired = desired_topology("c1", "default", "dev", spec)
    broker.declare_exchange("/", "matches-fanout", "fanout")
    return desired, plan_converge(desired, broker.snapshot(), "pw")


def test_a_new_environments_declares_then_its_bindings_run_together_and_the_result_is_the_same() -> None:
    rounds: list[int] = []

    def side_by_side(calls: list[Callable[[], BrokerError | None]]) -> list[BrokerError | None]:
        rounds.append(len(calls))
        return [call() for call in calls]

    together, alone = SimulatedBroker(), SimulatedBroker()
    desired, plan = _new_environment_plan(together)
    _, same = _new_environment_plan(alone)
    done = apply_plan(together, plan, side_by_side=side_by_side)
    assert done == apply_plan(alone, same)  # the same descriptions, in the plan's order
    assert (together.queues, together.bindings, set(together.users)) == \
        (alone.queues, alone.bindings, set(alone.users))
    # the declares (queue, dead-letter queue and exchange, policy) are one round, the two bindings another
    assert rounds == [sum(1 for a in plan.actions if a.stage == "declare"), 2]
    assert rounds[0] >= 3
    assert plan_converge(desired, together.snapshot(), "pw").actions == ()


def test_a_failure_in_a_run_names_it_reports_the_others_and_stops_the_plan() -> None:
    broker = SimulatedBroker()
    _, plan = _new_environment_plan(broker)
    first_declare = next(a for a in plan.actions if a.stage == "declare")

    def side_by_side(calls: list[Callable[[], BrokerError | None]]) -> list[BrokerError | None]:
        outcomes = [call() for call in calls]
        outcomes[0] = BrokerError("PUT refused", "PUT /api/queues", 400)  # the run's first failed
        return outcomes

    reported: list[str] = []
    with pytest.raises(ApplyError) as failed:
        apply_plan(broker, plan, on_done=reported.append, side_by_side=side_by_side)
    assert failed.value.failed == first_declare.describe()
    assert reported == failed.value.done
    assert reported
    assert first_declare.describe() not in reported
    # nothing after the failed run: no binding, no user
    assert not any(b.destination.startswith("matches.dev") for b in broker.bindings)
    assert "matchenv-env.c1.default.dev" not in broker.users
