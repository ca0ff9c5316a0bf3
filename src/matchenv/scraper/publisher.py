"""Publish matches once, with proof: publisher confirms, ``mandatory``, persistent messages.

Confirms are streamed: up to ``window`` messages are on the wire unconfirmed at any time, and each is settled by the
broker's (possibly multiple) ack or nack. After a lost connection the publisher knows exactly which matches the
broker took: it reconnects (for up to ``retry_seconds`` of outage) and sends the unconfirmed ones again, in their
order, with the same task ids (the workers' upsert makes a redelivery harmless), never one that was confirmed. A
match that reaches no queue (no environment bound) is returned by the broker and counted as unroutable; the
command then exits non-zero. A missing exchange or a refused permission ends the run: every match not yet
confirmed is reported failed.

Given a cluster's nodes (``;``-separated URLs), each new connection goes to the next node: a node that died or was
cut off is left at once for the others, and backoff starts only once every node was tried. While the broker blocks
publishers (a memory or disk alarm: ``connection.blocked``) the run waits, says so with the broker's reason and
repeats it every ``BLOCKED_NOTICE`` seconds; it goes on when the alarm clears, and gives up (every match not
confirmed failed, saying why) only after ``max_blocked`` seconds blocked.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec
from pydantic import ValidationError

from matchenv.amqp import parameters, where
from matchenv.contracts import DEFAULT_EXCHANGE, routing_key
from matchenv.match import Match
from matchenv.scraper.messages import task_message
from matchenv.scraper.sources import RawMatch

log = logging.getLogger("matchenv.scraper")
Result = Literal["confirmed", "unroutable", "failed"]
# unconfirmed messages on the wire at most: the broker confirms persistent messages once its queues have
# written them, in batches; 512 left it idle between them (0.86 x raw pika with confirms per 100; 2,048: 1.00)
DEFAULT_WINDOW = 2048
MAX_NACKS = 3  # a message the broker refuses this often is reported failed
BLOCKED_NOTICE = 30.0  # while the broker blocks publishing, say so again this often (seconds)
DEFAULT_MAX_BLOCKED = 900.0


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
    resent: int = 0  # publishes of a match sent before without its confirm (lost with a connection, or nacked)
    blocked: int = 0  # times the broker blocked publishing (a memory or disk alarm)
    blocked_seconds: float = 0.0
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
        blocked = f", blocked {self.blocked} times for {self.blocked_seconds:.0f}s" if self.blocked else ""
        # a resent match may be in its queues twice (the broker took it, its confirm was lost): the upsert makes
        # the second delivery harmless
        resent = f", resent {self.resent}" if self.resent else ""
        return (f"read {self.read}, published {self.published}, confirmed {self.confirmed}, "
                f"unroutable {self.unroutable}, invalid {self.invalid_matches}, failed {self.failed}, "
                f"reconnects {self.reconnects}{resent}{blocked}")


def validate(raw: RawMatch) -> tuple[dict[str, object] | None, list[InvalidMatch]]:
    """The match as it will be sent (validated by the same model the workers use), or why not."""
    key = str(raw.data.get("external_match_id") or "") if isinstance(raw.data, dict) else ""
    if raw.problem:
        return None, [InvalidMatch(raw.position, key, "record", raw.problem)]
    if not isinstance(raw.data, dict):
        return None, [InvalidMatch(raw.position, key, "record", "a match must be a JSON object")]
    try:
        match = Match.model_validate(raw.data)
    except ValidationError as exc:
        return None, [InvalidMatch(raw.position, key, ".".join(str(p) for p in e["loc"]) or "record", e["msg"])
                      for e in exc.errors()]
    # what the model read, as it read it: fields the record gave (trimmed), none it does not know
    return match.model_dump(mode="json", exclude_unset=True), []


@dataclass
class _Pending:
    position: int
    body: bytes
    properties: pika.BasicProperties
    routing_key: str = ""
    nacks: int = 0

    @property
    def task_id(self) -> str:
        return str(self.properties.correlation_id)


@dataclass
class Pace:
    """When the ``n``-th message may be sent at ``rate`` per second (0: at once), counted from the first asked."""

    rate: float
    clock: Callable[[], float] = time.monotonic
    started: float | None = None

    def wait(self, n: int) -> float:
        """Seconds until message ``n`` (0-based) is due."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        if self.started is None:
            self.started = now
        return max(0.0, self.started + n / self.rate - now)


