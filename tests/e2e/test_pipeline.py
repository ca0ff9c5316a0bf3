"""The mission end to end: one YAML adds an environment, and the next scrape reaches its database through worker
pods the operator created: containers of the project's image on the real node, reaching the broker and the database
through the ``rabbitmq`` and ``postgres`` Services' DNS names."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from matchenv_devkit.services.process import wait_for
from tests.e2e.harness import secret_value
from tests.e2e.pipeline import Pipeline, real_node_pipeline_fixture

pytestmark = pytest.mark.node  # pods on the real node: make test runs this once the node and its images are built


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    yield from real_node_pipeline_fixture(tmp_path_factory.mktemp("pipeline"))


def test_prod_and_dev_receive_every_scraped_match(pipeline: Pipeline) -> None:
    pipeline.apply("prod")
    pipeline.apply("dev")
    pipeline.wait_ready("prod", "dev")
    pods = pipeline.kubectl.get_json("pods", "-l", "matchenv.io/environment=dev")["items"]
    assert pods
    assert all(p["status"]["phase"] == "Running" for p in pods)
    # containers on the real node, from the project's image, non-root with a read-only root filesystem
    assert all(p["spec"]["nodeName"] == "matchenv-node" for p in pods)
    statuses = [s for p in pods for s in p["status"]["containerStatuses"]]
    assert all(s["image"].endswith("matchenv:0.1.0") and s["containerID"].startswith("containerd://")
               for s in statuses)
    # the workers reach the broker by the Service's DNS name
    url = urlsplit(secret_value(pipeline.kubectl, "default", "dev-broker", "url"))
    assert (url.hostname, url.port) == ("rabbitmq.matchenv-system.svc.cluster.local", 5672)
    result = pipeline.scrape("--synthetic", "500")
    assert result.returncode == 0, result.stderr
    assert "confirmed 500" in result.stdout
    pipeline.wait_rows({"prod": 500, "dev": 500})


def test_applying_staging_adds_an_environment_that_starts_with_the_data_and_gets_the_next_scrape(
        pipeline: Pipeline) -> None:
    pipeline.apply("staging")  # the example: backfill.since 168h
    pipeline.wait_ready("staging")
    result = pipeline.scrape("--synthetic", "200", "--start", "500")
    assert result.returncode == 0, result.stderr
    pipeline.wait_rows({"prod": 700, "dev": 700, "staging": 700})
    assert pipeline.duplicates("staging") == 0
    lines = pipeline.kubectl.run("get", "matchenvironments").stdout.splitlines()
    print("\n" + "\n".join(lines))
    assert all(line.split()[-2] == "Ready" for line in lines[1:])


def test_queue_flag_reaches_one_environment_and_no_submit_none(pipeline: Pipeline) -> None:
    result = pipeline.scrape("--synthetic", "10", "--seed", "99", "--queue", "matches.prod")
    assert result.returncode == 0, result.stderr
    pipeline.wait_rows({"prod": 710, "dev": 700, "staging": 700})
    result = pipeline.scrape("--synthetic", "10", "--seed", "98", "--no-submit-queue")
    assert result.returncode == 0
    assert "published 0" in result.stdout
    pipeline.wait_rows({"prod": 710, "dev": 700, "staging": 700}, timeout=10)


def test_a_teams_own_broker_password_is_used_and_its_change_followed_without_a_loss(pipeline: Pipeline) -> None:
    kubectl = pipeline.kubectl
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "vault-broker-password"},
                   "stringData": {"password": "kept-in-vault-0001"}})
    pipeline.apply("vault", broker={"passwordSecretRef": {"name": "vault-broker-password"}}, deletionPolicy="Delete")
    pipeline.wait_ready("vault")
    assert secret_value(kubectl, "default", "vault-broker", "password") == "kept-in-vault-0001"
    before = kubectl.get_json("deployment", "vault-workers")["spec"]["template"]["metadata"]["annotations"]
    result = pipeline.scrape("--synthetic", "100", "--start", "5000", "--queue", "matches.vault")  # to vault only
    assert result.returncode == 0, result.stderr
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "vault-broker-password"},
                   "stringData": {"password": "kept-in-vault-0002"}})  # the team's rotation
    wait_for(lambda: secret_value(kubectl, "default", "vault-broker", "password") == "kept-in-vault-0002",
             timeout=60, what="the broker Secret following the team's")
    wait_for(lambda: kubectl.get_json("deployment", "vault-workers")["spec"]["template"]["metadata"]["annotations"]
             != before, timeout=60, what="the workers rolled")
    result = pipeline.scrape("--synthetic", "100", "--start", "5100", "--queue", "matches.vault")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: pipeline.rows("vault") == 200, timeout=180, what="200 rows in vault")
    pipeline.wait_ready("vault")
    assert pipeline.duplicates("vault") == 0
    kubectl.run("delete", "menv", "vault", "--timeout=90s", timeout=120)


def test_a_password_rotated_every_minute_under_load_loses_nothing_and_no_worker_is_refused(
        pipeline: Pipeline) -> None:
    kubectl = pipeline.kubectl
    pipeline.apply("rotating", broker={"rotateEvery": "60s"}, deletionPolicy="Delete",
                   workers={"image": "matchenv:0.1.0", "replicas": 2})
    pipeline.wait_ready("rotating")
    first = kubectl.get_json("menv", "rotating")["status"]["credentials"]
    broker_log = pipeline.rabbitmq.log_file
    seen_before = broker_log.stat().st_size if broker_log.exists() else 0
    # 3,000 matches to this environment only, 20 a second: two and a half minutes, two or three rotations, each
    # rolling both workers onto a new user while the feed flows, and the user before retired
    result = pipeline.scrape("--synthetic", "3000", "--start", "9000", "--queue", "matches.rotating",
                             "--max-rate", "20", timeout=900)
    assert result.returncode == 0, result.stderr
    assert "confirmed 3000" in result.stdout
    wait_for(lambda: pipeline.rows("rotating") == 3000, timeout=180, what="3,000 rows in rotating")
    assert pipeline.duplicates("rotating") == 0
    events = kubectl.get_json("events", "--field-selector", "involvedObject.name=rotating")["items"]
    reasons = [e["reason"] for e in events for _ in range(e.get("count") or 1)]
    print(f"\nrotations {reasons.count('BrokerCredentialsRotated')}, previous users removed "
          f"{reasons.count('BrokerUserRetired')}")
    assert reasons.count("BrokerCredentialsRotated") >= 2
    assert reasons.count("BrokerUserRetired") >= 1
    # the broker refused no login of this environment's users meanwhile
    with broker_log.open("rb") as log:
        log.seek(seen_before)
        refused = [line for line in log.read().decode(errors="replace").splitlines()
                   if "default.rotating" in line and ("refused" in line or "invalid credentials" in line)]
    assert refused == []
    now = kubectl.get_json("menv", "rotating")["status"]["credentials"]
    assert now["rotatedAt"] > first["rotatedAt"]
    users = {u.name for u in pipeline.broker.list_users()}
    assert now["user"] in users
    assert now.get("previousUser") in (None, *users)
    kubectl.run("delete", "menv", "rotating", "--timeout=90s", timeout=120)
    assert not {u for u in (u.name for u in pipeline.broker.list_users()) if u.endswith(".default.rotating")}


def test_deleted_environment_gets_nothing_more(pipeline: Pipeline) -> None:
    pipeline.kubectl.run("delete", "menv", "dev", "--timeout=90s", timeout=120)
    assert pipeline.queue_depth("matches.dev") is None  # deletionPolicy: Delete
    result = pipeline.scrape("--synthetic", "100", "--start", "700")
    assert result.returncode == 0, result.stderr
    pipeline.wait_rows({"prod": 810, "dev": 700, "staging": 800})


def test_with_no_environment_bound_the_scrape_fails_as_unroutable(pipeline: Pipeline) -> None:
    pipeline.kubectl.run("delete", "menv", "prod", "staging", "--timeout=90s", timeout=120)
    assert pipeline.queue_depth("matches.prod") is not None  # Retain: the queue stays, unbound
    result = pipeline.scrape("--synthetic", "5", "--start", "800")
    assert result.returncode == 1
    assert "5 matches were unroutable" in result.stderr
    # the management API's counts trail by up to one stats interval: wait for them to read 0
    wait_for(lambda: pipeline.queue_depth("matches.prod") == 0, timeout=10, what="nothing queued for prod")


def phase(pipeline: Pipeline, name: str) -> str | None:
    result = pipeline.kubectl.run("get", "menv", name, "-o", "jsonpath={.status.phase}", check=False)
    return result.stdout.strip() or None if result.returncode == 0 else None


def gone(pipeline: Pipeline, name: str) -> bool:
    return pipeline.kubectl.run("get", "menv", name, check=False).returncode != 0


def drained_reason(pipeline: Pipeline, name: str) -> str | None:
    status = pipeline.kubectl.get_json("menv", name).get("status") or {}
    return next((c["reason"] for c in status.get("conditions", []) if c["type"] == "Drained"), None)


def test_a_drain_deletion_starts_the_paused_workers_and_deletes_the_queue_only_once_empty(
        pipeline: Pipeline) -> None:
    # nothing else is bound any more: what is scraped waits in this environment's queue alone
    pipeline.apply("drain", paused=True, deletionPolicy="Drain",
                   workers={"image": "matchenv:0.1.0", "replicas": 2})
    wait_for(lambda: phase(pipeline, "drain") == "Paused", timeout=120, what="drain Paused")
    result = pipeline.scrape("--synthetic", "2000", "--start", "1000")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: pipeline.queue_depth("matches.drain") == 2000, timeout=30, what="2,000 waiting")
    pipeline.kubectl.run("delete", "menv", "drain", "--wait=false")
    seen: set[str] = set()
    deleted_with_rows: list[int] = []

    def watch() -> bool:
        reason = None if gone(pipeline, "drain") else drained_reason(pipeline, "drain")
        if reason:
            seen.add(reason)
        if gone(pipeline, "drain"):
            deleted_with_rows.append(pipeline.rows("drain"))
            return True
        return False

    wait_for(watch, timeout=300, every=0.2, what="drain deleted")
    assert deleted_with_rows[0] == 2000  # every row stored before the deletion ended
    assert pipeline.duplicates("drain") == 0
    assert pipeline.queue_depth("matches.drain") is None  # then deleted, as Delete would
    assert "Draining" in seen or "NoConsumers" in seen, seen  # it said why it waited
    assert pipeline.kubectl.run("get", "deployment", "drain-workers", check=False).returncode != 0


def test_a_drain_that_cannot_end_says_why_until_its_timeout_then_keeps_the_queue(pipeline: Pipeline) -> None:
    pipeline.apply("stuck", deletionPolicy="Drain", drain={"timeout": "45s", "onTimeout": "Retain"},
                   workers={"image": "matchenv:0.1.0", "replicas": 1})
    pipeline.wait_ready("stuck")
    pipeline.postgres.stop()
    try:
        result = pipeline.scrape("--synthetic", "300", "--start", "3000")
        assert result.returncode == 0, result.stderr
        pipeline.kubectl.run("delete", "menv", "stuck", "--wait=false")
        began = time.monotonic()
        wait_for(lambda: drained_reason(pipeline, "stuck") in ("Draining", "NoConsumers"), timeout=30,
                 what="the Drained condition")
        message = pipeline.kubectl.get_json("menv", "stuck")["status"]["lastError"]
        assert "messages left in queue matches.stuck" in message
        assert "drain.timeout 45s" in message
        wait_for(lambda: gone(pipeline, "stuck"), timeout=45 + 60, what="stuck deleted after its drain timeout")
        waited = time.monotonic() - began
        assert waited >= 40  # it waited for the timeout (the deletion was asked for just before `began`)
        wait_for(lambda: pipeline.queue_depth("matches.stuck") == 300, timeout=15, what="the 300 kept")
    finally:
        pipeline.postgres.start()
    pipeline.kubectl.wait_event("stuck", "DrainTimedOut")
    print(f"\nDrain with the database stopped: deleted after {waited:.0f}s (drain.timeout 45s), 300 kept in the queue")
