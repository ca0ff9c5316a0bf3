"""One AMQP connection with a publisher-confirmed channel (pika), opened on first use and again after a loss.
The publisher and the workers' dead-lettering both publish through it."""

from __future__ import annotations

import contextlib
from typing import Any

import pika
import pika.exceptions


class ConfirmedChannel:
    def __init__(self, params: pika.URLParameters) -> None:
        self.params = params
        self._conn: pika.BlockingConnection | None = None
        self._channel: Any = None

    def get(self) -> Any:
        """The open channel, connecting (and turning confirms on) when there is none."""
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self.close()
        self._conn = pika.BlockingConnection(self.params)
        self._channel = self._conn.channel()
        self._channel.confirm_delivery()
        return self._channel

    def forget(self) -> None:
        """The channel was closed by the broker or the connection lost: the next ``get`` opens a new one."""
        self._channel = None

    def close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None and conn.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                conn.close()
