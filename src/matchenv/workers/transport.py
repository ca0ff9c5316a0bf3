"""The worker's broker transport: Celery's py-amqp transport, reading the socket in chunks.

py-amqp reads each frame with three ``recv`` calls of exactly the bytes it wants (header, payload, end octet) and,
in Celery's event loop, switches the socket to non-blocking and back around each one: a task message is three
frames, so some fifteen system calls and their Python around them, in the consumer's one thread. Here a frame is
cut from a buffer filled by ``recv`` calls of up to :data:`CHUNK` bytes, and the socket's timeout is touched only
when the buffer holds no whole frame. py-amqp alone reads a backlog about twice as fast this way (docs/benchmarks.md).

What changes for Celery's event loop: frames can now wait in the buffer while the socket itself has nothing to
read, and the loop's ``epoll`` would not wake for them. The loop drains them itself, at every turn before it polls
(:meth:`Transport.register_with_event_loop`); frames a synchronous call read past its reply (deliveries beside a
``basic.consume-ok``) are taken the same way. TLS connections keep py-amqp's own transport.
"""

from __future__ import annotations

import errno
from struct import unpack_from
from typing import Any

from amqp.exceptions import UnexpectedFrame
from amqp.transport import TCPTransport
from celery.app.amqp import AMQP
from kombu.connection import Connection
from kombu.transport import pyamqp

CHUNK = 128 * 1024  # bytes a recv may take: ~100 task messages
FRAME_END = 0xCE
_HEADER = 7  # type (1), channel (2), size (4)
_NOT_NOW = (errno.EAGAIN, errno.EINTR)

Frame = tuple[int, int, bytes]


class ChunkedTCPTransport(TCPTransport):  # type: ignore[misc]
    """py-amqp's TCP transport whose frames are cut from a buffer the socket fills in chunks."""

    _chunk: bytes = b""
    _at: int = 0  # where the next frame starts in ``_chunk``

    def frame_end(self) -> int | None:
        """Where the next frame's end octet is in the buffer when the whole frame is there, else None."""
        chunk, at = self._chunk, self._at
        if len(chunk) - at <= _HEADER:
            return None
        end = at + _HEADER + unpack_from(">I", chunk, at + 3)[0]
        return end if len(chunk) > end else None

    def buffered_frame(self) -> Frame | None:
        """The next whole frame already read from the socket, or None (no system call either way)."""
        end = self.frame_end()
        if end is None:
            return None
        chunk, at = self._chunk, self._at
        frame_type, channel = unpack_from(">BH", chunk, at)
        if chunk[end] != FRAME_END:
            raise UnexpectedFrame(f"Received frame_end {chunk[end]:#04x} while expecting {FRAME_END:#04x}")
        self._at = end + 1
        return frame_type, channel, chunk[at + _HEADER:end]

    def read_frame(self, unpack: Any = None) -> Frame:
        """The next frame, reading the socket as needed. ``socket.timeout`` when it has nothing yet (a partial
        frame stays buffered); any other error means the connection is lost."""
        while (frame := self.buffered_frame()) is None:
            try:
                data = self.sock.recv(CHUNK)
            except TimeoutError:
                raise
            except OSError as exc:
                if exc.errno in _NOT_NOW:  # non-blocking and empty, or interrupted: nothing lost, try again later
                    raise TimeoutError() from None
                self.connected = False
                raise
            if not data:
                self.connected = False
                raise OSError("Server unexpectedly closed connection")
            self._chunk = self._chunk[self._at:] + data
            self._at = 0
        return frame


class ChunkedConnection(pyamqp.Connection):
    """kombu's py-amqp connection over :class:`ChunkedTCPTransport` (TLS: py-amqp's own)."""

    def Transport(self, host: str, connect_timeout: float | None, ssl: Any = False,  # noqa: N802 (py-amqp's name)
                  read_timeout: float | None = None, write_timeout: float | None = None,
                  socket_settings: Any = None, **kwargs: Any) -> Any:
        if ssl:
            return super().Transport(host, connect_timeout, ssl, read_timeout, write_timeout, socket_settings,
                                     **kwargs)
        return ChunkedTCPTransport(host, connect_timeout=connect_timeout, read_timeout=read_timeout,
                                   write_timeout=write_timeout, socket_settings=socket_settings, **kwargs)

    def blocking_read(self, timeout: float | None = None) -> Any:
        """py-amqp's, without setting the socket's timeout (two system calls) for a frame already buffered."""
        transport = self.transport
        frame = transport.buffered_frame() if isinstance(transport, ChunkedTCPTransport) else None
        if frame is None:
            with transport.having_timeout(timeout):
                frame = transport.read_frame()
        return self.on_inbound_frame(frame)

    def frames_buffered(self) -> bool:
        """Whether whole frames wait in the buffer (read, not yet handled)."""
        transport = self.transport
        return isinstance(transport, ChunkedTCPTransport) and transport.frame_end() is not None


def drain_buffered(connection: ChunkedConnection) -> None:
    """Handle every frame the buffer holds whole; stop at a partial one (its rest is on the socket, or coming)."""
    while connection.connected and connection.frames_buffered():
        try:
            connection.drain_events(timeout=0)
        except TimeoutError:
            return


class Transport(pyamqp.Transport):
    """kombu's py-amqp transport over :class:`ChunkedConnection`."""

    Connection = ChunkedConnection

    def register_with_event_loop(self, connection: ChunkedConnection, loop: Any) -> None:
        """kombu's (read when the socket is readable), and at every turn of the loop, before it polls, the frames
        already buffered: the socket does not wake the loop for those."""
        super().register_with_event_loop(connection, loop)  # type: ignore[no-untyped-call]

        def tick() -> None:
            drain_buffered(connection)

        def closed(_: Any) -> None:  # the loop is reset (connection lost) or closed: this connection is done
            loop.on_tick.discard(tick)
            loop.on_close.discard(closed)

        loop.on_tick.add(tick)
        loop.on_close.add(closed)


class BrokerConnection(Connection):
    """kombu's connection, over :class:`Transport` wherever kombu would take its py-amqp transport (an ``amqp://``
    URL), also after moving on to the next URL of a failover list (kombu takes each URL's scheme again)."""

    def get_transport_cls(self) -> type[Any]:
        cls: type[Any] = super().get_transport_cls()  # type: ignore[no-untyped-call]
        return Transport if cls is pyamqp.Transport else cls


class ChunkedAMQP(AMQP):  # type: ignore[misc]
    """Celery's AMQP helpers, whose connections are :class:`BrokerConnection` (``Celery(amqp=...)``)."""

    Connection = BrokerConnection
