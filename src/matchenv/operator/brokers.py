"""Broker connections: read from Secrets, one management client per broker (its session reused)."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

from matchenv.contracts import BROKER_ADMIN_KEYS
from matchenv.operator.builders import SecretDecodeError, decode_secret_data
from matchenv.topology.client import ManagementClient


class BrokerConfigError(Exception):
    """The broker Secret is missing or lacks a key; the message names which."""


@dataclass(frozen=True)
class BrokerConnection:
    """An admin connection to one broker. ``url`` is the AMQP URL as the workers reach it."""

    url: str
    management_url: str
    username: str
    password: str = field(repr=False)

    @property
    def key(self) -> tuple[str, str, str]:
        """One broker *and* one set of credentials: a Secret with a wrong password never shares a client, a
        snapshot or an error with the right one."""
        return (self.management_url, self.username, hashlib.sha256(self.password.encode()).hexdigest()[:16])

    @classmethod
    def from_secret_data(cls, data: dict[str, str], where: str) -> BrokerConnection:
        missing = [k for k in BROKER_ADMIN_KEYS if not data.get(k)]
        if missing:
            raise BrokerConfigError(f"broker Secret {where} lacks key(s) {', '.join(missing)}")
        return cls(data["url"], data["management-url"], data["username"], data["password"])


def read_connection(secret: dict[str, Any] | None, namespace: str, name: str) -> BrokerConnection:
    """The connection a broker Secret holds (``secret`` as read from the API, ``None`` if missing)."""
    if secret is None:
        raise BrokerConfigError(f"broker Secret {namespace}/{name} not found")
    try:
        data = decode_secret_data(secret.get("data"))
    except SecretDecodeError as exc:
        raise BrokerConfigError(f"broker Secret {namespace}/{name}: {exc}") from exc
    return BrokerConnection.from_secret_data(data, f"{namespace}/{name}")


class BrokerClients:
    """One ``ManagementClient`` per broker and credentials (``BrokerConnection.key``)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._clients: dict[tuple[str, str, str], ManagementClient] = {}
        self._lock = threading.Lock()

    def get(self, conn: BrokerConnection) -> ManagementClient:
        with self._lock:
            client = self._clients.get(conn.key)
            if client is None:
                client = ManagementClient(conn.management_url, conn.username, conn.password,
                                          timeout=(min(3.05, self.timeout), self.timeout))
                self._clients[conn.key] = client
            return client

    def total_calls(self) -> int:
        with self._lock:
            return sum(c.calls for c in self._clients.values())
