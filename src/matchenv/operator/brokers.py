"""One management client per broker and credentials (its session reused); the connections come from
:mod:`matchenv.connection`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from matchenv.connection import BrokerConnection
from matchenv.topology.client import ManagementClient
from matchenv.write_fence import SendCheck


class BrokerClients:
    """One ``ManagementClient`` per broker and credentials (``BrokerConnection.key``)."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic,
                 write_budget: Callable[[], float | None] | None = None,
                 check_send: SendCheck | None = None) -> None:
        """``write_budget``: what is left of the leader's Lease, which cuts each write's deadline; ``check_send``:
        the fence's last check, right before a write is sent."""
        self.timeout = timeout
        self.clock = clock
        self.write_budget = write_budget
        self.check_send = check_send
        self._clients: dict[tuple[str, str, str], ManagementClient] = {}
        self._used: dict[tuple[str, str, str], float] = {}
        self._retired_calls = 0  # calls of evicted clients, so that total_calls never goes back
        self._lock = threading.Lock()

    def get(self, conn: BrokerConnection) -> ManagementClient:
        with self._lock:
            client = self._clients.get(conn.key)
            if client is None:
                client = ManagementClient(conn.management_url, conn.username, conn.password,
                                          timeout=(min(3.05, self.timeout), self.timeout),
                                          write_budget=self.write_budget, check_send=self.check_send)
                self._clients[conn.key] = client
            self._used[conn.key] = self.clock()
            return client

    def evict_idle(self, idle: float) -> int:
        """Close the clients no environment used for ``idle`` seconds (a rotated password's, a deleted tenant's):
        each holds a session and threads. How many went."""
        with self._lock:
            stale = [k for k, used in self._used.items() if self.clock() - used > idle]
            for key in stale:
                client = self._clients.pop(key)
                self._used.pop(key, None)
                self._retired_calls += client.calls
                client.close()
            return len(stale)

    def total_calls(self) -> int:
        with self._lock:
            return self._retired_calls + sum(c.calls for c in self._clients.values())
