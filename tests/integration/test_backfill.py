"""``matchenv backfill`` (the backfill Job's process) against a real broker: it replays the archive from a point in
time into one environment's queue only, up to the archive's end when it began, and its broker user can do nothing
else."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pika
import pika.exceptions
import pytest

from matchenv.api import MatchEnvironmentSpec
from matchenv.connection import worker_amqp_url
from matchenv.topology.applier import apply_plan
from matchenv.topology.client import ManagementClient
from matchenv.topology.desired import DesiredTopology, desired_archive, desired_topology
from matchenv.topology.planner import plan_archive, plan_converge, plan_remove
from matchenv_devkit.services.process import wait_for
from matchenv_devkit.services.rabbitmq import RabbitMQNode
from tests.cases import CLUSTER, environment

PASSWORD = "backfill-pw"


def _make(name: str, exchange: str, **spec: object) -> DesiredTopology:
    return desired_topology(CLUSTER, "itest", name, MatchEnvironmentSpec.model_validate(
        environment(name, exchange={"name": exchange}, **spec)["spec"]))


@pytest.fixture
def feed(broker: ManagementClient) -> Iterator[str]:
    exchange = f"fan-{uuid.uuid4().hex[:6]}"
    broker.declare_exchange("/", exchange, "fanout")
    archive = desired_archive("/", exchange, "fanout", "1D", 100_000_000, 1_000_000)
    apply_plan(broker, plan_archive(archive, broker.snapshot(archive.scope())))
    yield exchange
    broker.delete_queue("/", archive.name)
    broker.delete_policy("/", archive.policy)
    broker.delete_exchange("/", exchange)


def _publish(rabbitmq: RabbitMQNode, exchange: str, first: int, count: int, key: str = "") -> None:
    with pika.BlockingConnection(pika.URLParameters(rabbitmq.endpoints.amqp_url)) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        for i in range(first, first + count):
            channel.basic_publish(exchange, key, json.dumps({"i": i}).encode(),
                                  pika.BasicProperties(delivery_mode=2, headers={"n": i}))


def _run_backfill(rabbitmq: RabbitMQNode, want: DesiredTopology, start: dt.datetime, *extra: str
                  ) -> subprocess.CompletedProcess[str]:
    assert want.backfill is not None
    url = worker_amqp_url(f"amqp://127.0.0.1:{rabbitmq.endpoints.amqp_port}", want.names.backfill_user, PASSWORD,
                          "/")
    return subprocess.run(
        [sys.executable, "-m", "matchenv.cli", "backfill", "--archive", want.backfill.archive, "--exchange",
         want.names.backfill_exchange, "--from", start.isoformat(), *extra],
        env={**os.environ, "RABBITMQ_URL": url}, capture_output=True, text=True, timeout=120)


def _drain(rabbitmq: RabbitMQNode, queue: str) -> list[int]:
    with pika.BlockingConnection(pika.URLParameters(rabbitmq.endpoints.amqp_url)) as conn:
        channel = conn.channel()
        seen = []
        while True:
            method, _props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return seen
            seen.append(json.loads(body)["i"])


def test_the_archive_is_replayed_into_one_queue_only(rabbitmq: RabbitMQNode, broker: ManagementClient,
                                                     feed: str) -> None:
    prod = _make(f"prod-{feed}", feed)
    apply_plan(broker, plan_converge(prod, broker.snapshot(prod.scope()), "pw"))
    _publish(rabbitmq, feed, 0, 30)  # before the new environment exists
    time.sleep(1.5)  # the archive finds a time to the second (and by chunk): keep the two series apart
    start = dt.datetime.now(dt.UTC)
    time.sleep(1.5)
    late = _make(f"late-{feed}", feed, backfill={"since": "1h"})
    try:
        apply_plan(broker, plan_converge(late, broker.snapshot(late.scope()), "pw", PASSWORD))
        _publish(rabbitmq, feed, 30, 5)  # after it was bound: straight into its queue
        result = _run_backfill(rabbitmq, late, start - dt.timedelta(hours=1))
        assert result.returncode == 0, result.stderr
        assert "delivered 35 archived matches" in result.stdout  # up to the archive's end when it began
        wait_for(lambda: broker.get_queue("/", late.queue.name).messages == 40, what="35 replayed + 5 direct")
        got = _drain(rabbitmq, late.queue.name)
        assert sorted(set(got)) == list(range(35))
        assert broker.get_queue("/", prod.queue.name).messages == 35  # prod got each once, nothing replayed

        # from a later instant: only what came after it
        result = _run_backfill(rabbitmq, late, start)
        assert result.returncode == 0, result.stderr
        assert "delivered 5 archived matches" in result.stdout
        assert sorted(_drain(rabbitmq, late.queue.name)) == list(range(30, 35))

        # the backfill user reads the archive and writes its exchange; the default exchange is refused
        url = worker_amqp_url(f"amqp://127.0.0.1:{rabbitmq.endpoints.amqp_port}", late.names.backfill_user,
                              PASSWORD, "/")
        with pika.BlockingConnection(pika.URLParameters(url)) as conn:
            channel = conn.channel()
            channel.confirm_delivery()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="ACCESS_REFUSED"):
                channel.basic_publish("", prod.queue.name, b"{}", mandatory=True)
    finally:
        for want in (late, prod):
            apply_plan(broker, plan_remove(want, broker.snapshot(want.scope()), delete_queue=True))


def test_an_empty_or_unreachable_archive_is_a_clear_outcome(rabbitmq: RabbitMQNode, broker: ManagementClient,
                                                           feed: str) -> None:
    late = _make(f"late-{feed}", feed, backfill={"since": "1h"})
    try:
        apply_plan(broker, plan_converge(late, broker.snapshot(late.scope()), "pw", PASSWORD))
        result = _run_backfill(rabbitmq, late, dt.datetime.now(dt.UTC), "--empty-wait", "3")
        assert result.returncode == 0, result.stderr
        assert "the archive was empty" in result.stdout
        result = subprocess.run([sys.executable, "-m", "matchenv.cli", "backfill", "--archive", "a", "--exchange",
                                 "b", "--from", "2026-01-01T00:00:00Z", "--broker-url", "amqp://127.0.0.1:1/",
                                 "--retry-seconds", "2"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        assert "cannot reach the broker" in result.stderr
        result = _run_backfill(rabbitmq, late, dt.datetime.now(dt.UTC), "--from", "yesterday")
        assert result.returncode == 2
        assert "is not an RFC 3339 time" in result.stderr
    finally:
        apply_plan(broker, plan_remove(late, broker.snapshot(late.scope()), delete_queue=True))


def test_a_backfill_is_complete_only_at_the_archives_end(rabbitmq: RabbitMQNode, broker: ManagementClient,
                                                         feed: str) -> None:
    """20,000 archived, and a replay that sees every pause of the stream (a busy broker's) as long as the old
    5 s rule: it still delivers all 20,000, because only the archive's last offset ends it."""
    from matchenv.replay import replay

    late = _make(f"late-{feed}", feed, backfill={"since": "1h"})
    try:
        with pika.BlockingConnection(pika.URLParameters(rabbitmq.endpoints.amqp_url)) as conn:
            channel = conn.channel()
            channel.tx_select()
            for i in range(20_000):
                channel.basic_publish(feed, "", json.dumps({"i": i}).encode(), pika.BasicProperties(delivery_mode=2))
                if i % 1000 == 999:
                    channel.tx_commit()
        apply_plan(broker, plan_converge(late, broker.snapshot(late.scope()), "pw", PASSWORD))
        assert late.backfill is not None
        report = replay(rabbitmq.endpoints.amqp_url, late.backfill.archive, late.names.backfill_exchange,
                        dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), mandatory=True, idle=0.001)
        assert report.delivered == 20_000
        assert report.end_offset is not None
        wait_for(lambda: broker.get_queue("/", late.queue.name).messages == 20_000, timeout=60,
                 what="all 20,000 in the queue")
    finally:
        apply_plan(broker, plan_remove(late, broker.snapshot(late.scope()), delete_queue=True))
