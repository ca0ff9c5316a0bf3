"""Pure planning: (desired topology, broker snapshot) → the actions that make the broker match, and the problems
that no action can fix (a queue of another type, an exchange of another type).

Ownership comes first: a queue, dead-letter queue or dead-letter exchange that belongs to another
MatchEnvironment (its ``x-matchenv-owner`` marker, or for unmarked queues the matchenv user that may read it), or a
queue that exists but was not made by matchenv (unless the spec adopts it), is a :class:`Refusal`: nothing of it is
declared, bound, given a policy or opened to this environment's user, and a teardown leaves it alone.

Running the plan and planning again against a fresh snapshot yields no actions: that is what makes reconciles
idempotent, and the unit tests check it for every spec field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from matchenv.contracts import OWNER_ARGUMENT, derived_suffix, describe_owner, names_cluster
from matchenv.naming import (
    POLICY_PRIORITY,
    broker_regex,
    owner_of_broker_user,
    subset_exchange_name,
)
from matchenv.topology.desired import (
    DesiredArchive,
    DesiredPermissions,
    DesiredPublisher,
    DesiredQueue,
    DesiredTopology,
    stream_arguments,
)
from matchenv.topology.snapshot import BrokerSnapshot, Permission, Policy


class Broker(Protocol):
    """What actions need from the management client (``ManagementClient`` satisfies it)."""

    def declare_exchange(self, vhost: str, name: str, type_: str, durable: bool = True,
                         arguments: dict[str, Any] | None = None) -> None: ...
    def delete_exchange(self, vhost: str, name: str) -> None: ...
    def declare_queue(self, vhost: str, name: str, arguments: dict[str, Any], durable: bool = True) -> None: ...
    def delete_queue(self, vhost: str, name: str, if_empty: bool = False) -> None: ...
    def bind_queue(self, vhost: str, exchange: str, queue: str, routing_key: str = "") -> None: ...
    def bind_exchange(self, vhost: str, source: str, destination: str, routing_key: str = "") -> None: ...
    def unbind_queue(self, vhost: str, exchange: str, queue: str, properties_key: str) -> None: ...
    def put_policy(self, vhost: str, name: str, pattern: str, definition: dict[str, Any], priority: int,
                   apply_to: str = "queues") -> None: ...
    def delete_policy(self, vhost: str, name: str) -> None: ...
    def put_operator_policy(self, vhost: str, name: str, pattern: str, definition: dict[str, Any],
                            priority: int) -> None: ...
    def delete_operator_policy(self, vhost: str, name: str) -> None: ...
    def put_user(self, name: str, password: str, tags: Any = ()) -> None: ...
    def delete_user(self, name: str) -> None: ...
    def set_permissions(self, vhost: str, user: str, configure: str, write: str, read: str) -> None: ...
    def clear_permissions(self, vhost: str, user: str) -> None: ...


@dataclass(frozen=True)
class Action:
    """One change to the broker. ``describe()`` is what logs and Kubernetes events say."""

    vhost: str
    # a removal: done when what it removes is gone already (another converge, a teardown beside it, a person)
    removal: ClassVar[bool] = False

    def apply(self, broker: Broker) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class DeclareExchange(Action):
    name: str
    type: str
    owner: str = ""  # the ownership marker of an exchange one environment owns (its dead-letter exchange)

    def apply(self, broker: Broker) -> None:
        broker.declare_exchange(self.vhost, self.name, self.type,
                                arguments={OWNER_ARGUMENT: self.owner} if self.owner else None)

    def describe(self) -> str:
        return f"declared {self.type} exchange {self.name}"


@dataclass(frozen=True)
class DeleteExchange(Action):
    removal: ClassVar[bool] = True
    name: str

    def apply(self, broker: Broker) -> None:
        broker.delete_exchange(self.vhost, self.name)

    def describe(self) -> str:
        return f"deleted exchange {self.name}"


@dataclass(frozen=True)
class DeclareQueue(Action):
    name: str
    type: str
    owner: str

    def apply(self, broker: Broker) -> None:
        broker.declare_queue(self.vhost, self.name, DesiredQueue(self.name, self.type, self.owner).arguments)

    def describe(self) -> str:
        return f"declared {self.type} queue {self.name}"


@dataclass(frozen=True)
class DeclareStream(Action):
    name: str
    segment_bytes: int

    def apply(self, broker: Broker) -> None:
        broker.declare_queue(self.vhost, self.name, stream_arguments(self.segment_bytes))

    def describe(self) -> str:
        return f"declared stream {self.name}"


@dataclass(frozen=True)
class DeleteQueue(Action):
    removal: ClassVar[bool] = True
    name: str
    messages: int = 0
    if_empty: bool = False  # the broker refuses if a message is in it (exact, where the statistics lag)

    def apply(self, broker: Broker) -> None:
        broker.delete_queue(self.vhost, self.name, if_empty=self.if_empty)

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
class BindExchange(Action):
    source: str
    destination: str

    def apply(self, broker: Broker) -> None:
        broker.bind_exchange(self.vhost, self.source, self.destination)

    def describe(self) -> str:
        return f"bound exchange {self.destination} to exchange {self.source}"


@dataclass(frozen=True)
class Unbind(Action):
    removal: ClassVar[bool] = True
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
class PutOperatorPolicy(Action):
    name: str
    pattern: str
    definition: dict[str, Any] = field(hash=False)

    def apply(self, broker: Broker) -> None:
        broker.put_operator_policy(self.vhost, self.name, self.pattern, self.definition, 0)

    def describe(self) -> str:
        return f"set operator policy {self.name} {self.definition} on queues matching {self.pattern}"


@dataclass(frozen=True)
class DeleteOperatorPolicy(Action):
    removal: ClassVar[bool] = True
    name: str

    def apply(self, broker: Broker) -> None:
        broker.delete_operator_policy(self.vhost, self.name)

    def describe(self) -> str:
        return f"deleted operator policy {self.name}"


@dataclass(frozen=True)
class DeletePolicy(Action):
    removal: ClassVar[bool] = True
    name: str

    def apply(self, broker: Broker) -> None:
        broker.delete_policy(self.vhost, self.name)

    def describe(self) -> str:
        return f"deleted policy {self.name}"


@dataclass(frozen=True)
class PutUser(Action):
    name: str
    password: str = field(repr=False)
    exists: bool = False  # the user is there with another password: this sets the Secret's one

    def apply(self, broker: Broker) -> None:
        broker.put_user(self.name, self.password)

    def describe(self) -> str:
        if self.exists:
            return f"set the password of broker user {self.name} to the one in its Secret"
        return f"created broker user {self.name}"


@dataclass(frozen=True)
class DeleteUser(Action):
    removal: ClassVar[bool] = True
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
class ClearPermissions(Action):
    removal: ClassVar[bool] = True
    user: str

    def apply(self, broker: Broker) -> None:
        broker.clear_permissions(self.vhost, self.user)

    def describe(self) -> str:
        return f"removed the permissions of {self.user} on vhost {self.vhost}"


@dataclass(frozen=True)
class Refusal:
    """Why this environment may not have the broker objects it names; ``reason`` is its condition reason."""

    reason: str  # QueueClaimed | QueueExists | NameReserved
    message: str


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    problems: tuple[str, ...] = ()
    refusal: Refusal | None = None


def queue_claimant(snapshot: BrokerSnapshot, vhost: str, queue: str) -> str | None:
    """The marker of the MatchEnvironment a live queue belongs to (``cluster/namespace/name``); None if nobody's.

    A cluster's marker decides. A queue without one (adopted, or declared before the cluster identity with a
    legacy ``namespace/name`` marker) belongs to the environment whose user of a cluster reads exactly it (the
    cluster that adopted it first), else to its legacy marker, else to the legacy matchenv user that reads it."""
    live = snapshot.queues.get((vhost, queue))
    if live is None:
        return None
    if live.claimed_by_cluster:
        return live.owner
    pattern = broker_regex(queue)
    readers = sorted(owner for p in snapshot.permissions.values()
                     if p.vhost == vhost and p.read == pattern and (owner := owner_of_broker_user(p.user)))
    of_a_cluster = [r for r in readers if names_cluster(r)]
    if of_a_cluster:
        return of_a_cluster[0]
    return live.owner or (readers[0] if readers else None)


def reserved_name(desired: DesiredTopology, snapshot: BrokerSnapshot) -> Refusal | None:
    """A queue name that is (or ends like) a name matchenv derives, or that an exchange of the vhost carries: its
    user's configure and read rights would reach that exchange (delete it, bind it elsewhere)."""
    queue, vhost = desired.queue.name, desired.vhost
    suffix = derived_suffix(queue)
    if suffix is not None:
        return Refusal("NameReserved", f"queue {queue} ends with {suffix}, a name matchenv derives for its own "
                       "objects (dead-letter, backfill, subset and archive exchanges and queues); choose another "
                       "queue.name")
    if (vhost, queue) in snapshot.exchanges:
        return Refusal("NameReserved", f"exchange {queue} exists in vhost {vhost}: a queue of the same name would "
                       "give this environment's broker user rights on that exchange (RabbitMQ's permissions cover "
                       "queues and exchanges alike); choose another queue.name")
    return None


