"""The small HTTP endpoint the kubelet's probes read: ``/healthz`` (200 while healthy, else 503) and, when asked,
Prometheus' ``/metrics`` on the same port. The operator and the workers both serve it; a check may say why it
fails, and that text is the response body (the worker's readiness probe prints it, so the kubelet's event and the
MatchEnvironment's status carry it)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

Check = Callable[[], tuple[bool, str]]


def serve(port: int, healthy: Callable[[], bool] | None = None, metrics: bool = False, host: str = "0.0.0.0",
          checks: Mapping[str, Check] | None = None) -> ThreadingHTTPServer:
    """Serve ``/healthz`` from ``healthy`` (or each path of ``checks``: ``(ok, why)``), and ``/metrics`` when
    ``metrics``, on ``port`` from a daemon thread."""
    routes: dict[str, Check] = dict(checks or {})
    if healthy is not None:
        routes.setdefault("/healthz", lambda: (True, "ok") if healthy() else (False, "unhealthy"))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            content_type = "text/plain; charset=utf-8"
            path = self.path.split("?", 1)[0]
            if path in routes:
                ok, why = routes[path]()
                body, code = (why + "\n").encode(), 200 if ok else 503
            elif metrics and path == "/metrics":
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
