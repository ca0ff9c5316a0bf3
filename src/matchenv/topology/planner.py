"""Pure planning: (desired topology, broker snapshot) → the actions that make the broker match, and the problems
that no action can fix (a queue of another type, an exchange of another type).

Running the plan and planning again against a fresh snapshot yields no actions: that is what makes reconciles
idempotent, and the unit tests check it for every spec field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from matchenv.topology.desired import DesiredQueue, DesiredTopology
from matchenv.topology.snapshot import BrokerSnapshot


class Broker(Protocol):
    """What actions need from the management client (``ManagementClient`` satisfies it)."""

    def declare_exchange(self, vhost: str, name: str, type_: str, durable: bool = True) -> None: ...
    def delete_exchange(self, vhost: str, name: str) -> None: ...
    def declare_queue(self, vhost: str, name: str, arguments: dict[str, Any], durable: bool = True) -> None: ...
    def delete_queue(self, vhost: str, name: str) -> None: ...
    def bind_queue(self, vhost: str, exchange: str, queue: str, routing_key: str = "") -> None: ...
    def unbind_queue(self, vhost: str, exchange: str, queue: str, properties_key: str) -> None: ...
    def put_policy(self, vhost: str, name: str, pattern: str, definition: dict[str, Any], priority: int,
                   apply_to: str = "queues") -> None: ...
    def delete_policy(self, vhost: str, name: str) -> None: ...
    def put_user(self, name: str, password: str, tags: Any = ()) -> None: ...
    def delete_user(self, name: str) -> None: ...
    def set_permissions(self, vhost: str, user: str, configure: str, write: str, read: str) -> None: ...


@dataclass(frozen=True)
class Action:
    """One change to the broker. ``describe()`` is what logs and Kubernetes events say."""

    vhost: str

    def apply(self, broker: Broker) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class DeclareExchange(Action):
    name: str
    type: str

    def apply(self, broker: Broker) -> None:
        broker.declare_exchange(self.vhost, self.name, self.type)

    def describe(self) -> str:
        return f"declared {self.type} exchange {self.name}"


@dataclass(frozen=True)
class DeleteExchange(Action):
    name: str

    def apply(self, broker: Broker) -> None:
        broker.delete_exchange(self.vhost, self.name)

    def describe(self) -> str:
        return f"deleted exchange {self.name}"


@dataclass(frozen=True)
class DeclareQueue(Action):
    name: str
    type: str

    def apply(self, broker: Broker) -> None:
        broker.declare_queue(self.vhost, self.name, DesiredQueue(self.name, self.type).arguments)

    def describe(self) -> str:
        return f"declared {self.type} queue {self.name}"


@dataclass(frozen=True)
class DeleteQueue(Action):
    name: str
    messages: int = 0

    def apply(self, broker: Broker) -> None:
        broker.delete_queue(self.vhost, self.name)

    def describe(self) -> str:
        return f"deleted queue {self.name} ({self.messages} messages)"


@dataclass(frozen=True)
class Bind(Action):
    exchange: str
    queue: str
    routing_key: str = ""

    def apply(self, broker: Broker) -> None:
        broker.bind_queue(self.vhost, self.exchange, self.queue, self.routing_key)

    def describe(self) -> str:
        key = f" with key {self.routing_key!r}" if self.routing_key else ""
        return f"bound queue {self.queue} to exchange {self.exchange}{key}"


@dataclass(frozen=True)
class Unbind(Action):
    exchange: str
    queue: str
    properties_key: str

    def apply(self, broker: Broker) -> None:
        broker.unbind_queue(self.vhost, self.exchange, self.queue, self.properties_key)

    def describe(self) -> str:
        return f"unbound queue {self.queue} from exchange {self.exchange}"


@dataclass(frozen=True)
class PutPolicy(Action):
    name: str
    pattern: str
    definition: dict[str, Any] = field(hash=False)
    priority: int = 0

    def apply(self, broker: Broker) -> None:
        broker.put_policy(self.vhost, self.name, self.pattern, self.definition, self.priority)

    def describe(self) -> str:
        return f"set policy {self.name} {self.definition}"


@dataclass(frozen=True)
class DeletePolicy(Action):
    name: str

    def apply(self, broker: Broker) -> None:
        broker.delete_policy(self.vhost, self.name)

    def describe(self) -> str:
        return f"deleted policy {self.name}"


@dataclass(frozen=True)
class PutUser(Action):
    name: str
    password: str = field(repr=False)

    def apply(self, broker: Broker) -> None:
        broker.put_user(self.name, self.password)

    def describe(self) -> str:
        return f"created broker user {self.name}"


@dataclass(frozen=True)
class DeleteUser(Action):
    name: str

    def apply(self, broker: Broker) -> None:
        broker.delete_user(self.name)

    def describe(self) -> str:
        return f"deleted broker user {self.name}"


@dataclass(frozen=True)
class SetPermissions(Action):
    user: str
    configure: str
    write: str
    read: str

    def apply(self, broker: Broker) -> None:
        broker.set_permissions(self.vhost, self.user, self.configure, self.write, self.read)

    def describe(self) -> str:
        return f"set permissions of {self.user}: configure={self.configure!r} write={self.write!r} read={self.read!r}"


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    problems: tuple[str, ...] = ()


def plan_converge(
    desired: DesiredTopology,
    snapshot: BrokerSnapshot,
    password: str,
    previous_exchange: str | None = None,
    reset_password: bool = False,
) -> Plan:
    """Actions that bring the broker to ``desired``; ``password`` is the environment user's (from its Secret)."""
    vhost, q = desired.vhost, desired.queue
    actions: list[Action] = []
    problems: list[str] = []

    exchange = snapshot.exchanges.get((vhost, desired.exchange))
    if exchange is None:
        actions.append(DeclareExchange(vhost, desired.exchange, desired.exchange_type))
    elif exchange.type != desired.exchange_type:
        problems.append(f"exchange {desired.exchange} is a {exchange.type} exchange, spec.exchange.type is "
                        f"{desired.exchange_type}")

    for wanted in [q, desired.dead_letter_queue] if desired.dead_letter else [q]:
        live = snapshot.queues.get((vhost, wanted.name))
        if live is None:
            actions.append(DeclareQueue(vhost, wanted.name, wanted.type))
        elif live.type != wanted.type:
            problems.append(f"queue {wanted.name} exists as a {live.type} queue, spec.queue.type is {wanted.type}; "
                            "a queue's type cannot change: delete the queue or keep its type")

    if desired.dead_letter:
        dlx = desired.names.dead_letter_exchange
        if (vhost, dlx) not in snapshot.exchanges:
            actions.append(DeclareExchange(vhost, dlx, "fanout"))
        if not any(b.source == dlx for b in snapshot.bindings_to(vhost, desired.names.dead_letter_queue)):
            actions.append(Bind(vhost, dlx, desired.names.dead_letter_queue))

    policy = snapshot.policies.get((vhost, desired.names.policy))
    if not desired.policy_definition:
        if policy is not None:
            actions.append(DeletePolicy(vhost, desired.names.policy))
    elif policy is None or (policy.pattern, policy.definition, policy.priority, policy.apply_to) != (
        desired.policy_pattern, desired.policy_definition, desired.policy_priority, "queues"
    ):
        actions.append(PutPolicy(vhost, desired.names.policy, desired.policy_pattern, desired.policy_definition,
                                 desired.policy_priority))

    actions += _binding_actions(desired, snapshot, previous_exchange)

    user = desired.names.broker_user
    if user not in snapshot.users or reset_password:
        actions.append(PutUser(vhost, user, password))
    perms = snapshot.permissions.get((user, vhost))
    want = desired.permissions
    if perms is None or (perms.configure, perms.write, perms.read) != (want.configure, want.write, want.read):
        actions.append(SetPermissions(vhost, user, want.configure, want.write, want.read))
    return Plan(tuple(actions), tuple(problems))


