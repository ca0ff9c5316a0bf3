"""The worker's chunked AMQP reads against a real RabbitMQ, driven by kombu's event loop as Celery's consumer drives
it: deliveries already read from the socket are handled even when the socket has nothing more to say."""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time
import uuid

from kombu import Consumer, Exchange, Producer, Queue
from kombu.asynchronous import Hub
from kombu.message import Message

from matchenv.workers.transport import BrokerConnection, ChunkedConnection, Transport
from matchenv_devkit.services.process import wait_for
from matchenv_devkit.services.rabbitmq import RabbitMQNode, queue_depth

COUNT = 20


def _unread(sock: socket.socket) -> int:
    """Bytes the kernel holds for ``sock``, not yet read."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0])


def test_deliveries_read_past_a_reply_are_handled_with_no_more_traffic(rabbitmq: RabbitMQNode) -> None:
    url = rabbitmq.endpoints.amqp_url
    queue = Queue(f"chunked-{uuid.uuid4().hex[:8]}", Exchange(""), durable=False, auto_delete=True)
    got: list[int] = []

    def received(body: int, message: Message) -> None:
        got.append(body)
        message.ack()

    # no heartbeats: once the broker has sent the deliveries, nothing more comes down the socket to wake the loop
    with BrokerConnection(url, heartbeat=0) as conn:
        assert isinstance(conn.transport, Transport)
        channel = conn.channel()
        Producer(channel).publish(0, routing_key=queue.name, declare=[queue], serializer="json")
        for n in range(1, COUNT):
            Producer(channel).publish(n, routing_key=queue.name, serializer="json")
        hub = Hub()
        conn.transport.register_with_event_loop(conn.connection, hub)
        consumer = Consumer(channel, [queue], callbacks=[received], prefetch_count=COUNT, accept=["json"])
        consumer.consume()
        wait_for(lambda: queue_depth(url, queue.name) == 0, 10, "the broker to send every message", every=0.05)
        time.sleep(0.2)  # ... and loopback to carry them
        amqp = conn.connection
        assert isinstance(amqp, ChunkedConnection)
        while not got or _unread(amqp.sock):  # as synchronous calls do: chunks read, a message handled per call
            amqp.drain_events(timeout=5)
        assert amqp.frames_buffered(), "deliveries should wait in the buffer ..."
        assert not _unread(amqp.sock), "... and the socket have nothing more"
        loop = hub.create_loop()
        deadline = time.monotonic() + 10
        while len(got) < COUNT and time.monotonic() < deadline:
            next(loop)
        assert got == list(range(COUNT)), f"{COUNT - len(got)} deliveries left waiting in the buffer"
        consumer.cancel()
        hub.close()
