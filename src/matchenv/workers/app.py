"""The Celery app of one environment's worker: its consumer hands every ``celery_tasks.match_tasks.process_match_data``
message to the batches (:mod:`matchenv.workers.batches`, the one path from the queue to the store).

Delivery (DESIGN §6): late acks, a bounded prefetch (``MATCHENV_PREFETCH``, 256) stored in batches (see
:mod:`matchenv.workers.batches`), reject on worker loss; JSON only; no result backend; remote control,
gossip, mingle and heartbeat off so the environment's least-privilege user suffices; task events only where the
environment asks for them (to its own exchange). Nothing is lost and
nothing loops: a message that cannot be decoded, names another task, fails validation or keeps failing in the store
goes to the dead-letter exchange once with its reason; a database that is down is waited for with the message
held (unacknowledged), never dead-lettered.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from celery import Celery, signals
from celery.worker.consumer import Consumer
from kombu.entity import Exchange, Queue

from matchenv.contracts import (
    REASON_MALFORMED,
    REASON_UNKNOWN_TASK,
    TASK_NAME,
    events_exchange,
    queue_arguments,
)
from matchenv.match import Match
from matchenv.workers import metrics
from matchenv.workers.batches import Batcher
from matchenv.workers.config import WorkerConfig
from matchenv.workers.deadletter import Body, DeadLetterPublisher, DeadLetterUnavailable
from matchenv.workers.parsing import Stopping
from matchenv.workers.stores import (
    Outcome,
    PermanentStoreError,
    Stamped,
    Store,
    StoreRefused,
    StoreUnavailable,
    TransientStoreError,
    make_store,
)
from matchenv.workers.transport import ChunkedAMQP

log = logging.getLogger("matchenv.worker")
_T = TypeVar("_T")
STOPPING = threading.Event()  # set when the worker starts its warm shutdown
STOP_WAIT = 20.0  # how long a stopping worker waits for the batch it is storing
BROKER_HEARTBEAT = 5  # seconds: a dead or cut-off node is given up 10 to 12.5 s after its last frame
WAKE_SECONDS = 0.25  # the event loop's longest sleep: how soon an idle worker notices it should stop


@dataclass
class Runtime:
    """What the task needs in this process: the config, the store (made on first use), the app."""

    config: WorkerConfig
    app: Celery
    store_factory: Callable[[], Store] | None = None
    sleep: Callable[[float], None] = time.sleep
    stopping: threading.Event = field(default_factory=lambda: STOPPING)
    _store: Store | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _dead_letters: DeadLetterPublisher | None = field(default=None, init=False)
    batcher: Batcher = field(init=False)

    def __post_init__(self) -> None:
        self.batcher = Batcher(self)

    @property
    def store(self) -> Store:
        with self._lock:
            if self._store is None:
                factory = self.store_factory or (lambda: make_store(self.config.database))
                self._store = factory()
            return self._store

    def dead_letter(self, body: Body, reason: str, error: str, headers: dict[str, Any] | None = None,
                    content_type: str = "application/json") -> bool:
        """Route the message to the DLQ (blocking until the broker routed it); False when there is none."""
        with self._lock:
            if self._dead_letters is None:
                self._dead_letters = DeadLetterPublisher(self.config.broker_url.get_secret_value(),
                                                         self.config.dead_letter_exchange, self.config.queue,
                                                         self.stopping)
            publisher = self._dead_letters
        return publisher.publish(body, reason, error, headers=headers, content_type=content_type)

    def dead_letter_message(self, message: Any, reason: str, error: str) -> bool:
        """A message that is no task message at all: its bytes as received, with its content type."""
        body = message.body if isinstance(message.body, bytes | str) else str(message.body)
        original = message.headers if isinstance(message.headers, dict) else {}
        return self.dead_letter(body, reason, error, content_type="application/octet-stream",
                                headers={**original, "x-original-content-type": message.content_type or ""})

    def store_match(self, match: Match, scraped_at: dt.datetime | None = None) -> Outcome:
        """Upsert with retries: transient errors 3 times with backoff and jitter (then PermanentStoreError), an
        unreachable database for as long as it takes (the message stays unacknowledged meanwhile)."""
        return self._retrying(lambda: self.store.upsert(match, scraped_at), "the message", give_back=False)

    def store_batch(self, matches: list[Stamped]) -> list[Outcome]:
        """All in one transaction. Transient errors are retried like one match's; an unreachable database is
        waited for until the worker stops (:class:`Stopping`: the messages go back). PermanentStoreError: store
        them one by one to find which."""
        return self._retrying(lambda: self.store.upsert_many(matches), f"{len(matches)} messages", give_back=True)

    def _retrying(self, call: Callable[[], _T], holding: str, give_back: bool) -> _T:
        """``call`` until it answers: a transient error ``store_retries`` times with backoff and jitter (then
        PermanentStoreError), an unreachable database with a capped backoff, holding what is in hand; with
        ``give_back``, only until the worker stops (then :class:`Stopping`)."""
        attempt = 0
        waited = 0
        while True:
            metrics.HEALTH.progress()
            try:
                answer = call()
            except TransientStoreError as exc:
                attempt += 1
                if attempt >= self.config.store_retries:
                    raise PermanentStoreError(f"still failing after {attempt} tries: {exc}") from exc
                metrics.STORE_RETRIES.inc()
                delay = min(10.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
                log.warning("store error (try %d of %d), retrying in %.1fs: %s", attempt,
                            self.config.store_retries, delay, exc)
                self.sleep(delay)
            except StoreUnavailable as exc:  # unreachable, or refusing every write (StoreRefused): hold, never DLQ
                metrics.STORE_WAITS.inc()
                metrics.HEALTH.hold(str(exc))
                delay = min(30.0, 1.0 * 2 ** min(waited, 5)) * random.uniform(0.8, 1.2)
                waited += 1
                log.warning("database %s, holding %s and retrying in %.1fs: %s",
                            "refusing" if isinstance(exc, StoreRefused) else "unavailable", holding, delay, exc)
                if not give_back:
                    self.sleep(delay)
                elif self.stopping.wait(delay):
                    raise Stopping(f"stopping while the database is unavailable ({exc})") from exc
            else:
                metrics.HEALTH.released()
                return answer


class DeadLetteringConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, except that messages it cannot hand to a task go to the dead-letter queue with the
    reason instead of being dropped (undecodable) or rejected without one (unknown task, not a task message)."""

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        # Celery sets up "native delayed delivery" (exchanges celery_delayed_*) when a queue is quorum; the
        # environment's user may not declare them (access_refused, retried at every start) and no task here is
        # delayed (no eta/countdown)
        default_steps: ClassVar[list[str]] = [
            step for step in Consumer.Blueprint.default_steps if not step.endswith(":DelayedDelivery")]

    _lost_host: str | None = None  # the node ("host:port") of the connection lost last

    def _runtime(self) -> Runtime:
        runtime: Runtime = self.app.matchenv_runtime
        return runtime

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], None]:
        """Our task's messages, and those that name no task in their headers (protocol 1, or no task message at
        all), go to the batches; a message naming any other task is dead-lettered as unknown. Celery's own handler
        would run the built-in tasks every app registers (``celery.chain``, ``celery.group``, ...) for whoever may
        publish to the queue."""
        metrics.BROKER_CONNECTS.inc()  # Celery asks for the handler each time its consumer (re)starts on a connection
        batcher = self._runtime().batcher
        batcher.schedule = self.call_soon_ack  # acks are written by this consumer's event loop
        if self._runtime().config.task_events:  # ... and so are task events, by its dispatcher of the moment
            batcher.send_event = self._send_event
        # Celery notices a SIGTERM only when its event loop wakes, which an idle worker did every ~10 s: a timer
        # wakes it often enough to stop within a fraction of a second
        previous = getattr(self, "_wake_timer", None)
        if previous is not None:
            previous.cancel()
        if self.hub is not None:
            self._wake_timer = self.hub.call_repeatedly(WAKE_SECONDS, _nothing)

        def on_task_received(message: Any) -> None:
            headers = message.headers if isinstance(message.headers, dict) else {}
            name = headers.get("task", TASK_NAME)
            if name == TASK_NAME:  # ours, protocol 2 or 1 (the task in the body)
                batcher.submit(message)
            else:
                self.on_unknown_task(None, message, KeyError(name))

        return on_task_received

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        if self.connection is not None:
            self._lost_host = self.connection.host
        super().on_connection_error_after_connected(exc)

    def connection_for_read(self, heartbeat: float | None = None) -> Any:
        """Celery's, except that after a lost connection the first node tried is the one after the node lost: a
        node cut off from its clients would cost each reconnect a connect timeout (4 s) first."""
        conn = self.app.connection_for_read(heartbeat=heartbeat)
        after_node(conn, self._lost_host)
        return self.ensure_connected(conn)

    def _send_event(self, type_: str, fields: dict[str, Any]) -> None:
        dispatcher = self.event_dispatcher
        if dispatcher is not None and dispatcher.enabled:
            dispatcher.send(type_, **fields)

    def stop(self) -> None:
        self._runtime().batcher.stop(STOP_WAIT)  # the batch in hand is stored and acked before the channel closes
        super().stop()

    def shutdown(self) -> None:
        self._runtime().batcher.stop(STOP_WAIT)
        super().shutdown()

    def _dead_letter(self, message: Any, reason: str, error: str) -> None:
        try:
            self._runtime().dead_letter_message(message, reason, error)
        except DeadLetterUnavailable as exc:
            log.warning("%s; returning it to the queue", exc)
            message.reject(requeue=True)
            return
        message.ack()

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._dead_letter(message, REASON_MALFORMED, f"cannot decode the body: {exc}")
        metrics.PROCESSED.inc()

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(message, REASON_MALFORMED, "not a Celery task message")
        metrics.PROCESSED.inc()

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, REASON_UNKNOWN_TASK, f"no such task here: {exc}")
        metrics.PROCESSED.inc()

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, REASON_MALFORMED, f"invalid task message: {exc}")
        metrics.PROCESSED.inc()


