"""What the feed gives beyond one copy per environment, on worker pods of the real node: a new environment backfilled
from the archive so that it holds what the others hold, one paused without a backlog that catches up on resume, a
subset by topic through the topic exchange bound to the
fanout, and dead letters a team lists, reads, redrives and purges from the command line and as a kubectl plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import psycopg
import pytest

from matchenv.scraper.sources import synthetic
from matchenv_devkit.cluster.versions import ControlPlaneBinaries
from matchenv_devkit.services.process import wait_for
from tests.e2e.harness import cluster_id, secret_value
from tests.e2e.pipeline import Pipeline, real_node_pipeline_fixture

pytestmark = pytest.mark.node  # pods on the real node: make test runs this once the node and its images are built

AGES = ("U13", "U14", "U15", "U16")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    yield from real_node_pipeline_fixture(tmp_path_factory.mktemp("feed"))


def _protocol1(pipeline: Pipeline, exchange: str, routing_key: str, matches: list[Any]) -> None:
    """Publish as the existing producers do: Celery protocol-1 JSON bodies, confirmed."""
    with pika.BlockingConnection(pika.URLParameters(pipeline.rabbitmq.endpoints.amqp_url)) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        for match in matches:
            body = json.dumps({"id": str(uuid.uuid4()), "task": "celery_tasks.match_tasks.process_match_data",
                               "args": [match], "kwargs": {}, "retries": 0, "eta": None, "expires": None})
            channel.basic_publish(exchange, routing_key, body.encode(),
                                  pika.BasicProperties(content_type="application/json", delivery_mode=2),
                                  mandatory=True)


def _rows(database: str, where: str) -> int:
    with psycopg.connect(database, connect_timeout=5) as conn:
        return int(conn.execute(f"select count(*) from matches where {where}").fetchone()[0])  # type: ignore[index]


def _published_to(pipeline: Pipeline, queue: str) -> int:
    """Messages the broker routed into ``queue`` since it was made (its statistics)."""
    stats = pipeline.broker._request("GET", f"/api/queues/%2F/{queue}").get("message_stats") or {}
    return int(stats.get("publish") or 0)


def test_a_new_environment_is_backfilled_from_the_archive_and_holds_what_the_others_hold(pipeline: Pipeline) -> None:
    pipeline.apply("prod")
    pipeline.apply("dev")
    pipeline.wait_ready("prod", "dev")
    result = pipeline.scrape("--synthetic", "500")
    assert result.returncode == 0, result.stderr
    pipeline.wait_rows({"prod": 500, "dev": 500})
    # staging joins late and asks for the last hour; 200 more are scraped while its backfill runs
    pipeline.apply("staging", backfill={"since": "1h"})
    more: list[subprocess.CompletedProcess[str]] = []
    scraper = threading.Thread(target=lambda: more.append(pipeline.scrape("--synthetic", "200", "--start", "500",
                                                                          "--max-rate", "100")))
    scraper.start()
    pipeline.wait_ready("staging")
    scraper.join(timeout=120)
    assert more, "the scrape did not end"
    assert more[0].returncode == 0, more[0].stderr
    pipeline.kubectl.run("wait", "--for=condition=BackfillComplete", "menv/staging", "--timeout=180s", timeout=200)
    pipeline.wait_rows({"prod": 700, "dev": 700, "staging": 700})
    for env in ("prod", "dev", "staging"):
        assert pipeline.duplicates(env) == 0, env
    # prod and dev got each match once: the backfill went to staging's queue only
    wait_for(lambda: _published_to(pipeline, "matches.prod") == 700, timeout=30, what="prod's queue took 700")
    # `kubectl matchenv status`: the three level with their feed, read with nothing but the kubeconfig
    # (the backlog is the operator's last look: a converge after the last ack reads 0)
    def level() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = json.loads(_matchenv(pipeline, "status", "-o", "json",
                                                           kubectl_plugin=True).stdout)
        lag = {e["name"]: (e["behind_messages"], e["dead_letters"]) for e in found}
        return found if lag == {"prod": (0, 0), "dev": (0, 0), "staging": (0, 0)} else None

    levels = wait_for(level, timeout=60, what="matchenv status: the three level")
    assert all(e["newest_stored"] and e["behind_seconds"] < 5 for e in levels), levels
    assert _published_to(pipeline, "matches.dev") == 700
    status = pipeline.kubectl.get_json("menv", "staging")["status"]
    print(json.dumps(status["backfill"], indent=2))
    assert status["backfill"]["phase"] == "Complete"
    assert status["backfill"]["delivered"] >= 500
    condition = next(c for c in status["conditions"] if c["type"] == "BackfillComplete")
    assert condition["reason"] == "Completed"
    assert f"delivered {status['backfill']['delivered']} archived matches" in condition["message"]
    # the Job ran as a pod of the real node, with its own least-privilege broker user, gone once it completed
    [job] = pipeline.kubectl.get_json("jobs", "-l", "matchenv.io/environment=staging")["items"]
    assert job["status"].get("succeeded") == 1
    backfill_user = f"matchenv-backfill.{cluster_id(pipeline.kubectl)}.default.staging"
    assert secret_value(pipeline.kubectl, "default", "staging-backfill", "username") == backfill_user
    wait_for(lambda: backfill_user not in {u.name for u in pipeline.broker.list_users()},
             timeout=30, what="the backfill user removed once complete")


def _ids(database: str) -> set[str]:
    with psycopg.connect(database, connect_timeout=5) as conn:
        return {str(r[0]) for r in conn.execute("select external_match_id from matches")}


def _menv(pipeline: Pipeline, name: str) -> dict[str, Any]:
    status: dict[str, Any] = pipeline.kubectl.get_json("menv", name).get("status") or {}
    return status


def test_dev_paused_in_unbind_mode_keeps_no_backlog_and_once_resumed_holds_what_prod_holds(
        pipeline: Pipeline) -> None:
    kubectl = pipeline.kubectl
    dev = pipeline.rows("dev")
    kubectl.run("patch", "menv", "dev", "--type=merge", "-p", json.dumps({"spec": {"paused": True,
                                                                               "pauseMode": "Unbind"}}))

    def unbound() -> bool:
        status = _menv(pipeline, "dev")
        topology = next((c for c in status.get("conditions", []) if c["type"] == "TopologyReady"), {})
        return status.get("phase") == "Paused" and topology.get("reason") == "Unbound"

    wait_for(unbound, timeout=120, what="dev Paused with its queue unbound")
    assert [b["source"] for b in pipeline.broker._request("GET", "/api/queues/%2F/matches.dev/bindings")
            if b["source"]] == []  # only the default exchange's implicit binding is left
    assert _menv(pipeline, "dev").get("exchange") is None
    prod = pipeline.rows("prod")
    result = pipeline.scrape("--synthetic", "1000", "--start", "20000")
    assert result.returncode == 0, result.stderr
    assert "confirmed 1000" in result.stdout
    pipeline.wait_rows({"prod": prod + 1000})
    assert _published_to(pipeline, "matches.dev") == 700  # nothing of the 1,000 reached dev's queue
    assert pipeline.queue_depth("matches.dev") == 0
    assert pipeline.rows("dev") == dev
    paused = _menv(pipeline, "dev")["pause"]
    assert paused["mode"] == "Unbind"
    assert paused["catchUp"]["phase"] == "Pending"

    kubectl.run("patch", "menv", "dev", "--type=merge", "-p", json.dumps({"spec": {"paused": False}}))
    wait_for(lambda: (_menv(pipeline, "dev").get("pause") or {}).get("catchUp", {}).get("phase") == "Complete",
             timeout=240, what="dev's catch-up complete")
    pipeline.wait_ready("dev")
    pipeline.wait_rows({"dev": prod + 1000})
    assert _ids(pipeline.databases["dev"]) == _ids(pipeline.databases["prod"])  # exactly what prod holds
    assert pipeline.duplicates("dev") == 0
    record = _menv(pipeline, "dev")["pause"]
    print(json.dumps(record, indent=2))
    assert "mode" not in record
    assert record["catchUp"]["delivered"] >= 1000
    assert record["catchUp"]["from"] <= paused["since"]
    [job] = kubectl.get_json("jobs", "-l", "matchenv.io/replay=catch-up")["items"]
    assert job["status"].get("succeeded") == 1
    kubectl.wait_event("dev", "CatchUpComplete")
    assert kubectl.events("dev", "CatchUpStarted")


def test_routing_keys_take_a_subset_through_the_topic_exchange_on_the_fanout(pipeline: Pipeline,
                                                                              tmp_path: Path) -> None:
    prod = pipeline.rows("prod")
    pipeline.apply("u14", queue={"routingKeys": ["U14.#"]})
    pipeline.wait_ready("prod", "u14")
    status = pipeline.kubectl.get_json("menv", "u14")["status"]
    assert status["exchange"] == "matches-fanout.topic"
    topology = next(c for c in status["conditions"] if c["type"] == "TopologyReady")
    assert "U14.#" in topology["message"]
    assert "empty routing key" in topology["message"]
    # 300 matches across U13-U16, published once each to the fanout with their topic keys
    matches = [{**m.data, "age_group": AGES[i % 4]} for i, m in enumerate(synthetic(300, seed=1313))]
    source = tmp_path / "matches.jsonl"
    source.write_text("".join(json.dumps(m) + "\n" for m in matches))
    result = pipeline.scrape("--from-file", str(source))
    assert result.returncode == 0, result.stderr
    assert "confirmed 300" in result.stdout
    pipeline.wait_rows({"prod": prod + 300, "u14": 75})
    assert _rows(pipeline.databases["u14"], "age_group <> 'U14'") == 0
    # an existing protocol-1 producer publishes with an empty key: the fanout's environments only
    _protocol1(pipeline, "matches-fanout", "", [{**matches[1], "external_match_id": "protocol1-u14"}])
    pipeline.wait_rows({"prod": prod + 301})
    pipeline.wait_rows({"u14": 75}, timeout=5)
    # the broker's statistics (every 0.5 s here) may still count the last acknowledged message
    wait_for(lambda: pipeline.queue_depth("matches.u14") == 0, timeout=10, what="matches.u14 empty")
    assert pipeline.duplicates("prod") == 0
    assert pipeline.duplicates("u14") == 0


def _dlq(pipeline: Pipeline, *args: str, kubectl_plugin: bool = False) -> subprocess.CompletedProcess[str]:
    return _matchenv(pipeline, "dlq", *args, kubectl_plugin=kubectl_plugin)


def _matchenv(pipeline: Pipeline, *args: str, kubectl_plugin: bool = False) -> subprocess.CompletedProcess[str]:
    """``matchenv ...`` as a user runs it from this host (the broker reached at its loopback port), or the same
    as ``kubectl matchenv ...`` through kubectl's plugin lookup on PATH."""
    env = {**os.environ, "KUBECONFIG": str(pipeline.kubectl.cluster.kubeconfig),
           "MATCHENV_BROKER_URL": f"amqp://127.0.0.1:{pipeline.rabbitmq.endpoints.amqp_port}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(ControlPlaneBinaries.default().path("kubectl")), "matchenv"] if kubectl_plugin \
        else [sys.executable, "-m", "matchenv.cli"]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=120)


def test_dead_letters_are_listed_shown_redriven_and_purged(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.wait_ready("staging")  # made by the backfill test
    database = pipeline.database("staging")
    wait_for(lambda: _rows(database, "true") >= 0, timeout=60, what="the staging schema")
    # a database that refuses some matches for good: a check constraint the workers cannot satisfy
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("alter table matches add constraint no_refused_clubs check (home_team not like 'Refused%') "
                     "not valid")
    refused = [{**m.data, "home_team": f"Refused FC {i}"} for i, m in enumerate(synthetic(5, seed=4242))]
    source = tmp_path / "refused.jsonl"
    source.write_text("".join(json.dumps(m) + "\n" for m in refused))
    result = pipeline.scrape("--from-file", str(source), "--queue", "matches.staging")
    assert result.returncode == 0, result.stderr
    invalid = [{"away_team": "No Home", "match_date": "2025-10-13", "external_match_id": f"invalid-{i}"}
               for i in range(5)]
    _protocol1(pipeline, "", "matches.staging", invalid)
    wait_for(lambda: pipeline.queue_depth("matches.staging.dlq") == 10, timeout=60, what="10 dead letters")

    listed = _dlq(pipeline, "list", "staging")
    assert listed.returncode == 0, listed.stderr
    print(listed.stdout)
    lines = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()[2:]}
    assert lines == {"invalid": "5", "store-error": "5"}
    assert "matches.staging.dlq holds 10 messages" in listed.stdout
    plugin = _dlq(pipeline, "list", "staging", kubectl_plugin=True)
    assert plugin.returncode == 0, plugin.stderr
    assert plugin.stdout == listed.stdout

    shown = _dlq(pipeline, "show", "staging", "--reason", "store-error", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    letters = json.loads(shown.stdout)
    assert len(letters) == 5
    assert {x["reason"] for x in letters} == {"store-error"}
    assert all("no_refused_clubs" in x["error"] for x in letters)
    assert {x["matchId"] for x in letters} == {m["external_match_id"] for m in refused}
    password = pipeline.rabbitmq.endpoints.password
    for output in (listed.stdout, shown.stdout, _dlq(pipeline, "show", "staging").stdout):
        assert password not in output

    # bad input: a clear message and exit code 2, nothing touched
    for args, says in ((("list", "nosuch"), "MatchEnvironment 'nosuch' not found in namespace 'default'"),
                       (("redrive", "staging", "--reason", "typo"), "unknown reason 'typo'"),
                       (("purge", "staging"), "refusing to delete 10 messages"),
                       (("purge", "staging", "--reason", "invalid"), "refusing to delete 5 invalid messages")):
        refused_run = _dlq(pipeline, *args)
        assert refused_run.returncode == 2, (args, refused_run.stdout, refused_run.stderr)
        assert says in refused_run.stderr, (args, refused_run.stderr)
    assert pipeline.queue_depth("matches.staging.dlq") == 10

    # the fix: the database takes them now; the store-error ones go back to staging's queue, stored once each
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("alter table matches drop constraint no_refused_clubs")
    before = pipeline.rows("staging")
    moved = _dlq(pipeline, "redrive", "staging", "--reason", "store-error", "--rate", "20")
    assert moved.returncode == 0, moved.stderr
    assert "moved 5 store-error messages from matches.staging.dlq to matches.staging" in moved.stdout
    assert "left in matches.staging.dlq: 5 (invalid 5)" in moved.stdout
    pipeline.wait_rows({"staging": before + 5})
    assert _rows(database, "home_team like 'Refused%'") == 5
    assert pipeline.duplicates("staging") == 0
    listed = _dlq(pipeline, "list", "staging")
    assert {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()[2:]} == {"invalid": "5"}

    purged = _dlq(pipeline, "purge", "staging", "--reason", "invalid", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "deleted 5 invalid messages" in purged.stdout
    wait_for(lambda: pipeline.queue_depth("matches.staging.dlq") == 0, timeout=30, what="an empty DLQ")
    pipeline.wait_rows({"staging": before + 5}, timeout=5)
