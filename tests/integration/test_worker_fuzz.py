"""Whatever another client publishes to the fanout, the worker stores every valid match once, dead-letters every
other message with its reason, and never stalls: bodies and AMQP headers of every field type, from py-amqp (floats
and all) and raw pika, against a real RabbitMQ, PostgreSQL and ``matchenv worker`` process."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from matchenv_devkit.services.process import wait_for
from tests.fuzz import FuzzMessage, expected, messages, oversize, publish
from tests.integration.harness import Environment, WorkerProcess, make_match, protocol1_body, rows


def test_odd_messages_from_any_client_never_stall_the_worker(env: Environment,
                                                             workers: Callable[..., WorkerProcess],
                                                             database: str) -> None:
    worker = workers()
    url = env.admin_url
    seen = {"rows": 0, "batches": 0}

    # no shrinking: each example waits on real processes, and the first failure says enough (its batch is printed)
    @settings(max_examples=12, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(messages("itfuzz"), min_size=1, max_size=12))
    def batch_is_dealt_with(batch: list[FuzzMessage]) -> None:
        if seen["batches"] == 0:
            batch = [oversize("itfuzz"), *batch]
        seen["batches"] += 1
        stored, reasons = expected(batch)
        refused = publish(url, env.topology.exchange, batch).refused
        assert refused == [], refused[:3]  # no stream bound here: the broker takes every one
        # a valid match published after the odd ones: reached only if nothing before it stalls the worker
        sentinel = make_match(900_000 + seen["batches"], external_match_id=f"sentinel-{seen['batches']}")
        env.publish([protocol1_body(sentinel)])
        want = seen["rows"] + len(stored) + 1
        wait_for(lambda: rows(database) >= want, timeout=60,
                 what=f"{len(stored)} valid matches and the sentinel stored past {sum(reasons.values())} odd ones")
        letters: list[str] = []
        deadline = time.monotonic() + 30
        while len(letters) < sum(reasons.values()) and time.monotonic() < deadline:
            letters += [str(h.get("x-matchenv-reason")) for h, _ in env.dead_letters()]
            time.sleep(0.2)
        assert Counter(letters) == Counter(reasons), [(m.note, m.client, m.headers) for m in batch]
        assert rows(database) == want  # every valid match once, nothing else
        ids = "', '".join(sorted(stored))
        assert rows(database, f"external_match_id in ('{ids}')") == len(stored)
        seen["rows"] = want

    batch_is_dealt_with()
    assert worker.proc is not None
    assert worker.proc.poll() is None, "the worker exited"
    assert "cannot dead-letter" not in worker.log()  # no dead letter was ever held back
    assert worker.metric("matchenv_worker_failed_total") == 0
