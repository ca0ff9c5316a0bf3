"""The autoscaler on worker pods of the real node: a backlog scales the Deployment up at the next resync pass; workers
holding unacknowledged messages are not scaled away; a drained queue goes back to minReplicas; minReplicas 0 runs no
pod until a message comes, and that message is stored; a count set by hand is put back and explained; a paused
environment runs no pod and holds what arrives until it resumes.

A slow worker is made the way one is in production: its database is slow. The test holds a lock on the ``matches``
table, so every worker's upsert waits (for less than the workers' retry budget) with its messages unacknowledged."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from matchenv_devkit.services.process import wait_for
from tests.e2e.harness import scale_steps
from tests.e2e.pipeline import Pipeline, real_node_pipeline_fixture

pytestmark = pytest.mark.node  # pods on the real node: make test runs this once the node and its images are built

PER_REPLICA = 100


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    yield from real_node_pipeline_fixture(tmp_path_factory.mktemp("autoscaling"))


def _autoscaling(min_replicas: int, max_replicas: int) -> dict[str, Any]:
    return {"enabled": True, "minReplicas": min_replicas, "maxReplicas": max_replicas,
            "messagesPerReplica": PER_REPLICA, "scaleDownStabilizationSeconds": 3}


def _spec_replicas(pipeline: Pipeline, name: str) -> int:
    return int(pipeline.kubectl.get_json("menv", name)["spec"]["workers"]["replicas"])


def _pods(pipeline: Pipeline, name: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = pipeline.kubectl.get_json(
        "pods", "-l", f"matchenv.io/environment={name}")["items"]
    return pods


def _ready_pods(pipeline: Pipeline, name: str) -> set[str]:
    return {p["metadata"]["name"] for p in _pods(pipeline, name) if not p["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))}


def _queue(pipeline: Pipeline, name: str) -> tuple[int | None, int | None]:
    queue = pipeline.broker.get_queue("/", name)
    return queue.messages_ready, queue.messages_unacknowledged


def test_a_backlog_scales_up_within_a_pass_and_busy_workers_are_not_scaled_away(pipeline: Pipeline) -> None:
    pipeline.apply("prod", autoscaling=_autoscaling(1, 5), workers={"replicas": 1})
    pipeline.wait_ready("prod")
    assert pipeline.scrape("--synthetic", "1").returncode == 0  # the worker creates the table
    pipeline.wait_rows({"prod": 1})
    with psycopg.connect(pipeline.databases["prod"], autocommit=False) as lock:
        lock.execute("lock table matches in share row exclusive mode")  # every upsert now waits
        result = pipeline.scrape("--synthetic", "1000", "--start", "1")
        assert result.returncode == 0, result.stderr
        wait_for(lambda: pipeline.queue_depth("matches.prod") == 1000, timeout=10, what="1,000 messages seen")
        seen = time.monotonic()
        wait_for(lambda: _spec_replicas(pipeline, "prod") == 5, timeout=30, what="5 replicas")
        took = time.monotonic() - seen
        print(f"backlog of 1,000 seen -> 5 replicas written: {took:.1f} s (resync {pipeline.resync_seconds} s)")
        # at the latest at the pass after the backlog appeared (a little over one interval allows for the pass's
        # own run time on a loaded machine); the backlog probe's fresh ready count may scale up sooner, and in
        # steps while the scrape still publishes
        assert took <= pipeline.resync_seconds + 2.0
        scaled = pipeline.kubectl.wait_event("prod", "Scaled", containing=" -> 5 workers for a backlog of ")
        steps = scale_steps(scaled)  # in one step, or in steps while the scrape still published
        assert (steps[0], steps[-1]) == (1, 5), steps
        wait_for(lambda: len(_ready_pods(pipeline, "prod")) == 5, timeout=120, what="5 worker pods ready")
        # every message is now in a worker's hands, none ready: a scaler counting ready messages would remove 4 of
        # the 5 workers here; ours counts unacknowledged ones too and keeps them (stabilization is 3 s)
        wait_for(lambda: _queue(pipeline, "matches.prod") == (0, 1000), timeout=30,
                 what="all 1,000 messages unacknowledged, held by the workers")
        holding = _ready_pods(pipeline, "prod")
        time.sleep(3 * pipeline.resync_seconds)
        assert _spec_replicas(pipeline, "prod") == 5
        assert _ready_pods(pipeline, "prod") == holding
        assert _queue(pipeline, "matches.prod") == (0, 1000)
        lock.rollback()  # the database is fast again
    pipeline.wait_rows({"prod": 1001}, timeout=120)
    assert pipeline.duplicates("prod") == 0
    assert pipeline.broker.get_queue("/", "matches.prod.dlq").messages == 0  # nothing dead-lettered
    # drained: back to minReplicas after the stabilization window, and the pods go
    wait_for(lambda: _spec_replicas(pipeline, "prod") == 1, timeout=60, what="back to minReplicas 1")
    wait_for(lambda: len(_pods(pipeline, "prod")) == 1, timeout=120, what="one worker pod left")
    status = pipeline.kubectl.get_json("menv", "prod")["status"]
    assert status["autoscaling"]["replicas"] == 1
    assert status["autoscaling"]["backlog"] == 0


def test_kubectl_scale_on_an_autoscaled_environment_is_put_back_and_explained(pipeline: Pipeline) -> None:
    pipeline.kubectl.run("scale", "menv/prod", "--replicas=4")
    message = pipeline.kubectl.wait_event("prod", "ManualScaleReverted")[-1]
    assert _spec_replicas(pipeline, "prod") == 1
    assert "set to 4 by hand" in message
    assert "autoscaling.enabled to false" in message
    assert pipeline.kubectl.get_json("menv", "prod")["status"]["autoscaling"]["message"] == message


def test_min_replicas_zero_runs_no_pod_until_a_message_comes_and_stores_it(pipeline: Pipeline) -> None:
    pipeline.apply("dev", autoscaling=_autoscaling(0, 2), workers={"replicas": 0})
    pipeline.wait_ready("dev")  # Ready with no workers: ScaledToZero
    assert _pods(pipeline, "dev") == []
    time.sleep(2 * pipeline.resync_seconds)
    assert _pods(pipeline, "dev") == []  # idle: stays at zero
    result = pipeline.scrape("--synthetic", "1", "--start", "5000", "--queue", "matches.dev")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: _spec_replicas(pipeline, "dev") == 1, timeout=30, what="one worker for one message")
    pipeline.wait_rows({"dev": 1}, timeout=120)  # the pod started, migrated its database and stored it
    assert pipeline.duplicates("dev") == 0
    wait_for(lambda: _spec_replicas(pipeline, "dev") == 0 and _pods(pipeline, "dev") == [], timeout=120,
             what="back to zero pods")


def _phase(pipeline: Pipeline, name: str) -> str:
    return str((pipeline.kubectl.get_json("menv", name).get("status") or {}).get("phase"))


def test_a_paused_environment_holds_a_scrape_and_drains_it_on_resume(pipeline: Pipeline) -> None:
    pipeline.apply("staging", workers={"replicas": 2})
    pipeline.wait_ready("staging")
    pipeline.kubectl.run("patch", "menv", "staging", "--type=merge", "-p", '{"spec":{"paused":true}}')
    wait_for(lambda: _phase(pipeline, "staging") == "Paused" and _pods(pipeline, "staging") == [], timeout=120,
             what="paused, no worker pods")
    result = pipeline.scrape("--synthetic", "1000", "--start", "20000", "--queue", "matches.staging")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: pipeline.queue_depth("matches.staging") == 1000, timeout=30, what="1,000 held in the queue")
    time.sleep(2 * pipeline.resync_seconds)  # passes go by: nothing starts a worker, nothing is lost
    assert _pods(pipeline, "staging") == []
    assert pipeline.queue_depth("matches.staging") == 1000
    assert pipeline.rows("staging") == 0
    assert _phase(pipeline, "staging") == "Paused"
    assert pipeline.kubectl.events("staging", "Paused")
    pipeline.kubectl.run("patch", "menv", "staging", "--type=merge", "-p", '{"spec":{"paused":false}}')
    pipeline.wait_rows({"staging": 1000}, timeout=180)
    assert pipeline.duplicates("staging") == 0
    pipeline.wait_ready("staging")
    assert _phase(pipeline, "staging") == "Ready"