def check_ownership(desired: DesiredTopology, snapshot: BrokerSnapshot) -> Refusal | None:
    """None when every queue and exchange this environment would own is free or already its own, and its queue's
    name reaches nothing else (its user's permissions are regexes over queues and exchanges alike)."""
    vhost = desired.vhost
    reserved = reserved_name(desired, snapshot)
    if reserved is not None:
        return reserved
    queue_owner = queue_claimant(snapshot, vhost, desired.queue.name)
    names = [desired.queue.name] + ([desired.names.dead_letter_queue] if desired.dead_letter else [])
    for name in names:
        if (vhost, name) not in snapshot.queues:
            continue
        owner = queue_claimant(snapshot, vhost, name)
        if owner is None and name != desired.queue.name and desired.owns(queue_owner):
            owner = desired.owner  # the dead-letter queue of an adopted (or pre-marker) queue of ours
        if owner is None:
            if desired.adopt:
                continue
            return Refusal("QueueExists", f"queue {name} (vhost {vhost}) exists and was not made by matchenv; "
                           "set spec.queue.adopt: true to take it over with its messages")
        if not desired.owns(owner):
            return Refusal("QueueClaimed", f"queue {name} (vhost {vhost}) belongs to {describe_owner(owner)}")
    owned = ([desired.names.dead_letter_exchange] if desired.dead_letter else []) + (
        [desired.names.backfill_exchange] if desired.backfill is not None else [])
    for name in owned:
        exchange = snapshot.exchanges.get((vhost, name))
        if exchange is not None and exchange.owner and not desired.owns(exchange.owner):
            return Refusal("QueueClaimed", f"exchange {exchange.name} (vhost {vhost}) belongs to "
                           f"{describe_owner(exchange.owner)}")
    return None


