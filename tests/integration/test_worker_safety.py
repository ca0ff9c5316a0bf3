"""What the database's owner relies on, against real RabbitMQ and PostgreSQL: nothing lost when the dead-letter
queue cannot take a message, a poison message bounded by the delivery limit, no overlong text stored, no older
data written over newer, and Supabase's public roles locked out."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pika
import psycopg
import pytest

from matchenv.scraper.messages import task_message
from matchenv.workers.migrate import migrate
from matchenv_devkit.services.postgres import PostgresServer
from matchenv_devkit.services.process import wait_for
from tests.integration.harness import Environment, WorkerProcess, make_match, protocol1_body, rows

CRASHING = Path(__file__).parent / "crashing"


def score(url: str, external_id: str) -> tuple[int, int]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("select home_score, away_score from matches where external_match_id = %s",
                           (external_id,)).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


def test_an_unbound_dlq_holds_the_original_until_it_can_take_it(env: Environment,
                                                                 workers: Callable[..., WorkerProcess],
                                                                 database: str) -> None:
    worker = workers()
    admin = env.admin
    binding = admin.snapshot().bindings_to("/", env.dlq)[0]
    admin.unbind_queue("/", binding.source, env.dlq, binding.properties_key)
    env.publish([protocol1_body(make_match(1, home_score=-1))])
    wait_for(lambda: "cannot dead-letter a invalid message" in worker.log(), what="the worker holds the message")
    time.sleep(2)
    assert env.depth(env.dlq) == 0
    wait_for(lambda: (admin.get_queue("/", env.queue).messages_unacknowledged or 0) == 1, timeout=15,
             what="the original held, unacknowledged")
    admin.bind_queue("/", env.topology.names.dead_letter_exchange, env.dlq)  # what the operator repairs
    wait_for(lambda: env.depth(env.dlq) == 1, timeout=60, what="dead-lettered once the DLQ is bound")
    (headers, _), = env.dead_letters()
    assert headers["x-matchenv-reason"] == "invalid"
    wait_for(lambda: (admin.get_queue("/", env.queue).messages or 0) == 0, timeout=15, what="original acked")
    env.publish([protocol1_body(make_match(2))])
    wait_for(lambda: rows(database) == 1, what="the next match stored")


def test_a_message_that_kills_the_worker_ends_in_the_dlq_after_the_delivery_limit(
        make_env: Callable[..., Environment], workers: Callable[..., WorkerProcess], database: str) -> None:
    quorum = make_env(queue={"type": "quorum", "deliveryLimit": 2})
    crash = {"PYTHONPATH": str(CRASHING), "MATCHENV_TEST_CRASH_ON": "mlsnext_666"}
    quorum.publish([protocol1_body(make_match(666))])
    deadline = time.monotonic() + 120
    restarts = 0
    while quorum.depth(quorum.dlq) == 0:  # what a kubelet does: restart the container each time it exits
        assert time.monotonic() < deadline, "the poison message was not dead-lettered"
        worker = workers(wait=False, extra=crash, environment=quorum)
        assert worker.proc is not None
        try:
            worker.proc.wait(timeout=20)
            restarts += 1
        except Exception:
            worker.stop()
    assert restarts >= 2
    (headers, _), = quorum.dead_letters()
    assert headers["x-death"][0]["reason"] == "delivery_limit"
    quorum.publish([protocol1_body(make_match(7))])
    workers(extra=crash, environment=quorum)
    wait_for(lambda: rows(database) == 1, what="the worker goes on with the next match")


def test_a_2mib_notes_field_is_dead_lettered_naming_the_field(env: Environment,
                                                               workers: Callable[..., WorkerProcess],
                                                               database: str) -> None:
    workers()
    env.publish([protocol1_body(make_match(3, notes="n" * (2 * 1024 * 1024)))])
    wait_for(lambda: env.depth(env.dlq) == 1, what="dead-lettered")
    (headers, _), = env.dead_letters()
    assert headers["x-matchenv-reason"] == "invalid"
    assert headers["x-matchenv-error"].startswith("notes: String should have at most 2000 characters")
    assert rows(database) == 0


def test_an_older_message_never_overwrites_a_newer_row(env: Environment, workers: Callable[..., WorkerProcess],
                                                       database: str, rabbitmq: object) -> None:
    t1 = dt.datetime(2026, 11, 23, 9, tzinfo=dt.UTC)
    t2 = t1 + dt.timedelta(hours=1)
    newer = task_message(make_match(5, home_score=3, away_score=2), scraped_at=t2)
    older = task_message(make_match(5, home_score=1, away_score=0), scraped_at=t1)
    with pika.BlockingConnection(pika.URLParameters(env.rabbitmq.endpoints.amqp_url)) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        for message in (newer, older):  # delivered in this order: t2, then t1
            channel.basic_publish(env.topology.exchange, "", message.body, pika.BasicProperties(
                content_type="application/json", content_encoding="utf-8", delivery_mode=2,
                headers=message.headers))
    worker = workers()
    wait_for(lambda: worker.metric("matchenv_worker_processed_total") >= 2, what="both processed")
    assert score(database, "mlsnext_5") == (3, 2)
    # an unstamped message (an existing protocol-1 producer) keeps last-writer-wins
    env.publish([protocol1_body(make_match(5, home_score=4, away_score=4))])
    wait_for(lambda: score(database, "mlsnext_5") == (4, 4), what="unstamped last writer wins")


def test_supabase_public_roles_can_neither_read_nor_write(postgres: PostgresServer) -> None:
    plain = postgres.create_database(f"plain_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(plain, autocommit=True) as conn:
        exists = conn.execute("select count(*) from pg_roles where rolname in ('anon', 'service_role')").fetchone()
    if exists and exists[0] == 0:
        assert migrate(plain)[-1] == "004_batch_upsert"  # a plain PostgreSQL: the migration still applies
    with psycopg.connect(plain, autocommit=True) as conn:
        for role, extra in (("anon", ""), ("authenticated", ""), ("service_role", " bypassrls")):
            if not conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone():
                conn.execute(f"create role {role} nologin{extra}")
    url = postgres.create_database(f"supa_{uuid.uuid4().hex[:8]}")
    migrate(url)
    payload = '{"home_team": "A", "away_team": "B", "match_date": "2025-10-13", "season": "2024-25", ' \
              '"age_group": "U14", "match_type": "League", "external_match_id": "rls-1"}'
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("grant usage on schema public to anon, authenticated, service_role")
        for role in ("anon", "authenticated"):
            conn.execute(f"set role {role}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("select count(*) from matches")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("select matchenv_upsert_match(%s::jsonb)", (payload,))
            conn.execute("reset role")
        conn.execute("set role service_role")
        assert conn.execute("select matchenv_upsert_match(%s::jsonb)", (payload,)).fetchone() == ("created",)
        assert conn.execute("select count(*) from matches").fetchone() == (1,)
        conn.execute("reset role")
