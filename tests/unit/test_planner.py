"""The pure topology planner: what it plans for each spec field, and that a second plan after applying is empty."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from matchenv.models import MatchEnvironmentSpec
from matchenv.naming import broker_regex
from matchenv.topology.applier import apply_plan
from matchenv.topology.desired import DesiredTopology, desired_topology
from matchenv.topology.planner import (
    Bind,
    DeclareExchange,
    DeclareQueue,
    DeleteExchange,
    DeletePolicy,
    DeleteQueue,
    DeleteUser,
    Plan,
    PutPolicy,
    PutUser,
    SetPermissions,
    Unbind,
    observe,
    plan_converge,
    plan_teardown,
)
from matchenv.topology.snapshot import Binding, BrokerSnapshot, Exchange, Permission, Policy, Queue, User
from tests.cases import environment


class SimulatedBroker:
    """Applies actions to an in-memory snapshot, so a unit test can plan again after applying (planner only:
    the integration tests run the same plans against a real RabbitMQ)."""

    def __init__(self, snapshot: BrokerSnapshot | None = None) -> None:
        s = snapshot or BrokerSnapshot.empty()
        self.queues = dict(s.queues)
        self.exchanges = dict(s.exchanges)
        self.bindings = list(s.bindings)
        self.policies = dict(s.policies)
        self.users = dict(s.users)
        self.permissions = dict(s.permissions)

    def snapshot(self) -> BrokerSnapshot:
        return BrokerSnapshot(dict(self.queues), dict(self.exchanges), tuple(self.bindings), dict(self.policies),
                              dict(self.users), dict(self.permissions))

    def declare_exchange(self, vhost: str, name: str, type_: str, durable: bool = True) -> None:
        self.exchanges[(vhost, name)] = Exchange(vhost, name, type_, durable)

    def delete_exchange(self, vhost: str, name: str) -> None:
        del self.exchanges[(vhost, name)]

    def declare_queue(self, vhost: str, name: str, arguments: dict[str, Any], durable: bool = True) -> None:
        self.queues[(vhost, name)] = Queue(vhost, name, arguments["x-queue-type"], durable, arguments)

    def delete_queue(self, vhost: str, name: str) -> None:
        del self.queues[(vhost, name)]

    def bind_queue(self, vhost: str, exchange: str, queue: str, routing_key: str = "") -> None:
        self.bindings.append(Binding(vhost, exchange, queue, "queue", routing_key, routing_key or "~"))

    def unbind_queue(self, vhost: str, exchange: str, queue: str, properties_key: str) -> None:
        self.bindings = [b for b in self.bindings
                         if (b.vhost, b.source, b.destination, b.properties_key) != (vhost, exchange, queue,
                                                                                     properties_key)]

    def put_policy(self, vhost: str, name: str, pattern: str, definition: dict[str, Any], priority: int,
                   apply_to: str = "queues") -> None:
        self.policies[(vhost, name)] = Policy(vhost, name, pattern, apply_to, definition, priority)

    def delete_policy(self, vhost: str, name: str) -> None:
        del self.policies[(vhost, name)]

    def put_user(self, name: str, password: str, tags: Any = ()) -> None:
        self.users[name] = User(name)

    def delete_user(self, name: str) -> None:
        del self.users[name]
        self.permissions = {k: v for k, v in self.permissions.items() if k[0] != name}

    def set_permissions(self, vhost: str, user: str, configure: str, write: str, read: str) -> None:
        self.permissions[(user, vhost)] = Permission(user, vhost, configure, write, read)


def desired(name: str = "staging", namespace: str = "default", **spec: Any) -> DesiredTopology:
    return desired_topology(namespace, name, MatchEnvironmentSpec.model_validate(environment(name, **spec)["spec"]))


def converge(broker: SimulatedBroker, want: DesiredTopology, **kwargs: Any) -> Plan:
    plan = plan_converge(want, broker.snapshot(), "secret-pw", **kwargs)
    apply_plan(broker, plan)
    return plan


def assert_converged(broker: SimulatedBroker, want: DesiredTopology, **kwargs: Any) -> None:
    again = plan_converge(want, broker.snapshot(), "secret-pw", **kwargs)
    assert again == Plan(), f"second plan not empty: {again}"


def test_fresh_broker_gets_the_whole_topology() -> None:
    broker = SimulatedBroker()
    plan = converge(broker, desired())
    assert plan.problems == ()
    assert plan.actions == (
        DeclareExchange("/", "matches-fanout", "fanout"),
        DeclareQueue("/", "matches.staging", "classic"),
        DeclareQueue("/", "matches.staging.dlq", "classic"),
        DeclareExchange("/", "matches.staging.dlx", "fanout"),
        Bind("/", "matches.staging.dlx", "matches.staging.dlq"),
        PutPolicy("/", "matchenv.matches.staging", r"^matches\.staging$",
                  {"dead-letter-exchange": "matches.staging.dlx"}, 100),
        Bind("/", "matches-fanout", "matches.staging", ""),
        PutUser("/", "matchenv.default.staging", "secret-pw"),
        SetPermissions("/", "matchenv.default.staging", r"^matches\.staging$", r"^matches\.staging\.dlx$",
                       r"^matches\.staging$"),
    )
    assert_converged(broker, desired())


def test_existing_shared_exchange_is_reused_not_redeclared() -> None:
    broker = SimulatedBroker()
    broker.declare_exchange("/", "matches-fanout", "fanout")
    plan = converge(broker, desired())
    assert not any(isinstance(a, DeclareExchange) and a.name == "matches-fanout" for a in plan.actions)


def test_max_length_and_ttl_go_into_the_policy() -> None:
    broker = SimulatedBroker()
    converge(broker, desired())
    want = desired(queue={"maxLength": 500, "messageTTLSeconds": 60})
    plan = converge(broker, want)
    assert plan.actions == (
        PutPolicy("/", "matchenv.matches.staging", r"^matches\.staging$",
                  {"max-length": 500, "message-ttl": 60_000, "dead-letter-exchange": "matches.staging.dlx"}, 100),
    )
    assert_converged(broker, want)


def test_without_dead_letter_there_is_no_dlx_and_no_write_permission() -> None:
    broker = SimulatedBroker()
    want = desired(queue={"deadLetter": False})
    plan = converge(broker, want)
    kinds = {type(a) for a in plan.actions}
    assert PutPolicy not in kinds
    assert [a.name for a in plan.actions if isinstance(a, DeclareQueue)] == ["matches.staging"]
    perms = next(a for a in plan.actions if isinstance(a, SetPermissions))
    assert perms.write == ""
    assert_converged(broker, want)


def test_turning_dead_letter_off_drops_the_policy_but_keeps_the_dlq() -> None:
    broker = SimulatedBroker()
    converge(broker, desired())
    plan = converge(broker, desired(queue={"deadLetter": False}))
    assert DeletePolicy("/", "matchenv.matches.staging") in plan.actions
    assert not any(isinstance(a, DeleteQueue) for a in plan.actions)
    assert ("/", "matches.staging.dlq") in broker.queues


def test_quorum_queue_and_its_dlq_are_quorum() -> None:
    broker = SimulatedBroker()
    want = desired(queue={"type": "quorum"})
    plan = converge(broker, want)
    assert DeclareQueue("/", "matches.staging", "quorum") in plan.actions
    assert DeclareQueue("/", "matches.staging.dlq", "quorum") in plan.actions
    assert want.queue.arguments == {"x-queue-type": "quorum"}


def test_queue_of_another_type_is_a_problem_not_an_action() -> None:
    broker = SimulatedBroker()
    broker.declare_queue("/", "matches.staging", {"x-queue-type": "classic"})
    plan = plan_converge(desired(queue={"type": "quorum"}), broker.snapshot(), "pw")
    assert any("exists as a classic queue" in p for p in plan.problems)
    assert not any(isinstance(a, DeclareQueue) and a.name == "matches.staging" for a in plan.actions)


def test_exchange_of_another_type_is_a_problem() -> None:
    broker = SimulatedBroker()
    broker.declare_exchange("/", "matches-fanout", "direct")
    plan = plan_converge(desired(), broker.snapshot(), "pw")
    assert plan.problems == ("exchange matches-fanout is a direct exchange, spec.exchange.type is fanout",)


def test_topic_exchange_binds_once_per_routing_key_and_follows_key_changes() -> None:
    broker = SimulatedBroker()
    topic = {"exchange": {"name": "matches-topic", "type": "topic"}}
    want = desired(queue={"routingKeys": ["U14.#", "U15.#"]}, **topic)
    plan = converge(broker, want)
    binds = [a for a in plan.actions if isinstance(a, Bind) and a.exchange == "matches-topic"]
    assert [(b.routing_key) for b in binds] == ["U14.#", "U15.#"]
    assert DeclareExchange("/", "matches-topic", "topic") in plan.actions
    assert_converged(broker, want)
    changed = desired(queue={"routingKeys": ["U15.#", "U16.#"]}, **topic)
    plan = converge(broker, changed)
    assert set(plan.actions) == {Bind("/", "matches-topic", "matches.staging", "U16.#"),
                                 Unbind("/", "matches-topic", "matches.staging", "U14.#")}
    assert_converged(broker, changed)


def test_exchange_rename_moves_the_binding() -> None:
    broker = SimulatedBroker()
    converge(broker, desired())
    want = desired(exchange={"name": "matches-v2"})
    plan = converge(broker, want, previous_exchange="matches-fanout")
    assert Bind("/", "matches-v2", "matches.staging", "") in plan.actions
    assert Unbind("/", "matches-fanout", "matches.staging", "~") in plan.actions
    assert_converged(broker, want, previous_exchange="matches-fanout")


def test_bindings_from_foreign_exchanges_are_left_alone() -> None:
    broker = SimulatedBroker()
    converge(broker, desired())
    broker.declare_exchange("/", "audit", "fanout")
    broker.bind_queue("/", "audit", "matches.staging")
    assert_converged(broker, desired())


def test_deleted_binding_queue_and_policy_are_put_back() -> None:
    broker = SimulatedBroker()
    want = desired(queue={"maxLength": 10})
    converge(broker, want)
    broker.unbind_queue("/", "matches-fanout", "matches.staging", "~")
    broker.delete_policy("/", "matchenv.matches.staging")
    del broker.queues[("/", "matches.staging")]
    plan = converge(broker, want)
    assert {type(a) for a in plan.actions} == {DeclareQueue, PutPolicy, Bind}
    assert_converged(broker, want)


def test_hand_edited_policy_and_permissions_are_repaired() -> None:
    broker = SimulatedBroker()
    want = desired()
    converge(broker, want)
    broker.put_policy("/", "matchenv.matches.staging", ".*", {"max-length": 1}, 0)
    broker.set_permissions("/", "matchenv.default.staging", ".*", ".*", ".*")
    plan = converge(broker, want)
    assert {type(a) for a in plan.actions} == {PutPolicy, SetPermissions}


def test_existing_user_keeps_its_password_unless_reset() -> None:
    broker = SimulatedBroker()
    converge(broker, desired())
    assert not any(isinstance(a, PutUser) for a in plan_converge(desired(), broker.snapshot(), "x").actions)
    reset = plan_converge(desired(), broker.snapshot(), "new", reset_password=True)
    assert PutUser("/", "matchenv.default.staging", "new") in reset.actions


def test_vhost_and_queue_name_come_from_the_spec() -> None:
    want = desired(broker={"vhost": "matches"}, queue={"name": "feed.custom"})
    plan = plan_converge(want, BrokerSnapshot.empty(), "pw")
    assert {a.vhost for a in plan.actions} == {"matches"}
    assert DeclareQueue("matches", "feed.custom", "classic") in plan.actions
    assert want.names.dead_letter_queue == "feed.custom.dlq"


def test_user_name_includes_the_namespace() -> None:
    assert desired(namespace="team-a").names.broker_user == "matchenv.team-a.staging"


@pytest.mark.parametrize("delete_queue", [False, True])
def test_teardown_always_unbinds_and_drops_the_user(delete_queue: bool) -> None:
    broker = SimulatedBroker()
    want = desired(queue={"maxLength": 10})
    converge(broker, want)
    plan = plan_teardown(want, broker.snapshot(), delete_queue=delete_queue)
    assert plan.actions[0] == Unbind("/", "matches-fanout", "matches.staging", "~")
    assert DeleteUser("/", "matchenv.default.staging") in plan.actions
    deleted = {a.name for a in plan.actions if isinstance(a, DeleteQueue)}
    assert deleted == ({"matches.staging", "matches.staging.dlq"} if delete_queue else set())
    assert (DeleteExchange("/", "matches.staging.dlx") in plan.actions) is delete_queue
    assert (DeletePolicy("/", "matchenv.matches.staging") in plan.actions) is delete_queue
    apply_plan(broker, plan)
    assert plan_teardown(want, broker.snapshot(), delete_queue=delete_queue) == Plan()
    assert broker.exchanges[("/", "matches-fanout")]  # the shared exchange is never deleted


def test_observe_counts_ready_and_unacked_and_the_dlq() -> None:
    want = desired()
    snapshot = BrokerSnapshot.build(
        queues=[Queue("/", "matches.staging", messages_ready=3, messages_unacknowledged=2, consumers=4),
                Queue("/", "matches.staging.dlq", messages_ready=1)],
        exchanges=[], bindings=[Binding("/", "matches-fanout", "matches.staging", "queue", "", "~")],
        policies=[], users=[], permissions=[],
    )
    seen = observe(want, snapshot)
    assert (seen.exists, seen.messages, seen.consumers, seen.dead_letter_messages, seen.bound) == (True, 5, 4, 1, True)
    assert observe(want, BrokerSnapshot.empty()).exists is False
    assert observe(want, replace(snapshot, bindings=())).bound is False


def test_broker_regex_escapes_dots_and_anchors() -> None:
    assert broker_regex("matches.prod") == r"^matches\.prod$"
    assert broker_regex("a:b-c") == "^a:b-c$"