def plan_revoke(desired: DesiredTopology, snapshot: BrokerSnapshot) -> tuple[Action, ...]:
    """Take back whatever permissions the environment's users hold on its vhost (a refused environment)."""
    return tuple(ClearPermissions(desired.vhost, user) for user in desired.names.worker_users
                 if (user, desired.vhost) in snapshot.permissions)


def plan_converge(desired: DesiredTopology, snapshot: BrokerSnapshot, password: str,
                  backfill_password: str = "", events_password: str = "") -> Plan:
    """Actions that bring the broker to ``desired``; ``password`` is the environment user's (from its Secret),
    ``backfill_password`` the backfill Job's (with spec.backfill), ``events_password`` Flower's (with task events).

    A refused environment gets no actions but the removal of any permissions its user holds on the vhost."""
    vhost, q = desired.vhost, desired.queue
    user = desired.user
    refusal = check_ownership(desired, snapshot)
    if refusal is not None:
        return Plan(plan_revoke(desired, snapshot), refusal=refusal)
    actions: list[Action] = []
    problems: list[str] = []

    exchange = snapshot.exchanges.get((vhost, desired.exchange))
    if exchange is None:
        actions.append(DeclareExchange(vhost, desired.exchange, desired.exchange_type))
    elif exchange.type != desired.exchange_type:
        hint = "; to receive a subset of a fanout feed keep exchange.type fanout and set queue.routingKeys" if (
            exchange.type == "fanout") else ""
        problems.append(f"exchange {desired.exchange} is a {exchange.type} exchange, spec.exchange.type is "
                        f"{desired.exchange_type}{hint}")

    if desired.subset_exchange:
        # shared by every environment that takes a subset of this fanout; bound to it once, never deleted by one
        subset = snapshot.exchanges.get((vhost, desired.subset_exchange))
        if subset is None:
            actions.append(DeclareExchange(vhost, desired.subset_exchange, "topic"))
        elif subset.type != "topic":
            problems.append(f"exchange {desired.subset_exchange} is a {subset.type} exchange; queue.routingKeys on "
                            f"the fanout {desired.exchange} need it to be the topic exchange matchenv binds to it")
        if subset is None or not snapshot.exchange_bound(vhost, desired.exchange, desired.subset_exchange):
            actions.append(BindExchange(vhost, desired.exchange, desired.subset_exchange))

    for wanted in [q, desired.dead_letter_queue] if desired.dead_letter else [q]:
        live = snapshot.queues.get((vhost, wanted.name))
        if live is None:
            actions.append(DeclareQueue(vhost, wanted.name, wanted.type, wanted.owner))
        elif live.type != wanted.type:
            problems.append(f"queue {wanted.name} exists as a {live.type} queue, spec.queue.type is {wanted.type}; "
                            "a queue's type cannot change: delete the queue or keep its type")

    if desired.dead_letter:
        dlx = desired.names.dead_letter_exchange
        if (vhost, dlx) not in snapshot.exchanges:
            actions.append(DeclareExchange(vhost, dlx, "fanout", desired.owner))
        if not any(b.source == dlx for b in snapshot.bindings_to(vhost, desired.names.dead_letter_queue)):
            actions.append(Bind(vhost, dlx, desired.names.dead_letter_queue))

    policy = snapshot.policies.get((vhost, desired.names.policy))
    definition = policy_for(desired, snapshot)
    if not definition:
        if policy is not None:
            actions.append(DeletePolicy(vhost, desired.names.policy))
    elif policy is None or (policy.pattern, policy.definition, policy.priority, policy.apply_to) != (
        desired.policy_pattern, definition, desired.policy_priority, "queues"
    ):
        actions.append(PutPolicy(vhost, desired.names.policy, desired.policy_pattern, definition,
                                 desired.policy_priority))

    backfill = desired.backfill
    if backfill is not None:
        replays = snapshot.exchanges.get((vhost, backfill.exchange))
        if replays is None:
            actions.append(DeclareExchange(vhost, backfill.exchange, backfill.exchange_type, desired.owner))
        elif replays.type != backfill.exchange_type:  # the queue's keys came or went: a new exchange, same name
            actions += [DeleteExchange(vhost, backfill.exchange),
                        DeclareExchange(vhost, backfill.exchange, backfill.exchange_type, desired.owner)]

    events = desired.events
    if events is not None:
        live_events = snapshot.exchanges.get((vhost, events.exchange))
        if live_events is None:
            actions.append(DeclareExchange(vhost, events.exchange, "topic", desired.owner))
        elif live_events.type != "topic" or not desired.owns(live_events.owner):
            problems.append(f"exchange {events.exchange} exists and is not this environment's topic exchange for "
                            "task events (spec.workers.taskEvents); delete it or turn taskEvents off")

    actions += _binding_actions(desired, snapshot)

    if backfill is not None:
        actions += _user_actions(vhost, desired.names.backfill_user, backfill.permissions, backfill_password,
                                 snapshot)
    elif desired.backfill_leftover:
        actions += _extra_removal(desired, snapshot, desired.names.backfill_user, desired.names.backfill_exchange)
    if events is not None:
        if events_password:  # none: its Secret is someone else's (reported by the step)
            actions += _user_actions(vhost, desired.names.events_user, events.permissions, events_password,
                                     snapshot)
    elif desired.events_leftover:
        actions += _extra_removal(desired, snapshot, desired.names.events_user, desired.names.events_exchange)

    actions += _user_actions(vhost, user, desired.permissions, password, snapshot)
    actions += _legacy_user_removal(desired, snapshot)  # after: the queue is claimed by the new user's rights
    return Plan(tuple(actions), tuple(problems))


