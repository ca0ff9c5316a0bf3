"""`matchenv scrape` and the publisher against a real RabbitMQ: routing flags, unroutable matches, reconnects."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from matchenv.scraper.publisher import Publisher, Target
from matchenv.scraper.sources import RawMatch, synthetic
from matchenv_devkit.services.rabbitmq import RabbitMQNode
from tests.integration.harness import Environment


@pytest.fixture
def envs(rabbitmq: RabbitMQNode) -> Iterator[tuple[str, Environment, Environment]]:
    exchange = f"fan-{uuid.uuid4().hex[:6]}"
    made = (Environment(rabbitmq, f"p{uuid.uuid4().hex[:6]}", exchange={"name": exchange}),
            Environment(rabbitmq, f"d{uuid.uuid4().hex[:6]}", exchange={"name": exchange}))
    yield exchange, made[0], made[1]
    for env in made:
        env.admin.delete_queue("/", env.queue)
        env.admin.delete_queue("/", env.dlq)
        env.admin.delete_user(env.topology.names.broker_user)
    made[0].admin.delete_exchange("/", exchange)


def scrape(rabbitmq: RabbitMQNode, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RABBITMQ_URL": rabbitmq.endpoints.amqp_url}
    return subprocess.run([sys.executable, "-m", "matchenv.cli", "scrape", "--quiet", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_fanout_reaches_every_bound_queue(rabbitmq: RabbitMQNode,
                                          envs: tuple[str, Environment, Environment]) -> None:
    exchange, prod, dev = envs
    result = scrape(rabbitmq, "--synthetic", "25", "--exchange", exchange)
    assert result.returncode == 0, result.stderr
    assert "confirmed 25, unroutable 0" in result.stdout
    assert prod.depth() == 25
    assert dev.depth() == 25


def test_queue_flag_wins_and_no_submit_publishes_nothing(rabbitmq: RabbitMQNode,
                                                         envs: tuple[str, Environment, Environment]) -> None:
    exchange, prod, dev = envs
    result = scrape(rabbitmq, "--synthetic", "7", "--queue", prod.queue, "--exchange", exchange)
    assert result.returncode == 0, result.stderr
    assert (prod.depth(), dev.depth()) == (7, 0)
    result = scrape(rabbitmq, "--synthetic", "7", "--no-submit-queue", "--exchange", exchange)
    assert result.returncode == 0
    assert "published 0" in result.stdout
    assert (prod.depth(), dev.depth()) == (7, 0)


def test_unroutable_matches_fail_the_command(rabbitmq: RabbitMQNode, envs: tuple[str, Environment, Environment]
                                             ) -> None:
    exchange, prod, _ = envs
    prod.admin.declare_exchange("/", f"{exchange}-empty", "fanout")
    try:
        result = scrape(rabbitmq, "--synthetic", "3", "--exchange", f"{exchange}-empty")
    finally:
        prod.admin.delete_exchange("/", f"{exchange}-empty")
    assert result.returncode == 1
    assert "3 matches were unroutable" in result.stderr
    assert "unroutable 3" in result.stdout


def test_missing_exchange_is_a_clear_failure(rabbitmq: RabbitMQNode) -> None:
    result = scrape(rabbitmq, "--synthetic", "2", "--exchange", f"nope-{uuid.uuid4().hex[:6]}")
    assert result.returncode == 1
    assert "404 NOT_FOUND - no exchange" in result.stderr


def test_invalid_matches_are_listed_and_not_published(rabbitmq: RabbitMQNode, tmp_path: Path,
                                                      envs: tuple[str, Environment, Environment]) -> None:
    exchange, prod, _ = envs
    good = next(iter(synthetic(1))).data
    lines = ['{"home_team": "A", "away_team": "B"}', "{broken", str(good).replace("'", '"'),
             '{"home_team": "A", "away_team": "B", "match_date": "2025-01-01", "season": "x", "age_group": "U14",'
             ' "match_type": "League", "home_score": -3}']
    path = tmp_path / "matches.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = scrape(rabbitmq, "--from-file", str(path), "--exchange", exchange)
    assert result.returncode == 3
    assert "invalid #1: match_date: Field required" in result.stderr
    assert "invalid #2: record: not valid JSON" in result.stderr
    assert "invalid #4: home_score: Input should be greater than or equal to 0" in result.stderr
    assert "confirmed 1" in result.stdout
    assert prod.depth() == 1


def test_publisher_survives_a_broker_restart_without_losing_confirmed_matches(
        rabbitmq: RabbitMQNode, envs: tuple[str, Environment, Environment]) -> None:
    exchange, prod, _ = envs
    publisher = Publisher(rabbitmq.endpoints.amqp_url, Target(exchange))
    total = 6000
    matches = list(synthetic(total, seed=7))

    def paced() -> Iterator[RawMatch]:  # a scrape that takes seconds, so that the restart lands mid-run
        for raw in matches:
            time.sleep(0.001)
            yield raw

    done: dict[str, object] = {}
    thread = threading.Thread(target=lambda: done.update(report=publisher.run(paced())))
    thread.start()
    while prod.depth() < 100:  # the restart lands mid-run
        time.sleep(0.05)
    rabbitmq.stop()
    rabbitmq.start()
    thread.join(timeout=180)
    report = done["report"]
    assert report.confirmed == total, report.summary()  # type: ignore[attr-defined]
    assert report.failed == 0  # type: ignore[attr-defined]
    assert report.reconnects >= 1  # type: ignore[attr-defined]
    # every confirmed match is in the queue; only a resent one may be there twice (the broker stored it at its
    # shutdown, but its confirm never reached the publisher)
    assert total <= prod.depth() <= total + report.resent  # type: ignore[attr-defined]


def test_each_match_carries_its_topic_key_so_a_topic_binding_picks_a_subset(rabbitmq: RabbitMQNode) -> None:
    import pika

    exchange, queue = f"topic-{uuid.uuid4().hex[:6]}", f"u14-{uuid.uuid4().hex[:6]}"
    with pika.BlockingConnection(pika.URLParameters(rabbitmq.endpoints.amqp_url)) as conn:
        channel = conn.channel()
        channel.exchange_declare(exchange, "topic", auto_delete=True)
        channel.queue_declare(queue, exclusive=True)
        channel.queue_bind(queue, exchange, "U14.#")
        matches = list(synthetic(300, seed=14))
        report = Publisher(rabbitmq.endpoints.amqp_url, Target(exchange)).run(matches)
        wanted = sum(1 for m in matches if isinstance(m.data, dict) and m.data["age_group"] == "U14")
        assert 0 < wanted < 300
        assert report.confirmed == wanted  # the others had no queue: unroutable, and reported so
        assert report.unroutable == 300 - wanted
        assert channel.queue_declare(queue, passive=True).method.message_count == wanted