def _binding_actions(desired: DesiredTopology, snapshot: BrokerSnapshot,
                     previous_exchange: str | None) -> list[Action]:
    vhost, queue = desired.vhost, desired.queue.name
    ours = {desired.exchange, previous_exchange} - {None, ""}
    live = [b for b in snapshot.bindings_to(vhost, queue) if b.source in ours]
    wanted = {(desired.exchange, key) for key in desired.routing_keys}
    # A fanout exchange ignores keys: any binding from it counts as the one we want.
    if desired.exchange_type == "fanout" and any(b.source == desired.exchange for b in live):
        have = {(desired.exchange, "")}
        extra = [b for b in live if b.source != desired.exchange]
        extra += [b for b in live if b.source == desired.exchange][1:]
    else:
        have = {(b.source, b.routing_key) for b in live}
        extra = [b for b in live if (b.source, b.routing_key) not in wanted]
    actions: list[Action] = [Bind(vhost, ex, queue, key) for ex, key in sorted(wanted - have)]
    actions += [Unbind(vhost, b.source, queue, b.properties_key) for b in extra]
    return actions


def plan_teardown(
    desired: DesiredTopology,
    snapshot: BrokerSnapshot,
    delete_queue: bool,
    previous_exchange: str | None = None,
) -> Plan:
    """Actions on delete: always unbind (nothing is routed to a dying environment) and drop the user; delete the
    queue, its dead-letter queue and exchange and its policy only when ``delete_queue``."""
    vhost, queue = desired.vhost, desired.queue.name
    ours = {desired.exchange, previous_exchange} - {None, ""}
    actions: list[Action] = [
        Unbind(vhost, b.source, queue, b.properties_key) for b in snapshot.bindings_to(vhost, queue)
        if b.source in ours
    ]
    if desired.names.broker_user in snapshot.users:
        actions.append(DeleteUser(vhost, desired.names.broker_user))
    if delete_queue:
        for name in (queue, desired.names.dead_letter_queue):
            live = snapshot.queues.get((vhost, name))
            if live is not None:
                actions.append(DeleteQueue(vhost, name, live.messages))
        if (vhost, desired.names.dead_letter_exchange) in snapshot.exchanges:
            actions.append(DeleteExchange(vhost, desired.names.dead_letter_exchange))
        if (vhost, desired.names.policy) in snapshot.policies:
            actions.append(DeletePolicy(vhost, desired.names.policy))
    return Plan(tuple(actions))


@dataclass(frozen=True)
class QueueObservation:
    """What status reports about the environment's queues."""

    exists: bool
    messages: int = 0
    consumers: int = 0
    dead_letter_messages: int = 0
    bound: bool = False


def observe(desired: DesiredTopology, snapshot: BrokerSnapshot) -> QueueObservation:
    vhost = desired.vhost
    live = snapshot.queues.get((vhost, desired.queue.name))
    if live is None:
        return QueueObservation(exists=False)
    dlq = snapshot.queues.get((vhost, desired.names.dead_letter_queue))
    bound = any(b.source == desired.exchange for b in snapshot.bindings_to(vhost, desired.queue.name))
    return QueueObservation(
        exists=True,
        messages=live.messages_ready + live.messages_unacknowledged,
        consumers=live.consumers,
        dead_letter_messages=(dlq.messages_ready + dlq.messages_unacknowledged) if dlq else 0,
        bound=bound,
    )
