"""Tenancy and safety with worker pods on the real node: adopting a hand-wired queue, credentials that converge and
rotate with no message lost, and a deletion that lets the workers finish."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator

import pika
import pika.exceptions
import psycopg
import pytest
import requests

from matchenv.scraper.messages import task_message
from matchenv.scraper.sources import synthetic
from matchenv_devkit.services.process import wait_for
from tests.e2e.harness import secret_value, worker_user
from tests.e2e.pipeline import Pipeline, real_node_pipeline_fixture

pytestmark = pytest.mark.node  # pods on the real node: make test runs this once the node and its images are built


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    yield from real_node_pipeline_fixture(tmp_path_factory.mktemp("tenancy-workers"))


def reason(pipeline: Pipeline, name: str, type_: str = "TopologyReady") -> str | None:
    status = pipeline.kubectl.get_json("menv", name).get("status") or {}
    return next((c["reason"] for c in status.get("conditions", []) if c["type"] == type_), None)


Scrape = tuple[threading.Thread, list[subprocess.CompletedProcess[str]]]


def scrape_in_background(pipeline: Pipeline, *args: str) -> Scrape:
    results: list[subprocess.CompletedProcess[str]] = []
    thread = threading.Thread(target=lambda: results.append(pipeline.scrape(*args)))
    thread.start()
    return thread, results


def stored_ids(pipeline: Pipeline, env: str) -> list[str]:
    with psycopg.connect(pipeline.databases[env], connect_timeout=5) as conn:
        return [row[0] for row in conn.execute("select external_match_id from matches")]


def test_a_hand_wired_queue_is_refused_then_adopted_with_its_messages(pipeline: Pipeline) -> None:
    broker = pipeline.broker
    for name in ("matches.legacy", "matches.legacy2"):
        broker.declare_queue("/", name, {"x-queue-type": "classic"})  # made by hand, before matchenv
    with pika.BlockingConnection(pika.URLParameters(pipeline.rabbitmq.endpoints.amqp_url)) as conn:
        channel = conn.channel()
        for raw in synthetic(10, seed=77):
            message = task_message(raw.data)  # type: ignore[arg-type]
            channel.basic_publish("", "matches.legacy", message.body, pika.BasicProperties(
                content_type="application/json", content_encoding="utf-8", delivery_mode=2,
                headers=message.headers))
    pipeline.apply("legacy2")
    wait_for(lambda: reason(pipeline, "legacy2") == "QueueExists", timeout=30, what="QueueExists")
    pipeline.apply("legacy", queue={"adopt": True})
    # adoption takes a queue and its messages: only with the administrator's consent
    wait_for(lambda: reason(pipeline, "legacy") == "NotAllowed", timeout=30, what="NotAllowed")
    assert "MATCHENV_ADOPT_NAMESPACES" in pipeline.kubectl.run("describe", "menv", "legacy").stdout
    with pika.BlockingConnection(pika.URLParameters(pipeline.rabbitmq.endpoints.amqp_url)) as conn:
        assert conn.channel().queue_declare("matches.legacy", passive=True).method.message_count == 10
    assert pipeline.operator is not None
    pipeline.operator.stop()
    pipeline.start_operator({"MATCHENV_ADOPT_NAMESPACES": "default"})
    pipeline.wait_ready("legacy")
    pipeline.wait_rows({"legacy": 10})
    assert sorted(stored_ids(pipeline, "legacy")) == sorted(f"synthetic-77-{i}" for i in range(10))
    pipeline.kubectl.run("delete", "menv", "legacy", "legacy2", "--timeout=120s", timeout=150)
    wait_for(lambda: broker.get_queue("/", "matches.legacy2").messages == 0, timeout=15,
             what="matches.legacy2 untouched, still there")
    for name in ("matches.legacy", "matches.legacy2"):
        broker.delete_queue("/", name)


def test_credentials_repair_and_rotate_with_no_message_lost(pipeline: Pipeline) -> None:
    pipeline.apply("rot")
    pipeline.wait_ready("rot")
    user = worker_user(pipeline.kubectl, "rot")
    ep = pipeline.rabbitmq.endpoints
    admin = (ep.username, ep.password)

    # 1. the password changed on the broker by hand, the workers' connections dropped: repaired within one interval
    requests.put(f"{ep.management_url}/api/users/{user}", auth=admin, json={"password": "by-hand", "tags": ""},
                 timeout=5).raise_for_status()
    for conn in requests.get(f"{ep.management_url}/api/connections", auth=admin, timeout=5).json():
        if conn.get("user") == user:
            requests.delete(f"{ep.management_url}/api/connections/{conn['name']}", auth=admin, timeout=5)
    url = pipeline.broker_url_from_host(secret_value(pipeline.kubectl, "default", "rot-broker", "url"))
    wait_for(lambda: _can_connect(url), timeout=2 * pipeline.resync_seconds + 10, what="password repaired")
    result = pipeline.scrape("--synthetic", "50", "--seed", "5")
    assert result.returncode == 0, result.stderr
    pipeline.wait_rows({"rot": 50})

    # 2. rotation while 2,000 matches are published
    thread, results = scrape_in_background(pipeline, "--synthetic", "2000", "--seed", "6")
    wait_for(lambda: pipeline.rows("rot") >= 100, what="scrape under way")
    pipeline.kubectl.run("annotate", "menv", "rot", "matchenv.io/rotate-credentials=first", "--overwrite")
    wait_for(lambda: pipeline.broker_url_from_host(secret_value(pipeline.kubectl, "default", "rot-broker", "url"))
             != url, timeout=30,
             what="new password in the Secret")
    pipeline.kubectl.run("rollout", "status", "deployment/rot-workers", "--timeout=120s", timeout=150)
    thread.join(timeout=300)
    assert results, "scrape did not finish"
    assert results[0].returncode == 0, results[0].stderr
    pipeline.wait_rows({"rot": 2050})
    assert pipeline.duplicates("rot") == 0
    revisions = {r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                 for r in pipeline.kubectl.get_json("replicasets", "-l", "matchenv.io/environment=rot")["items"]}
    assert len(revisions) >= 2  # the workers were rolled onto the new Secret
    # the previous user goes once no worker pod runs with it: then the old URL is refused
    wait_for(lambda: not _can_connect(url), timeout=2 * pipeline.resync_seconds + 30, what="the previous user removed")
    credentials = wait_for(lambda: (c := pipeline.kubectl.get_json("menv", "rot")["status"]["credentials"])
                           .get("previousUser") is None and c, timeout=15, what="status without a previous user")
    assert credentials["user"] == secret_value(pipeline.kubectl, "default", "rot-broker", "username") != user
    assert _can_connect(pipeline.broker_url_from_host(secret_value(pipeline.kubectl, "default", "rot-broker", "url")))
    pipeline.kubectl.run("delete", "menv", "rot", "--timeout=120s", timeout=150)


def _can_connect(url: str) -> bool:
    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
    except pika.exceptions.AMQPConnectionError:
        return False
    return True


def test_deleting_an_environment_mid_scrape_lets_its_workers_finish(pipeline: Pipeline) -> None:
    pipeline.apply("keep")
    pipeline.apply("gone")  # deletionPolicy Retain
    pipeline.wait_ready("keep", "gone")
    total = 4000
    thread, results = scrape_in_background(pipeline, "--synthetic", str(total), "--seed", "8")
    wait_for(lambda: pipeline.rows("gone") >= 300, what="gone's workers busy")
    # the pods' logs disappear with them: follow them until the containers end
    log_path = pipeline.tmp / "gone-workers.log"
    with log_path.open("w") as log_file:
        follower = subprocess.Popen(pipeline.kubectl.cluster.kubectl_cmd(
            "logs", "--follow", "--prefix", "--tail=-1", "-l", "matchenv.io/environment=gone"),
            stdout=log_file, stderr=subprocess.STDOUT)
    pipeline.kubectl.run("delete", "menv", "gone", "--timeout=150s", timeout=180)
    thread.join(timeout=300)
    assert results, "scrape did not finish"
    assert results[0].returncode == 0, results[0].stderr
    pipeline.wait_rows({"keep": total})
    # everything routed to gone before it was unbound is either stored or back in its retained queue
    stored = stored_ids(pipeline, "gone")
    queued = _drain(pipeline, "matches.gone")
    seen = {int(i.rsplit("-", 1)[1]) for i in [*stored, *queued]}
    assert seen == set(range(len(seen))), "a message routed to gone was lost"
    assert 300 <= len(seen) <= total
    assert pipeline.duplicates("gone") == 0
    follower.wait(timeout=60)
    logs = log_path.read_text(errors="replace")
    assert "gone-workers-" in logs  # the prefix: the follower saw the pods
    errors = [line for line in logs.splitlines() if "ERROR" in line or "CRITICAL" in line]
    assert errors == [], errors[:5]
    print(f"\ngone: {len(stored)} stored, {len(queued)} back in the retained queue, none lost")
    pipeline.broker.delete_queue("/", "matches.gone")
    pipeline.broker.delete_queue("/", "matches.gone.dlq")


def _drain(pipeline: Pipeline, queue: str) -> list[str]:
    ids: list[str] = []
    with pika.BlockingConnection(pika.URLParameters(pipeline.rabbitmq.endpoints.amqp_url)) as conn:
        channel = conn.channel()
        while True:
            method, _props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return ids
            ids.append(json.loads(body)[0][0]["external_match_id"])
