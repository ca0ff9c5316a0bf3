"""The applier: a plan's actions in waves side by side, each after what it names; rights only once everything the
plan makes before it is made; removals in their place; what was done reported when a later action fails."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from matchenv.topology.applier import ApplyError, apply_plan, waves
from matchenv.topology.client import BrokerConflict
from matchenv.topology.desired import desired_archive
from matchenv.topology.planner import (
    Bind,
    DeclareExchange,
    DeclareQueue,
    DeleteExchange,
    Plan,
    PutUser,
    SetPermissions,
    Unbind,
    plan_archive,
    plan_converge,
    plan_remove,
)
from matchenv.topology.snapshot import BrokerSnapshot
from matchenv.topology.tally import CallTally, tallying
from tests.cases import topology
from tests.fakes import SimulatedBroker


def described(plan_waves: list[list[Any]]) -> list[list[str]]:
    return [[a.describe() for a in wave] for wave in plan_waves]


def new_environment_plan(broker: SimulatedBroker) -> Plan:
    want = topology()
    broker.declare_exchange("/", want.exchange, "fanout")  # the feed's, as the scraper's side makes it
    return plan_converge(want, broker.snapshot(want.scope()), "secret-pw")


def test_a_new_environment_is_made_in_four_waves_each_after_what_it_names() -> None:
    broker = SimulatedBroker()
    plan = new_environment_plan(broker)
    got = described(waves(plan.actions))
    want = topology()
    q, dlq, dlx = want.queue.name, want.names.dead_letter_queue, want.names.dead_letter_exchange
    rights = want.permissions
    grant = SetPermissions(want.vhost, want.user, rights.configure, rights.write, rights.read)
    assert got == [
        # the queue first: the marker the broker keeps on it decides a race with another environment
        [f"declared classic queue {q}", f"created broker user {want.user}"],
        [f"declared classic queue {dlq}", f"declared fanout exchange {dlx}"],  # the rest of what it owns
        # the user's rights once its queues are known to be its own; the dead-letter queue bound first
        [f"bound queue {dlq} to exchange {dlx}", grant.describe()],
        [f"bound queue {q} to exchange {want.exchange}"],  # the feed's binding: after the dead letters' path
    ]
    assert sorted(a.describe() for a in plan.actions) == sorted(d for wave in got for d in wave)


def test_the_archives_policy_waits_for_its_stream() -> None:
    """RabbitMQ 4.0.5 left a policy's PUT unanswered while the stream it matches was being declared beside it."""
    archive = desired_archive("/", "matches-fanout", "fanout", "1D", 500_000_000, 1_000_000)
    plan = plan_archive(archive, BrokerSnapshot.empty())
    assert [[type(a).__name__ for a in wave] for wave in waves(plan.actions)] == [
        ["DeclareStream"], ["Bind", "PutPolicy"]]


def test_removals_keep_their_place_between_the_waves() -> None:
    actions = (DeclareExchange("/", "a", "fanout"), Unbind("/", "x", "q", "~"), DeclareQueue("/", "q2", "classic", ""),
               DeleteExchange("/", "b"), DeclareExchange("/", "b", "topic"), Bind("/", "b", "q2"))
    assert [[type(a).__name__ for a in wave] for wave in waves(actions)] == [
        ["DeclareExchange"], ["Unbind"], ["DeclareQueue"], ["DeleteExchange"], ["DeclareExchange"], ["Bind"]]
    # what a teardown plans is all removals: one at a time, in order
    broker = SimulatedBroker()
    want = topology()
    apply_plan(broker, new_environment_plan(broker))
    removal = plan_remove(want, broker.snapshot(want.scope()), delete_queue=True)
    assert [wave for wave in waves(removal.actions)] == [[a] for a in removal.actions]


class _Gate(SimulatedBroker):
    """Holds each declare and each user's write until ``together`` of them are under way (or 5 s)."""

    def __init__(self, together: int) -> None:
        super().__init__(BrokerSnapshot.empty())
        self.barrier = threading.Barrier(together, timeout=5)
        self.met: list[bool] = []

    def _held(self) -> None:
        try:
            self.barrier.wait()
            self.met.append(True)
        except threading.BrokenBarrierError:
            self.met.append(False)

    def declare_queue(self, vhost: str, name: str, arguments: dict[str, Any], durable: bool = True) -> None:
        self._held()
        super().declare_queue(vhost, name, arguments, durable)

    def declare_exchange(self, vhost: str, name: str, type_: str, durable: bool = True,
                         arguments: dict[str, Any] | None = None) -> None:
        if name != topology().exchange:
            self._held()
        super().declare_exchange(vhost, name, type_, durable, arguments)

    def put_user(self, name: str, password: str, tags: Any = ()) -> None:
        self._held()
        super().put_user(name, password, tags)


def test_a_waves_writes_are_under_way_together_and_counted_where_the_caller_counts() -> None:
    broker = _Gate(together=2)
    plan = new_environment_plan(broker)
    broker.calls = 0
    with tallying(CallTally()) as tally:
        done = apply_plan(broker, plan)
    # the queue beside the user, then the dead-letter queue beside its exchange; one after another, the first of
    # each pair would have waited alone and broken the gate
    assert broker.met == [True] * 4
    assert len(done) == len(plan.actions) == 7
    assert tally.count == broker.calls == 7  # the writes made on other threads count into the caller's tally
    assert plan_converge(topology(), broker.snapshot(topology().scope()), "secret-pw") == Plan()


class _Refused(SimulatedBroker):
    """A queue declared already by another environment: RabbitMQ refuses the declare (406)."""

    def declare_queue(self, vhost: str, name: str, arguments: dict[str, Any], durable: bool = True) -> None:
        if name == topology().queue.name:
            self._call()
            raise BrokerConflict(f"PUT /api/queues/%2F/{name}: 406 PRECONDITION_FAILED", f"PUT {name}", 400)
        super().declare_queue(vhost, name, arguments, durable)


@pytest.mark.parametrize("user_there", [False, True], ids=["new user", "user there already"])
def test_a_failed_declare_stops_the_plan_before_any_right_is_granted_and_says_what_was_done(user_there: bool) -> None:
    broker = _Refused()
    want = topology()
    if user_there:  # with its password: the plan grants the rights without making the user first
        broker.put_user(want.user, "secret-pw")
    plan = new_environment_plan(broker)
    told: list[str] = []
    with pytest.raises(ApplyError) as failed:
        apply_plan(broker, plan, on_done=told.append)
    assert failed.value.failed == f"declared classic queue {want.queue.name}"
    # the rest of its wave was made and is reported; nothing of a later wave: no other claim (the dead-letter queue
    # and exchange are the winner's to make), no binding, no permission
    assert failed.value.done == told == ([] if user_there else [f"created broker user {want.user}"])
    assert set(broker.queues) == set()
    assert set(broker.exchanges) == {("/", want.exchange)}
    assert broker.permissions == {}
    assert broker.bindings == []


def test_the_guard_is_asked_for_every_action_of_a_wave_before_any_starts() -> None:
    broker = SimulatedBroker()
    plan = new_environment_plan(broker)
    broker.calls = 0
    asked: list[str] = []

    def guard(action: Any) -> None:
        asked.append(action.describe())
        if isinstance(action, PutUser):
            raise PermissionError("no longer the leader")

    with pytest.raises(PermissionError):
        apply_plan(broker, plan, guard)
    assert len(asked) == 2  # the first wave's: the queue's, then the user's, which was refused
    assert broker.calls == 0  # so neither was made
