"""The management client's snapshots: the whole one's two reads (definitions, queues) are under way together, and
both count as the calls of the pass that asked; one environment's reads its named objects side by side, then what
hangs on those found; a read the broker fails once is tried again, a write is not."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from matchenv.contracts import OWNER_ARGUMENT
from matchenv.topology.client import BrokerUnreachable, ManagementClient
from matchenv.topology.snapshot import Scope
from matchenv.topology.tally import CallTally, tallying
from tests.unit.loopback import Handler, Recorder


class _Holding(Handler):
    """Answers ``/api/definitions`` only once ``/api/queues`` has arrived (or after 5 s), saying which it was."""

    def answer(self) -> None:
        server: _HoldingServer = self.server  # type: ignore[assignment]
        path = self.path.split("?", 1)[0]
        if path == "/api/queues":
            server.queues_asked.set()
        elif path == "/api/definitions":
            server.together.append(server.queues_asked.wait(5))
        super().answer()

    do_GET = answer  # noqa: N815 - http.server's name


class _HoldingServer(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.RequestHandlerClass = _Holding
        self.queues_asked = threading.Event()
        self.together: list[bool] = []


def test_a_whole_snapshot_reads_definitions_and_queues_side_by_side() -> None:
    with _HoldingServer.serving() as server:
        management = ManagementClient(server.url, "operator", "secret", timeout=(1.0, 10.0))
        try:
            with tallying(CallTally()) as tally:
                snapshot = management.snapshot()
        finally:
            management.close()
    assert server.together == [True]  # /api/queues arrived while /api/definitions was still under way
    assert snapshot.queues == {}
    assert sorted(server.seen) == ["GET /api/definitions", "GET /api/overview", "GET /api/queues"]
    assert tally.count == 3  # the queues' read on the other thread counted too


FIRST_ROUND = {"/api/queues/%2F/matches.dev", "/api/exchanges/%2F/matches.dev.dlx", "/api/policies/%2F/matchenv.dev",
               "/api/users/env-dev"}


class _Scoped(Handler):
    """A broker holding one queue (bound once) and one user (with its permissions); each of the first round's reads
    (queue, exchange, policy, user) answered only once all four have arrived; the queue's bindings not found (the
    queue deleted between the two rounds)."""

    def answer(self) -> None:
        server: _ScopedServer = self.server  # type: ignore[assignment]
        path = self.record()
        if path in FIRST_ROUND:
            try:
                server.first_round.wait()
            except threading.BrokenBarrierError:
                server.apart.append(path)
        marker = {OWNER_ARGUMENT: "c1/default/dev"} if server.marked else {}
        found = {"/api/queues/%2F/matches.dev": {"vhost": "/", "name": "matches.dev", "arguments": marker},
                 "/api/users/legacy-dev": {"name": "legacy-dev", "tags": []},
                 "/api/vhosts/%2F/permissions": [{"user": "legacy-dev", "vhost": "/", "configure": "", "write": "",
                                                  "read": "^matches\\.dev$"}],
                 "/api/users/env-dev": {"name": "env-dev", "tags": []},
                 "/api/permissions/%2F/env-dev": {"user": "env-dev", "vhost": "/", "configure": "", "write": "",
                                                  "read": "^matches\\.dev$"}}
        if path in found:
            self.send_json(200, json.dumps(found[path]).encode())
        else:
            self.send_json(404, b'{"error":"Object Not Found","reason":"Not Found"}')

    do_GET = answer  # noqa: N815 - http.server's name


class _ScopedServer(Recorder):
    marked = True  # the queue carries a cluster's ownership marker

    def __init__(self) -> None:
        super().__init__()
        self.RequestHandlerClass = _Scoped
        self.first_round = threading.Barrier(len(FIRST_ROUND), timeout=3)
        self.apart: list[str] = []  # reads that arrived alone


def test_one_environments_snapshot_reads_its_objects_side_by_side_and_then_what_hangs_on_them() -> None:
    """A new environment's snapshot was eight reads one after another before its first write; they go together, and
    a queue gone before its bindings are read has none (not an error)."""
    scope = Scope(vhost="/", queues=("matches.dev",), exchanges=("matches.dev.dlx",), policies=("matchenv.dev",),
                  users=("env-dev",))
    with _ScopedServer.serving() as server:
        management = ManagementClient(server.url, "operator", "secret", timeout=(1.0, 10.0))
        management._version = "4.0.5"  # read once per client: not this test's concern
        try:
            with tallying(CallTally()) as tally:
                snapshot = management.snapshot(scope)
        finally:
            management.close()
    assert server.apart == []
    assert {call.split()[1] for call in server.seen[:4]} == FIRST_ROUND
    assert sorted(server.seen[4:]) == ["GET /api/permissions/%2F/env-dev", "GET /api/queues/%2F/matches.dev/bindings"]
    assert list(snapshot.queues) == [("/", "matches.dev")]
    assert snapshot.bindings == ()
    assert snapshot.exchanges == {}
    assert snapshot.policies == {}
    assert list(snapshot.users) == ["env-dev"]
    assert snapshot.permissions[("env-dev", "/")].read == "^matches\\.dev$"
    assert tally.count == 6


class _Failing(Handler):
    """The first call of each path fails as the server says (``drop``: the connection closed with no answer,
    ``500``: an error), later calls are answered."""

    def answer(self) -> None:
        server: _FailingServer = self.server  # type: ignore[assignment]
        path = self.path.split("?", 1)[0]
        if path in server.failed:
            super().answer()
            return
        server.failed.add(path)
        self.record()
        if server.failure == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_json(500, b'{"error":"Internal Server Error","reason":"{badmatch,{error,not_found}}"}')

    do_GET = do_PUT = answer  # noqa: N815 - http.server's names


class _FailingServer(Recorder):
    def __init__(self, failure: str) -> None:
        super().__init__()
        self.RequestHandlerClass = _Failing
        self.failure = failure
        self.failed: set[str] = set()


@pytest.mark.parametrize("failure", ["500", "drop"])
def test_a_read_the_broker_fails_once_is_tried_again_and_a_write_is_not(failure: str) -> None:
    """RabbitMQ 4.0 answers GET /api/definitions with a 500 when a user is deleted while it reads them, and a
    kept-alive connection may be closed under a call: one such answer must not turn environments Degraded (or make
    a teardown wait a resync interval). A write is never sent twice by the client."""
    server = _FailingServer(failure)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    management = ManagementClient(server.url, "operator", "secret", timeout=(1.0, 10.0))
    try:
        assert management.snapshot().queues == {}
        assert server.seen.count("GET /api/definitions") == 2
        with pytest.raises(BrokerUnreachable):
            management.declare_queue("/", "matches.prod", {"x-queue-type": "quorum"})
        assert server.seen.count("PUT /api/queues/%2F/matches.prod") == 1
    finally:
        management.close()
        server.shutdown()
        server.server_close()


class _UnmarkedServer(_ScopedServer):
    marked = False


def test_a_queue_without_a_marker_has_its_claimants_read() -> None:
    """Adopted, or declared before the cluster identity: every permission of the vhost, and the users named as
    before, are read with the queue's bindings."""
    scope = Scope(vhost="/", queues=("matches.dev",), exchanges=("matches.dev.dlx",), policies=("matchenv.dev",),
                  users=("env-dev",), legacy_users=("legacy-dev",))
    with _UnmarkedServer.serving() as server:
        management = ManagementClient(server.url, "operator", "secret", timeout=(1.0, 10.0))
        management._version = "4.0.5"
        try:
            snapshot = management.snapshot(scope)
        finally:
            management.close()
    assert server.apart == []
    assert sorted(server.seen[4:]) == ["GET /api/queues/%2F/matches.dev/bindings", "GET /api/users/legacy-dev",
                                       "GET /api/vhosts/%2F/permissions"]
    assert sorted(snapshot.users) == ["env-dev", "legacy-dev"]
    assert list(snapshot.permissions) == [("legacy-dev", "/")]
