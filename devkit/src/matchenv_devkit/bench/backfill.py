"""The backfill's replay of an archive beside a raw pika stream copy with the same confirms, on the same broker."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable

import pika

from matchenv.replay import OFFSET_HEADER, replay
from matchenv.scraper.publisher import Publisher, Target
from matchenv.scraper.sources import synthetic
from matchenv_devkit.bench.result import Measure
from matchenv_devkit.bench.result import Target as Goal
from matchenv_devkit.services.rabbitmq import RabbitMQNode, queue_depth


class Archive:
    """A fanout exchange with a stream bound (the feed's archive, as the operator lays it out) holding ``count``
    matches, and one exchange → queue per copy, as a backfill's exchange feeds its environment's queue."""

    def __init__(self, url: str, count: int) -> None:
        self.url = url
        self.exchange = f"bench-feed-{uuid.uuid4().hex[:6]}"
        self.archive = f"{self.exchange}.archive"
        self.targets: list[str] = []
        with pika.BlockingConnection(pika.URLParameters(url)) as conn:
            channel = conn.channel()
            channel.exchange_declare(self.exchange, "fanout", durable=True)
            channel.queue_declare(self.archive, durable=True, arguments={"x-queue-type": "stream"})
            channel.queue_bind(self.archive, self.exchange)
        report = Publisher(url, Target(self.exchange)).run(list(synthetic(count, seed=41)))
        if report.confirmed != count:
            raise RuntimeError(f"filling the archive: {report.summary()}")

    def target(self, label: str) -> str:
        """A new exchange bound to a queue of the same name (removed by :meth:`close`)."""
        name = f"{self.exchange}.{label}"
        with pika.BlockingConnection(pika.URLParameters(self.url)) as conn:
            channel = conn.channel()
            channel.exchange_declare(name, "fanout", durable=True)
            channel.queue_declare(name, durable=True)
            channel.queue_bind(name, name)
        self.targets.append(name)
        return name

    def held(self, queue: str) -> int:
        return queue_depth(self.url, queue)

    def close(self) -> None:
        with pika.BlockingConnection(pika.URLParameters(self.url)) as conn:
            channel = conn.channel()
            for name in self.targets:
                channel.queue_delete(name)
                channel.exchange_delete(name)
            channel.queue_delete(self.archive)
            channel.exchange_delete(self.exchange)


def raw_copy(url: str, archive: str, exchange: str, count: int) -> float:
    """pika's blocking channels: read the stream from its first offset, publish each message to ``exchange`` and wait
    for its confirm before acknowledging it and taking the next. Returns seconds."""
    started = time.perf_counter()
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        out = conn.channel()
        out.confirm_delivery()
        source = conn.channel()
        source.basic_qos(prefetch_count=500)
        messages = source.consume(archive, arguments={OFFSET_HEADER: "first"}, inactivity_timeout=30)
        for copied, (method, properties, body) in enumerate(messages, start=1):
            if method is None:
                raise RuntimeError(f"the raw copy stopped at {copied - 1} of {count}")
            properties.headers = {k: v for k, v in (properties.headers or {}).items() if k != OFFSET_HEADER}
            out.basic_publish(exchange, method.routing_key, body, properties, mandatory=True)
            source.basic_ack(method.delivery_tag)
            if copied >= count:
                break
    return time.perf_counter() - started


def ours(url: str, archive: str, exchange: str, count: int) -> float:
    """``matchenv backfill``'s replay from an hour ago to the archive's end (its lookup of the end included)."""
    started = time.perf_counter()
    report = replay(url, archive, exchange, dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), mandatory=True)
    seconds = time.perf_counter() - started
    if report.delivered != count:
        raise RuntimeError(f"the replay delivered {report.delivered} of {count}")
    return seconds


def measure(broker: RabbitMQNode, count: int = 100_000, rounds: int = 1, log: Callable[[str], None] = print
            ) -> Measure:
    url = broker.endpoints.amqp_url
    archive = Archive(url, count)
    try:
        raw_copy(url, archive.archive, archive.target("warm"), min(count, 2000))  # the stream read once first
        best_raw = best_ours = float("inf")
        for round_ in range(rounds):  # interleaved: a slow moment of the machine hits both alike
            raw_target, our_target = archive.target(f"raw{round_}"), archive.target(f"ours{round_}")
            best_raw = min(best_raw, raw_copy(url, archive.archive, raw_target, count))
            best_ours = min(best_ours, ours(url, archive.archive, our_target, count))
            held = archive.held(raw_target), archive.held(our_target)
            if held != (count, count):
                raise RuntimeError(f"the copies hold {held}, not {count} each")
            log(f"  round {round_ + 1}: raw copy {count / best_raw:,.0f} msg/s, replay {count / best_ours:,.0f} msg/s")
    finally:
        archive.close()
    ratio = best_raw / best_ours
    return Measure(
        name=f"backfill: {count:,} archived matches replayed into one environment's queue",
        ours=f"{count / best_ours:,.0f} matches/s ({best_ours:.1f} s, the lookup of the archive's end included)",
        baseline=f"raw pika stream copy, each publish confirmed before the next: {count / best_raw:,.0f} msg/s "
                 f"({best_raw:.1f} s)",
        ratio=f"{ratio:.2f} of the raw copy",
        targets=[Goal("backfill >= 0.7 x the raw stream copy", ratio, 0.7)])
