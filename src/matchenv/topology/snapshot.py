"""What the broker holds, as read in one pass: queues, exchanges, bindings, policies, users, permissions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Queue:
    vhost: str
    name: str
    type: str = "classic"
    durable: bool = True
    arguments: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    messages: int = 0
    messages_ready: int = 0
    messages_unacknowledged: int = 0
    consumers: int = 0
    policy: str | None = None

    @classmethod
    def from_api(cls, row: dict[str, Any]) -> Queue:
        return cls(
            vhost=row["vhost"],
            name=row["name"],
            type=row.get("type") or row.get("arguments", {}).get("x-queue-type") or "classic",
            durable=bool(row.get("durable", True)),
            arguments=row.get("arguments") or {},
            messages=int(row.get("messages") or 0),
            messages_ready=int(row.get("messages_ready") or 0),
            messages_unacknowledged=int(row.get("messages_unacknowledged") or 0),
            consumers=int(row.get("consumers") or 0),
            policy=row.get("policy") or None,
        )


@dataclass(frozen=True)
class Exchange:
    vhost: str
    name: str
    type: str
    durable: bool = True

    @classmethod
    def from_api(cls, row: dict[str, Any]) -> Exchange:
        return cls(row["vhost"], row["name"], row["type"], bool(row.get("durable", True)))


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
        return cls(row["vhost"], row["source"], row["destination"], row["destination_type"], row["routing_key"],
                   row.get("properties_key", row["routing_key"] or "~"))


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


@dataclass(frozen=True)
class User:
    name: str
    tags: tuple[str, ...] = ()

    @classmethod
    def from_api(cls, row: dict[str, Any]) -> User:
        tags = row.get("tags") or []
        if isinstance(tags, str):
            tags = [t for t in tags.split(",") if t]
        return cls(row["name"], tuple(tags))


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
class BrokerSnapshot:
    """Indexed view of the broker; lookups are by (vhost, name)."""

    queues: dict[tuple[str, str], Queue]
    exchanges: dict[tuple[str, str], Exchange]
    bindings: tuple[Binding, ...]
    policies: dict[tuple[str, str], Policy]
    users: dict[str, User]
    permissions: dict[tuple[str, str], Permission]  # (user, vhost)

    @classmethod
    def build(cls, queues: list[Queue], exchanges: list[Exchange], bindings: list[Binding], policies: list[Policy],
              users: list[User], permissions: list[Permission]) -> BrokerSnapshot:
        return cls(
            queues={(q.vhost, q.name): q for q in queues},
            exchanges={(e.vhost, e.name): e for e in exchanges},
            bindings=tuple(bindings),
            policies={(p.vhost, p.name): p for p in policies},
            users={u.name: u for u in users},
            permissions={(p.user, p.vhost): p for p in permissions},
        )

    @classmethod
    def empty(cls) -> BrokerSnapshot:
        return cls.build([], [], [], [], [], [])

    def bindings_to(self, vhost: str, queue: str) -> list[Binding]:
        """Bindings from named exchanges to ``queue`` (the default exchange's implicit binding is left out)."""
        return [b for b in self.bindings
                if b.vhost == vhost and b.destination == queue and b.destination_type == "queue" and b.source]
