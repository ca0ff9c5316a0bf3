"""The management client of a cluster moves to the next node when one does not answer, and moves on once however
many calls beside each other found that node down: the handlers converge several environments at once, and each
moving the node on by itself could skip a live node (or come back round to the dead one)."""

from __future__ import annotations

import threading
from typing import Any

from matchenv.topology.client import ManagementClient
from tests.unit.loopback import Recorder

NOTHING_LISTENS = "http://127.0.0.1:9"  # the discard port: refused at once on loopback


def test_calls_beside_each_other_that_find_a_node_down_move_on_to_the_next_node_once() -> None:
    with Recorder.serving() as second, Recorder.serving() as third:
        management = ManagementClient(f"{NOTHING_LISTENS};{second.url};{third.url}", "operator", "secret",
                                      timeout=(1.0, 5.0))
        both_failing = threading.Barrier(2, timeout=5)
        exchange = management._exchange

        def held(*args: Any) -> Any:
            if args[1] == NOTHING_LISTENS:  # both calls have read the first node before either moves on
                both_failing.wait()
            return exchange(*args)

        management._exchange = held  # type: ignore[method-assign]
        answers: list[Any] = []
        calls = [threading.Thread(target=lambda: answers.append(management.overview())) for _ in range(2)]
        try:
            for call in calls:
                call.start()
            for call in calls:
                call.join(timeout=10)
            assert answers == [{}, {}]
            assert management.base_url == second.url
            assert second.seen == ["GET /api/overview"] * 2
            assert third.seen == []
        finally:
            management.close()
