"""What the broker holds, as read in one pass: queues, exchanges, bindings, policies, users, permissions."""

from __future__ import annotations

import base64
import functools
import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from matchenv.contracts import OWNER_ARGUMENT, names_cluster


@dataclass(frozen=True)
class Queue:
    vhost: str
    name: str
    type: str = "classic"
    durable: bool = True
    arguments: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    # None: the broker did not report it (statistics off, or not collected yet): unknown, never 0
    messages: int | None = 0
    messages_ready: int | None = 0
    messages_unacknowledged: int | None = 0
    consumers: int | None = 0
    policy: str | None = None
    # when the message at its head was published (its AMQP timestamp, Unix seconds): classic queues report it, for
    # messages that carry one (the scraper stamps each); None: empty, not reported, or not stamped
    head_timestamp: int | None = None
    # a quorum queue's replicas: the nodes that hold one, those running, and the one that leads (others: empty)
    members: tuple[str, ...] = field(default=(), compare=False)
    online: tuple[str, ...] = field(default=(), compare=False)
    leader: str | None = field(default=None, compare=False)

    @property
    def owner(self) -> str | None:
        """The ownership marker matchenv declared the queue with (``cluster/namespace/name``), if any."""
        marker = self.arguments.get(OWNER_ARGUMENT)
        return marker if isinstance(marker, str) and marker else None

    @property
    def claimed_by_cluster(self) -> bool:
        """Whether its marker names a cluster (else: none, or a legacy one from before the cluster identity)."""
        return names_cluster(self.owner)

    @property
    def backlog(self) -> int | None:
        """Ready plus unacknowledged messages, or None when the broker did not report both."""
        if self.messages_ready is None or self.messages_unacknowledged is None:
            return None
        return self.messages_ready + self.messages_unacknowledged

    @classmethod
    def from_api(cls, row: dict[str, Any]) -> Queue:
        return cls(
            vhost=row["vhost"],
            name=row["name"],
            type=row.get("type") or row.get("arguments", {}).get("x-queue-type") or "classic",
            durable=bool(row.get("durable", True)),
            arguments=row.get("arguments") or {},
            messages=_count(row, "messages"),
            messages_ready=_count(row, "messages_ready"),
            messages_unacknowledged=_count(row, "messages_unacknowledged"),
            consumers=_count(row, "consumers"),
            policy=row.get("policy") or None,
            head_timestamp=_count(row, "head_message_timestamp"),
            members=_names(row, "members"),
            online=_names(row, "online"),
            leader=str(row["leader"]) if row.get("leader") else None,
        )


def _names(row: dict[str, Any], key: str) -> tuple[str, ...]:
    value = row.get(key)
    return tuple(sorted(str(v) for v in value)) if isinstance(value, list) else ()


def _count(row: dict[str, Any], key: str) -> int | None:
    value = row.get(key)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Exchange:
    vhost: str
    name: str
    type: str
    durable: bool = True
    arguments: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    # messages published to it (its statistics, when the broker reports them: an exchange read alone)
    published: int | None = field(default=None, compare=False)

    @property
    def owner(self) -> str | None:
        marker = self.arguments.get(OWNER_ARGUMENT)
        return marker if isinstance(marker, str) and marker else None

    @classmethod
    def from_api(cls, row: dict[str, Any]) -> Exchange:
        return cls(row["vhost"], row["name"], row["type"], bool(row.get("durable", True)), row.get("arguments") or {},
                   _count(row.get("message_stats") or {}, "publish_in"))


@dataclass(frozen=True)
class Binding:
    vhost: str
    source: str
    destination: str
    destination_type: str
    routing_key: str
    properties_key: str

    @classmethod
    def from_api(cls, row: dict[str, Any]) -> Binding:
        """A row of ``/api/bindings`` (with its ``properties_key``) or of ``/api/definitions`` (without: it is the
        routing key for a binding without arguments, and "" (look it up before unbinding) for one with)."""
        key = row.get("properties_key")
        if key is None:
            key = "" if row.get("arguments") else (row["routing_key"] or "~")
        return cls(row["vhost"], row["source"], row["destination"], row["destination_type"], row["routing_key"], key)


@dataclass(frozen=True)
class Policy:
    vhost: str
    name: str
    pattern: str
    apply_to: str
    definition: dict[str, Any] = field(hash=False)
    priority: int

    @classmethod
    def from_api(cls, row: dict[str, Any]) -> Policy:
        return cls(row["vhost"], row["name"], row["pattern"], row.get("apply-to", "all"), row.get("definition", {}),
                   int(row.get("priority", 0)))


_HASHES = {
    "rabbit_password_hashing_sha256": hashlib.sha256,
    "rabbit_password_hashing_sha512": hashlib.sha512,
    "rabbit_password_hashing_md5": hashlib.md5,
}


