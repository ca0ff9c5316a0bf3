"""Drift repaired on the broker's own events.

RabbitMQ's ``rabbitmq_event_exchange`` plugin (shipped with the broker, off by default) publishes what happens on
the broker to the topic exchange ``amq.rabbitmq.event``. The leader consumes the deletions that undo its work
(``queue.deleted``, ``binding.deleted``, ``exchange.deleted``, ``policy.cleared``, ``user.deleted``,
``permission.deleted``) from an
exclusive queue of its own, finds the environment each names, and converges that environment at once; events that
arrive together for one environment make one converge. Without the plugin, or while the broker is away, the
periodic resync repairs drift as before (the log says which).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions

from matchenv.amqp import parameters

log = logging.getLogger("matchenv.operator")

EVENT_EXCHANGE = "amq.rabbitmq.event"
ROUTING_KEYS = ("queue.deleted", "binding.deleted", "exchange.deleted", "policy.cleared", "user.deleted",
                "permission.deleted")
COALESCE_SECONDS = 0.05  # events within this of the first make one converge
PLUGIN_RETRY_SECONDS = 60.0  # how often to look again for a plugin that was not enabled


@dataclass(frozen=True)
class Changed:
    """A broker object an event says was removed: ``kind`` is queue, exchange, policy or user (a binding and a
    permission name the queue and the user they belonged to)."""

    kind: str
    vhost: str
    name: str


def changed(routing_key: str, headers: Mapping[str, Any]) -> Changed | None:
    """What an event of ``amq.rabbitmq.event`` removed, from its routing key and headers; None for the rest."""
    def text(key: str) -> str:
        value = headers.get(key)
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")

    vhost = text("vhost")
    if routing_key == "queue.deleted":
        return Changed("queue", vhost, text("name"))
    if routing_key == "binding.deleted" and text("destination_kind") in ("queue", ""):
        return Changed("queue", vhost, text("destination_name"))
    if routing_key == "binding.deleted" and text("destination_kind") == "exchange":
        return Changed("exchange", vhost, text("destination_name"))  # e.g. the topic exchange off the fanout
    if routing_key == "exchange.deleted":
        return Changed("exchange", vhost, text("name"))
    if routing_key == "policy.cleared":
        return Changed("policy", vhost, text("name"))
    if routing_key == "user.deleted":
        return Changed("user", "", text("name"))
    if routing_key == "permission.deleted":
        return Changed("user", "", text("user"))
    return None


class BrokerEvents:
    """Consumes the broker's events on a thread of its own until ``stop`` is set; reconnects with backoff."""

    def __init__(self, url: Callable[[], str], on_change: Callable[[Changed], None], stop: threading.Event,
                 timeout: float = 10.0) -> None:
        self.url = url  # read at each connect: the broker Secret may change or appear later
        self.timeout = timeout
        self.on_change = on_change
        self.stop = stop
        self._thread: threading.Thread | None = None

    def start(self) -> BrokerEvents:
        self._thread = threading.Thread(target=self.run, name="matchenv-broker-events", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        attempt = 0
        while not self.stop.is_set():
            try:
                self._consume()
                attempt = 0
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == 404:  # no amq.rabbitmq.event: the plugin is not enabled
                    log.warning("the broker has no %s exchange (enable the rabbitmq_event_exchange plugin): drift "
                                "is repaired at each resync only; looking again in %.0fs", EVENT_EXCHANGE,
                                PLUGIN_RETRY_SECONDS)
                    self.stop.wait(PLUGIN_RETRY_SECONDS)
                    continue
                attempt += 1
                log.warning("broker events: channel closed (%s); again in %.0fs", exc, _backoff(attempt))
                self.stop.wait(_backoff(attempt))
            except Exception as exc:  # AMQP, socket, or the broker Secret unreadable: try again later
                attempt += 1
                log.warning("broker events: %s: %s; again in %.0fs (the resync repairs drift meanwhile)",
                            exc.__class__.__name__, exc, _backoff(attempt))
                self.stop.wait(_backoff(attempt))

    def _consume(self) -> None:
        # every node of a cluster in turn; one that dies or is cut off is noticed within 10 to 20 s
        conn = pika.BlockingConnection(parameters(self.url(), self.timeout, blocked=60, heartbeat=5))
        try:
            channel = conn.channel()
            queue = channel.queue_declare("", exclusive=True, auto_delete=True,
                                          arguments={"x-max-length": 10_000}).method.queue
            for key in ROUTING_KEYS:
                channel.queue_bind(queue, EVENT_EXCHANGE, key)
            log.info("following the broker's events (%s)", ", ".join(ROUTING_KEYS))
            for method, properties, _ in channel.consume(queue, auto_ack=True, inactivity_timeout=0.5):
                if self.stop.is_set():
                    break
                if method is None:
                    continue
                what = changed(method.routing_key, properties.headers or {})
                if what is not None:
                    self.on_change(what)
        finally:
            if conn.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    conn.close()


def _backoff(attempt: int) -> float:
    return float(min(30.0, 0.5 * 2 ** min(attempt, 6)))


class Repairs:
    """Environments to converge because the broker says something of theirs went: coalesced, one at a time, on a
    thread of its own (a slow converge never holds up the consumer)."""

    def __init__(self, repair: Callable[[str, str], None], stop: threading.Event,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.repair = repair
        self.stop = stop
        self.clock = clock
        self._pending: dict[tuple[str, str], None] = {}  # ordered set of (namespace, name)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, namespace: str, name: str) -> None:
        with self._cond:
            self._pending[(namespace, name)] = None
            self._cond.notify()

    def start(self) -> Repairs:
        self._thread = threading.Thread(target=self._run, name="matchenv-drift-repairs", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        while not self.stop.is_set():
            with self._cond:
                while not self._pending and not self.stop.is_set():
                    self._cond.wait(1.0)
                if self.stop.is_set():
                    return
            self.stop.wait(COALESCE_SECONDS)  # the rest of a burst (a queue's deletion is several events)
            with self._cond:
                batch, self._pending = list(self._pending), {}
            for namespace, name in batch:
                try:
                    self.repair(namespace, name)
                except Exception as exc:  # the resync tries again
                    log.warning("repairing %s/%s after a broker event failed: %s", namespace, name, exc)
