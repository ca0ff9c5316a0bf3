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
    seconds: float = 0.0

    def describe(self) -> str:
        if self.end_offset is None:
            return "the archive was empty: nothing to deliver"
        return f"delivered {self.delivered} archived matches in {self.seconds:.1f}s"


def _offset(properties: Any) -> int | None:
    value = (properties.headers or {}).get(OFFSET_HEADER)
    return int(value) if isinstance(value, int) else None


def end_offset(connection: pika.BlockingConnection, archive: str, settle: float = 1.0) -> int | None:
    """The archive's last offset now: read from its last chunk until nothing more comes for ``settle`` seconds
    (a bound from above is enough: later ones only arrive twice)."""
    channel = connection.channel()
    try:
        channel.basic_qos(prefetch_count=1000)
        last: int | None = None
        deadline = time.monotonic() + 10 * settle
        for method, properties, _body in channel.consume(archive, arguments={OFFSET_HEADER: "last"},
                                                         inactivity_timeout=settle):
            if method is None:
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


def replay(url: str, archive: str, exchange: str, start: dt.datetime, mandatory: bool, timeout: float = 10.0,
           idle: float = 5.0, progress: Callable[[ReplayReport], None] = lambda _r: None) -> ReplayReport:
    """Publish every archived message from ``start`` to the archive's current end to ``exchange``."""
    began = time.monotonic()
    params = pika.URLParameters(url)
    params.socket_timeout = timeout
    params.stack_timeout = timeout * 2
    params.blocked_connection_timeout = timeout * 6
    params.connection_attempts = 1
    params.heartbeat = 30
    report = ReplayReport()
    try:
        connection = pika.BlockingConnection(params)
    except pika.exceptions.ProbableAuthenticationError as exc:
        raise ReplayError("the broker refused the backfill user's credentials") from exc
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise ReplayError(f"cannot reach the broker: {exc.__class__.__name__} {exc}") from exc
    try:
        report.end_offset = end_offset(connection, archive)
        if report.end_offset is None:
            return report
        out = connection.channel()
        out.confirm_delivery()
        source = connection.channel()
        source.basic_qos(prefetch_count=500)
        log.info("replaying %s from %s up to offset %d into %s", archive, start.isoformat(), report.end_offset,
                 exchange)
        for method, properties, body in source.consume(archive, arguments={OFFSET_HEADER: start},
                                                       inactivity_timeout=idle):
            if method is None:  # nothing more for a while: the rest of the archive came after the start
                break
            offset = _offset(properties)
            if offset is not None and offset > report.end_offset:
                break
            report.read += 1
            headers = {k: v for k, v in (properties.headers or {}).items() if k != OFFSET_HEADER}
            properties.headers = headers
            try:
                out.basic_publish(exchange, method.routing_key, body, properties, mandatory=mandatory)
            except pika.exceptions.UnroutableError as exc:
                raise ReplayError(f"exchange {exchange} routes nothing to the queue (is it bound?)") from exc
            except pika.exceptions.NackError as exc:
                raise ReplayError(f"the broker refused a message on {exchange} (is the queue full?)") from exc
            report.delivered += 1
            source.basic_ack(method.delivery_tag)
            if report.delivered % 1000 == 0:
                progress(report)
            if offset is not None and offset >= report.end_offset:
                break
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise ReplayError(f"the broker closed the channel: {exc.reply_code} {exc.reply_text}") from exc
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise ReplayError(f"the connection to the broker failed: {exc.__class__.__name__} {exc}") from exc
    finally:
        report.seconds = time.monotonic() - began
        if connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()
    return report


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
