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
import requests

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
    with env.connect() as conn:
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


def test_a_stamp_a_year_ahead_is_dead_lettered_and_later_updates_apply(
        env: Environment, workers: Callable[..., WorkerProcess], database: str) -> None:
    """A producer with a clock a year ahead would make its row newer than every real update for a year: it goes to
    the DLQ as invalid, naming the header, and the updates that follow are applied."""
    now = dt.datetime.now(dt.UTC)
    ahead = task_message(make_match(6, home_score=9, away_score=9), scraped_at=now + dt.timedelta(days=365))
    real = [task_message(make_match(6, home_score=1, away_score=0), scraped_at=now),
            task_message(make_match(6, home_score=2, away_score=0), scraped_at=now + dt.timedelta(seconds=1))]
    with env.connect() as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        for message in (ahead, *real):
            channel.basic_publish(env.topology.exchange, "", message.body, pika.BasicProperties(
                content_type="application/json", content_encoding="utf-8", delivery_mode=2,
                headers=message.headers))
    workers()
    wait_for(lambda: env.depth(env.dlq) == 1, what="the stamp from the future dead-lettered")
    [(headers, _body)] = env.dead_letters()
    assert headers["x-matchenv-reason"] == "invalid"
    assert "x-matchenv-scraped-at" in headers["x-matchenv-error"]
    wait_for(lambda: score(database, "mlsnext_6") == (2, 0), what="the real updates applied")


