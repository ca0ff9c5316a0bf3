"""The small HTTP endpoint the kubelet's probes read: ``/healthz`` (200 while healthy, else 503) and, when asked,
Prometheus' ``/metrics`` on the same port. The operator and the workers both serve it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


def serve(port: int, healthy: Callable[[], bool], metrics: bool = False, host: str = "0.0.0.0"
          ) -> ThreadingHTTPServer:
    """Serve ``/healthz`` (and ``/metrics`` when ``metrics``) on ``port`` from a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            content_type = "text/plain"
            if self.path.startswith("/healthz"):
                ok = healthy()
                body, code = (b"ok\n", 200) if ok else (b"unhealthy\n", 503)
            elif metrics and self.path.startswith("/metrics"):
                body, code, content_type = generate_latest(), 200, CONTENT_TYPE_LATEST
            else:
                body, code = b"not found\n", 404
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
