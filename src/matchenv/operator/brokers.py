"""Broker connections: read from Secrets, one management client per broker (its session reused)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from matchenv.operator.builders import decode_secret_data
from matchenv.topology.client import ManagementClient

SECRET_KEYS = ("url", "management-url", "username", "password")


class BrokerConfigError(Exception):
    """The broker Secret is missing or lacks a key; the message names which."""


@dataclass(frozen=True)
class BrokerConnection:
    """An admin connection to one broker. ``url`` is the AMQP URL as the workers reach it."""

    url: str
    management_url: str
    username: str
    password: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.management_url, self.username)

    @classmethod
    def from_secret_data(cls, data: dict[str, str], where: str) -> BrokerConnection:
        missing = [k for k in SECRET_KEYS if not data.get(k)]
        if missing:
            raise BrokerConfigError(f"broker Secret {where} lacks key(s) {', '.join(missing)}")
        return cls(data["url"], data["management-url"], data["username"], data["password"])


def read_connection(secret: dict[str, Any] | None, namespace: str, name: str) -> BrokerConnection:
    """The connection a broker Secret holds (``secret`` as read from the API, ``None`` if missing)."""
    if secret is None:
        raise BrokerConfigError(f"broker Secret {namespace}/{name} not found")
    return BrokerConnection.from_secret_data(decode_secret_data(secret.get("data")), f"{namespace}/{name}")


class BrokerClients:
    """One ``ManagementClient`` per (management URL, user), rebuilt when the password changes."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._clients: dict[tuple[str, str], tuple[str, ManagementClient]] = {}
        self._lock = threading.Lock()

    def get(self, conn: BrokerConnection) -> ManagementClient:
        with self._lock:
            cached = self._clients.get(conn.key)
            if cached and cached[0] == conn.password:
                return cached[1]
            if cached:
                cached[1].close()
            client = ManagementClient(conn.management_url, conn.username, conn.password,
                                      timeout=(min(3.05, self.timeout), self.timeout))
            self._clients[conn.key] = (conn.password, client)
            return client

    def total_calls(self) -> int:
        with self._lock:
            return sum(c.calls for _, c in self._clients.values())
