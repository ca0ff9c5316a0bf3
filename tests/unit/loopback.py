"""A loopback HTTP server that answers ``{}`` to everything and records what reached it (an API server, a
management API or a proxy, as a unit test needs)."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from typing import Self


class Recorder(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[str] = []  # "METHOD path" (a proxy sees the absolute URL as the path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @classmethod
    @contextlib.contextmanager
    def serving(cls) -> Iterator[Self]:
        recorder = cls()
        threading.Thread(target=recorder.serve_forever, daemon=True).start()
        try:
            yield recorder
        finally:
            recorder.shutdown()
            recorder.server_close()


class Handler(http.server.BaseHTTPRequestHandler):
    server: Recorder

    def answer(self) -> None:
        self.record()
        self.send_json(200, b"{}")

    def record(self) -> str:
        """Read the request's body and note the call in ``server.seen``; its path (no query)."""
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        self.server.seen.append(f"{self.command} {path}")
        return path

    def send_json(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = answer  # noqa: N815 - http.server's names

    def log_message(self, *args: object) -> None:
        pass
