"""One `matchenv worker` process storing queued matches, beside a raw psycopg loop calling the same upsert and a
raw consumer reading the same queue through the worker's transport (what one worker can read at all), and through
py-amqp's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import psycopg
from kombu.connection import Connection

from matchenv.scraper.messages import task_message
from matchenv.scraper.sources import synthetic
from matchenv.workers.batches import MAX_BATCH
from matchenv.workers.config import WorkerConfig
from matchenv.workers.migrate import migrate
from matchenv.workers.transport import BrokerConnection
from matchenv_devkit.bench.profiles import Part, attached, part_samples, top_functions
from matchenv_devkit.bench.result import Measure
from matchenv_devkit.bench.result import Target as Goal
from matchenv_devkit.services.postgres import PostgresServer
from matchenv_devkit.services.rabbitmq import RabbitMQNode


def _matches(count: int, seed: int) -> list[dict[str, object]]:
    out = []
    for raw in synthetic(count, seed=seed):
        assert isinstance(raw.data, dict)
        out.append(raw.data)
    return out


def raw_loop(url: str, matches: list[dict[str, object]]) -> float:
    """The baseline: one connection, autocommit, one ``matchenv_upsert_match`` per row. Returns rows/s."""
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        for match in matches:
            conn.execute("select matchenv_upsert_match(%s::jsonb)", (json.dumps({**match, "scraped_at": None}),))
        return len(matches) / (time.perf_counter() - started)


def raw_batched(url: str, matches: list[dict[str, object]], batch: int = MAX_BATCH) -> float:
    """The baseline for batches: one connection, one ``matchenv_upsert_matches`` (one transaction) per ``batch``
    rows, the batch size the worker uses. Returns rows/s."""
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        for first in range(0, len(matches), batch):
            rows = [{**match, "scraped_at": None} for match in matches[first:first + batch]]
            conn.execute("select matchenv_upsert_matches(%s::jsonb)", (json.dumps(rows),))
        return len(matches) / (time.perf_counter() - started)


PREFETCH: int = WorkerConfig.model_fields["prefetch"].default
PROFILE_COUNT = 40_000  # a backlog the worker takes seconds to store: hundreds of samples


def raw_consumer(amqp_url: str, matches: list[dict[str, object]], batch: int = MAX_BATCH,
                 prefetch: int = PREFETCH, stock: bool = False) -> float:
    """The ceiling of the worker's transport: it alone (kombu's py-amqp transport reading in chunks, what Celery
    reads with in the worker; ``stock``: py-amqp's own reads) consuming the same task messages at the worker's
    prefetch, one ``multiple`` ack per ``batch``, nothing decoded or stored. Returns messages/s from the first
    delivery to the last."""
    queue = f"bench-raw-{uuid.uuid4().hex[:6]}"
    _fill(amqp_url, queue, matches)
    opened: Any = Connection if stock else BrokerConnection
    with opened(amqp_url) as conn:  # only to open it: what follows is py-amqp's own channel
        channel = conn.default_channel
        channel.basic_qos(0, prefetch, False)
        seen = [0]
        first = [0.0]

        def delivered(message: Any) -> None:
            if not seen[0]:
                first[0] = time.perf_counter()
            seen[0] += 1
            if seen[0] % batch == 0 or seen[0] == len(matches):
                channel.basic_ack(message.delivery_tag, multiple=True)

        tag = channel.basic_consume(queue, callback=delivered)
        while seen[0] < len(matches):
            conn.drain_events(timeout=30)
        rate = (len(matches) - 1) / (time.perf_counter() - first[0])
        channel.basic_cancel(tag)
        channel.queue_delete(queue)
        return rate


def _fill(amqp_url: str, queue: str, matches: list[dict[str, object]]) -> None:
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        channel = conn.channel()
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "classic"})
        for match in matches:
            message = task_message(match)
            channel.basic_publish("", queue, message.body, pika.BasicProperties(
                content_type="application/json", content_encoding="utf-8", delivery_mode=2,
                correlation_id=message.task_id, headers=message.headers))
        channel.queue_declare(queue, passive=True)  # a round trip: everything above has reached the broker


def _worker_env(broker: RabbitMQNode, url: str, metrics_port: int = 0) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in {"SUPABASE_URL"}}
    environ.update({"CELERY_BROKER_URL": broker.endpoints.amqp_url, "DATABASE_URL": url,
                    "MATCHENV_DEAD_LETTER_EXCHANGE": "", "MATCHENV_METRICS_PORT": str(metrics_port)})
    return environ


@contextmanager
def _worker(broker: RabbitMQNode, url: str, matches: list[dict[str, object]], log: Path
            ) -> Iterator[subprocess.Popen[bytes]]:
    """``matches`` queued, then one worker started on their queue; stopped (and the queue deleted) afterwards."""
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    _fill(broker.endpoints.amqp_url, queue, matches)
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "matchenv.cli", "worker", "--queue", queue],
                                env=_worker_env(broker, url), stdout=out, stderr=out)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        with pika.BlockingConnection(pika.URLParameters(broker.endpoints.amqp_url)) as conn:
            conn.channel().queue_delete(queue)


def _stored(conn: psycopg.Connection[Any], proc: subprocess.Popen[bytes], at_least: int, log: Path
            ) -> tuple[int, float]:
    """Once ``at_least`` rows are stored: how many, and the seconds from the first one's transaction to the last's
    (the database's clock)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        row = conn.execute("select count(*), coalesce(extract(epoch from max(created_at) - min(created_at)), 0) "
                           "from matches").fetchone()
        assert row is not None
        if row[0] >= at_least:
            return int(row[0]), float(row[1])
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode}; see {log}")
        time.sleep(0.2)  # as light on the database as the measure always was
    raise RuntimeError(f"the worker stored fewer than {at_least} rows in 300 s; see {log}")


