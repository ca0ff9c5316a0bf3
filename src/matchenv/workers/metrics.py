"""Worker metrics for Prometheus, what the worker's probes read (:class:`Health`), and the endpoint serving both:
``/healthz`` (readiness: consuming, and the store takes what it is given), ``/livez`` (liveness: the storing thread
makes progress) and ``/metrics``."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer

from prometheus_client import Counter, Gauge, Histogram

from matchenv import health

PROCESSED = Counter("matchenv_worker_processed_total",
                    "Messages dealt with (stored, dead-lettered or given back), counted once done.")
STORED = Counter("matchenv_worker_matches_total", "Matches written or found unchanged.", ["outcome"])
DEAD_LETTERED = Counter("matchenv_worker_dead_lettered_total", "Messages sent to the dead-letter queue.", ["reason"])
FAILED = Counter("matchenv_worker_failed_total", "Messages whose processing raised an unexpected error.")
STORE_RETRIES = Counter("matchenv_worker_store_retries_total", "Store calls retried after a transient error.")
STORE_WAITS = Counter("matchenv_worker_store_waits_total", "Waits for an unreachable or refusing database.")
STORE_HOLDING = Gauge("matchenv_worker_store_holding",
                      "1 while the worker holds its messages because the database cannot take any (unreachable, "
                      "or refusing every write: credentials, permissions, read-only, schema).")
STORE_SECONDS = Histogram("matchenv_worker_store_duration_seconds",
                          "Time one store call took: a batch in one transaction, or one match on its own.",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
BATCH_SIZE = Histogram("matchenv_worker_batch_size_matches", "Matches stored in one transaction.",
                       buckets=(1, 2, 5, 10, 20, 50, 100))
END_TO_END = Histogram("matchenv_worker_end_to_end_seconds",
                       "From the scrape's stamp (x-matchenv-scraped-at, the publisher's clock) to the match's commit, "
                       "by outcome.", ["outcome"],
                       buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0))
BROKER_CONNECTS = Counter("matchenv_worker_broker_connects_total",
                          "Times the worker connected to the broker and began consuming: 1 at start, one more each "
                          "time it lost its connection and came back.")
NEWEST_STORED = Gauge("matchenv_worker_newest_stored_scrape_timestamp_seconds",
                      "The newest scrape stamp among the matches this worker stored since it started (Unix time); "
                      "0 before the first.")

STUCK_ENV = "MATCHENV_STUCK_SECONDS"
STUCK_SECONDS = 120.0  # a batch in hand without progress this long: the liveness probe fails


class Health:
    """What the probes read. Ready: the worker consumes and its store is not refusing. Alive: no batch has been in
    the storing thread's hands without progress (a store call that never returns, on a half-open connection or a
    frozen database) for ``stuck_after`` seconds."""

    def __init__(self, stuck_after: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.consuming = threading.Event()
        self.stuck_after = stuck_after if stuck_after is not None else float(
            os.environ.get(STUCK_ENV) or STUCK_SECONDS)
        self.clock = clock
        self._holding: str | None = None
        self._busy_since: float | None = None
        self._last_progress = clock()

    def hold(self, why: str) -> None:
        """The store takes nothing for now: messages are held, the worker reports not ready with ``why``."""
        self._holding = why
        self._last_progress = self.clock()
        STORE_HOLDING.set(1)

    def released(self) -> None:
        if self._holding is not None:
            self._holding = None
            STORE_HOLDING.set(0)

    def busy(self) -> None:
        """A batch is in the storing thread's hands."""
        self._busy_since = self._last_progress = self.clock()

    def progress(self) -> None:
        """The storing thread is still moving (an answer, a retry, a wait that ended)."""
        self._last_progress = self.clock()

    def idle(self) -> None:
        self._busy_since = None
        self._last_progress = self.clock()

    def readiness(self) -> tuple[bool, str]:
        if not self.consuming.is_set():
            return False, "not consuming yet"
        if self._holding is not None:
            return False, f"holding messages: {self._holding}"
        return True, "ok"

    def liveness(self) -> tuple[bool, str]:
        if self._busy_since is None:
            return True, "ok"
        still = self.clock() - self._last_progress
        if still <= self.stuck_after:
            return True, "ok"
        return False, (f"the storing thread has made no progress for {still:.0f} s (a database call that does not "
                       "return?): restart to get a new connection; its messages go back to the queue")


HEALTH = Health()


def serve(port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """``/healthz`` (readiness), ``/livez`` (liveness) and ``/metrics`` on ``port``."""
    return health.serve(port, metrics=True, host=host,
                        checks={"/healthz": HEALTH.readiness, "/livez": HEALTH.liveness})
