"""The management client's whole snapshot: its two reads (definitions, queues) are under way together, and both
count as the calls of the pass that asked; a read the broker fails once is tried again, a write is not."""

from __future__ import annotations

import socket
import threading

import pytest

from matchenv.topology.client import BrokerUnreachable, ManagementClient
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
