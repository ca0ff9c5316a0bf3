"""The broker topology one MatchEnvironment wants (pure: spec in, description out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from matchenv.api import MatchEnvironmentSpec, QueueType
from matchenv.contracts import queue_arguments
from matchenv.naming import (
    POLICY_PRIORITY,
    EnvironmentNames,
    archive_name,
    archive_policy_name,
    broker_regex,
    subset_exchange_name,
)
from matchenv.topology.snapshot import Scope


@dataclass(frozen=True)
class DesiredQueue:
    name: str
    type: str
    owner: str

    @property
    def arguments(self) -> dict[str, Any]:
        """Declare-time arguments: the type and the ownership marker. Everything mutable goes through the policy."""
        return queue_arguments(self.type, self.owner)


@dataclass(frozen=True)
class DesiredPermissions:
    configure: str
    write: str
    read: str


@dataclass(frozen=True)
class DesiredBackfill:
    """What the backfill Job needs on the broker: an exchange bound to the environment's queue only (a topic one
    with the queue's keys, so a subset gets only its part of the archive) and a user that reads the archive and
    writes that exchange, nothing else (not the default exchange, which reaches every queue)."""

    exchange: str
    exchange_type: str
    routing_keys: tuple[str, ...]
    archive: str
    permissions: DesiredPermissions


@dataclass(frozen=True)
class DesiredEvents:
    """What Celery task events need (``spec.workers.taskEvents``): the topic exchange the workers send them to
    (declared by the operator with the environment's marker), and Flower's user, which may read them and declare
    its own queues and broadcast exchange under that exchange's name, nothing else."""

    exchange: str
    permissions: DesiredPermissions


def events_permissions(exchange: str) -> DesiredPermissions:
    """Flower's rights: its event queues ``<exchange>.<uuid>`` bound to the events exchange, its broadcast exchange
    ``<exchange>.pidbox`` (Flower's wake-up and inspect; no worker reads it) and the replies' exchange and queues.
    Not the right to send events itself."""
    e = broker_regex(exchange)[1:-1]  # escaped, unanchored
    uuid = "[0-9a-f-]{36}"
    own = f"{e}\\.({uuid}|pidbox)|reply\\.{e}\\.pidbox|{uuid}\\.reply\\.{e}\\.pidbox"
    return DesiredPermissions(configure=f"^({e}|{own})$", write=f"^({own})$", read=f"^({e}|{own})$")


@dataclass(frozen=True)
class DesiredTopology:
    vhost: str
    exchange: str
    exchange_type: str
    queue: DesiredQueue
    routing_keys: tuple[str, ...]
    dead_letter: bool
    names: EnvironmentNames
    policy_definition: dict[str, Any] = field(hash=False)
    permissions: DesiredPermissions
    adopt: bool = False
    # a fanout environment with routing keys: the shared topic exchange bound to the fanout that its queue binds to
    subset_exchange: str | None = None
    backfill: DesiredBackfill | None = None  # spec.backfill is set
    backfill_leftover: bool = False  # no backfill wanted, but one ran: its user and exchange are to be removed
    events: DesiredEvents | None = None  # spec.workers.taskEvents
    events_leftover: bool = False  # no task events wanted, but they were: Flower's user and the exchange go
    detached: bool = False  # paused in Unbind mode: no binding from the feed (the backfill's stays)
    worker_user: str = ""  # which of the worker's two users the broker Secret names ("": the first)

    @property
    def user(self) -> str:
        """The worker's broker user in use (the other one, if it exists, is a rotation's previous)."""
        return self.worker_user or self.names.broker_user

    @property
    def binding_source(self) -> str:
        """The exchange the queue is bound to."""
        return self.subset_exchange or self.exchange

    @property
    def binding_source_type(self) -> str:
        return "topic" if self.subset_exchange else self.exchange_type

    @property
    def owner(self) -> str:
        return self.names.owner

    def owns(self, marker: str | None) -> bool:
        """Whether a marker is this environment's: its own, or the one its cluster wrote before the cluster
        identity (adopted on upgrade; :func:`~matchenv.topology.planner.queue_claimant` tells whether another
        cluster adopted it first)."""
        return marker in (self.names.owner, self.names.legacy_owner)

    @property
    def dead_letter_queue(self) -> DesiredQueue:
        return DesiredQueue(self.names.dead_letter_queue, self.queue.type, self.owner)

    def scope(self) -> Scope:
        """What its plans look at on the broker."""
        queues = (self.queue.name, self.names.dead_letter_queue)
        subset = (self.subset_exchange,) if self.subset_exchange else ()
        backfill = self.backfill is not None or self.backfill_leftover
        events = self.events is not None or self.events_leftover
        return Scope(self.vhost, queues, (self.exchange, *subset, self.names.dead_letter_exchange,
                                          *((self.names.backfill_exchange,) if backfill else ()),
                                          *((self.names.events_exchange,) if events else ()),
                                          self.queue.name),  # an exchange of the queue's name: NameReserved
                     (self.names.policy,),
                     (*self.names.worker_users, *((self.names.backfill_user,) if backfill else ()),
                      *((self.names.events_user,) if events else ())),
                     exchange_bindings=subset, legacy_users=self.names.legacy_users)

    def verification_scope(self) -> Scope:
        """What is read again after applying a plan: the queues and the dead-letter exchange (whose ownership marker
        the broker kept decides a race with another environment) and the queue's bindings (status says whether it is
        bound; the dead-letter queue's are not read again)."""
        subset = (self.subset_exchange,) if self.subset_exchange else ()
        return Scope(self.vhost, (self.queue.name, self.names.dead_letter_queue),
                     (*subset, self.names.dead_letter_exchange), (), (), exchange_bindings=subset,
                     bindings_of=(self.queue.name,))

    @property
    def policy_pattern(self) -> str:
        return broker_regex(self.queue.name)

    @property
    def policy_priority(self) -> int:
        return POLICY_PRIORITY


def desired_topology(cluster: str, namespace: str, name: str, spec: MatchEnvironmentSpec,
                     backfill_ran: bool = False, events_were_on: bool = False, replaying: bool = False,
                     detached: bool = False) -> DesiredTopology:
    """What the broker should hold for the MatchEnvironment ``namespace/name`` of ``cluster`` (``backfill_ran``:
    its status says a replay ran, whose broker objects go once none is wanted; ``events_were_on``: its status names
    an events Secret, whose user and exchange go once spec.workers.taskEvents is off; ``replaying``: a replay other
    than spec.backfill's, a pause's catch-up, needs them; ``detached``: paused in Unbind mode)."""
    queue_name = spec.queue.resolved_name(name)
    names = EnvironmentNames(cluster, namespace, name, queue_name)
    # A policy only when the broker has something to enforce: a length limit, a TTL, a quorum queue's delivery
    # limit, and then dead-lettering with it. RabbitMQ matches every queue of the vhost against every policy on each
    # policy change (O(queues x policies)): a policy per environment made 500 environments take 146 s to converge.
    # The workers dead-letter what they refuse themselves, to the same exchange, with or without a policy.
    definition: dict[str, Any] = {}
    if spec.queue.max_length is not None:
        definition["max-length"] = spec.queue.max_length
        if spec.queue.overflow is not None:
            definition["overflow"] = spec.queue.overflow.value
    if spec.queue.message_ttl_seconds is not None:
        definition["message-ttl"] = spec.queue.message_ttl_seconds * 1000
    if spec.queue.dead_letter:
        if spec.queue.type is QueueType.QUORUM:
            # a message that keeps failing (one that kills the worker process) ends in the DLQ, not in a loop
            definition["delivery-limit"] = spec.queue.delivery_limit
        if definition:
            definition["dead-letter-exchange"] = names.dead_letter_exchange
    own_queue = broker_regex(queue_name)
    # The worker may declare (with identical arguments) and consume its own queue, and publish a malformed
    # message with its reason to its own dead-letter exchange. Nothing else: no default exchange, no other queue.
    write = broker_regex(names.dead_letter_exchange) if spec.queue.dead_letter else ""
    configure = own_queue
    events = None
    if spec.workers.task_events:  # ... and declare and send to its task events' exchange
        events = DesiredEvents(names.events_exchange, events_permissions(names.events_exchange))
        own_events = broker_regex(names.events_exchange)
        configure = f"{own_queue}|{own_events}"
        write = f"{write}|{own_events}" if write else own_events
    keys = tuple(spec.queue.routing_keys or ()) or ("",)  # no keys: the one binding a fanout needs
    subset = subset_exchange_name(spec.exchange.name) if (
        spec.exchange.type.value == "fanout" and spec.queue.routing_keys) else None
    backfill = None
    if spec.backfill is not None or replaying:
        archive = archive_name(spec.exchange.name)
        backfill = DesiredBackfill(
            exchange=names.backfill_exchange,
            exchange_type="topic" if spec.queue.routing_keys else "fanout",
            routing_keys=keys,
            archive=archive,
            permissions=DesiredPermissions(configure="", write=broker_regex(names.backfill_exchange),
                                           read=broker_regex(archive)),
        )
    return DesiredTopology(
        vhost=spec.broker.vhost,
        exchange=spec.exchange.name,
        exchange_type=spec.exchange.type.value,
        queue=DesiredQueue(queue_name, spec.queue.type.value, names.owner),
        routing_keys=keys,
        dead_letter=spec.queue.dead_letter,
        names=names,
        policy_definition=definition,
        permissions=DesiredPermissions(configure=configure, write=write, read=own_queue),
        adopt=spec.queue.adopt,
        subset_exchange=subset,
        backfill=backfill,
        backfill_leftover=backfill is None and backfill_ran,
        events=events,
        events_leftover=events is None and events_were_on,
        detached=detached,
    )


@dataclass(frozen=True)
class DesiredPublisher:
    """The scraper's broker user: it may publish to the allowed exchanges, in the allowed vhosts, and nothing else
    (no queue to declare or read, not the default exchange)."""

    user: str
    vhosts: tuple[str, ...]
    permissions: DesiredPermissions


def desired_publisher(user: str, exchanges: list[str], vhosts: list[str]) -> DesiredPublisher:
    write = "|".join(broker_regex(e) for e in exchanges) if exchanges else ""
    return DesiredPublisher(user, tuple(vhosts), DesiredPermissions(configure="", write=write, read=""))


def stream_arguments(segment_bytes: int) -> dict[str, Any]:
    """Declare-time arguments of the archive: a stream, and its segment size (the rest is in its policy)."""
    return {"x-queue-type": "stream", "x-stream-max-segment-size-bytes": segment_bytes}


@dataclass(frozen=True)
class DesiredArchive:
    """The stream that keeps every match published to ``exchange``, bound to it (every key), with its retention
    in a policy (so a changed setting applies to the live stream); shared by every environment of the exchange."""

    vhost: str
    exchange: str
    exchange_type: str
    name: str
    segment_bytes: int
    policy: str
    policy_definition: dict[str, Any] = field(hash=False)

    @property
    def binding_key(self) -> str:
        return "#" if self.exchange_type == "topic" else ""

    def scope(self) -> Scope:
        return Scope(self.vhost, (self.name,), (), (self.policy,), (), claimants=False)

    def release_scope(self) -> Scope:
        """What the release looks at: the archive, and who else the exchange (and its subset exchange) feeds."""
        return Scope(self.vhost, (self.name,), (), (), (),
                     source_bindings=(self.exchange, subset_exchange_name(self.exchange)), claimants=False)


def desired_archive(vhost: str, exchange: str, exchange_type: str, max_age: str, max_bytes: int,
                    segment_bytes: int) -> DesiredArchive:
    return DesiredArchive(vhost, exchange, exchange_type, archive_name(exchange), segment_bytes,
                          archive_policy_name(exchange), {"max-age": max_age, "max-length-bytes": max_bytes})
