"""Publish matches once, with proof: publisher confirms, ``mandatory``, persistent messages.

Each message waits for its confirm before the next is sent, so after a lost connection the publisher knows
exactly which matches the broker took; it reconnects (for up to ``retry_seconds``) and sends the unconfirmed one
again (with the same task id: the workers' upsert makes a redelivery harmless), never one that was confirmed. A
match that reaches no queue (no environment bound) is returned by the broker and counted as unroutable; the
command then exits non-zero.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import pika
import pika.exceptions
from pydantic import ValidationError

from matchenv.amqp import ConfirmedChannel
from matchenv.contracts import DEFAULT_EXCHANGE
from matchenv.models import Match
from matchenv.scraper.messages import task_message
from matchenv.scraper.sources import RawMatch

log = logging.getLogger("matchenv.scraper")
Result = Literal["confirmed", "unroutable", "failed"]
_RECOVERABLE = (pika.exceptions.AMQPConnectionError, pika.exceptions.StreamLostError,
                pika.exceptions.ConnectionClosed, pika.exceptions.ChannelWrongStateError)


@dataclass(frozen=True)
class Target:
    """Where to publish: an exchange (fanout: routing key ignored) or one queue via the default exchange."""

    exchange: str
    routing_key: str = ""

    def describe(self) -> str:
        return f"queue {self.routing_key}" if not self.exchange else f"exchange {self.exchange}"


def resolve_target(queue: str | None, exchange: str | None) -> Target:
    """The seed's priority: ``--queue`` publishes straight to that queue, else ``--exchange``, else the fanout."""
    if queue:
        return Target("", queue)
    return Target(exchange or DEFAULT_EXCHANGE, "")


@dataclass(frozen=True)
class InvalidMatch:
    position: int
    key: str
    field: str
    reason: str

    def describe(self) -> str:
        where = f"#{self.position}" + (f" ({self.key})" if self.key else "")
        return f"{where}: {self.field}: {self.reason}"


@dataclass
class PublishReport:
    read: int = 0
    published: int = 0
    confirmed: int = 0
    unroutable: int = 0
    failed: int = 0
    reconnects: int = 0
    invalid_matches: int = 0
    invalid: list[InvalidMatch] = field(default_factory=list)  # one entry per problem
    errors: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 all delivered; 1 some not delivered (unroutable or failed); 3 only invalid input was left out."""
        if self.unroutable or self.failed:
            return 1
        return 3 if self.invalid_matches else 0

    def summary(self) -> str:
        return (f"read {self.read}, published {self.published}, confirmed {self.confirmed}, "
                f"unroutable {self.unroutable}, invalid {self.invalid_matches}, failed {self.failed}, "
                f"reconnects {self.reconnects}")


def validate(raw: RawMatch) -> tuple[dict[str, object] | None, list[InvalidMatch]]:
    """The match as it will be sent (validated by the same model the workers use), or why not."""
    key = str(raw.data.get("external_match_id") or "") if isinstance(raw.data, dict) else ""
    if raw.problem:
        return None, [InvalidMatch(raw.position, key, "record", raw.problem)]
    if not isinstance(raw.data, dict):
        return None, [InvalidMatch(raw.position, key, "record", "a match must be a JSON object")]
    try:
        Match.model_validate(raw.data)
    except ValidationError as exc:
        return None, [InvalidMatch(raw.position, key, ".".join(str(p) for p in e["loc"]) or "record", e["msg"])
                      for e in exc.errors()]
    return raw.data, []


class Publisher:
    """One confirmed, mandatory channel to the broker; reconnects with backoff."""

    def __init__(self, url: str, target: Target, retry_seconds: float = 120.0, connect_timeout: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.params = pika.URLParameters(url)
        self.params.socket_timeout = connect_timeout
        self.params.blocked_connection_timeout = 60
        self.params.heartbeat = 30
        self.params.connection_attempts = 1
        self.target = target
        self.retry_seconds = retry_seconds
        self.sleep = sleep
        self.clock = clock
        self.reconnects = 0
        self.channel = ConfirmedChannel(self.params)

    def close(self) -> None:
        self.channel.close()

    def publish(self, match: dict[str, object]) -> tuple[Result, str]:
        """Send one match and wait for the broker's answer: (result, detail)."""
        message = task_message(match)
        props = pika.BasicProperties(content_type="application/json", content_encoding="utf-8", delivery_mode=2,
                                     correlation_id=message.task_id, headers=message.headers, priority=0)
        attempt = 0
        first_failure: float | None = None
        while True:
            attempt += 1
            try:
                channel = self.channel.get()
                channel.basic_publish(self.target.exchange, self.target.routing_key, message.body, props,
                                      mandatory=True)
                return "confirmed", ""
            except pika.exceptions.UnroutableError:
                return "unroutable", f"no queue is bound to {self.target.describe()}"
            except pika.exceptions.NackError:
                detail = "the broker refused the message (nack)"
            except pika.exceptions.ChannelClosedByBroker as exc:
                self.channel.forget()
                if exc.reply_code in (403, 404):  # permanent: missing exchange, no permission
                    return "failed", f"{exc.reply_code} {exc.reply_text}"
                detail = f"channel closed: {exc.reply_code} {exc.reply_text}"
            except _RECOVERABLE as exc:
                self.channel.forget()
                detail = f"connection lost: {exc.__class__.__name__}"
            now = self.clock()
            first_failure = now if first_failure is None else first_failure
            if now - first_failure >= self.retry_seconds:
                return "failed", f"{detail}; gave up after {attempt} attempts in {now - first_failure:.0f}s"
            delay = min(10.0, 0.5 * 2 ** (attempt - 1))
            log.warning("%s; reconnecting in %.1fs (attempt %d, giving up after %.0fs)", detail, delay, attempt,
                        self.retry_seconds)
            self.reconnects += 1
            self.sleep(delay)

    def run(self, matches: Iterable[RawMatch], submit: bool = True,
            progress: Callable[[int], None] | None = None) -> PublishReport:
        """Validate every match, publish the valid ones (unless ``submit`` is False), count everything."""
        report = PublishReport()
        try:
            for raw in matches:
                report.read += 1
                data, problems = validate(raw)
                if data is None:
                    report.invalid_matches += 1
                    report.invalid.extend(problems)
                elif submit:
                    result, detail = self.publish(data)
                    report.published += 1
                    if result == "confirmed":
                        report.confirmed += 1
                    elif result == "unroutable":
                        report.unroutable += 1
                        if report.unroutable == 1:
                            report.errors.append(detail)
                    else:
                        report.failed += 1
                        report.errors.append(f"#{raw.position}: {detail}")
                if progress:
                    progress(1)
        finally:
            self.close()
        report.reconnects = self.reconnects
        return report