def test_supabase_public_roles_can_neither_read_nor_write(postgres: PostgresServer) -> None:
    plain = postgres.create_database(f"plain_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(plain, autocommit=True) as conn:
        exists = conn.execute("select count(*) from pg_roles where rolname in ('anon', 'service_role')").fetchone()
    if exists and exists[0] == 0:
        assert migrate(plain)[-1] == "005_migrations_table_access"  # a plain PostgreSQL: they still apply
    with psycopg.connect(plain, autocommit=True) as conn:
        for role, extra in (("anon", ""), ("authenticated", ""), ("service_role", " bypassrls")):
            if not conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone():
                conn.execute(f"create role {role} nologin{extra}")
    url = postgres.create_database(f"supa_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(url, autocommit=True) as conn:  # as Supabase does: every new public table granted to all
        conn.execute("alter default privileges in schema public grant all on tables to anon, authenticated")
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
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("select count(*) from matchenv_schema_migrations")
            conn.execute("reset role")
        conn.execute("set role service_role")
        assert conn.execute("select matchenv_upsert_match(%s::jsonb)", (payload,)).fetchone() == ("created",)
        assert conn.execute("select count(*) from matches").fetchone() == (1,)
        conn.execute("reset role")


def _as_role(url: str, role: str) -> str:
    """``url`` with another user (the test server trusts loopback)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{role}@{rest.split('@', 1)[1]}"


def _not_ready_because(worker: WorkerProcess) -> str:
    """What the worker's readiness endpoint says once it reports not ready (503)."""
    def not_ready() -> str | None:
        answer = requests.get(f"http://127.0.0.1:{worker.port}/healthz", timeout=2)
        return answer.text if answer.status_code == 503 else None

    why: str = wait_for(not_ready, timeout=30, what="the worker reports not ready")
    return why


def test_a_database_that_refuses_every_write_holds_the_feed_instead_of_draining_it(
        env: Environment, workers: Callable[..., WorkerProcess], database: str) -> None:
    role = f"app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"create role {role} login bypassrls")  # row-level security is on (migration 003)
        conn.execute(f"grant usage on schema public to {role}")
        conn.execute(f"grant select, insert, update on matches to {role}")
        conn.execute(f"grant execute on function matchenv_upsert_match(jsonb), matchenv_upsert_matches(jsonb) "
                     f"to {role}")
        conn.execute(f"revoke insert on matches from {role}")  # what a mistaken grant script does
    worker = workers(extra={"DATABASE_URL": _as_role(database, role)})
    env.publish([protocol1_body(make_match(i)) for i in range(20)])

    why = _not_ready_because(worker)
    assert "holding messages: the database refuses every write (permission denied)" in why
    assert "InsufficientPrivilege" in why
    assert worker.metric("matchenv_worker_store_holding") == 1
    time.sleep(3)
    assert env.depth(env.dlq) == 0  # nothing dead-lettered
    assert worker.metric("matchenv_worker_dead_lettered_total", 'reason="store-error"') == 0
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"grant insert on matches to {role}")
    wait_for(lambda: rows(database) == 20, timeout=60, what="all 20 stored once the grant is back")
    wait_for(lambda: requests.get(f"http://127.0.0.1:{worker.port}/healthz", timeout=2).status_code == 200,
             timeout=10, what="ready again")
    assert worker.metric("matchenv_worker_store_holding") == 0
    assert env.depth(env.dlq) == 0


def test_a_supabase_key_refused_for_every_call_holds_the_feed_until_it_is_accepted(
        env: Environment, workers: Callable[..., WorkerProcess], database: str) -> None:
    """The Supabase path answers 401 to every call (a rotated or mistyped service key): no match is its own fault,
    so none is dead-lettered; the worker is not ready, saying why, and stores everything once the key is good."""
    from tests.integration.postgrest_endpoint import PostgrestEndpoint

    with PostgrestEndpoint(database, "the-key-supabase-has-now") as endpoint:
        worker = workers(extra={"DATABASE_URL": "", "SUPABASE_URL": endpoint.url,
                                "SUPABASE_SERVICE_KEY": "the-key-the-worker-was-given"})
        env.publish([protocol1_body(make_match(i)) for i in range(300, 320)])

        why = _not_ready_because(worker)
        assert "holding messages" in why
        assert "PGRST301" in why
        assert worker.metric("matchenv_worker_store_holding") == 1
        time.sleep(3)
        assert env.depth(env.dlq) == 0
        assert worker.metric("matchenv_worker_dead_lettered_total", 'reason="store-error"') == 0
        assert rows(database) == 0
        endpoint.key = "the-key-the-worker-was-given"  # the key is good again (rotated back on Supabase's side)
        wait_for(lambda: rows(database) == 20, timeout=60, what="all 20 stored once the key is accepted")
        wait_for(lambda: requests.get(f"http://127.0.0.1:{worker.port}/healthz", timeout=2).status_code == 200,
                 timeout=10, what="ready again")
    assert env.depth(env.dlq) == 0
    assert "the-key-the-worker-was-given" not in worker.log()


def test_a_frozen_database_fails_the_liveness_check_and_nothing_is_lost(
        env: Environment, workers: Callable[..., WorkerProcess], database: str, postgres: PostgresServer) -> None:
    """A database that stops answering mid-call (here: its server process stopped) leaves the storing thread
    waiting on its socket: ``/livez`` fails, which the kubelet turns into a restart."""
    worker = workers(extra={"MATCHENV_STUCK_SECONDS": "4"})
    env.publish([protocol1_body(make_match(1))])
    wait_for(lambda: rows(database) == 1, what="the first match stored")
    livez = f"http://127.0.0.1:{worker.port}/livez"
    assert requests.get(livez, timeout=2).status_code == 200
    with postgres.frozen():
        env.publish([protocol1_body(make_match(2))])
        answer = wait_for(lambda: (r := requests.get(livez, timeout=2)).status_code == 503 and r.text,
                          timeout=30, what="/livez fails while the store call hangs")
        assert "no progress" in answer
        worker.stop()  # what the kubelet does then: the message goes back to the queue
    worker = workers(extra={"MATCHENV_STUCK_SECONDS": "4"})
    wait_for(lambda: rows(database) == 2, timeout=60, what="the held match stored after the restart")
    assert requests.get(f"http://127.0.0.1:{worker.port}/livez", timeout=2).status_code == 200
