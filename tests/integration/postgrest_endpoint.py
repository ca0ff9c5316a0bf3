"""A small PostgREST-compatible endpoint for the SupabaseStore tests (no PostgREST server can be installed from the
package registries here). It serves what supabase-py's ``rpc()`` sends, ``POST /rest/v1/rpc/<function>`` with the
``apikey`` header, by calling that function on the real PostgreSQL, and answers errors the way PostgREST does
(``{"code": SQLSTATE, "message": ...}``; 503 with ``PGRST001`` when the database cannot be reached)."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from psycopg import sql

from matchenv_devkit.services.process import free_port

_RPC = re.compile(r"^/rest/v1/rpc/([a-z_][a-z0-9_]*)$")


class PostgrestEndpoint:
    def __init__(self, database_url: str, key: str) -> None:
        self.database_url = database_url
        self.key = key
        self.port = free_port()
        self.requests: list[dict[str, Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                endpoint.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if self.headers.get("apikey") != endpoint.key or \
                        self.headers.get("Authorization") != f"Bearer {endpoint.key}":
                    return self._answer(401, {"code": "PGRST301", "message": "JWT invalid"})
                match = _RPC.match(self.path.split("?")[0])
                if not match:
                    return self._answer(404, {"code": "PGRST202", "message": f"no route {self.path}"})
                try:
                    with psycopg.connect(endpoint.database_url, connect_timeout=2, autocommit=True) as conn:
                        query = sql.SQL("select {}(%s::jsonb)").format(sql.Identifier(match.group(1)))
                        row = conn.execute(query, (json.dumps(body.get("m")),)).fetchone()
                except psycopg.OperationalError as exc:
                    return self._answer(503, {"code": "PGRST001", "message": str(exc).splitlines()[0]})
                except psycopg.Error as exc:
                    return self._answer(400, {"code": exc.sqlstate, "message": str(exc).splitlines()[0]})
                return self._answer(200, row[0] if row else None)

            def _answer(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> PostgrestEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
