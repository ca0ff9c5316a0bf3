"""Task messages stored in batches: the hot path of a worker.

Celery's consumer hands each ``process_match_data`` message here instead of to its pool; one thread takes what has
arrived (up to ``max_batch``; when messages were already waiting, a backlog, it first gives the batch up to
``linger`` to fill: fewer, fuller transactions), dead-letters what is malformed or invalid, stores the valid
matches in one transaction, and only then has the messages acknowledged (late acks: a message is acked after its
row is committed, or after its dead letter is routed; a run of them with one ``multiple`` ack). A batch the
database refuses is stored one match at a time, so only the culprit is dead-lettered. Nothing is acknowledged that
was not dealt with: on a lost connection or a stop the messages not yet acknowledged go back to the queue (the
upsert makes the redelivery harmless).

Acks are written by the consumer's own event loop (``schedule``): kombu channels are not shared across threads.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from matchenv.contracts import (
    REASON_INVALID,
    REASON_MALFORMED,
    REASON_STORE_ERROR,
    REASON_UNKNOWN_TASK,
    SCRAPED_AT_HEADER,
    TASK_ID_HEADER,
    TASK_NAME,
)
from matchenv.match import Match
from matchenv.workers import metrics
from matchenv.workers.config import WorkerConfig
from matchenv.workers.deadletter import DeadLetterUnavailable
from matchenv.workers.parsing import (
    REQUEUE_DELAY,
    Invalid,
    Stopping,
    parse,
    parse_body,
    scraped_at,
    stamp_problem,
)
from matchenv.workers.stores import Outcome, PermanentStoreError, Stamped

log = logging.getLogger("matchenv.worker")
MAX_BATCH = 100  # matches stored in one transaction at most
LINGER = 0.01  # seconds a batch may wait to fill while messages keep coming (a backlog), never when idle
Verdict = Literal["ack", "requeue"]


class BatchRuntime(Protocol):
    """What the batches need of the worker's process (:class:`matchenv.workers.app.Runtime`)."""

    config: WorkerConfig
    stopping: threading.Event

    def store_batch(self, matches: list[Stamped]) -> list[Outcome]: ...

    def store_match(self, match: Match, scraped_at: dt.datetime | None = None) -> Outcome: ...

    def dead_letter(self, body: Any, reason: str, error: str, headers: dict[str, Any] | None = None,
                    content_type: str = "application/json") -> bool: ...

    def dead_letter_message(self, message: Any, reason: str, error: str) -> bool: ...


@dataclass
class _Valid:
    message: Any
    match: Match
    raw: Any  # the match as received, for its dead letter; None: read from the message when needed
    stamp: dt.datetime | None

    def received(self) -> Any:
        if self.raw is None:
            self.raw = self.message.decode()[0][0]  # read by parse_body: [[match], {}, embed]
        return self.raw


