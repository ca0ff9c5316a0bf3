"""The management client's whole snapshot: its two reads (definitions, queues) are under way together, and both
count as the calls of the pass that asked."""

from __future__ import annotations

import threading

from matchenv.topology.client import ManagementClient
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