def worker_rate(broker: RabbitMQNode, url: str, matches: list[dict[str, object]], log: Path) -> float:
    """Queue ``matches``, start one worker, time from its first stored row to its last (the database's clock)."""
    with _worker(broker, url, matches, log) as proc, psycopg.connect(url, autocommit=True) as conn:
        count, seconds = _stored(conn, proc, len(matches), log)
        return (count - 1) / seconds


# where one worker's CPU goes while it stores a backlog: a sample counts for each part whose frame is on its stack
WORKER_PARTS: tuple[Part, ...] = (
    ("Celery's consumer thread (its event loop: reading frames, kombu's messages, acks)", "celery/worker/loops.py",
     False),
    ("  of it, py-amqp (its frames read in chunks)", "(amqp/", False),
    ("the storing thread (matchenv's batches)", "Batcher._run (matchenv/workers/batches.py", False),
    ("  our publisher's messages read in one pass (pydantic: JSON and the model)",
     "parse_body (matchenv/workers/parsing.py", False),
    ("  other messages decoded the long way (kombu, JSON)", "Message.decode (kombu/message.py", False),
    ("  and validated (pydantic)", "parse (matchenv/workers/parsing.py", False),
    ("  the store's call (its JSON argument, psycopg)", "upsert_many (matchenv/workers/stores.py", False),
)
PROFILE_RATE = 200  # samples per second


@dataclass(frozen=True)
class WorkerProfile:
    """Where one worker's Python CPU (the GIL held) went per stored message, in microseconds."""

    micros: dict[str, float]  # label of :data:`WORKER_PARTS` (and "all") -> GIL-held microseconds per message
    text: str


def profile_worker(broker: RabbitMQNode, url: str, matches: list[dict[str, object]], log: Path, samples: Path
                   ) -> WorkerProfile | None:
    """One worker storing ``matches`` with py-spy attached from its first stored row (start-up is over) to its
    last. py-spy samples only while a thread holds the GIL, so samples per message are the worker's own Python CPU
    per message; the few milliseconds py-spy takes to attach count as no CPU (an underestimate, never more).
    None when py-spy wrote no samples."""
    with _worker(broker, url, matches, log) as proc, psycopg.connect(url, autocommit=True) as conn:
        before, _ = _stored(conn, proc, 1, log)
        with attached(proc.pid, samples, PROFILE_RATE):
            time.sleep(0.5)
            began, _ = _stored(conn, proc, 1, log)
            began_at = time.monotonic()
            count, _ = _stored(conn, proc, len(matches), log)
            ended_at = time.monotonic()
    if not samples.exists():  # py-spy could not attach (ptrace refused): no profile, the measure stands
        return None
    rate = (count - began) / max(1e-9, ended_at - began_at)
    hits, total = part_samples(samples, WORKER_PARTS)
    messages = max(1, count - before)  # stored while py-spy was attached
    micros = {label: n / PROFILE_RATE / messages * 1e6 for label, n in [*hits.items(), ("all", total)]}
    lines = [f"{micros[label]:6.1f} µs  {label}" for label, _, _ in WORKER_PARTS]
    text = (f"Python CPU per stored message (py-spy on one worker storing a backlog of {len(matches):,}, samples "
            f"while a thread held the GIL, from its first stored row to its last; {rate:,.0f} rows/s meanwhile):\n"
            f"{micros['all']:6.1f} µs  all\n" + "\n".join(lines) +
            f"\n({total} samples)\n\nself time, top functions:\n{top_functions(samples, 15)}")
    return WorkerProfile(micros, text)