class Batcher:
    """One storing thread fed by the consumer; see the module's docstring."""

    def __init__(self, runtime: BatchRuntime, max_batch: int = MAX_BATCH,
                 clock: Callable[[], float] = time.time, linger: float = LINGER) -> None:
        self.runtime = runtime
        self.linger = linger
        self.clock = clock  # wall clock: a commit's instant, set against the publisher's stamp
        self._newest = 0.0  # the newest scrape stamp stored
        self.max_batch = max_batch
        self.schedule: Callable[[Callable[[], None]], Any] = lambda fn: fn()
        # Celery task events (for Flower), sent by the consumer's thread as flush() runs; None: not sent
        self.send_event: Callable[[str, dict[str, Any]], None] | None = None
        self._events: deque[tuple[str, dict[str, Any]]] = deque()
        self._told: dict[int, str] = {}  # id(message) -> what became of it (outcome, or dead-letter reason)
        self._arrived: deque[Any] = deque()
        self._settled: deque[tuple[Any, Verdict]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._lingering = False  # the storing thread waits for a batch to fill: woken only once it is full
        self._thread: threading.Thread | None = None

    # -- the consumer's side ---------------------------------------------------------------------------------
    def submit(self, message: Any) -> None:
        with self._cond:
            self._arrived.append(message)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="matchenv-batches", daemon=True)
                self._thread.start()
            if not self._lingering or len(self._arrived) >= self.max_batch:
                self._cond.notify()

    def flush(self) -> None:
        """Acknowledge (or give back) what the storing thread has settled; runs on the consumer's thread."""
        run: list[Any] = []  # messages to ack, delivered in a row on one channel: one ack of the last covers all
        while self._settled:
            message, verdict = self._settled.popleft()
            if verdict == "ack" and (not run or getattr(run[-1], "channel", None) is getattr(message, "channel", None)):
                run.append(message)
                continue
            _settle(run, "ack")
            run = [message] if verdict == "ack" else []
            if verdict == "requeue":
                _settle([message], verdict)
        _settle(run, "ack")
        send = self.send_event
        while self._events and send is not None:
            type_, fields = self._events.popleft()
            try:
                send(type_, fields)
            except Exception as exc:  # events are a view, never a reason to hold a message
                log.warning("cannot send task event %s: %s", type_, exc)

    def stop(self, timeout: float) -> None:
        """Finish the batch in hand, acknowledge it, take no more (what has arrived goes back to the queue)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("a batch was still being stored after %.0fs; its messages go back to the queue",
                            timeout)
        self.flush()

    # -- the storing thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        idle = True  # the first message is stored at once
        while True:
            with self._cond:
                idle = idle or not self._arrived
                while not self._arrived and not self._stopping:
                    self._cond.wait()
                if not idle:  # messages were waiting: a backlog, where fewer, fuller transactions store faster
                    self._fill()
                if self._stopping:
                    return
                batch = [self._arrived.popleft() for _ in range(min(len(self._arrived), self.max_batch))]
                idle = False
            metrics.HEALTH.busy()
            began = time.monotonic()
            try:
                verdicts = self.process(batch)
            except Exception:  # never ack what was not dealt with
                metrics.FAILED.inc(len(batch))
                log.exception("unexpected error storing a batch of %d; returning it to the queue", len(batch))
                verdicts = [(message, "requeue") for message in batch]
            finally:
                metrics.HEALTH.idle()
            # counted once dealt with (stored, dead-lettered or given back): a reader of the counter may rely on it
            metrics.PROCESSED.inc(len(batch))
            if self.send_event is not None:
                self._events.extend(self._task_events(verdicts, time.monotonic() - began))
            self._told.clear()
            self._settled.extend(verdicts)
            self.schedule(self.flush)

    def _fill(self) -> None:
        """Wait (holding the condition) up to ``linger`` for the batch to fill."""
        deadline = time.monotonic() + self.linger
        self._lingering = True
        try:
            while len(self._arrived) < self.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)
        finally:
            self._lingering = False

    def _task_events(self, verdicts: list[tuple[Any, Verdict]], runtime: float) -> list[tuple[str, dict[str, Any]]]:
        """What Celery's own task handling would have told Flower of each message: received, then succeeded (its
        outcome), failed (dead-lettered, with the reason) or rejected (back to the queue)."""
        events: list[tuple[str, dict[str, Any]]] = []
        for message, verdict in verdicts:
            uuid = task_id(message) or f"delivery-{id(message):x}"
            told = self._told.get(id(message), "")
            events.append(("task-received", {"uuid": uuid, "name": TASK_NAME, "args": "()", "kwargs": "{}",
                                             "retries": 0, "eta": None, "expires": None, "root_id": uuid,
                                             "parent_id": None}))
            if verdict == "requeue":
                events.append(("task-rejected", {"uuid": uuid, "requeue": True}))
            elif told.startswith("dead-lettered"):
                events.append(("task-failed", {"uuid": uuid, "exception": told, "traceback": ""}))
            else:
                events.append(("task-succeeded", {"uuid": uuid, "result": repr(told or "stored"),
                                                  "runtime": runtime}))
        return events

    def process(self, batch: list[Any]) -> list[tuple[Any, Verdict]]:
        """What to do with each message of ``batch``, once its match is stored or its dead letter routed: in the
        batch's order, the order of delivery (one ``multiple`` ack of the last of a run settles every delivery
        before it, so a message dead-lettered after the run's last stored one would otherwise stay unacknowledged
        until the worker stops, and be delivered again)."""
        decided: dict[int, Verdict] = {}  # id(message) -> verdict
        valid: list[_Valid] = []
        now = dt.datetime.now(dt.UTC)  # the clock a batch's stamps are checked against: read once
        for message in batch:
            stamp = scraped_at(message)
            match = _quick(message)
            if match is not None and stamp_problem(stamp, now) is None:
                valid.append(_Valid(message, match, None, stamp))
                continue
            try:
                body = message.decode()
            except Exception as exc:
                decided[id(message)] = self._dead_letter_raw(message, REASON_MALFORMED,
                                                             f"cannot decode the body: {exc}")
                continue
            task = _task(message, body)
            if isinstance(task, str):
                reason, _, error = task.partition(": ")
                decided[id(message)] = self._dead_letter_raw(message, reason, error)
                continue
            parsed = parse(*task, stamp, now)
            if isinstance(parsed, Invalid):
                decided[id(message)] = self._dead_letter(message, parsed.body, REASON_INVALID, parsed.problems)
            else:
                valid.append(_Valid(message, parsed[0], parsed[1], stamp))
        decided.update((id(message), verdict) for message, verdict in self._store(valid))
        return [(message, decided[id(message)]) for message in batch]

    def _store(self, valid: list[_Valid]) -> list[tuple[Any, Verdict]]:
        """Store the valid matches in one transaction (one by one when the database refuses the batch)."""
        if not valid:
            return []
        try:
            with metrics.STORE_SECONDS.time():
                outcomes = self.runtime.store_batch([(v.match, v.stamp) for v in valid])
        except Stopping as exc:
            log.warning("%s: %d messages go back to the queue", exc, len(valid))
            return [(v.message, "requeue") for v in valid]
        except PermanentStoreError as exc:
            log.warning("a batch of %d was refused (%s); storing its matches one by one", len(valid), exc)
            return [self._one_by_one(v) for v in valid]
        self._report(valid, outcomes)
        return [(v.message, "ack") for v in valid]

    def _one_by_one(self, item: _Valid) -> tuple[Any, Verdict]:

        try:
            with metrics.STORE_SECONDS.time():
                outcome = self.runtime.store_match(item.match, item.stamp)
        except PermanentStoreError as exc:
            self._told[id(item.message)] = f"dead-lettered ({REASON_STORE_ERROR}): {exc}"
            try:
                if self.runtime.dead_letter(item.received(), REASON_STORE_ERROR, str(exc),
                                            headers=_carried(item.message)):
                    return item.message, "ack"
            except DeadLetterUnavailable as unavailable:
                log.warning("%s; returning it to the queue", unavailable)
                return item.message, "requeue"
            # a valid match is never dropped: without a DLQ it goes back to its queue, after a pause
            log.warning("cannot store match %s and there is no dead-letter queue: returning it to %s in %.0fs: %s",
                        item.match.external_match_id or "-", self.runtime.config.queue, REQUEUE_DELAY, exc,
                        extra={"match_id": item.match.external_match_id, "reason": REASON_STORE_ERROR})
            self.runtime.stopping.wait(REQUEUE_DELAY)
            return item.message, "requeue"
        self._report([item], [outcome])
        return item.message, "ack"

    def _report(self, items: list[_Valid], outcomes: list[Outcome]) -> None:
        """Count what was stored, and how fresh it was: from each match's scrape stamp to now (its commit)."""
        counts = Counter(outcomes)
        for outcome, count in counts.items():
            metrics.STORED.labels(outcome=outcome).inc(count)
        metrics.BATCH_SIZE.observe(len(items))
        for item, outcome in zip(items, outcomes, strict=True):
            self._told[id(item.message)] = outcome
        committed, newest = self.clock(), self._newest
        freshness = {outcome: metrics.END_TO_END.labels(outcome=outcome) for outcome in counts}
        for item, outcome in zip(items, outcomes, strict=True):
            if item.stamp is not None:
                stamp = item.stamp.timestamp()
                freshness[outcome].observe(max(0.0, committed - stamp))
                newest = max(newest, stamp)
        if newest > self._newest:
            self._newest = newest
            metrics.NEWEST_STORED.set(newest)
        if log.isEnabledFor(logging.DEBUG):
            for item, outcome in zip(items, outcomes, strict=True):
                m = item.match
                log.debug("%s match %s (%s vs %s, %s)", outcome, m.external_match_id or "-", m.home_team,
                          m.away_team, m.match_date, extra={"match_id": m.external_match_id, "outcome": outcome})
        log.info("stored %d matches: %s", len(items), ", ".join(f"{n} {o}" for o, n in sorted(counts.items())),
                 extra={f"matches_{o}": n for o, n in counts.items()})

    def _dead_letter(self, message: Any, body: Any, reason: str, error: str) -> Verdict:
        self._told[id(message)] = f"dead-lettered ({reason}): {error}"
        try:
            self.runtime.dead_letter(body, reason, error, headers=_carried(message))
        except DeadLetterUnavailable as exc:
            log.warning("%s; returning it to the queue", exc)
            return "requeue"
        return "ack"  # dead-lettered, or dropped for want of a dead-letter queue (logged there)

    def _dead_letter_raw(self, message: Any, reason: str, error: str) -> Verdict:
        self._told[id(message)] = f"dead-lettered ({reason}): {error}"
        try:
            self.runtime.dead_letter_message(message, reason, error)
        except DeadLetterUnavailable as exc:
            log.warning("%s; returning it to the queue", exc)
            return "requeue"
        return "ack"


