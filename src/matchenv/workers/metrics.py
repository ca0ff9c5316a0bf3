"""Worker metrics for Prometheus, and the /healthz + /metrics endpoint the Deployment's probe reads."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer

from prometheus_client import Counter

from matchenv import health

PROCESSED = Counter("matchenv_worker_processed_total",
                    "Messages dealt with (stored, dead-lettered or given back), counted once done.")
STORED = Counter("matchenv_worker_matches_total", "Matches written or found unchanged.", ["outcome"])
DEAD_LETTERED = Counter("matchenv_worker_dead_lettered_total", "Messages sent to the dead-letter queue.", ["reason"])
FAILED = Counter("matchenv_worker_failed_total", "Messages whose processing raised an unexpected error.")
STORE_RETRIES = Counter("matchenv_worker_store_retries_total", "Store calls retried after a transient error.")
STORE_WAITS = Counter("matchenv_worker_store_waits_total", "Waits for an unreachable database.")

ready = threading.Event()  # set once the worker consumes


def serve(port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """``/healthz`` (ready once the worker consumes) and ``/metrics`` on ``port``."""
    return health.serve(port, ready.is_set, metrics=True, host=host)
