"""The worker against real RabbitMQ and PostgreSQL: every producer format stored, nothing lost, nothing duplicated,
bad messages dead-lettered once with their reason."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from celery import Celery

from matchenv.match import Match
from matchenv.workers.migrate import migrate
from matchenv.workers.stores import PostgresStore, StoreUnavailable
from matchenv_devkit.services.postgres import PostgresServer
from matchenv_devkit.services.process import wait_for
from matchenv_devkit.services.rabbitmq import RabbitMQNode
from tests.integration.harness import TASK, Environment, WorkerProcess, duplicates, make_match, protocol1_body, rows

# -- the store on its own --------------------------------------------------------------------------------------

def test_migrate_is_repeatable(postgres: PostgresServer) -> None:
    url = postgres.create_database(f"m_{uuid.uuid4().hex[:8]}")
    assert migrate(url) == ["001_matches", "002_ordering", "003_supabase_access", "004_batch_upsert",
                            "005_migrations_table_access"]
    assert migrate(url) == []


def test_upsert_creates_skips_and_updates(database: str) -> None:
    store = PostgresStore(database)
    match = Match.model_validate(make_match(1))
    assert [store.upsert(match) for _ in range(3)] == ["created", "skipped", "skipped"]
    assert store.upsert(match.model_copy(update={"home_score": 9})) == "updated"
    assert store.upsert(match.model_copy(update={"home_score": 9})) == "skipped"
    assert rows(database) == 1
    assert rows(database, "home_score = 9") == 1


def test_upsert_without_external_id_uses_the_natural_key(database: str) -> None:
    store = PostgresStore(database)
    match = Match.model_validate(make_match(2, external_match_id=None))
    assert store.upsert(match) == "created"
    assert store.upsert(match) == "skipped"
    assert store.upsert(match.model_copy(update={"away_score": 7})) == "updated"
    assert rows(database) == 1


def test_a_store_finding_no_schema_migrates_it_and_stores_or_says_what_to_run(postgres: PostgresServer) -> None:
    """A worker that started before its database had no schema to use: the first message migrates it (unless the
    database's owner migrates, MATCHENV_MIGRATE=false)."""
    bare = postgres.create_database(f"bare_{uuid.uuid4().hex[:8]}")
    match = Match.model_validate(make_match(4))
    with pytest.raises(StoreUnavailable, match="run `matchenv db migrate`"):
        PostgresStore(bare).upsert(match)
    assert PostgresStore(bare, auto_migrate=True).upsert(match) == "created"
    assert rows(bare) == 1
    assert migrate(bare) == []  # the whole schema is there


def test_unreachable_database_is_reported_as_unavailable() -> None:
    from matchenv_devkit.services.process import free_port

    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/none", connect_timeout=1)
    with pytest.raises(StoreUnavailable, match="database unreachable"):
        store.upsert(Match.model_validate(make_match(3)))


# -- the worker process ----------------------------------------------------------------------------------------

def test_origin_protocol1_body_is_stored(env: Environment, workers: Callable[..., WorkerProcess],
                                         database: str) -> None:
    workers()
    env.publish([protocol1_body(make_match(10))])
    wait_for(lambda: rows(database, "external_match_id = 'mlsnext_10'") == 1, what="protocol-1 match stored")


def test_a_connection_the_broker_closes_is_counted_and_consuming_resumes(
        rabbitmq: RabbitMQNode, env: Environment, workers: Callable[..., WorkerProcess], database: str) -> None:
    """As when a broker node restarts or an operator closes connections: the worker comes back on its own."""
    worker = workers()
    assert worker.metric("matchenv_worker_broker_connects_total") == 1
    env.publish([protocol1_body(make_match(20))])
    wait_for(lambda: rows(database, "external_match_id = 'mlsnext_20'") == 1, what="stored before")
    user = env.topology.names.broker_user
    mine = wait_for(lambda: [c["name"] for c in env.admin._request("GET", "/api/connections")
                             if c.get("user") == user], timeout=30, what=f"{user}'s connections listed")
    for name in mine:
        env.admin._request("DELETE", f"/api/connections/{quote(name, safe='')}")
    wait_for(lambda: worker.metric("matchenv_worker_broker_connects_total") >= 2, timeout=60,
             what="the worker reconnected")
    env.publish([protocol1_body(make_match(21))])
    wait_for(lambda: rows(database, "external_match_id = 'mlsnext_21'") == 1, timeout=60, what="stored after")


def test_send_task_from_another_celery_client_is_stored(rabbitmq: RabbitMQNode, env: Environment,
                                                         workers: Callable[..., WorkerProcess],
                                                         database: str) -> None:
    workers()
    client = Celery("producer", broker=rabbitmq.endpoints.amqp_url, set_as_current=False)
    # how a Celery producer points the task at the fanout exchange (docs/workers-and-publishing.md)
    client.conf.update(task_serializer="json", broker_connection_retry_on_startup=True, task_routes={
        TASK: {"exchange": env.topology.exchange, "exchange_type": "fanout", "routing_key": ""}})
    with client.connection_for_write() as conn:
        client.send_task(TASK, args=[make_match(11)], connection=conn)  # plain send_task, routed to the fanout
        client.send_task(TASK, args=[make_match(12)], queue=env.queue, connection=conn)  # or to one queue
    wait_for(lambda: rows(database, "external_match_id in ('mlsnext_11', 'mlsnext_12')") == 2,
             what="send_task matches stored")


def test_celerys_built_in_tasks_sent_to_the_queue_are_dead_lettered_never_run(
        rabbitmq: RabbitMQNode, env: Environment, workers: Callable[..., WorkerProcess], database: str) -> None:
    worker = workers()
    client = Celery("producer", broker=rabbitmq.endpoints.amqp_url, set_as_current=False)
    client.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
    with client.connection_for_write() as conn:
        # a chain would have the worker send the match on as a task of its own; cleanup needs no arguments
        client.send_task("celery.chain", args=[[{"task": TASK, "args": [make_match(40)], "kwargs": {},
                                                 "options": {}, "subtask_type": None, "immutable": False}]],
                         queue=env.queue, connection=conn)
        client.send_task("celery.backend_cleanup", queue=env.queue, connection=conn)
    env.publish([protocol1_body(make_match(41))])
    wait_for(lambda: rows(database, "external_match_id = 'mlsnext_41'") == 1, what="the match after them")
    wait_for(lambda: env.depth(env.dlq) == 2, what="2 dead letters")
    letters = env.dead_letters()
    assert {h["x-matchenv-reason"] for h, _ in letters} == {"unknown-task"}
    assert sorted("celery.chain" in h["x-matchenv-error"] for h, _ in letters) == [False, True]
    assert worker.metric("matchenv_worker_dead_lettered_total", 'reason="unknown-task"') == 2
    assert rows(database) == 1  # the chain's match was never sent on
    assert env.depth() == 0


def test_redelivered_and_repeated_matches_make_one_row(env: Environment, workers: Callable[..., WorkerProcess],
                                                        database: str) -> None:
    worker = workers()
    env.publish([protocol1_body(make_match(20)) for _ in range(3)])
    wait_for(lambda: worker.metric("matchenv_worker_processed_total") >= 3, what="3 processed")
    assert rows(database) == 1
    assert worker.metric("matchenv_worker_matches_total", 'outcome="created"') == 1
    assert worker.metric("matchenv_worker_matches_total", 'outcome="skipped"') == 2
    env.publish([protocol1_body(make_match(20, home_score=4, away_score=4))])
    wait_for(lambda: worker.metric("matchenv_worker_matches_total", 'outcome="updated"') == 1, what="updated")
    assert rows(database, "home_score = 4 and away_score = 4") == 1
    assert rows(database) == 1


def test_bad_messages_go_to_the_dlq_with_their_reason(env: Environment, workers: Callable[..., WorkerProcess],
                                                      database: str) -> None:
    worker = workers()
    bad = [
        (b'{"id": "x", "task": "' + TASK.encode() + b'", "args": [{"home_team": ', "malformed"),
        (protocol1_body({k: v for k, v in make_match(30).items() if k != "home_team"}), "invalid"),
        (protocol1_body(make_match(31, home_score=-1)), "invalid"),
        (protocol1_body(make_match(32, league="Premier")), "invalid"),
        (protocol1_body(make_match(33)).replace(TASK.encode(), b"some.other.task"), "unknown-task"),
    ]
    env.publish([body for body, _ in bad])
    env.publish([protocol1_body(make_match(34))])  # the worker keeps going
    wait_for(lambda: rows(database, "external_match_id = 'mlsnext_34'") == 1, what="good match after bad ones")
    wait_for(lambda: env.depth(env.dlq) == len(bad), what="5 dead letters")
    letters = env.dead_letters()
    assert sorted(h["x-matchenv-reason"] for h, _ in letters) == sorted(reason for _, reason in bad)
    errors = {h["x-matchenv-error"] for h, _ in letters}
    assert any("home_team: Field required" in e for e in errors)
    assert any("home_score: Input should be greater than or equal to 0" in e for e in errors)
    assert any("league: Input should be 'Homegrown' or 'Academy'" in e for e in errors)
    assert any("cannot decode the body" in e for e in errors)
    assert any("some.other.task" in e for e in errors)
    assert all(h["x-matchenv-queue"] == env.queue for h, _ in letters)
    assert env.depth() == 0  # nothing left looping in the queue
    assert rows(database) == 1
    assert worker.metric("matchenv_worker_dead_lettered_total", 'reason="invalid"') == 3


def test_5000_matches_4_workers_one_killed_no_loss_no_duplicates(env: Environment,
                                                                  workers: Callable[..., WorkerProcess],
                                                                  database: str) -> None:
    procs = [workers() for _ in range(4)]
    total = 5000
    publisher = threading.Thread(target=env.publish, args=([protocol1_body(make_match(i)) for i in range(total)],))
    publisher.start()
    wait_for(lambda: rows(database) >= 500, what="work under way")
    procs[1].kill()  # SIGKILL mid-run: its unacknowledged message goes back to the queue
    procs[1].start()
    publisher.join(timeout=120)
    wait_for(lambda: rows(database) == total, timeout=240, what=f"{total} rows")
    assert duplicates(database) == 0
    assert env.depth() == 0
    assert env.depth(env.dlq) == 0
    print(f"\n{total} matches, 4 workers, 1 SIGKILLed: {rows(database)} rows, {duplicates(database)} duplicates")


def test_a_worker_told_to_stop_mid_run_stores_or_gives_back_every_message(
        env: Environment, workers: Callable[..., WorkerProcess], database: str) -> None:
    total = 30_000  # a few seconds of one worker: a stop after its first rows lands mid-run (3,000 could be done)
    env.publish([protocol1_body(make_match(i)) for i in range(total)])
    busy = workers()
    wait_for(lambda: rows(database) >= 200, what="the worker storing", every=0.02)
    assert busy.stop() == 0  # SIGTERM: the batch in hand is stored and acknowledged, the rest given back
    assert "unexpected error" not in busy.log()
    stored, queued = rows(database), env.depth()
    assert stored < total  # it stopped mid-run
    assert stored + queued >= total  # nothing acknowledged that was not stored
    workers()  # the rest, redelivered
    wait_for(lambda: rows(database) == total, timeout=120, what=f"{total} rows")
    assert duplicates(database) == 0
    assert env.depth() == 0
    assert env.depth(env.dlq) == 0


def test_database_outage_of_20s_loses_nothing(postgres: PostgresServer, env: Environment,
                                              workers: Callable[..., WorkerProcess], database: str) -> None:
    workers(concurrency=2)
    total = 600
    env.publish([protocol1_body(make_match(i)) for i in range(total // 2)])
    wait_for(lambda: rows(database) >= 50, what="some rows before the outage")
    postgres.stop()
    try:
        env.publish([protocol1_body(make_match(i)) for i in range(total // 2, total)])
        time.sleep(20)
    finally:
        postgres.start()
    wait_for(lambda: rows(database) == total, timeout=120, what=f"{total} rows after the outage")
    assert duplicates(database) == 0
    assert env.depth(env.dlq) == 0


def test_missing_configuration_names_the_variable(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "matchenv.cli", "worker", "--queue", "q"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "CELERY_BROKER_URL or RABBITMQ_URL" in result.stderr
    env["CELERY_BROKER_URL"] = "amqp://u:secret-password@127.0.0.1:1/%2F"
    env["SUPABASE_URL"] = "http://127.0.0.1:1"
    result = subprocess.run([sys.executable, "-m", "matchenv.cli", "worker", "--queue", "q"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "SUPABASE_SERVICE_KEY nor SUPABASE_KEY" in result.stderr
    assert "secret-password" not in result.stderr


# -- Supabase ---------------------------------------------------------------------------------------------------

SERVICE_KEY = "service-role-key-for-tests"


def test_supabase_store_upserts_through_postgrest_rpc(database: str) -> None:
    from matchenv.workers.stores import SupabaseStore
    from tests.integration.postgrest_endpoint import PostgrestEndpoint

    with PostgrestEndpoint(database, SERVICE_KEY) as endpoint:
        store = SupabaseStore(endpoint.url, SERVICE_KEY)
        match = Match.model_validate(make_match(40))
        assert store.upsert(match) == "created"
        assert store.upsert(match) == "skipped"
        assert store.upsert(match.model_copy(update={"away_score": 3})) == "updated"
        sent = endpoint.requests[0]
        assert sent["path"] == "/rest/v1/rpc/matchenv_upsert_match"
        assert sent["body"]["m"]["external_match_id"] == "mlsnext_40"
    assert rows(database) == 1


def test_supabase_store_reports_an_unreachable_database_as_unavailable(postgres: PostgresServer) -> None:
    from matchenv.workers.stores import SupabaseStore
    from matchenv_devkit.services.process import free_port
    from tests.integration.postgrest_endpoint import PostgrestEndpoint

    with PostgrestEndpoint(f"postgresql://postgres@127.0.0.1:{free_port()}/none", SERVICE_KEY) as endpoint, \
            pytest.raises(StoreUnavailable, match="PGRST001"):
        SupabaseStore(endpoint.url, SERVICE_KEY).upsert(Match.model_validate(make_match(41)))


def test_worker_writes_through_supabase(env: Environment, workers: Callable[..., WorkerProcess],
                                        database: str) -> None:
    from tests.integration.postgrest_endpoint import PostgrestEndpoint

    with PostgrestEndpoint(database, SERVICE_KEY) as endpoint:
        worker = workers(extra={"DATABASE_URL": "", "SUPABASE_URL": endpoint.url,
                                "SUPABASE_SERVICE_KEY": SERVICE_KEY})
        env.publish([protocol1_body(make_match(i)) for i in range(50, 60)])
        wait_for(lambda: rows(database) == 10, what="10 rows through supabase")
    assert SERVICE_KEY not in worker.log()
    assert f"supabase at {endpoint.url}" in worker.log()


def test_protocol2_from_our_publisher_is_stored(env: Environment, workers: Callable[..., WorkerProcess],
                                                database: str, rabbitmq: RabbitMQNode) -> None:
    from matchenv.scraper.publisher import Publisher, Target
    from matchenv.scraper.sources import synthetic

    workers()
    report = Publisher(rabbitmq.endpoints.amqp_url, Target(env.topology.exchange)).run(synthetic(30, seed=3))
    assert report.confirmed == 30
    wait_for(lambda: rows(database, "external_match_id like 'synthetic-3-%'") == 30, what="30 protocol-2 rows")


def test_json_logs_say_whose_line_each_is_and_hold_no_password(env: Environment,
                                                               workers: Callable[..., WorkerProcess],
                                                               database: str) -> None:
    worker = workers(extra={"MATCHENV_LOG_JSON": "true"})
    env.publish([protocol1_body(make_match(40)), b"not json at all"])
    wait_for(lambda: worker.metric("matchenv_worker_processed_total") >= 2, what="2 processed")
    wait_for(lambda: "dead-lettered" in worker.log(), what="the dead letter logged")
    lines = [line for line in worker.log().splitlines() if line.strip()]
    assert [line for line in lines if not _json_object(line)] == []  # every line is one JSON object
    records = [json.loads(line) for line in lines]
    assert {(r["namespace"], r["queue"]) for r in records} == {("itest", env.queue)}
    assert any(r.get("reason") == "malformed" and "dead-lettered" in r["message"] for r in records)
    assert any(r["message"].startswith("stored 1 matches") for r in records)
    assert env.password not in worker.log()


def _json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