def measure(broker: RabbitMQNode, postgres: PostgresServer, work: Path, count: int = 5000, rounds: int = 2
            ) -> Measure:
    best_raw = best_batched = best_worker = best_consumer = best_stock = 0.0
    for round_ in range(rounds):  # interleaved: a slow moment of the machine hits all alike
        matches = _matches(count, seed=100 + round_)
        raw_url = postgres.create_database(f"bench_raw_{round_}_{uuid.uuid4().hex[:6]}")
        migrate(raw_url)
        best_raw = max(best_raw, raw_loop(raw_url, matches))
        batched_url = postgres.create_database(f"bench_batched_{round_}_{uuid.uuid4().hex[:6]}")
        migrate(batched_url)
        best_batched = max(best_batched, raw_batched(batched_url, matches))
        worker_url = postgres.create_database(f"bench_worker_{round_}_{uuid.uuid4().hex[:6]}")
        migrate(worker_url)
        best_worker = max(best_worker, worker_rate(broker, worker_url, matches, work / "worker.log"))
        best_consumer = max(best_consumer, raw_consumer(broker.endpoints.amqp_url, matches))
        best_stock = max(best_stock, raw_consumer(broker.endpoints.amqp_url, matches, stock=True))
    ratio, batched_ratio = best_worker / best_raw, best_worker / best_batched
    profile = ""
    notes = [f"the worker's transport sets its ceiling: alone, reading and acking without decoding or storing "
             f"anything, it managed {best_consumer / best_batched:.2f} x the batched loop's rows/s (py-amqp's own "
             f"reads {best_stock / best_batched:.2f} x); the worker (Celery's consumer on it, then parse, validate, "
             f"store, ack) {best_worker / best_consumer:.2f} x the transport alone"]
    found: WorkerProfile | None = None
    if ratio < 1.0 or batched_ratio < 0.6:
        worker_url = postgres.create_database(f"bench_profile_{uuid.uuid4().hex[:6]}")
        migrate(worker_url)
        found = profile_worker(broker, worker_url, _matches(PROFILE_COUNT, seed=99), work / "worker.log",
                               work / "worker.pyspy")
        profile = found.text if found else "(py-spy wrote no samples)"
    if found:
        consumer = found.micros[WORKER_PARTS[0][0]]
        notes.append(f"its CPU per message (the profile below): {found.micros['all']:.0f} µs of Python in all, "
                     f"{consumer:.0f} µs of it in Celery's consumer thread alone; 0.6 x the batched loop leaves "
                     f"{1e6 / (0.6 * best_batched):.0f} µs per message for everything")
    return Measure(
        name=f"one worker process storing {count:,} queued matches",
        ours=f"{best_worker:,.0f} rows/s",
        baseline=f"raw psycopg upsert loop, one transaction per row: {best_raw:,.0f} rows/s; the same in "
                 f"batches of {MAX_BATCH} (one transaction each, the worker's batch size): {best_batched:,.0f} rows/s; "
                 f"the worker's transport alone reading the same messages (prefetch {PREFETCH}, nothing stored): "
                 f"{best_consumer:,.0f} msg/s (py-amqp's own reads: {best_stock:,.0f})",
        ratio=f"{ratio:.2f} of the per-row loop, {batched_ratio:.2f} of the batched one, "
              f"{best_worker / best_consumer:.2f} of the consumer alone",
        targets=[Goal("worker >= 1.0 x the raw per-row loop", ratio, 1.0),
                 Goal("worker >= 0.6 x the raw batched loop", batched_ratio, 0.6)],
        notes=notes,
        profile=profile,
    )


def stop_seconds(broker: RabbitMQNode, postgres: PostgresServer, work: Path, trials: int = 5) -> Measure:
    """An idle worker told to stop (SIGTERM): seconds until it has exited."""
    import requests

    from matchenv_devkit.services.process import free_port

    url = postgres.create_database(f"bench_stop_{uuid.uuid4().hex[:6]}")
    migrate(url)
    samples = []
    for _ in range(trials):
        port = free_port()
        with (work / "worker-stop.log").open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "matchenv.cli", "worker", "--queue", "bench-stop"],
                                    env=_worker_env(broker, url, port), stdout=out, stderr=out)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        time.sleep(1.0)
        started = time.monotonic()
        proc.terminate()
        proc.wait(timeout=60)
        samples.append(time.monotonic() - started)
    worst = max(samples)
    return Measure(name=f"an idle worker told to stop (SIGTERM), {trials} times",
                   ours=f"exits in {min(samples):.2f}-{worst:.2f} s", baseline="-",
                   targets=[Goal("idle worker exits within 2 s of SIGTERM", worst, 2.0, at_least=False)])
