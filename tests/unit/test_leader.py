"""Leader election's safety margin with a fake clock and an in-memory Lease: the holder stops writing a third of a
Lease before a standby may take over, and never renews after stalling past its deadline."""

from __future__ import annotations

import copy
from typing import Any

from matchenv.operator.leader import LeaseElector


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class LeaseStore:
    """One Lease object with optimistic concurrency, as the API server keeps it."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.lease)

    def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.lease = {**copy.deepcopy(body), "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}
        return self.lease

    def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        assert self.lease is not None
        if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        return self.create_lease(namespace, body)


def test_a_stalled_leader_stops_writing_before_the_standby_can_take_over() -> None:
    store, clock = LeaseStore(), Clock()
    leader = LeaseElector(store, "ns", "lease", "a", lease_seconds=15, clock=clock)  # type: ignore[arg-type]
    standby = LeaseElector(store, "ns", "lease", "b", lease_seconds=15, clock=clock)  # type: ignore[arg-type]
    assert leader.try_acquire_or_renew()
    assert leader.leading()
    assert not standby.try_acquire_or_renew()  # the standby starts watching the record
    clock.now += 9.9  # the leader stalls (SIGSTOP): still inside its renew deadline of 10 s
    assert leader.leading()
    clock.now += 0.2
    assert not leader.leading()  # fenced: no write from here on
    assert not standby.try_acquire_or_renew()  # 10.1 s: the standby must still wait
    clock.now += 5  # 15.1 s after the last change of the record
    assert standby.try_acquire_or_renew()
    assert standby.leading()
    # the old leader wakes up: it never writes the Lease back, and it is not leading
    assert not leader.try_acquire_or_renew()
    assert not leader.leading()
    assert store.lease is not None
    assert store.lease["spec"]["holderIdentity"] == "b"


def test_margins_follow_the_lease_duration() -> None:
    elector = LeaseElector(LeaseStore(), "ns", "lease", "a", lease_seconds=15)  # type: ignore[arg-type]
    assert elector.renew_deadline == 10
    assert elector.retry_period == 3
    assert not elector.leading()  # not before the first acquisition
