"""One check at a time per key, and every request followed by a check that began after it (real threads)."""

from __future__ import annotations

import threading

import pytest

from matchenv.operator.coalesce import Coalesced


def test_a_lone_request_runs_its_check_once() -> None:
    runs: list[str] = []
    assert Coalesced().run("x", lambda: runs.append("x")) is True
    assert runs == ["x"]


def test_requests_while_a_check_runs_are_answered_by_one_more_check_after_them() -> None:
    waits: list[float] = []
    now = [100.0]
    gate = Coalesced(every=1.0, clock=lambda: now[0], sleep=waits.append)
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def check() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            now[0] += 0.25  # the check takes a quarter of a second
            started.set()
            assert release.wait(10)

    first: list[bool] = []
    runner = threading.Thread(target=lambda: first.append(gate.run("exchange", check)))
    runner.start()
    assert started.wait(10)
    # three teardowns ask while the first check is under way: none runs its own, none waits
    assert [gate.run("exchange", check) for _ in range(3)] == [False, False, False]
    # another key is not held back by this one
    other: list[str] = []
    assert gate.run("another", lambda: other.append("ran")) is True
    assert other == ["ran"]
    release.set()
    runner.join(10)
    assert first == [True]
    assert runs == [0, 1]  # one more check for the three, begun after they asked
    assert waits == [0.75]  # the next began a second after the first did, not at once
    assert gate.run("exchange", check) is True
    assert runs == [0, 1, 2]


def test_a_failed_check_leaves_nothing_under_way() -> None:
    gate = Coalesced()

    def fails() -> None:
        raise RuntimeError("broker down")

    with pytest.raises(RuntimeError):
        gate.run("exchange", fails)
    runs: list[int] = []
    assert gate.run("exchange", lambda: runs.append(1)) is True
    assert runs == [1]
