"""`matchenv scrape`'s publisher against raw pika on the same broker: confirm each, and confirms per 100."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable

import pika
import pika.channel
import pika.frame
import requests

from matchenv.scraper.messages import task_message
from matchenv.scraper.publisher import Publisher, Target
from matchenv.scraper.sources import synthetic
from matchenv_devkit.bench.result import Measure
from matchenv_devkit.bench.result import Target as Goal
from matchenv_devkit.services.rabbitmq import RabbitMQNode

QUEUES = 3


class Fanout:
    """A fanout exchange with ``QUEUES`` durable classic queues bound, as matchenv lays them out."""

    def __init__(self, broker: RabbitMQNode) -> None:
        ep = broker.endpoints
        self.http = requests.Session()
        self.http.auth = (ep.username, ep.password)
        self.api = ep.management_url.rstrip("/") + "/api"
        self.exchange = f"bench-{uuid.uuid4().hex[:6]}"
        self.queues = [f"{self.exchange}.q{i}" for i in range(QUEUES)]
        self.http.put(f"{self.api}/exchanges/%2F/{self.exchange}", json={"type": "fanout", "durable": True},
                      timeout=10).raise_for_status()
        for queue in self.queues:
            self.http.put(f"{self.api}/queues/%2F/{queue}", json={"durable": True}, timeout=10).raise_for_status()
            self.http.post(f"{self.api}/bindings/%2F/e/{self.exchange}/q/{queue}", json={},
                           timeout=10).raise_for_status()

    def purge(self) -> None:
        for queue in self.queues:
            self.http.delete(f"{self.api}/queues/%2F/{queue}/contents", timeout=30).raise_for_status()

    def close(self) -> None:
        for queue in self.queues:
            self.http.delete(f"{self.api}/queues/%2F/{queue}", timeout=30)
        self.http.delete(f"{self.api}/exchanges/%2F/{self.exchange}", timeout=30)
        self.http.close()


def _bodies(count: int) -> list[tuple[bytes, pika.BasicProperties]]:
    out = []
    for raw in synthetic(count, seed=11):
        assert isinstance(raw.data, dict)
        message = task_message(raw.data)
        out.append((message.body, pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                                       correlation_id=message.task_id, headers=message.headers)))
    return out


def raw_confirm_each(url: str, exchange: str, count: int) -> float:
    """pika's blocking channel in confirm mode: one round trip per message. Returns seconds."""
    messages = _bodies(count)
    conn = pika.BlockingConnection(pika.URLParameters(url))
    channel = conn.channel()
    channel.confirm_delivery()
    started = time.perf_counter()
    for body, props in messages:
        channel.basic_publish(exchange, "", body, props, mandatory=True)
    seconds = time.perf_counter() - started
    conn.close()
    return seconds


def raw_confirms_per_batch(url: str, exchange: str, count: int, batch: int = 100) -> float:
    """pika's asynchronous connection: publish ``batch`` messages, wait for all their confirms, repeat."""
    messages = _bodies(count)
    state = {"sent": 0, "acked": 0}
    clock = {"started": 0.0, "seconds": 0.0}

    def send_batch(channel: pika.channel.Channel) -> None:
        end = min(count, state["sent"] + batch)
        for body, props in messages[state["sent"]:end]:
            channel.basic_publish(exchange, "", body, props, mandatory=True)
        state["sent"] = end

    def on_confirm(frame: pika.frame.Method) -> None:
        tag = frame.method.delivery_tag
        state["acked"] = tag if frame.method.multiple else max(state["acked"], tag)
        if state["acked"] >= count:
            clock["seconds"] = time.perf_counter() - clock["started"]
            conn.close()
        elif state["acked"] == state["sent"]:
            send_batch(channel_holder[0])

    channel_holder: list[pika.channel.Channel] = []

    def on_channel(channel: pika.channel.Channel) -> None:
        channel_holder.append(channel)

        def ready(_frame: object) -> None:
            clock["started"] = time.perf_counter()
            send_batch(channel)
        channel.confirm_delivery(ack_nack_callback=on_confirm, callback=ready)

    conn = pika.SelectConnection(pika.URLParameters(url), on_open_callback=lambda c: c.channel(
        on_open_callback=on_channel), on_close_callback=lambda c, r: c.ioloop.stop())
    conn.ioloop.start()
    return clock["seconds"]


def ours(url: str, exchange: str, count: int) -> float:
    """matchenv's Publisher on pre-read matches: validation, message building and streamed confirms."""
    matches = list(synthetic(count, seed=11))
    publisher = Publisher(url, Target(exchange))
    started = time.perf_counter()
    report = publisher.run(matches)
    seconds = time.perf_counter() - started
    if report.confirmed != count:
        raise RuntimeError(f"publisher bench: {report.summary()}")
    return seconds


def _interleaved(runs: dict[str, Callable[[], float]], fanout: Fanout, rounds: int) -> dict[str, float]:
    """The median seconds of each of ``runs`` over ``rounds``, taken in turn (a slow moment of a shared machine
    weighs on each alike), the queues purged before each."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            fanout.purge()
            seconds[name].append(run())
    fanout.purge()
    return {name: statistics.median(taken) for name, taken in seconds.items()}


def measure(broker: RabbitMQNode, count: int = 5000, rounds: int = 5) -> Measure:
    url = broker.endpoints.amqp_url
    fanout = Fanout(broker)
    try:
        taken = _interleaved({"each": lambda: raw_confirm_each(url, fanout.exchange, count),
                              "per100": lambda: raw_confirms_per_batch(url, fanout.exchange, count),
                              "ours": lambda: ours(url, fanout.exchange, count)}, fanout, rounds)
    finally:
        fanout.close()
    each, per100, mine = taken["each"], taken["per100"], taken["ours"]
    rate = count / mine
    ratio = (count / mine) / (count / per100)
    return Measure(
        name=f"publisher: {count:,} matches, {QUEUES} queues bound",
        ours=f"{rate:,.0f} msg/s",
        baseline=f"raw pika, confirm each: {count / each:,.0f} msg/s; raw pika, confirms per 100: "
                 f"{count / per100:,.0f} msg/s",
        ratio=f"{ratio:.2f} of per-100",
        targets=[Goal("publisher ≥ 0.9 x raw pika with confirms per 100", ratio, 0.9)],
    )
