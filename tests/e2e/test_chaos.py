"""Chaos, bounded: 3 environments and 10,000 matches (MATCHENV_CHAOS_MATCHES; `make chaos` runs more) while worker
pods (containers on the real node) are deleted, RabbitMQ restarts once and the operator restarts once. Every
database must end with exactly every match, no duplicates, nothing dead-lettered."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from matchenv_devkit.services.process import wait_for
from tests.e2e.pipeline import Pipeline, real_node_pipeline_fixture

pytestmark = pytest.mark.node  # pods on the real node: make test runs this once the node and its images are built

ENVS = ("alpha", "beta", "gamma")
TOTAL = int(os.environ.get("MATCHENV_CHAOS_MATCHES", "10000"))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    yield from real_node_pipeline_fixture(tmp_path_factory.mktemp("chaos"))


def test_chaos_loses_nothing_and_duplicates_nothing(pipeline: Pipeline) -> None:
    for name in ENVS:
        pipeline.apply(name, workers={"image": "matchenv:0.1.0", "replicas": 2, "concurrency": 2})
    pipeline.wait_ready(*ENVS)
    result: dict[str, object] = {}
    scraper = threading.Thread(target=lambda: result.update(run=pipeline.scrape("--synthetic", str(TOTAL),
                                                                                "--seed", "4242")))
    started = time.monotonic()
    scraper.start()
    events: list[str] = []

    def progress() -> int:
        return min(pipeline.rows(e) for e in ENVS)

    wait_for(lambda: progress() >= TOTAL // 10, timeout=300, what="10% stored")
    pipeline.kubectl.run("delete", "pods", "-l", "matchenv.io/environment=alpha", "--wait=false")
    events.append(f"{time.monotonic() - started:.0f}s: deleted alpha's worker pods")

    wait_for(lambda: progress() >= TOTAL // 4, timeout=300, what="25% stored")
    pipeline.rabbitmq.stop()
    events.append(f"{time.monotonic() - started:.0f}s: RabbitMQ stopped")
    time.sleep(3)
    pipeline.rabbitmq.start()
    events.append(f"{time.monotonic() - started:.0f}s: RabbitMQ started")

    wait_for(lambda: progress() >= TOTAL // 2, timeout=600, what="50% stored")
    assert pipeline.operator is not None
    pipeline.operator.kill()
    pipeline.start_operator()
    events.append(f"{time.monotonic() - started:.0f}s: operator killed and restarted")
    pipeline.kubectl.run("delete", "pods", "-l", "matchenv.io/environment=gamma", "--wait=false")
    events.append(f"{time.monotonic() - started:.0f}s: deleted gamma's worker pods")

    scraper.join(timeout=1200)
    run = result["run"]
    assert run.returncode == 0, run.stderr  # type: ignore[attr-defined]
    pipeline.wait_rows({e: TOTAL for e in ENVS}, timeout=900)
    counts = {e: pipeline.rows(e) for e in ENVS}
    dupes = {e: pipeline.duplicates(e) for e in ENVS}
    dead = {e: pipeline.queue_depth(f"matches.{e}.dlq") for e in ENVS}
    wait_for(lambda: all(pipeline.queue_depth(f"matches.{e}.dlq") == 0 for e in ENVS), timeout=15,
             what="empty dead-letter queues")
    print(f"\nchaos: {TOTAL} matches in {time.monotonic() - started:.0f}s; {'; '.join(events)}")
    print(f"scrape: {run.stdout.strip()}")  # type: ignore[attr-defined]
    print(f"rows {counts}, duplicates {dupes}, dead-lettered {dead}")
    assert counts == {e: TOTAL for e in ENVS}
    assert dupes == {e: 0 for e in ENVS}