def _settle(messages: list[Any], verdict: Verdict) -> None:
    """Ack ``messages`` (delivered in a row on one channel, every earlier delivery on it already settled: the
    storing thread takes them in order, and nothing else holds one) with one ``multiple`` ack of the last, or give
    one back."""
    if not messages:
        return
    try:
        if verdict == "requeue":
            messages[-1].reject(requeue=True)
        elif len(messages) == 1:
            messages[0].ack()
        else:
            messages[-1].ack(multiple=True)
    except Exception as exc:  # the channel is gone: the broker delivers them again
        log.warning("cannot %s %d message(s) (%s): the broker will deliver them again", verdict, len(messages), exc)


def _task(message: Any, body: Any) -> tuple[Any, Any] | str:
    """(args, kwargs) of a task message of ours, protocol 2 (the task in the headers, ``[args, kwargs, embed]``
    in the body) or 1 (all in the body, as the existing producers send it); else "reason: why"."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    if "task" in headers:
        if not isinstance(body, list | tuple) or len(body) < 2:
            return f"{REASON_MALFORMED}: invalid task message: the body is not [args, kwargs, embed]"
        return body[0], body[1]
    if not isinstance(body, dict) or "task" not in body:
        return f"{REASON_MALFORMED}: not a Celery task message"
    if body["task"] != TASK_NAME:
        return f"{REASON_UNKNOWN_TASK}: no such task here: {body['task']!r}"
    return body.get("args") or [], body.get("kwargs") or {}


def _quick(message: Any) -> Match | None:
    """The match of a protocol-2 message of ours in plain JSON (what our publisher sends), read in one pass;
    None for anything else (protocol 1, another encoding, compressed, or not one valid match): the long way."""
    headers = message.headers
    if (not isinstance(headers, dict) or "task" not in headers or "compression" in headers
            or message.content_type != "application/json" or message.content_encoding not in ("utf-8", "utf8")):
        return None
    return parse_body(message.body)


def task_id(message: Any) -> str:
    """The task message's id: in its headers (protocol 2) or its body (protocol 1); "" when it has none."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    found = headers.get("id")
    if found is None:
        try:
            body = message.decode()
        except Exception:
            body = None
        found = body.get("id") if isinstance(body, dict) else None
    return str(found or "")


def _carried(message: Any) -> dict[str, Any]:
    """What a dead letter keeps of the task message: its id, and the publisher's stamp (a redriven copy must not
    overwrite newer data)."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    carried = {TASK_ID_HEADER: task_id(message)}
    if isinstance(headers.get(SCRAPED_AT_HEADER), str):
        carried[SCRAPED_AT_HEADER] = headers[SCRAPED_AT_HEADER]
    return carried