@dataclass(frozen=True)
class User:
    name: str
    tags: tuple[str, ...] = ()
    password_hash: str = field(default="", repr=False)
    hashing_algorithm: str = "rabbit_password_hashing_sha256"

    def has_password(self, password: str) -> bool | None:
        """Whether ``password`` is this user's (RabbitMQ stores base64(salt[4] + H(salt + password))); None when
        the broker's hash cannot be checked here (unknown algorithm, no hash)."""
        algorithm = _HASHES.get(self.hashing_algorithm)
        if algorithm is None or not self.password_hash:
            return None
        try:
            raw = base64.b64decode(self.password_hash, validate=True)
        except ValueError:
            return None
        salt, digest = raw[:4], raw[4:]
        return algorithm(salt + password.encode()).digest() == digest

    @classmethod
    def from_api(cls, row: dict[str, Any]) -> User:
        tags = row.get("tags") or []
        if isinstance(tags, str):
            tags = [t for t in tags.split(",") if t]
        return cls(row["name"], tuple(tags), str(row.get("password_hash") or ""),
                   str(row.get("hashing_algorithm") or "rabbit_password_hashing_sha256"))


@dataclass(frozen=True)
class Permission:
    user: str
    vhost: str
    configure: str
    write: str
    read: str

    @classmethod
    def from_api(cls, row: dict[str, Any]) -> Permission:
        return cls(row["user"], row["vhost"], row["configure"], row["write"], row["read"])


@dataclass(frozen=True)
class Scope:
    """The objects one environment's plan looks at: a snapshot of only these costs a constant number of small
    calls, however many environments share the broker."""

    vhost: str
    queues: tuple[str, ...]
    exchanges: tuple[str, ...]
    policies: tuple[str, ...]
    users: tuple[str, ...]
    exchange_bindings: tuple[str, ...] = ()  # exchanges whose bindings from other exchanges are read too
    bindings_of: tuple[str, ...] | None = None  # the queues whose bindings are read; None: every queue read
    source_bindings: tuple[str, ...] = ()  # exchanges whose own bindings (to queues and exchanges) are read too
    # users named as before the cluster identity: read only where a queue carries no marker or a legacy one
    legacy_users: tuple[str, ...] = ()
    # whether a queue without a cluster's marker has its claimants read (every permission of the vhost): a plan
    # about an environment's queues needs them, the archive's (whose stream carries no marker) does not
    claimants: bool = True


@dataclass(frozen=True)
class BrokerSnapshot:
    """Indexed view of the broker; lookups are by (vhost, name)."""

    queues: dict[tuple[str, str], Queue]
    exchanges: dict[tuple[str, str], Exchange]
    bindings: tuple[Binding, ...]
    policies: dict[tuple[str, str], Policy]
    users: dict[str, User]
    permissions: dict[tuple[str, str], Permission]  # (user, vhost)
    version: str | None = None  # the broker's RabbitMQ version; None: not known

    @property
    def major(self) -> int | None:
        """The broker's major version (3, 4), or None."""
        head = (self.version or "").split(".", 1)[0]
        return int(head) if head.isdigit() else None

    @classmethod
    def build(cls, queues: list[Queue], exchanges: list[Exchange], bindings: list[Binding], policies: list[Policy],
              users: list[User], permissions: list[Permission], version: str | None = None) -> BrokerSnapshot:
        return cls(
            queues={(q.vhost, q.name): q for q in queues},
            exchanges={(e.vhost, e.name): e for e in exchanges},
            bindings=tuple(bindings),
            policies={(p.vhost, p.name): p for p in policies},
            users={u.name: u for u in users},
            permissions={(p.user, p.vhost): p for p in permissions},
            version=version,
        )

    @classmethod
    def empty(cls) -> BrokerSnapshot:
        return cls.build([], [], [], [], [], [])

    @functools.cached_property
    def _by_destination(self) -> dict[tuple[str, str, str], list[Binding]]:
        """The bindings by (vhost, destination type, destination): a pass over thousands of environments looks up
        each one's bindings in one snapshot of them all, so a scan of the whole tuple each time was quadratic."""
        index: dict[tuple[str, str, str], list[Binding]] = defaultdict(list)
        for b in self.bindings:
            index[(b.vhost, b.destination_type, b.destination)].append(b)
        return dict(index)

    def bindings_to(self, vhost: str, queue: str) -> list[Binding]:
        """Bindings from named exchanges to ``queue`` (the default exchange's implicit binding is left out)."""
        return [b for b in self._by_destination.get((vhost, "queue", queue), ()) if b.source]

    def exchange_bound(self, vhost: str, source: str, destination: str) -> bool:
        """Whether exchange ``destination`` is bound to exchange ``source``."""
        return any(b.source == source for b in self._by_destination.get((vhost, "exchange", destination), ()))
