"""A fresh ready count for each autoscaled queue, every second, so a backlog scales the workers up in about a second.

The management API's counts are RabbitMQ's statistics, refreshed every ``collect_statistics_interval`` (5 s by
default), and the resync reads them every interval (10 s shipped): a backlog waited up to 15 s for more workers. A
passive ``queue.declare`` over AMQP answers the queue's ready count as it is now. The probe asks it for each
autoscaled queue once a second, over one connection per broker and vhost (the admin's, as the operator's management
calls), and when the count asks for more workers than the environment has, converges it at once.

It only ever adds: the autoscaler takes the larger of this count and the statistics' ready + unacknowledged, and
scales down from the statistics alone (the passive declare's count leaves out the messages being worked on, so it
could scale busy workers away mid-message)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pika
import pika.exceptions

from matchenv.amqp import parameters

log = logging.getLogger(__name__)

INTERVAL = 1.0  # seconds between two looks at every watched queue
FRESH_FOR = 3.0  # a count older than this is not used
TIMEOUT = 2.0  # for each AMQP call: a slow broker holds up the others' looks this long at most
RETRY_AFTER = 30.0  # a broker that failed is left alone this long (the resync scales its queues meanwhile)


@dataclass(frozen=True)
class Watch:
    """One autoscaled queue: whose (``namespace``, ``name``), where (an AMQP URL with the vhost), and the ready count
    above which it needs more workers than it has (None: at its maximum, nothing to wake)."""

    namespace: str
    name: str
    url: str
    queue: str
    wake_above: int | None


class ReadyCounts:
    """Passive declares over AMQP: one connection per URL (the admin's, with the vhost), kept between looks; a
    broker that failed is left alone for ``RETRY_AFTER`` seconds."""

    def __init__(self, timeout: float = TIMEOUT, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.clock = clock
        self._connections: dict[str, pika.BlockingConnection] = {}  # by URL
        self._failed: dict[str, float] = {}  # URL -> when it last failed

    def ready(self, watch: Watch) -> int | None:
        """The queue's ready count now, or None (the broker unreachable, the queue gone: the resync says why)."""
        failed = self._failed.get(watch.url)
        if failed is not None and self.clock() - failed < RETRY_AFTER:
            return None
        for _ in range(2):  # a connection the broker closed meanwhile is made again once
            try:
                conn = self._connection(watch.url)
                channel = conn.channel()
                try:
                    ok = channel.queue_declare(watch.queue, passive=True)
                    self._failed.pop(watch.url, None)
                    return int(ok.method.message_count)
                finally:
                    if channel.is_open:
                        channel.close()
            except pika.exceptions.ChannelClosedByBroker:
                return None  # 404: not declared (yet); the converge makes it
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._drop(watch.url)
                log.debug("backlog probe: %s: %s", watch.queue, exc)
        self._failed[watch.url] = self.clock()
        return None

    def keep_only(self, used: set[str]) -> None:
        """Close the connections no watch needs any more."""
        for url in set(self._connections) - used:
            self._drop(url)
        for url in set(self._failed) - used:
            del self._failed[url]

    def _connection(self, url: str) -> pika.BlockingConnection:
        conn = self._connections.get(url)
        if conn is None or not conn.is_open:
            conn = pika.BlockingConnection(parameters(url, self.timeout, blocked=self.timeout, heartbeat=30))
            self._connections[url] = conn
        return conn

    def _drop(self, url: str) -> None:
        conn = self._connections.pop(url, None)
        if conn is not None and conn.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                conn.close()


class BacklogProbe:
    """Reads the watched queues' ready counts on a thread of its own until ``stop`` is set; calls ``wake`` with an
    environment's (namespace, name) when its count rises above its ``wake_above``."""

    def __init__(self, wake: Callable[[str, str], None], stop: threading.Event, counts: ReadyCounts | None = None,
                 interval: float = INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.wake = wake
        self.stop = stop
        self.counts = counts or ReadyCounts(clock=clock)
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._watches: dict[str, Watch] = {}  # by the environment's uid
        self._seen: dict[str, tuple[int, float]] = {}  # uid -> (ready, when read)
        self._thread: threading.Thread | None = None

    def start(self) -> BacklogProbe:
        self._thread = threading.Thread(target=self._run, name="matchenv-backlog-probe", daemon=True)
        self._thread.start()
        return self

    def watch(self, uid: str, watch: Watch) -> None:
        with self._lock:
            self._watches[uid] = watch

    def forget(self, uid: str) -> None:
        with self._lock:
            self._watches.pop(uid, None)
            self._seen.pop(uid, None)

    def watching(self, uid: str) -> Watch | None:
        with self._lock:
            return self._watches.get(uid)

    def ready(self, uid: str) -> int | None:
        """The queue's ready count read within the last ``FRESH_FOR`` seconds, if any."""
        with self._lock:
            seen = self._seen.get(uid)
        if seen is None or self.clock() - seen[1] > FRESH_FOR:
            return None
        return seen[0]

    def look(self) -> None:
        """One look at every watched queue; wakes those whose backlog asks for more workers."""
        with self._lock:
            watches = dict(self._watches)
        for uid, watch in watches.items():
            count = self.counts.ready(watch)
            if count is None:
                continue
            with self._lock:
                if uid not in self._watches:
                    continue  # forgotten meanwhile
                self._seen[uid] = (count, self.clock())
            if watch.wake_above is not None and count > watch.wake_above:
                self.wake(watch.namespace, watch.name)
        self.counts.keep_only({w.url for w in watches.values()})

    def _run(self) -> None:
        while not self.stop.is_set():
            started = self.clock()
            try:
                self.look()
            except Exception as exc:  # never let the probe die: the resync still scales
                log.warning("backlog probe: %s: %s", exc.__class__.__name__, exc)
            self.stop.wait(max(0.05, self.interval - (self.clock() - started)))
        self.counts.keep_only(set())