def policy_for(desired: DesiredTopology, snapshot: BrokerSnapshot) -> dict[str, Any]:
    """The environment's policy on this broker. RabbitMQ 4 gives a quorum queue a delivery limit of 20 of its own,
    after which a message is dropped where no dead-letter exchange takes it: without one, the limit is lifted
    (-1, which RabbitMQ 3 refuses and never needs), so a valid match is never dropped."""
    definition = desired.policy_definition
    if desired.queue.type == "quorum" and "delivery-limit" not in definition and (snapshot.major or 0) >= 4:
        return {**definition, "delivery-limit": -1}
    return definition


def _legacy_user_removal(desired: DesiredTopology, snapshot: BrokerSnapshot) -> list[Action]:
    """The users versions before the cluster identity made for this environment (``matchenv.<ns>.<name>`` and its
    backfill's), when their rights on the vhost reach exactly this environment's queue or backfill exchange: the
    same name on another queue is another cluster's environment, left alone."""
    vhost, names = desired.vhost, desired.names
    worker, backfill = names.legacy_users
    queue, replays = broker_regex(desired.queue.name), broker_regex(names.backfill_exchange)
    ours: tuple[tuple[str, Callable[[Permission], bool]], ...] = (
        (worker, lambda p: p.read == queue), (backfill, lambda p: p.write == replays))
    return [DeleteUser(vhost, user) for user, reaches in ours
            if user in snapshot.users and (perms := snapshot.permissions.get((user, vhost))) and reaches(perms)]