class Publisher:
    """Streams matches over one confirmed, mandatory channel (pika's asynchronous connection); reconnects (to the
    next of ``url``'s nodes) with backoff while an outage lasts less than ``retry_seconds``."""

    def __init__(self, url: str, target: Target, retry_seconds: float = 120.0, connect_timeout: float = 10.0,
                 window: int = DEFAULT_WINDOW, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, max_rate: float = 0.0,
                 max_blocked: float = DEFAULT_MAX_BLOCKED) -> None:
        # a dead or cut-off node is noticed within 10 to 20 s (pika checks every heartbeat + 5 s), then the next
        # node is tried
        self.nodes = parameters(url, connect_timeout, blocked=max_blocked, heartbeat=5)
        self.max_blocked = max_blocked
        self.target = target
        self.retry_seconds = retry_seconds
        self.window = max(1, window)
        self.sleep = sleep
        self.clock = clock
        self.max_rate = max_rate  # new matches per second at most (0: as fast as confirms allow)
        self.reconnects = 0

    def run(self, matches: Iterable[RawMatch], submit: bool = True,
            progress: Callable[[int], None] | None = None) -> PublishReport:
        """Validate every match, publish the valid ones (unless ``submit`` is False), count everything."""
        report = PublishReport()
        if not submit:
            for raw in matches:
                self._read(raw, report)
                if progress:
                    progress(1)
            return report
        _Stream(self, iter(matches), report, progress).run()
        report.reconnects = self.reconnects
        return report

    @staticmethod
    def _read(raw: RawMatch, report: PublishReport) -> dict[str, object] | None:
        report.read += 1
        data, problems = validate(raw)
        if data is None:
            report.invalid_matches += 1
            report.invalid.extend(problems)
        return data


