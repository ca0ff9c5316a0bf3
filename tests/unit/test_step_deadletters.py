"""spec.deadLetterRequest: carried out once per id with the operator's credentials, recorded in status and an
Event; a failure is said and not retried until a new id."""

from __future__ import annotations

import typing
from collections import Counter
from typing import Any

from matchenv.api import DeadLetterReason
from matchenv.contracts import BROKER_REASONS, WORKER_REASONS
from matchenv.dlq.letters import UNKNOWN_REASON
from matchenv.dlq.queue import DeadLetterError, Tally
from matchenv.operator.steps.deadletters import carry_out
from tests.unit.world import World

URL = "amqp://admin:admin-pw@rabbitmq:5672/%2F"


class FakeDeadLetters:
    """The dead-letter queue as a list of reasons; records how it was opened and what was asked."""

    def __init__(self, reasons: list[str], fail: str | None = None) -> None:
        self.reasons = reasons
        self.fail = fail
        self.opened: list[tuple[str, str, str]] = []
        self.asked: list[tuple[str, str | None, int | None]] = []

    def __call__(self, url: str, queue: str, dlq: str, timeout: float) -> FakeDeadLetters:
        self.opened.append((url, queue, dlq))
        if self.fail:
            raise DeadLetterError(self.fail)
        return self

    def __enter__(self) -> FakeDeadLetters:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def _take(self, reason: str | None, limit: int | None) -> Tally:
        tally = Tally(seen=Counter(self.reasons), depth=len(self.reasons))
        kept = []
        for r in self.reasons:
            if (reason is None or r == reason) and (limit is None or sum(tally.moved.values()) < limit):
                tally.moved[r] += 1
            else:
                kept.append(r)
        tally.complete = len(kept) == 0 or all(reason is not None and r != reason for r in kept)
        self.reasons = kept
        return tally

    def redrive(self, reason: str | None, rate: float, limit: int | None) -> Tally:
        self.asked.append(("redrive", reason, limit))
        return self._take(reason, limit)

    def purge(self, reason: str | None, limit: int | None = None) -> Tally:
        self.asked.append(("purge", reason, limit))
        return self._take(reason, limit)

    def depth(self) -> int:
        return len(self.reasons)


def request(world: World, **fields: Any) -> None:
    world.add("dev", deadLetterRequest=fields)


def test_a_new_request_is_carried_out_once_and_recorded(world: World) -> None:
    request(world, id="fix-1", reason="store-error", limit=2)
    dlq = FakeDeadLetters(["store-error", "invalid", "store-error", "store-error"])
    ctx = world.context("dev")
    record = carry_out(world.services, ctx, URL, opener=dlq)
    assert record is not None
    assert dlq.opened == [(URL, "matches.dev", "matches.dev.dlq")]
    assert dlq.asked == [("redrive", "store-error", 2)]
    assert (record["id"], record["action"], record["done"], record["left"], record["succeeded"]) == \
        ("fix-1", "Redrive", 2, 2, True)
    assert record["message"] == ("2 store-error dead letters redriven from matches.dev.dlq to queue matches.dev; 2 "
                                 "left there (stopped at the limit, 2)")
    assert [m for _, r, m in world.kube.events if r == "DeadLettersRedriven"] == [f"request fix-1: {record['message']}"]
    # once its record is in status, the same id is never carried out again
    world.kube.patch_environment_status("default", "dev", {"deadLetterRequest": record})
    assert carry_out(world.services, world.context("dev"), URL, opener=dlq) == record
    assert len(dlq.asked) == 1


def test_a_purge_of_every_reason_keeps_to_its_limit(world: World) -> None:
    request(world, id="clean", action="Purge", limit=3)
    dlq = FakeDeadLetters(["invalid"] * 5)
    record = carry_out(world.services, world.context("dev"), URL, opener=dlq)
    assert record is not None
    assert dlq.asked == [("purge", None, 3)]
    assert (record["done"], record["left"]) == (3, 2)
    assert [r for _, r, _ in world.kube.events] == ["DeadLettersPurged"]


def test_a_failed_request_says_why_and_waits_for_a_new_id(world: World) -> None:
    request(world, id="fix-2")
    dlq = FakeDeadLetters([], fail="the broker Secret's credentials were refused")
    record = carry_out(world.services, world.context("dev"), URL, opener=dlq)
    assert record is not None
    assert record["succeeded"] is False
    assert "credentials were refused" in record["message"]
    assert [r for _, r, _ in world.kube.events] == ["DeadLetterRequestFailed"]
    world.kube.patch_environment_status("default", "dev", {"deadLetterRequest": record})
    carry_out(world.services, world.context("dev"), URL, opener=dlq)
    assert len(dlq.opened) == 1


def test_without_a_converged_queue_the_request_waits(world: World) -> None:
    request(world, id="fix-3")
    dlq = FakeDeadLetters(["invalid"])
    assert carry_out(world.services, world.context("dev"), None, opener=dlq) is None
    assert dlq.opened == []


def test_the_reasons_a_request_may_name_are_those_a_letter_can_carry() -> None:
    assert set(typing.get_args(DeadLetterReason)) == {*WORKER_REASONS, *BROKER_REASONS, UNKNOWN_REASON}
