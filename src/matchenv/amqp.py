"""The one place AMQP connections are set up (pika): their parameters with a deadline on every wait, opening one
with errors that say what failed, a publisher-confirmed channel opened on first use and again after a loss, and the
headers every re-publish writes. The scraper, the workers' dead-lettering, ``matchenv dlq``, the backfill's replay
and the operator's broker-event consumer all connect through it."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import pika
import pika.data
import pika.exceptions

from matchenv.contracts import split_urls


def parameters(url: str, timeout: float, blocked: float, heartbeat: int | None = None) -> list[pika.URLParameters]:
    """The connection parameters of each node ``url`` lists (one URL, or a cluster's, ``;``-separated), in order,
    every wait bounded: ``timeout`` for a socket read or write, twice that for the connection's set-up, ``blocked``
    while the broker blocks publishers (a memory or disk alarm), one attempt per node (the caller retries);
    ``heartbeat`` seconds, else the broker's. A blocking connection given the list tries each node in turn."""
    nodes = []
    for one in split_urls(url) or [url]:
        params = pika.URLParameters(one)
        params.socket_timeout = timeout
        params.stack_timeout = timeout * 2
        params.blocked_connection_timeout = blocked
        params.connection_attempts = 1
        if heartbeat is not None:
            params.heartbeat = heartbeat
        nodes.append(params)
    return nodes


def where(nodes: Sequence[pika.ConnectionParameters]) -> str:
    """The nodes' ``host:port``, for messages."""
    return ", ".join(f"{params.host}:{params.port}" for params in nodes)


def connect(params: list[pika.URLParameters], error: type[Exception], whose: str) -> pika.BlockingConnection:
    """A connection to the first node that answers, or ``error`` saying the broker refused ``whose`` credentials or
    could not be reached."""
    where_ = where(params)
    try:
        return pika.BlockingConnection(params)
    except pika.exceptions.ProbableAuthenticationError as exc:
        raise error(f"the broker at {where_} refused {whose} credentials") from exc
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise error(f"cannot reach the broker at {where_}: {exc.__class__.__name__} {exc}") from exc


class ConfirmedChannel:
    """One connection's publisher-confirmed channel, opened on first use and again after a loss (to the first of
    the nodes that answers)."""

    def __init__(self, params: list[pika.URLParameters]) -> None:
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


def encodable_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """``headers`` in a form pika can write back to the broker, whatever client sent them.

    AMQP field tables carry types pika cannot encode (floats, as py-amqp and most other clients send ``d``/``f``
    values) or values out of its range (a decimal or an integer wider than the wire format, a time before 1970,
    a key over 255 bytes). Each such value becomes its text (``1.5`` → ``"1.5"``), tables and arrays are walked,
    a key is cut to 255 bytes; everything else is kept as it is. A message re-published with these headers (a
    dead letter, a redrive, a backfill) can therefore never fail to encode.
    """
    return {_key(key): _encodable(value) for key, value in headers.items()}


def _key(key: Any) -> str:
    text = str(key)
    return text if len(text.encode()) <= 255 else text.encode()[:255].decode(errors="ignore")


def _encodable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return encodable_headers(value)
    if isinstance(value, list | tuple):
        return [_encodable(item) for item in value]
    try:
        pika.data.encode_value([], value)
    except Exception:  # unsupported type or out of range: struct.error, OverflowError, UnsupportedAMQPField...
        return repr(value) if isinstance(value, float) else str(value)
    return value
