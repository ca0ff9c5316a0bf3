"""The worker's chunked AMQP reads: every frame whole, in order, none lost when the socket has only part of one."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from amqp.exceptions import UnexpectedFrame

from matchenv.workers.app import create_app
from matchenv.workers.config import WorkerConfig
from matchenv.workers.transport import ChunkedTCPTransport, Transport


def frame(kind: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + bytes([end])


@pytest.fixture
def wire() -> Iterator[tuple[ChunkedTCPTransport, socket.socket]]:
    """A transport reading one end of a socket pair; the test writes the broker's side."""
    ours, broker = socket.socketpair()
    transport = ChunkedTCPTransport("127.0.0.1:5672")
    transport.sock, transport.connected = ours, True
    yield transport, broker
    ours.close()
    broker.close()


def test_frames_sent_together_are_read_whole_and_in_order(wire: tuple[ChunkedTCPTransport, socket.socket]) -> None:
    transport, broker = wire
    frames = [(1, 1, b"method"), (2, 1, b"header" * 3), (3, 1, b"x" * 70_000), (8, 0, b"")]
    broker.sendall(b"".join(frame(*f) for f in frames))
    assert [transport.read_frame() for _ in frames] == frames
    assert transport.buffered_frame() is None


def test_a_frame_split_across_reads_waits_whole_in_the_buffer(wire: tuple[ChunkedTCPTransport, socket.socket]
                                                               ) -> None:
    transport, broker = wire
    data = frame(1, 1, b"first") + frame(3, 1, b"second body")
    broker.sendall(data[:20])  # the first frame and 4 bytes of the second's header
    assert transport.read_frame() == (1, 1, b"first")
    transport.sock.settimeout(0)  # as Celery's event loop reads: non-blocking
    with pytest.raises(TimeoutError):
        transport.read_frame()
    broker.sendall(data[20:-1])  # all but the end octet
    with pytest.raises(TimeoutError):
        transport.read_frame()
    broker.sendall(data[-1:])
    assert transport.read_frame() == (3, 1, b"second body")


def test_a_frame_without_its_end_octet_is_refused(wire: tuple[ChunkedTCPTransport, socket.socket]) -> None:
    transport, broker = wire
    broker.sendall(frame(1, 1, b"oops", end=0x00))
    with pytest.raises(UnexpectedFrame, match="frame_end 0x00"):
        transport.read_frame()


def test_a_closed_connection_is_lost_not_waited_for(wire: tuple[ChunkedTCPTransport, socket.socket]) -> None:
    transport, broker = wire
    broker.sendall(frame(1, 1, b"last")[:5])
    broker.close()
    with pytest.raises(OSError, match="unexpectedly closed"):
        transport.read_frame()
    assert not transport.connected


def test_the_worker_reads_every_node_of_its_broker_list_in_chunks() -> None:
    config = WorkerConfig.from_env({"CELERY_BROKER_URL": "amqp://u:p@n1:5672/%2F;amqp://u:p@n2:5673/%2F",
                                    "MATCHENV_QUEUE": "q", "DATABASE_URL": "postgresql://u@db/x"})
    conn = create_app(config).connection_for_read()
    assert conn.get_transport_cls() is Transport
    conn.maybe_switch_next()  # after a lost node: kombu reads the next URL's scheme again
    assert (conn.host, conn.get_transport_cls()) == ("n2:5673", Transport)
    assert conn.as_uri() == "amqp://u:**@n2:5673//"  # what Celery logs: the broker, not a class path