def _user_actions(vhost: str, user: str, want: DesiredPermissions, password: str,
                  snapshot: BrokerSnapshot) -> list[Action]:
    actions: list[Action] = []
    live_user = snapshot.users.get(user)
    if live_user is None or live_user.has_password(password) is False:
        actions.append(PutUser(vhost, user, password, exists=live_user is not None))
    perms = snapshot.permissions.get((user, vhost))
    if perms is None or (perms.configure, perms.write, perms.read) != (want.configure, want.write, want.read):
        actions.append(SetPermissions(vhost, user, want.configure, want.write, want.read))
    return actions


def _extra_removal(desired: DesiredTopology, snapshot: BrokerSnapshot, user: str, exchange: str) -> list[Action]:
    """An extra user (the backfill's, Flower's) and its exchange, when they exist and the exchange is this
    environment's (its marker: never one of the same name made by someone else)."""
    vhost = desired.vhost
    actions: list[Action] = []
    if user in snapshot.users:
        actions.append(DeleteUser(vhost, user))
    made = snapshot.exchanges.get((vhost, exchange))
    if made is not None and desired.owns(made.owner):
        actions.append(DeleteExchange(vhost, exchange))
    return actions


def plan_length_cap(vhost: str, policy: str, pattern: str, max_length: int, live: Policy | None,
                    legacy: Policy | None = None) -> tuple[Action, ...]:
    """The administrator's maximum queue length (0: none) as one operator policy (``policy``, one per cluster) per
    vhost over the queues the operator's pattern admits, paused environments' and dead-letter queues included:
    RabbitMQ combines it with each queue's own policy, the lower limit winning, and drops the oldest messages beyond
    it (dead-lettered as maxlen where the queue's policy names a dead-letter exchange). One policy, not one per
    environment: every policy change makes the broker match every queue against every policy. ``legacy``: the one
    versions before the cluster identity kept, removed."""
    actions: tuple[Action, ...] = (DeleteOperatorPolicy(vhost, legacy.name),) if legacy is not None else ()
    if not max_length:
        return actions + ((DeleteOperatorPolicy(vhost, policy),) if live is not None else ())
    definition = {"max-length": max_length}
    if live is None or (live.pattern, live.definition, live.apply_to) != (pattern, definition, "queues"):
        return (*actions, PutOperatorPolicy(vhost, policy, pattern, definition))
    return actions