def after_node(conn: Any, lost: str | None) -> None:
    """Move the (not yet connected) kombu connection ``conn`` along its failover list to the node after ``lost``
    ("host:port"); nothing when it has no list or ``lost`` is not on it."""
    if lost is None or not conn.alt:
        return
    for _ in conn.alt:
        if conn.host == lost:
            conn.maybe_switch_next()
            return
        conn.maybe_switch_next()
    # ``lost`` is not on the list: the cycle went once around, back where it started


def _nothing() -> None:
    pass


def create_app(config: WorkerConfig, store_factory: Callable[[], Store] | None = None) -> Celery:
    """The Celery app for ``config``: its queue declared exactly as the operator declares it."""
    # py-amqp reading the socket in chunks (:mod:`matchenv.workers.transport`): the consumer's one thread reads a
    # backlog about twice as fast
    app = Celery("matchenv", set_as_current=False, amqp=ChunkedAMQP)
    queue = Queue(config.queue, Exchange(""), routing_key=config.queue, durable=True,
                  queue_arguments=queue_arguments(config.queue_type, config.owner))
    app.conf.update(
        broker_url=config.broker_url.get_secret_value(),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # a connection to a node that died or was cut off is given up after two missed heartbeats (10 s, Celery's
        # default is 4 min), then the next node of the broker URL's list is tried: the consumer's event loop never
        # blocks (storing runs on a thread of its own), so a busy worker still beats
        broker_heartbeat=BROKER_HEARTBEAT,
        broker_transport_options={"confirm_publish": True},
        task_queues=[queue],
        task_default_queue=config.queue,
        # the default (nameless) exchange: Celery then declares the queue but binds it to nothing, so the
        # environment's user needs no permission on any exchange
        task_default_exchange="",
        task_default_routing_key=config.queue,
        task_create_missing_queues=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # a task that raises is rejected, never acknowledged: the message is not lost
        task_acks_on_failure_or_timeout=False,
        # Celery's prefetch is concurrency x multiplier; the batches need ``config.prefetch`` in all
        worker_prefetch_multiplier=-(-config.prefetch // config.concurrency),
        worker_cancel_long_running_tasks_on_connection_loss=True,
        accept_content=["json"],
        task_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        worker_enable_remote_control=False,
        # task events (opt-in, for Flower) to the environment's own exchange, the only one its user may send them
        # to; Flower's broadcasts go to an exchange under the same name, which no worker reads
        worker_send_task_events=config.task_events,
        event_exchange=events_exchange(config.queue),
        event_queue_prefix=events_exchange(config.queue),
        control_exchange=events_exchange(config.queue),
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_consumer="matchenv.workers.app:DeadLetteringConsumer",
        worker_redirect_stdouts=False,
    )
    runtime = Runtime(config=config, app=app, store_factory=store_factory)
    app.matchenv_runtime = runtime

    return app


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _mark_ready(**_: Any) -> None:
    metrics.HEALTH.consuming.set()


@signals.worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _mark_stopping(**_: Any) -> None:
    metrics.HEALTH.consuming.clear()
    STOPPING.set()


def worker_argv(config: WorkerConfig, loglevel: str = "INFO", quiet: bool = False) -> list[str]:
    """Arguments for ``app.worker_main``: the threads pool, our queue only, nothing chatty (``quiet``: not even
    Celery's start-up banner, which is no log line: with JSON logs every line is one object).

    Threads, also for concurrency 1: with the solo pool and late acks, the next delivery waited up to 10 s after
    each burst here (measured: 61 of 600 messages in 60 s with solo, 600 in 1.7 s with threads).
    """
    pool = "threads"
    # with task events, heartbeats too: Flower shows a worker online while they come
    events = ["--task-events"] if config.task_events else ["--without-heartbeat"]
    return [*(["--quiet"] if quiet else []),  # celery's own option, before the command
            "worker", f"--pool={pool}", f"--concurrency={config.concurrency}", "--queues", config.queue,
            f"--loglevel={loglevel}", "--without-gossip", "--without-mingle", *events,
            f"--hostname=matchenv-{config.environment or config.queue}@%h"]