class _Stream:
    """One run of a :class:`Publisher`: the source, what waits to be (re)sent, what awaits its confirm."""

    def __init__(self, publisher: Publisher, source: Iterator[RawMatch], report: PublishReport,
                 progress: Callable[[int], None] | None) -> None:
        self.p = publisher
        self.source: Iterator[RawMatch] | None = source
        self.report = report
        self.progress = progress
        self.resend: deque[_Pending] = deque()  # sent but not confirmed when a connection was lost, or nacked
        self.unconfirmed: OrderedDict[int, _Pending] = OrderedDict()  # delivery tag → message, oldest first
        self.returned: set[str] = set()  # task ids the broker returned as unroutable (their ack follows)
        self.conn: pika.SelectConnection | None = None
        self.channel: pika.channel.Channel | None = None
        self.next_tag = 0
        self.problem = ""  # why the last connection ended
        self.fatal = ""  # a permanent refusal: end the run
        self.pace = Pace(publisher.max_rate, publisher.clock)
        self.taken = 0  # messages taken from the source so far (what the pace counts)
        self.waking = False  # a timer will call _fill when the next message is due
        self.node = 0  # which of the publisher's nodes the next connection goes to
        self.blocked_since: float | None = None  # the broker blocks publishing since then (monotonic)
        self.blocked_reason = ""

    # -- the outer loop: connect, stream until done or the connection ends, back off, again ----------------
    def run(self) -> None:
        attempt = 0
        outage_since: float | None = None
        while not self._done():
            confirmed_before = self.report.confirmed + self.report.unroutable
            self.problem = ""
            self.waking = False  # a timer of the last connection's loop never fires
            params = self.p.nodes[self.node % len(self.p.nodes)]
            self.conn = pika.SelectConnection(params, on_open_callback=self._on_open,
                                              on_open_error_callback=self._on_open_error,
                                              on_close_callback=self._on_closed)
            self.conn.add_on_connection_blocked_callback(self._on_blocked)
            self.conn.add_on_connection_unblocked_callback(self._on_unblocked)
            self.conn.ioloop.start()
            self.conn, self.channel = None, None
            self._unblocked()
            self.resend.extendleft(reversed(self.unconfirmed.values()))
            self.unconfirmed.clear()
            if self.fatal:
                self._fail_the_rest(self.fatal)
                return
            if self._done():
                return
            if self.report.confirmed + self.report.unroutable > confirmed_before:
                attempt, outage_since = 0, None  # that connection made progress: a new outage starts now
            attempt += 1
            now = self.p.clock()
            outage_since = now if outage_since is None else outage_since
            if now - outage_since >= self.p.retry_seconds:
                self._fail_the_rest(f"{self.problem}; gave up after {attempt} attempts in "
                                    f"{now - outage_since:.0f}s")
                return
            # the next node at once; backoff once every node was tried
            nodes = len(self.p.nodes)
            self.node = (self.node + 1) % nodes
            delay = 0.0 if attempt % nodes else min(10.0, 0.5 * 2 ** (attempt // nodes - 1))
            log.warning("%s (%s); reconnecting to %s in %.1fs (%d unconfirmed to resend, giving up after %.0fs)",
                        self.problem, where([params]), where([self.p.nodes[self.node]]), delay, len(self.resend),
                        self.p.retry_seconds)
            self.p.reconnects += 1
            self.p.sleep(delay)

    def _done(self) -> bool:
        return self.source is None and not self.resend and not self.unconfirmed

    def _fail_the_rest(self, detail: str) -> None:
        """Nothing more can be sent: each match not confirmed, and each valid one not yet read, is failed."""
        failed = list(self.resend)
        self.resend.clear()
        while self.source is not None:
            raw = next(self.source, None)
            if raw is None:
                self.source = None
            elif Publisher._read(raw, self.report) is not None:
                failed.append(_Pending(raw.position, b"", pika.BasicProperties()))
            if raw is not None and self.progress:
                self.progress(1)
        self.report.failed += len(failed)
        self.report.errors.extend(f"#{pending.position}: {detail}" for pending in failed[:5])
        if len(failed) > 5:
            self.report.errors.append(f"... and {len(failed) - 5} more matches not delivered: {detail}")

    # -- connection and channel callbacks --------------------------------------------------------------------
    def _on_open(self, conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=self._on_channel)

    def _on_open_error(self, conn: pika.SelectConnection, exc: BaseException | str) -> None:
        self.problem = f"cannot connect to the broker: {_cause(exc)}"
        if isinstance(exc, pika.exceptions.ProbableAuthenticationError | pika.exceptions.ProbableAccessDeniedError):
            self.fatal = f"the broker refused the credentials or the vhost: {exc}"
        conn.ioloop.stop()

    def _on_closed(self, conn: pika.SelectConnection, reason: BaseException) -> None:
        if isinstance(reason, pika.exceptions.ConnectionBlockedTimeout):
            self.fatal = (f"the broker blocked publishing for more than {self.p.max_blocked:.0f}s "
                          f"({self.blocked_reason or 'no reason given'}): clear the broker's alarm and publish again")
        if not self.problem and not self._done():
            self.problem = f"connection lost: {reason.__class__.__name__}: {reason}"
        conn.ioloop.stop()

    def _on_blocked(self, conn: pika.SelectConnection, frame: pika.frame.Method[Any]) -> None:
        """``connection.blocked``: the broker takes no more messages until its alarm clears; wait, and say so."""
        self.blocked_reason = str(getattr(frame.method, "reason", "") or "an alarm")
        log.warning("the broker blocks publishing (%s: a memory or disk alarm); waiting for it to clear "
                    "(%d unconfirmed, giving up after %.0fs blocked)", self.blocked_reason, len(self.unconfirmed),
                    self.p.max_blocked)
        if self.blocked_since is None:
            self.blocked_since = self.p.clock()
            self.report.blocked += 1
            conn.ioloop.call_later(BLOCKED_NOTICE, self._still_blocked)

    def _still_blocked(self) -> None:
        if self.blocked_since is not None and self.conn is not None:
            log.warning("still blocked by the broker after %.0fs (%s)", self.p.clock() - self.blocked_since,
                        self.blocked_reason)
            self.conn.ioloop.call_later(BLOCKED_NOTICE, self._still_blocked)

    def _on_unblocked(self, conn: pika.SelectConnection, frame: pika.frame.Method[Any]) -> None:
        if self.blocked_since is not None:
            log.warning("the broker takes messages again after %.0fs blocked", self.p.clock() - self.blocked_since)
        self._unblocked()

    def _unblocked(self) -> None:
        if self.blocked_since is not None:
            self.report.blocked_seconds += self.p.clock() - self.blocked_since
            self.blocked_since = None

    def _on_channel(self, channel: pika.channel.Channel) -> None:
        self.channel = channel
        self.next_tag = 0
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _frame: self._fill())

    def _on_channel_closed(self, channel: pika.channel.Channel, reason: BaseException) -> None:
        self.channel = None
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            text = f"{reason.reply_code} {reason.reply_text}"
            if reason.reply_code in (403, 404):  # permanent: missing exchange, no permission
                self.fatal = text
            self.problem = self.problem or f"channel closed: {text}"
        if self.conn is not None and self.conn.is_open:
            self.conn.close()

    def _on_return(self, channel: pika.channel.Channel, method: pika.spec.Basic.Return,
                   properties: pika.BasicProperties, body: bytes) -> None:
        self.returned.add(str(properties.correlation_id))

    def _on_confirm(self, frame: pika.frame.Method[Any]) -> None:
        method = frame.method
        tag, multiple = method.delivery_tag, method.multiple
        settled = []
        while self.unconfirmed:
            first = next(iter(self.unconfirmed))
            if first > tag or (not multiple and first != tag):
                break
            settled.append(self.unconfirmed.popitem(last=False)[1])
        if not multiple and not settled and tag in self.unconfirmed:
            settled.append(self.unconfirmed.pop(tag))
        nacked = isinstance(method, pika.spec.Basic.Nack)
        for pending in settled:
            if nacked:
                self._nacked(pending)
            elif pending.task_id in self.returned:
                self.returned.discard(pending.task_id)
                self._settle(pending, "unroutable", f"no queue is bound to {self.p.target.describe()}")
            else:
                self._settle(pending, "confirmed", "")
        self._fill()

    def _nacked(self, pending: _Pending) -> None:
        pending.nacks += 1
        if pending.nacks >= MAX_NACKS:
            self._settle(pending, "failed", f"the broker refused the message (nack) {pending.nacks} times")
        else:
            log.warning("the broker refused #%d (nack); sending it again", pending.position)
            self.resend.append(pending)

    def _settle(self, pending: _Pending, result: Result, detail: str) -> None:
        report = self.report
        if result == "confirmed":
            report.confirmed += 1
        elif result == "unroutable":
            report.unroutable += 1
            if report.unroutable == 1:
                report.errors.append(detail)
        else:
            report.failed += 1
            report.errors.append(f"#{pending.position}: {detail}")

    # -- sending ---------------------------------------------------------------------------------------------
    def _fill(self) -> None:
        """Send until ``window`` messages await their confirm; close the connection when all are settled."""
        channel = self.channel
        if channel is None or not channel.is_open:
            return
        while len(self.unconfirmed) < self.p.window:
            if self.resend:
                pending: _Pending | None = self.resend.popleft()
                self.report.resent += 1
            elif self.source is None:
                pending = None
            else:
                # paced: never sleep here (this is the connection's event loop: nothing would reach the socket
                # meanwhile); come back when the next message is due
                wait = self.pace.wait(self.taken)
                if wait > 0:
                    if not self.waking and self.conn is not None:
                        self.waking = True
                        self.conn.ioloop.call_later(wait, self._wake)
                    break
                pending = self._next()
                self.taken += 1
            if pending is None:
                break
            channel.basic_publish(self.p.target.exchange, pending.routing_key, pending.body, pending.properties,
                                  mandatory=True)
            self.next_tag += 1
            self.unconfirmed[self.next_tag] = pending
        if self._done() and self.conn is not None and self.conn.is_open:
            self.conn.close()

    def _wake(self) -> None:
        self.waking = False
        self._fill()

    def _next(self) -> _Pending | None:
        """The next valid match from the source as a message (invalid ones are counted and skipped)."""
        while self.source is not None:
            raw = next(self.source, None)
            if raw is None:
                self.source = None
                return None
            data = Publisher._read(raw, self.report)
            if self.progress:
                self.progress(1)
            if data is None:
                continue
            self.report.published += 1
            message = task_message(data)
            # the AMQP timestamp: a classic queue reports its oldest waiting message's (status.oldestMessageTime)
            props = pika.BasicProperties(content_type="application/json", content_encoding="utf-8",
                                         delivery_mode=2, correlation_id=message.task_id,
                                         headers=message.headers, priority=0, timestamp=int(time.time()))
            # to a queue: its name; to an exchange: the match's topic key (a fanout ignores it)
            key = routing_key(data) if self.p.target.exchange else self.p.target.routing_key
            return _Pending(raw.position, message.body, props, key)
        return None


def _cause(exc: BaseException | str) -> str:
    """The innermost reason pika wraps a failed connection in (its outer exceptions often print empty)."""
    while isinstance(exc, BaseException):
        wrapped = getattr(exc, "exception", None)
        inner = getattr(exc, "exceptions", None) or ([wrapped] if isinstance(wrapped, BaseException) else []) \
            or [a for a in exc.args if isinstance(a, BaseException)]
        if not inner:
            return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
        exc = inner[-1]
    return exc
