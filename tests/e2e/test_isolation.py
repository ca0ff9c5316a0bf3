"""Nothing one party does reaches another, on worker pods of the real node: odd messages from any client stall no
environment, a database that refuses every write holds its feed (and says why in the environment's status) instead
of draining it into the dead-letter queue, and a worker whose storing thread hangs on a frozen database is
restarted by its liveness probe with nothing lost."""

from __future__ import annotations

import base64
import decimal
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import amqp
import amqp.exceptions
import psycopg
import pytest

from matchenv.workers.migrate import migrate
from matchenv_devkit.services.process import wait_for
from matchenv_devkit.services.rabbitmq import queue_depth
from tests.e2e.pipeline import Pipeline, real_node_pipeline_fixture
from tests.fuzz import corpus, expected, publish

pytestmark = pytest.mark.node  # pods on the real node: make test runs this once the node and its images are built

ENVS = ("prod", "dev", "staging")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    yield from real_node_pipeline_fixture(tmp_path_factory.mktemp("isolation"))


def _pods(pipeline: Pipeline, env: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = pipeline.kubectl.get_json(
        "pods", "-l", f"matchenv.io/environment={env},app.kubernetes.io/component=worker")["items"]
    return items


def _restarts(pipeline: Pipeline, env: str) -> int:
    return sum(c.get("restartCount", 0) for p in _pods(pipeline, env)
               for c in p.get("status", {}).get("containerStatuses") or [])


def _dead_letters(pipeline: Pipeline, env: str) -> Counter[str]:
    """Reasons in the environment's dead-letter queue, read back without taking anything (requeued)."""
    rows = pipeline.broker._request("POST", f"/api/queues/%2F/matches.{env}.dlq/get", {
        "count": 1000, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 100}) or []
    return Counter(str((r.get("properties", {}).get("headers") or {}).get("x-matchenv-reason")) for r in rows)


def _depth(pipeline: Pipeline, queue: str) -> int:
    return queue_depth(pipeline.rabbitmq.endpoints.amqp_url, queue)


def _condition(pipeline: Pipeline, env: str, type_: str) -> dict[str, Any]:
    status = pipeline.kubectl.get_json("menv", env).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def test_odd_messages_from_any_client_stall_no_environment(pipeline: Pipeline) -> None:
    for env in ENVS:
        pipeline.apply(env, workers={"replicas": 1})
    pipeline.wait_ready(*ENVS)
    odd = corpus(200, prefix="e2efuzz", top_level_decimals=False)  # see the end of this test
    published = publish(pipeline.rabbitmq.endpoints.amqp_url, "matches-fanout", odd)
    # what the broker refuses, the publisher is told (its connection closed with the reason): RabbitMQ 4.0 with a
    # stream (the archive) bound refuses headers nesting tables and arrays (541 INTERNAL_ERROR), though the
    # environments' queues took them (measured): every environment deals with all 200; 3.10 takes these
    major = int((pipeline.broker.server_version() or "0").split(".")[0])
    assert len(published.accepted) + len(published.refused) == 200
    assert all("541" in why or "INTERNAL_ERROR" in why for _, why in published.refused), published.refused[:3]
    if major < 4:
        assert published.refused == []
    stored, reasons = expected(odd)
    result = pipeline.scrape("--synthetic", "1000")
    assert result.returncode == 0, result.stderr
    pipeline.wait_rows({env: 1000 + len(stored) for env in ENVS}, timeout=300)
    for env in ENVS:
        assert pipeline.duplicates(env) == 0, env
        wait_for(lambda e=env: _dead_letters(pipeline, e) == Counter(reasons), timeout=60,
                 what=f"every odd message in {env}'s dead-letter queue with its reason")
        assert _restarts(pipeline, env) == 0, env
    with psycopg.connect(pipeline.databases["prod"], connect_timeout=5) as conn:
        ids = {r[0] for r in conn.execute("select external_match_id from matches where external_match_id like "
                                          "'e2efuzz-%'").fetchall()}
    assert ids == stored
    # RabbitMQ 3.10 with a stream (the archive) bound: a header whose value is a decimal closes the publisher's
    # connection (INTERNAL_ERROR); the publisher is told, and every environment goes on
    connection = amqp.Connection(host=f"127.0.0.1:{pipeline.rabbitmq.endpoints.amqp_port}",
                                 userid=pipeline.rabbitmq.endpoints.username,
                                 password=pipeline.rabbitmq.endpoints.password, confirm_publish=True)
    connection.connect()
    with pytest.raises(amqp.exceptions.InternalError):
        connection.channel().basic_publish(amqp.Message(b"{}", application_headers={"x-d": decimal.Decimal("1.5")}),
                                           exchange="matches-fanout", routing_key="")
    result = pipeline.scrape("--synthetic", "5", "--start", "5000")
    assert result.returncode == 0, result.stderr
    for env in ENVS:
        wait_for(lambda e=env: pipeline.rows(e) >= 1005 + len(stored), timeout=60, what=f"{env} goes on")
        assert _restarts(pipeline, env) == 0, env


def test_a_database_that_refuses_every_write_holds_the_feed_and_says_why(pipeline: Pipeline) -> None:
    database = pipeline.database("held")
    migrate(database)  # its owner migrates it; the workers' role may only call the upsert
    role, password = "held_app", "held-app-pw"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"create role {role} login bypassrls password '{password}'")
        conn.execute(f"grant usage on schema public to {role}")
        conn.execute(f"grant select, update on matches to {role}")  # no insert: a grant script's mistake
        conn.execute(f"grant execute on function matchenv_upsert_match(jsonb), matchenv_upsert_matches(jsonb) "
                     f"to {role}")
    secret = pipeline.kubectl.get_json("secret", "matchenv-db-held")
    url = base64.b64decode(secret["data"]["DATABASE_URL"]).decode()
    scheme, rest = url.split("://", 1)
    pipeline.kubectl.apply({"apiVersion": "v1", "kind": "Secret",
                            "metadata": {"name": "matchenv-db-held", "namespace": "default"},
                            "stringData": {"DATABASE_URL": f"{scheme}://{role}:{password}@{rest.split('@', 1)[1]}",
                                           "MATCHENV_MIGRATE": "false"}})
    pipeline.apply("held", workers={"replicas": 1})
    pipeline.wait_ready("held")
    result = pipeline.scrape("--synthetic", "50", "--exchange", "matches-fanout")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: "holding messages: the database refuses every write (permission denied)"
             in _condition(pipeline, "held", "WorkersReady").get("message", ""), timeout=120,
             what="WorkersReady says why")
    assert _condition(pipeline, "held", "WorkersReady")["status"] == "False"
    described = pipeline.kubectl.run("describe", "menv", "held").stdout
    assert "permission denied for table matches" in described
    assert _depth(pipeline, "matches.held.dlq") == 0  # nothing dead-lettered
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"grant insert on matches to {role}")
    pipeline.wait_rows({"held": 50}, timeout=120)
    pipeline.wait_ready("held")
    assert _depth(pipeline, "matches.held.dlq") == 0
    assert pipeline.duplicates("held") == 0


