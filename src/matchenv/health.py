"""The small HTTP endpoint the kubelet's probes read: ``/healthz`` (200 while healthy, else 503) and, when asked,
Prometheus' ``/metrics`` on the same port. The operator and the workers both serve it; a check may say why it
fails, and that text is the response body (the worker's readiness probe prints it, so the kubelet's event and the
MatchEnvironment's status carry it)."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

Check = Callable[[], tuple[bool, str]]


# who may read /metrics: the request's Authorization header in, (HTTP status, why) out; 200 lets it read
Access = Callable[[str | None], tuple[int, str]]


def serve(port: int, healthy: Callable[[], bool] | None = None, metrics: bool = False, host: str = "0.0.0.0",
          checks: Mapping[str, Check] | None = None, tls: ssl.SSLContext | None = None,
          access: Access | None = None) -> ThreadingHTTPServer:
    """Serve ``/healthz`` from ``healthy`` (or each path of ``checks``: ``(ok, why)``), and ``/metrics`` when
    ``metrics`` (to whom ``access`` lets in, when given), on ``port`` from a daemon thread; over ``tls`` when
    given."""
    routes: dict[str, Check] = dict(checks or {})
    if healthy is not None:
        routes.setdefault("/healthz", lambda: (True, "ok") if healthy() else (False, "unhealthy"))

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a client that says nothing is let go

        def do_GET(self) -> None:
            content_type = "text/plain; charset=utf-8"
            path = self.path.split("?", 1)[0]
            if path in routes:
                ok, why = routes[path]()
                body, code = (why + "\n").encode(), 200 if ok else 503
            elif metrics and path == "/metrics":
                code, why = access(self.headers.get("Authorization")) if access is not None else (200, "")
                if code == 200:
                    body, content_type = generate_latest(), CONTENT_TYPE_LATEST
                else:
                    body = (why + "\n").encode()
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
    if tls is not None:
        # the handshake in each request's own thread (bounded by the handler's timeout), never in the accept loop
        server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