def plan_archive(archive: DesiredArchive, snapshot: BrokerSnapshot) -> Plan:
    """The archive stream, bound to its exchange, with its retention policy."""
    vhost = archive.vhost
    actions: list[Action] = []
    problems: list[str] = []
    live = snapshot.queues.get((vhost, archive.name))
    if live is None:
        actions.append(DeclareStream(vhost, archive.name, archive.segment_bytes))
    elif live.type != "stream":
        problems.append(f"the archive {archive.name} exists as a {live.type} queue, not a stream: backfills cannot "
                        "read it (delete it and the operator declares the stream)")
        return Plan(problems=tuple(problems))
    if not any(b.source == archive.exchange for b in snapshot.bindings_to(vhost, archive.name)):
        actions.append(Bind(vhost, archive.exchange, archive.name, archive.binding_key))
    policy = snapshot.policies.get((vhost, archive.policy))
    pattern = broker_regex(archive.name)
    if policy is None or (policy.pattern, policy.definition, policy.priority, policy.apply_to) != (
            pattern, archive.policy_definition, POLICY_PRIORITY, "queues"):
        actions.append(PutPolicy(vhost, archive.policy, pattern, archive.policy_definition, POLICY_PRIORITY))
    return Plan(tuple(actions), tuple(problems))


def plan_archive_detach(archive: DesiredArchive, snapshot: BrokerSnapshot) -> Plan:
    """The archive stops following its exchange (it keeps what it holds) once nothing else is bound to it (read
    with :meth:`DesiredArchive.release_scope`): a publish that reaches no environment must be reported unroutable
    again, not archived silently. The broker's bindings decide, not one operator's list of environments: another
    cluster's environments, or ours through another Secret for the same broker, keep it."""
    vhost = archive.vhost
    topic = subset_exchange_name(archive.exchange)
    fed = [b for b in snapshot.bindings if b.vhost == vhost and b.source in (archive.exchange, topic)
           and b.destination != archive.name and not (b.source == archive.exchange and b.destination == topic)]
    if fed:
        return Plan()
    return Plan(tuple(Unbind(vhost, b.source, archive.name, b.properties_key)
                      for b in snapshot.bindings_to(vhost, archive.name) if b.source == archive.exchange))


def plan_publisher(desired: DesiredPublisher, snapshot: BrokerSnapshot, password: str) -> tuple[Action, ...]:
    """The publisher user with ``password`` (from its Secret) and exactly its permissions in each vhost."""
    actions: list[Action] = []
    live_user = snapshot.users.get(desired.user)
    if live_user is None or live_user.has_password(password) is False:
        actions.append(PutUser(desired.vhosts[0] if desired.vhosts else "/", desired.user, password,
                               exists=live_user is not None))
    want = desired.permissions
    for vhost in desired.vhosts:
        perms = snapshot.permissions.get((desired.user, vhost))
        if perms is None or (perms.configure, perms.write, perms.read) != (want.configure, want.write, want.read):
            actions.append(SetPermissions(vhost, desired.user, want.configure, want.write, want.read))
    return tuple(actions)