def test_a_worker_stuck_on_a_frozen_database_is_restarted_and_nothing_is_lost(pipeline: Pipeline) -> None:
    pipeline.apply("frozen", workers={"replicas": 1, "env": [{"name": "MATCHENV_STUCK_SECONDS", "value": "5"}]})
    pipeline.wait_ready("frozen")
    result = pipeline.scrape("--synthetic", "20", "--exchange", "matches-fanout")
    assert result.returncode == 0, result.stderr
    pipeline.wait_rows({"frozen": 20})
    before = _restarts(pipeline, "frozen")
    with pipeline.postgres.frozen():
        result = pipeline.scrape("--synthetic", "10", "--start", "20", "--exchange", "matches-fanout")
        assert result.returncode == 0, result.stderr
        # stuck after 5 s, three failed liveness probes 10 s apart: restarted within about a minute
        wait_for(lambda: _restarts(pipeline, "frozen") > before, timeout=150,
                 what="the kubelet restarts the stuck worker")
        time.sleep(1)
    pipeline.wait_rows({"frozen": 30}, timeout=180)
    assert pipeline.duplicates("frozen") == 0
    events = pipeline.kubectl.run("get", "events", "-o", "json").stdout
    assert any(e.get("reason") == "Unhealthy" and "Liveness probe failed" in e.get("message", "")
               for e in json.loads(events)["items"])
