"""Send a message that cannot be processed to the environment's dead-letter exchange, with the reason attached.

The worker's broker user may write to ``<queue>.dlx`` and nowhere else; the exchange is never declared here (that
would need configure permission). Each dead letter is published ``mandatory`` on a confirmed channel of its own
(pika), so it is on the broker *and routed to the dead-letter queue* before the original is acknowledged. When it
cannot be (the DLQ unbound, the broker away), the original is held, unacknowledged, and the publish retried with a
capped back-off until it goes through or the worker stops (then the original goes back to its queue): nothing lost.

The original's headers go with it in a form every client can encode (:func:`matchenv.amqp.encodable_headers`):
a float header from another client must not make the dead letter itself unpublishable. Should a header still fail
to encode, the letter goes with matchenv's own headers only, at once: an encoding error is never retried as if
the broker were away.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import struct
import threading
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from matchenv.amqp import ConfirmedChannel, encodable_headers, parameters
from matchenv.contracts import DEAD_LETTERED_AT_HEADER, ERROR_HEADER, QUEUE_HEADER, REASON_HEADER, TASK_ID_HEADER
from matchenv.workers import metrics

log = logging.getLogger("matchenv.worker")

Body = bytes | str | dict[str, Any] | list[Any]


class DeadLetterUnavailable(Exception):
    """The worker is stopping while a dead letter still could not be published: give the original back."""


class DeadLetterPublisher:
    """One confirmed pika channel for dead letters, shared by the worker's threads under a lock."""

    def __init__(self, broker_url: str, exchange: str, queue: str, stopping: threading.Event,
                 wait: Callable[[float], bool] | None = None) -> None:
        self.params = parameters(broker_url, 10, blocked=30)
        self.exchange = exchange
        self.queue = queue
        self.stopping = stopping
        self.wait = wait or stopping.wait
        self._lock = threading.Lock()
        self.channel = ConfirmedChannel(self.params)

    def close(self) -> None:
        self.channel.close()

    def publish(self, body: Body, reason: str, error: str, headers: dict[str, Any] | None = None,
                content_type: str = "application/json") -> bool:
        """Publish ``body`` with ``reason``/``error`` headers; False when there is no dead-letter exchange (the
        environment has ``deadLetter: false``). Blocks, holding the original, until the broker has routed it."""
        metrics.DEAD_LETTERED.labels(reason=reason).inc()
        fields = {"reason": reason, "task_id": str((headers or {}).get(TASK_ID_HEADER) or "") or None}
        if not self.exchange:
            log.warning("no dead-letter queue: a %s message from %s is not kept: %s", reason, self.queue, error,
                        extra=fields)
            return False
        if isinstance(body, dict | list):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        ours = {REASON_HEADER: reason, ERROR_HEADER: error[:2000], QUEUE_HEADER: self.queue,
                DEAD_LETTERED_AT_HEADER: dt.datetime.now(dt.UTC).isoformat()}
        properties = pika.BasicProperties(content_type=content_type, delivery_mode=2,
                                          headers={**encodable_headers(headers or {}), **ours})
        attempt = 0
        while True:
            metrics.HEALTH.progress()  # holding a letter back is waiting, not being stuck
            with self._lock:
                try:
                    self.channel.get().basic_publish(self.exchange, self.queue, body, properties, mandatory=True)
                    log.warning("dead-lettered a %s message from %s: %s", reason, self.queue, error, extra=fields)
                    return True
                except (pika.exceptions.UnsupportedAMQPFieldException, struct.error, OverflowError,
                        ValueError, TypeError) as exc:
                    if properties.headers == ours:
                        raise  # matchenv's own headers are plain text: not a message's fault
                    log.warning("a %s message from %s has headers that cannot be encoded (%s); dead-lettering it "
                                "with matchenv's headers only", reason, self.queue, exc, extra=fields)
                    properties.headers = ours
                    continue
                except pika.exceptions.UnroutableError:
                    problem = f"{self.exchange} routes it nowhere (is {self.queue}.dlq bound?)"
                except pika.exceptions.NackError:
                    problem = "the broker refused it"
                except (pika.exceptions.AMQPError, OSError) as exc:
                    self.channel.forget()
                    problem = f"{exc.__class__.__name__}"
            attempt += 1
            delay = min(30.0, 0.5 * 2 ** min(attempt, 6))
            log.warning("cannot dead-letter a %s message from %s yet (%s); holding it and retrying in %.0fs",
                        reason, self.queue, problem, delay, extra=fields)
            if self.wait(delay) or self.stopping.is_set():
                raise DeadLetterUnavailable(f"stopping with a {reason} message not dead-lettered ({problem})")
