"""The backlog probe's passive declares on a real broker: a queue's ready count as it is now (the management API's
statistics lag by their interval), nothing for a missing queue or an unreachable broker."""

from __future__ import annotations

import uuid

import pika

from matchenv.operator.backlog import ReadyCounts, Watch
from matchenv_devkit.services.process import free_port
from matchenv_devkit.services.rabbitmq import RabbitMQNode


def test_the_ready_count_is_the_queues_now_and_a_missing_queue_or_broker_has_none(rabbitmq: RabbitMQNode) -> None:
    url = rabbitmq.endpoints.amqp_url
    unique = uuid.uuid4().hex[:8]
    queue = f"probe-{unique}"
    counts = ReadyCounts()
    try:
        with pika.BlockingConnection(pika.URLParameters(url)) as conn:
            channel = conn.channel()
            channel.queue_declare(queue, durable=True)
            assert counts.ready(Watch("default", "prod", url, queue, 0)) == 0
            for i in range(7):
                channel.basic_publish("", queue, str(i).encode())
            channel.queue_declare(queue, passive=True)  # a round trip: the seven are in
            assert counts.ready(Watch("default", "prod", url, queue, 0)) == 7  # at once, no statistics interval
            channel.basic_get(queue, auto_ack=False)  # one taken, not acknowledged: no longer ready
            assert counts.ready(Watch("default", "prod", url, queue, 0)) == 6
            assert counts.ready(Watch("default", "prod", url, f"missing-{unique}", 0)) is None
            channel.queue_delete(queue)
        down = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"  # nothing listens there
        assert counts.ready(Watch("default", "x", down, queue, 0)) is None
    finally:
        counts.keep_only(set())
