"""An environment's dead-letter queue over AMQP, as the broker's admin: read without taking, redrive, purge.

Reading takes each message unacknowledged (``basic.get``) and gives them all back by closing the channel, so the
queue keeps its messages and their order. A redriven message is published to the default exchange with the
environment's queue as its routing key (its own queue, nothing else), ``mandatory`` on a confirmed channel, and its
dead-letter copy is acknowledged only after the broker confirmed the new one: a failure in between leaves a
duplicate (harmless: the store upserts), never a loss.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions

from matchenv.amqp import connect, parameters
from matchenv.dlq.letters import DeadLetter


class DeadLetterError(Exception):
    """The broker refused or could not be reached; the message says what and where."""


@dataclass
class Tally:
    """What one pass over the dead-letter queue did, by reason."""

    seen: Counter[str] = field(default_factory=Counter)
    moved: Counter[str] = field(default_factory=Counter)
    last_at: dict[str, str] = field(default_factory=dict)  # reason → the latest dead-lettered-at seen
    depth: int = 0  # messages in the dead-letter queue when the pass began
    complete: bool = True  # False: stopped at the limit before the end of the queue


class DeadLetterQueue:
    """One connection to the broker for the dead-letter queue ``dlq`` of the environment queue ``queue``."""

    def __init__(self, url: str, queue: str, dlq: str, timeout: float = 10.0) -> None:
        self.queue = queue
        self.dlq = dlq
        self.params = parameters(url, timeout, blocked=timeout * 3)
        self._conn: pika.BlockingConnection | None = None

    def __enter__(self) -> DeadLetterQueue:
        self._conn = connect(self.params, DeadLetterError, "the broker Secret's")
        return self

    def __exit__(self, *_exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                conn.close()

    @contextlib.contextmanager
    def _channel(self, confirm: bool = False) -> Iterator[Any]:
        """A channel whose unacknowledged messages go back to the queue when it closes."""
        assert self._conn is not None, "use DeadLetterQueue as a context manager"
        try:
            channel = self._conn.channel()
            if confirm:
                channel.confirm_delivery()
            try:
                yield channel
            finally:
                if channel.is_open:
                    with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                        channel.close()
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                raise DeadLetterError(f"{exc.reply_text} (has the operator made it yet?)") from exc
            raise DeadLetterError(f"the broker closed the channel: {exc.reply_code} {exc.reply_text}") from exc
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise DeadLetterError(f"the connection to the broker failed: {exc.__class__.__name__} {exc}") from exc

    def depth(self) -> int:
        with self._channel() as channel:
            return int(channel.queue_declare(self.dlq, passive=True).method.message_count)

    def _walk(self, channel: Any, limit: int | None, tally: Tally) -> Iterator[tuple[int, DeadLetter]]:
        """Each message (delivery tag, letter) in queue order, taken unacknowledged, up to ``limit``."""
        tally.depth = int(channel.queue_declare(self.dlq, passive=True).method.message_count)
        taken = 0
        while limit is None or taken < limit:
            method, properties, body = channel.basic_get(self.dlq, auto_ack=False)
            if method is None:
                return
            taken += 1
            letter = DeadLetter.from_delivery(properties, body)
            tally.seen[letter.reason] += 1
            if letter.dead_lettered_at > tally.last_at.get(letter.reason, ""):
                tally.last_at[letter.reason] = letter.dead_lettered_at
            yield method.delivery_tag, letter
        tally.complete = channel.queue_declare(self.dlq, passive=True).method.message_count == 0

    def read(self, limit: int, reason: str | None = None) -> tuple[Tally, list[DeadLetter]]:
        """Up to ``limit`` messages (of ``reason``) in queue order, all left in the queue."""
        tally, letters = Tally(), []
        with self._channel() as channel:
            for _tag, letter in self._walk(channel, limit, tally):
                if reason is None or letter.reason == reason:
                    letters.append(letter)
        return tally, letters

    def redrive(self, reason: str | None, rate: float, limit: int | None,
                on_moved: Callable[[DeadLetter], None] = lambda _l: None) -> Tally:
        """Send the messages (of ``reason``) back to the environment's queue at most ``rate`` a second, at most
        ``limit`` of them; the others stay where they were."""
        tally = Tally()
        pause = 1.0 / rate if rate > 0 else 0.0
        next_at = time.monotonic()
        with self._channel(confirm=True) as channel:
            for tag, letter in self._walk(channel, None, tally):
                if reason is not None and letter.reason != reason:
                    continue
                if limit is not None and sum(tally.moved.values()) >= limit:
                    tally.complete = False
                    break
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_at = max(next_at, time.monotonic()) + pause
                body, properties = letter.redriven()
                try:
                    channel.basic_publish("", self.queue, body, properties, mandatory=True)
                except pika.exceptions.UnroutableError as exc:
                    raise DeadLetterError(f"queue {self.queue} does not exist: nothing more was moved (the "
                                          "message stays in the dead-letter queue)") from exc
                except pika.exceptions.NackError as exc:
                    raise DeadLetterError(f"the broker refused a message for {self.queue} (is it full with "
                                          "overflow reject-publish?); it stays in the dead-letter queue") from exc
                channel.basic_ack(tag)  # only now: the broker has the new copy
                tally.moved[letter.reason] += 1
                on_moved(letter)
        return tally

    def purge(self, reason: str | None, limit: int | None = None) -> Tally:
        """Delete the messages of ``reason`` (all of them with None), at most ``limit`` of them."""
        tally = Tally()
        with self._channel() as channel:
            if reason is None and limit is None:
                count = int(channel.queue_purge(self.dlq).method.message_count)
                tally.depth = count
                tally.moved[""] = count
                return tally
            for tag, letter in self._walk(channel, None, tally):
                if reason is not None and letter.reason != reason:
                    continue
                if limit is not None and sum(tally.moved.values()) >= limit:
                    tally.complete = False
                    break
                channel.basic_ack(tag)
                tally.moved[letter.reason] += 1
        return tally