def _binding_actions(desired: DesiredTopology, snapshot: BrokerSnapshot) -> list[Action]:
    """Bindings follow the spec: every binding to the owned queue that it does not ask for is removed, whichever
    exchange it comes from (a hand-made or a previous exchange's binding alike). Paused in Unbind mode, it asks for
    none from the feed."""
    vhost, queue, source = desired.vhost, desired.queue.name, desired.binding_source
    live = snapshot.bindings_to(vhost, queue)
    wanted = set() if desired.detached else {(source, key) for key in desired.routing_keys}
    if desired.backfill is not None:
        wanted |= {(desired.backfill.exchange, key) for key in desired.backfill.routing_keys}
    # A fanout exchange ignores keys: any one binding from it counts as the one we want.
    from_ours = [b for b in live if b.source == source]
    if desired.binding_source_type == "fanout" and from_ours and not desired.detached:
        have = {(source, "")} | {(b.source, b.routing_key) for b in live if b.source != source}
        extra = [b for b in live if b.source != source and (b.source, b.routing_key) not in wanted] + from_ours[1:]
    else:
        have = {(b.source, b.routing_key) for b in live}
        extra = [b for b in live if (b.source, b.routing_key) not in wanted]
    actions: list[Action] = [Bind(vhost, ex, queue, key) for ex, key in sorted(wanted - have)]
    actions += [Unbind(vhost, b.source, queue, b.properties_key) for b in extra]
    return actions


def plan_detach(desired: DesiredTopology, snapshot: BrokerSnapshot) -> Plan:
    """First step of a deletion: unbind the owned queue from every exchange, so nothing new is routed to it."""
    vhost, queue = desired.vhost, desired.queue.name
    refusal = check_ownership(desired, snapshot)
    if refusal is not None:
        return Plan(refusal=refusal)
    return Plan(tuple(Unbind(vhost, b.source, queue, b.properties_key) for b in snapshot.bindings_to(vhost, queue)))


def plan_remove(desired: DesiredTopology, snapshot: BrokerSnapshot, delete_queue: bool, if_empty: bool = False
                ) -> Plan:
    """Last step of a deletion, once the workers are gone: drop the user; delete the queue, its dead-letter queue
    and exchange and its policy only when ``delete_queue`` and only when they are this environment's (the queue
    only if the broker finds it empty, with ``if_empty``)."""
    vhost, queue = desired.vhost, desired.queue.name
    actions: list[Action] = []
    for extra in (*desired.names.worker_users, desired.names.backfill_user, desired.names.events_user):
        if extra in snapshot.users:
            actions.append(DeleteUser(vhost, extra))
    refusal = check_ownership(desired, snapshot)
    if refusal is not None:
        return Plan(tuple(actions), refusal=refusal)
    actions += _legacy_user_removal(desired, snapshot)
    if delete_queue:
        for name in (queue, desired.names.dead_letter_queue):
            live = snapshot.queues.get((vhost, name))
            if live is not None:
                actions.append(DeleteQueue(vhost, name, live.messages or 0, if_empty=if_empty and name == queue))
        dlx = snapshot.exchanges.get((vhost, desired.names.dead_letter_exchange))
        if dlx is not None and (dlx.owner is None or desired.owns(dlx.owner)):
            actions.append(DeleteExchange(vhost, desired.names.dead_letter_exchange))
        if (vhost, desired.names.policy) in snapshot.policies:
            actions.append(DeletePolicy(vhost, desired.names.policy))
    for exchange in (desired.names.backfill_exchange, desired.names.events_exchange):
        made = snapshot.exchanges.get((vhost, exchange))
        if made is not None and desired.owns(made.owner):  # whatever the deletion policy: they hold nothing
            actions.append(DeleteExchange(vhost, exchange))
    return Plan(tuple(actions))


