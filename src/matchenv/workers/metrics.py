"""Worker metrics for Prometheus, and the /healthz + /metrics endpoint the Deployment's probe reads."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

PROCESSED = Counter("matchenv_worker_processed_total", "Messages handled, whatever the outcome.")
STORED = Counter("matchenv_worker_matches_total", "Matches written or found unchanged.", ["outcome"])
DEAD_LETTERED = Counter("matchenv_worker_dead_lettered_total", "Messages sent to the dead-letter queue.", ["reason"])
FAILED = Counter("matchenv_worker_failed_total", "Messages whose processing raised an unexpected error.")
STORE_RETRIES = Counter("matchenv_worker_store_retries_total", "Store calls retried after a transient error.")
STORE_WAITS = Counter("matchenv_worker_store_waits_total", "Waits for an unreachable database.")

ready = threading.Event()  # set once the worker consumes


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/healthz"):
            ok = ready.is_set()
            body = b"ok\n" if ok else b"starting\n"
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "text/plain")
        elif self.path.startswith("/metrics"):
            body = generate_latest()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        else:
            body = b"not found\n"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


def serve(port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), _Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
