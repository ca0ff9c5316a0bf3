"""The backlog probe: fresh ready counts for autoscaled queues, a wake when one asks for more workers."""

from __future__ import annotations

import threading

from matchenv.operator.backlog import FRESH_FOR, RETRY_AFTER, BacklogProbe, ReadyCounts, Watch


class FakeCounts:
    """Ready counts by queue name; None for a queue the broker cannot answer for."""

    def __init__(self, counts: dict[str, int | None]) -> None:
        self.counts = counts
        self.kept: set[str] | None = None

    def ready(self, watch: Watch) -> int | None:
        return self.counts.get(watch.queue)

    def keep_only(self, used: set[str]) -> None:
        self.kept = used


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _probe(counts: dict[str, int | None]) -> tuple[BacklogProbe, list[tuple[str, str]], Clock, FakeCounts]:
    woken: list[tuple[str, str]] = []
    clock, fake = Clock(), FakeCounts(counts)
    probe = BacklogProbe(lambda ns, name: woken.append((ns, name)), threading.Event(), fake,  # type: ignore[arg-type]
                         clock=clock)
    return probe, woken, clock, fake


def test_a_backlog_above_what_the_workers_take_wakes_the_environment_once_per_look() -> None:
    probe, woken, _, fake = _probe({"matches.prod": 250, "matches.dev": 40})
    probe.watch("uid-prod", Watch("default", "prod", "amqp://a/%2F", "matches.prod", wake_above=200))
    probe.watch("uid-dev", Watch("team-a", "dev", "amqp://b/%2F", "matches.dev", wake_above=100))
    probe.look()
    assert woken == [("default", "prod")]
    assert (probe.ready("uid-prod"), probe.ready("uid-dev")) == (250, 40)
    assert fake.kept == {"amqp://a/%2F", "amqp://b/%2F"}


def test_at_its_maximum_an_environment_is_read_but_never_woken() -> None:
    probe, woken, _, _ = _probe({"matches.prod": 10_000})
    probe.watch("uid", Watch("default", "prod", "amqp://a/%2F", "matches.prod", wake_above=None))
    probe.look()
    assert woken == []
    assert probe.ready("uid") == 10_000


def test_a_count_goes_stale_and_an_unanswered_or_forgotten_queue_has_none() -> None:
    probe, woken, clock, fake = _probe({"matches.prod": 5, "matches.gone": None})
    probe.watch("uid", Watch("default", "prod", "amqp://a/%2F", "matches.prod", wake_above=0))
    probe.watch("gone", Watch("default", "gone", "amqp://a/%2F", "matches.gone", wake_above=0))
    probe.look()
    assert woken == [("default", "prod")]  # scaled to zero: any ready message wakes it
    assert probe.ready("gone") is None
    clock.now += FRESH_FOR + 0.1
    assert probe.ready("uid") is None  # too old to scale on
    probe.look()
    assert probe.ready("uid") == 5
    probe.forget("uid")
    assert probe.ready("uid") is None
    probe.look()
    assert fake.kept == {"amqp://a/%2F"}  # the forgotten one's URL is shared with "gone"


def test_a_broker_that_failed_is_left_alone_for_a_while_then_tried_again() -> None:
    clock = Clock()
    counts = ReadyCounts(clock=clock)
    tried: list[str] = []

    def unreachable(url: str) -> None:
        tried.append(url)
        raise OSError("connection refused")

    counts._connection = unreachable  # type: ignore[method-assign,assignment]
    watch = Watch("default", "prod", "amqp://down/%2F", "matches.prod", 0)
    assert counts.ready(watch) is None
    assert len(tried) == 2  # once more, in case the broker had only closed the connection
    clock.now += RETRY_AFTER / 2
    assert counts.ready(watch) is None
    assert len(tried) == 2  # left alone: one slow broker holds up no other environment's look
    clock.now += RETRY_AFTER
    assert counts.ready(watch) is None
    assert len(tried) == 4