def previous_user(desired: DesiredTopology, snapshot: BrokerSnapshot) -> str | None:
    """The worker's other user, when it still exists: a rotation's previous, kept while a worker may use it."""
    other = desired.names.other_worker_user(desired.user)
    return other if other in snapshot.users else None


def plan_release(old: DesiredTopology, snapshot: BrokerSnapshot, delete_queue: bool, drop_user: bool,
                 clear_permissions: bool) -> Plan:
    """Let go of where the environment was before a change of queue name, vhost or broker (``old``): unbind the
    old queue, delete it with its dead-letter queue, exchange and policy under ``delete_queue``, and take the
    user's permissions on the old vhost back (``clear_permissions``, after a change of vhost) or the whole user
    (``drop_user``, on a broker it no longer uses). Nothing of a queue that is not this environment's is
    touched."""
    vhost = old.vhost
    refusal = check_ownership(old, snapshot)
    actions: list[Action] = []
    if refusal is None:
        actions += plan_detach(old, snapshot).actions
        removal = plan_remove(old, snapshot, delete_queue=delete_queue).actions
        actions += [a for a in removal if not isinstance(a, DeleteUser)]
    if drop_user:
        actions += [DeleteUser(vhost, user) for user in (*old.names.worker_users, old.names.backfill_user,
                                                         old.names.events_user) if user in snapshot.users]
    elif clear_permissions:
        actions += [ClearPermissions(vhost, user) for user in old.names.worker_users
                    if (user, vhost) in snapshot.permissions]
    return Plan(tuple(actions), refusal=refusal)


@dataclass(frozen=True)
class QueueObservation:
    """What status reports about the environment's queues; None counts are unknown (not reported)."""

    exists: bool
    messages: int | None = 0  # ready + unacknowledged: the backlog
    consumers: int | None = 0
    dead_letter_messages: int | None = 0
    bound: bool = False
    ready: int | None = 0
    unacknowledged: int | None = 0
    oldest_published: int | None = None  # when the oldest message waiting was published (classic queues only)
    # a quorum queue's replicas (empty for other types): the nodes holding one, those running, the leader
    members: tuple[str, ...] = ()
    online: tuple[str, ...] = ()
    leader: str | None = None

    @property
    def offline(self) -> tuple[str, ...]:
        """The members not running: a node down or cut off."""
        return tuple(m for m in self.members if m not in self.online)

    @property
    def running(self) -> int:
        """How many of its members run."""
        return len(self.members) - len(self.offline)

    @property
    def has_quorum(self) -> bool:
        """More than half its members run (a queue without members has nothing to lose)."""
        return not self.members or 2 * self.running > len(self.members)


def observe(desired: DesiredTopology, snapshot: BrokerSnapshot) -> QueueObservation:
    vhost = desired.vhost
    live = snapshot.queues.get((vhost, desired.queue.name))
    if live is None:
        return QueueObservation(exists=False)
    dlq = snapshot.queues.get((vhost, desired.names.dead_letter_queue))
    bound = any(b.source == desired.binding_source for b in snapshot.bindings_to(vhost, desired.queue.name))
    if desired.subset_exchange:
        bound = bound and snapshot.exchange_bound(vhost, desired.exchange, desired.subset_exchange)
    return QueueObservation(
        exists=True,
        messages=live.backlog,
        consumers=live.consumers,
        dead_letter_messages=dlq.backlog if dlq else 0,
        bound=bound,
        ready=live.messages_ready,
        unacknowledged=live.messages_unacknowledged,
        oldest_published=live.head_timestamp if live.backlog else None,
        members=live.members,
        online=live.online,
        leader=live.leader,
    )
