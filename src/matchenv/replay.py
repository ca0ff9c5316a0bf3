"""The backfill Job's process: replay the feed's archive (a stream) into one environment's backfill exchange.

It reads the archive from a point in time up to the archive's end as it was when the Job started (the
environment's queue was already bound then, so what came later reached it directly), and publishes each match to
the exchange bound to that environment's queue only, confirmed, before taking the next. Matches published between
the binding and the Job's start arrive twice: harmless, the store upserts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pika
import pika.exceptions

from matchenv.amqp import connect, encodable_headers, parameters

log = logging.getLogger("matchenv.backfill")

OFFSET_HEADER = "x-stream-offset"
TERMINATION_LOG = "/dev/termination-log"  # the kubelet shows what is written here in the pod's status


class ReplayError(Exception):
    """The replay stopped; the message says why (the Job retries)."""


@dataclass
class ReplayReport:
    delivered: int = 0  # published to the exchange and confirmed
    read: int = 0  # read from the archive (the ones past the end are not counted)
    end_offset: int | None = None  # the archive's last offset when the replay began; None: it was empty
    first_offset: int | None = None  # the first archived offset from the start on
    seconds: float = 0.0

    @property
    def total(self) -> int | None:
        """The archive's offsets from the first replayed to the end, once known: about the matches the replay
        delivers in all (a few more: the stream's own tracking records take offsets too)."""
        if self.first_offset is None or self.end_offset is None:
            return None
        return max(0, self.end_offset - self.first_offset + 1)

    def progress(self) -> str:
        """``delivered N of about M (P%)``: the Job's log line, every thousand."""
        total = self.total
        if not total:
            return f"delivered {self.delivered} so far"
        return f"delivered {self.delivered} of about {total} ({min(100, 100 * self.delivered // total)}%)"

    def describe(self) -> str:
        if self.end_offset is None:
            return "the archive was empty: nothing to deliver"
        return f"delivered {self.delivered} archived matches in {self.seconds:.1f}s"


def _offset(properties: Any) -> int | None:
    value = (properties.headers or {}).get(OFFSET_HEADER)
    return int(value) if isinstance(value, int) else None


EMPTY_WAIT = 30.0  # how long nothing at all must come before the archive (or its part after the start) is empty


def end_offset(connection: pika.BlockingConnection, archive: str, settle: float = 1.0,
               empty_wait: float = EMPTY_WAIT) -> int | None:
    """The archive's last offset now: read from its last chunk until nothing more comes for ``settle`` seconds
    (a bound from above is enough: later ones only arrive twice). A stream that holds anything delivers its last
    chunk at once; a busy broker may take a while, so "empty" is concluded only after ``empty_wait``."""
    channel = connection.channel()
    try:
        channel.basic_qos(prefetch_count=1000)
        last: int | None = None
        began = time.monotonic()
        deadline = began + empty_wait + 10 * settle
        for method, properties, _body in channel.consume(archive, arguments={OFFSET_HEADER: "last"},
                                                         inactivity_timeout=settle):
            if method is None:
                if last is None and time.monotonic() - began < empty_wait:
                    continue  # nothing yet: empty, or a broker slow to deliver the first chunk
                break
            offset = _offset(properties)
            if offset is not None:
                last = offset if last is None else max(last, offset)
            channel.basic_ack(method.delivery_tag)
            if time.monotonic() > deadline:
                break
        return last
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            channel.close()


def failing_over(exc: pika.exceptions.ChannelClosedByBroker) -> bool:
    """A 406 for a stream with no running replica on the node reached: it passes once the cluster has elected a new
    writer and restarted the replicas (a node was lost), so the replay connects again instead of failing the Job."""
    return exc.reply_code == 406 and "does not have a running replica" in str(exc.reply_text)


def replay(url: str, archive: str, exchange: str, start: dt.datetime, mandatory: bool, timeout: float = 10.0,
           idle: float = 5.0, progress: Callable[[ReplayReport], None] = lambda _r: None,
           stall: float = 120.0, empty_wait: float = EMPTY_WAIT, retry_seconds: float = 120.0) -> ReplayReport:
    """Publish every archived message from ``start`` to the archive's end as it was when the replay began (its
    last offset then) to ``exchange``. It ends only there: a pause of the stream (a busy broker) is waited out,
    and a stream that stops short of the end for ``stall`` seconds is a :class:`ReplayError` (the Job retries),
    never a Complete after part of the archive. Nothing at all from ``start`` for ``empty_wait`` seconds means
    nothing was archived after it.

    A lost connection (a broker node gone: ``url`` may list a cluster's nodes) is not the end: the replay connects
    again, to the next node that answers, and goes on from the offset after the last one whose publish was
    confirmed, so nothing is skipped (the one message in flight may arrive twice: the store upserts). It gives up
    only after ``retry_seconds`` without a connection that delivers."""
    run = _Replay(archive, exchange, mandatory, idle, progress, stall, empty_wait)
    nodes = parameters(url, timeout, blocked=timeout * 6, heartbeat=5)
    failing_since: float | None = None
    while True:
        delivered_before = run.report.delivered
        try:
            connection = connect(nodes, ReplayError, "the backfill user's")
        except ReplayError as exc:
            if isinstance(exc.__cause__, pika.exceptions.ProbableAuthenticationError):
                raise
            lost = str(exc)
        else:
            try:
                run.stream(connection, start)
                return run.finish()
            except pika.exceptions.ChannelClosedByBroker as exc:
                if not failing_over(exc):
                    raise ReplayError(f"the broker closed the channel: {exc.reply_code} {exc.reply_text}") from exc
                lost = f"the archive is moving to another node: {exc.reply_code} {exc.reply_text}"
            except (pika.exceptions.AMQPError, OSError) as exc:
                lost = f"the connection to the broker failed: {exc.__class__.__name__} {exc}"
            finally:
                if connection.is_open:
                    with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                        connection.close()
        now = time.monotonic()
        if run.report.delivered > delivered_before or failing_since is None:
            failing_since = now
        if now - failing_since >= retry_seconds:
            run.finish()
            raise ReplayError(f"{lost}; gave up after {now - failing_since:.0f}s ({run.report.delivered} "
                              "delivered): retrying")
        log.warning("%s; connecting again (to the next node), resuming after offset %s", lost, run.confirmed)
        run.reconnects += 1
        time.sleep(min(5.0, 0.5 * run.reconnects))


class _Replay:
    """One replay's progress across connections: the archive's end when it began, the last offset confirmed."""

    def __init__(self, archive: str, exchange: str, mandatory: bool, idle: float,
                 progress: Callable[[ReplayReport], None], stall: float, empty_wait: float) -> None:
        self.archive, self.exchange, self.mandatory = archive, exchange, mandatory
        self.idle, self.progress, self.stall, self.empty_wait = idle, progress, stall, empty_wait
        self.report = ReplayReport()
        self.began = time.monotonic()
        self.ended = False  # the archive's end was looked up (None in the report: it was empty)
        self.confirmed: int | None = None  # the last offset whose publish the broker confirmed
        self.reconnects = 0

    def finish(self) -> ReplayReport:
        self.report.seconds = time.monotonic() - self.began
        return self.report

    def stream(self, connection: pika.BlockingConnection, start: dt.datetime) -> None:
        """Deliver from where the last connection left off up to the end; return when there."""
        report = self.report
        if not self.ended:
            report.end_offset = end_offset(connection, self.archive, empty_wait=self.empty_wait)
            self.ended = True
        if report.end_offset is None or (self.confirmed is not None and self.confirmed >= report.end_offset):
            return
        out = connection.channel()
        out.confirm_delivery()
        source = connection.channel()
        source.basic_qos(prefetch_count=500)
        position: int | dt.datetime = start if self.confirmed is None else self.confirmed + 1
        log.info("replaying %s from %s up to offset %d into %s", self.archive,
                 position.isoformat() if isinstance(position, dt.datetime) else f"offset {position}",
                 report.end_offset, self.exchange)
        quiet_since = time.monotonic()
        for method, properties, body in source.consume(self.archive, arguments={OFFSET_HEADER: position},
                                                       inactivity_timeout=self.idle):
            if method is None:
                quiet = time.monotonic() - quiet_since
                if self.confirmed is None and quiet >= self.empty_wait:
                    return  # nothing from the start on: everything archived came before it
                if self.confirmed is not None and quiet >= self.stall:
                    raise ReplayError(f"the archive stopped delivering at offset {self.confirmed}, before its end "
                                      f"{report.end_offset} when the backfill began ({quiet:.0f} s without a "
                                      f"message; {report.delivered} delivered): retrying")
                continue
            quiet_since = time.monotonic()
            offset = _offset(properties)
            if offset is not None and self.confirmed is not None and offset <= self.confirmed:
                source.basic_ack(method.delivery_tag)  # delivered before the connection was lost
                continue
            if offset is not None and offset > report.end_offset:
                return  # published after the replay began: it reached the queue through its binding
            if report.first_offset is None and offset is not None:
                report.first_offset = offset
            report.read += 1
            properties.headers = encodable_headers(
                {k: v for k, v in (properties.headers or {}).items() if k != OFFSET_HEADER})
            try:
                out.basic_publish(self.exchange, method.routing_key, body, properties, mandatory=self.mandatory)
            except pika.exceptions.UnroutableError as exc:
                raise ReplayError(f"exchange {self.exchange} routes nothing to the queue (is it bound?)") from exc
            except pika.exceptions.NackError as exc:
                raise ReplayError(f"the broker refused a message on {self.exchange} (is the queue full?)") from exc
            report.delivered += 1
            if offset is not None:
                self.confirmed = offset
            source.basic_ack(method.delivery_tag)
            if report.delivered % 1000 == 0:
                self.progress(report)
            if offset is not None and offset >= report.end_offset:
                return


def write_termination_message(text: str, path: str = TERMINATION_LOG) -> None:
    """What the pod's status shows when the container ends (only where the kubelet provides the file)."""
    if os.path.exists(path):
        with contextlib.suppress(OSError), open(path, "w") as f:
            f.write(text[:4000])


def summary(report: ReplayReport | None, error: str | None = None) -> str:
    """The termination message the operator reads: one JSON object."""
    body: dict[str, Any] = asdict(report) if report else {}
    body["message"] = error or (report.describe() if report else "")
    return json.dumps(body)
