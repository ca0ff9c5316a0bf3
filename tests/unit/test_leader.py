"""Leader election's safety margin with a fake clock and an in-memory Lease: the holder stops writing a third of a
Lease before a standby may take over, and never renews after stalling past its deadline."""

from __future__ import annotations

import copy
from typing import Any

import pytest

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


def test_a_write_s_deadline_never_reaches_past_the_lease() -> None:
    """Each write gets what is left of nine tenths of the Lease since the last renewal as its deadline: a write
    that starts just inside the renew deadline is given up before a standby may take over."""
    store, clock = LeaseStore(), Clock()
    leader = LeaseElector(store, "ns", "lease", "a", lease_seconds=15, clock=clock)  # type: ignore[arg-type]
    assert leader.write_budget() == 0  # not before the first acquisition
    assert leader.try_acquire_or_renew()
    assert leader.write_budget() == 13.5
    clock.now += 9.9  # a stall: the last moment a write may start
    assert leader.write_budget() == pytest.approx(3.6)  # it ends 13.5 s after the renewal, the standby waits 15 s
    clock.now += 0.2
    assert leader.write_budget() == 0
    assert leader.try_acquire_or_renew() is False  # never renews after the deadline
    leader.step_down()
    assert leader.write_budget() == 0


def test_writes_take_their_deadline_from_the_lease_and_stop_when_it_is_spent() -> None:
    from kubernetes import client

    from matchenv.operator.kube import Kube, NotLeading

    left = [13.5]
    kube = Kube(client.ApiClient(), timeout=10.0, fence=lambda: left[0])
    assert kube.may_write("Secret default/x") == 10.0  # the request timeout when the Lease has more left
    left[0] = 2.0
    assert kube.may_write("Secret default/x") == 2.0
    left[0] = 0.3
    with pytest.raises(NotLeading):
        kube.may_write("Secret default/x")
    assert Kube(client.ApiClient(), timeout=10.0).may_write("Secret default/x") == 10.0  # no election


def test_margins_follow_the_lease_duration() -> None:
    elector = LeaseElector(LeaseStore(), "ns", "lease", "a", lease_seconds=15)  # type: ignore[arg-type]
    assert elector.renew_deadline == 10
    assert elector.retry_period == 3
    assert not elector.leading()  # not before the first acquisition


def test_a_clean_shutdown_hands_the_lease_to_the_standby_not_to_a_pod_that_starts_meanwhile() -> None:
    store, clock = LeaseStore(), Clock()
    leader = LeaseElector(store, "ns", "lease", "a", lease_seconds=15, clock=clock)  # type: ignore[arg-type]
    standby = LeaseElector(store, "ns", "lease", "b", lease_seconds=15, clock=clock)  # type: ignore[arg-type]
    assert leader.try_acquire_or_renew()
    assert not standby.try_acquire_or_renew()  # stands by, and names itself in the Lease
    assert leader.try_acquire_or_renew()  # renewals keep the standby's name
    assert store.lease is not None
    assert store.lease["metadata"]["annotations"] == {"matchenv.io/standby": "b"}
    leader.step_down()
    assert not leader.leading()
    assert not leader.try_acquire_or_renew()  # a stepped-down process takes no further step
    replacement = LeaseElector(store, "ns", "lease", "c", lease_seconds=15, clock=clock)  # type: ignore[arg-type]
    assert not replacement.try_acquire_or_renew()  # held by b now, freshly renewed
    assert standby.try_acquire_or_renew()
    assert standby.leading()
    assert store.lease["spec"]["holderIdentity"] == "b"
    assert store.lease["metadata"]["annotations"] == {"matchenv.io/standby": "c"}  # the next one in line


def test_a_lease_handed_to_a_standby_that_is_gone_expires_and_is_taken() -> None:
    store, clock = LeaseStore(), Clock()
    leader = LeaseElector(store, "ns", "lease", "a", lease_seconds=15, clock=clock)  # type: ignore[arg-type]
    gone = LeaseElector(store, "ns", "lease", "b", lease_seconds=15, clock=clock)  # type: ignore[arg-type]
    assert leader.try_acquire_or_renew()
    assert not gone.try_acquire_or_renew()
    leader.step_down()
    other = LeaseElector(store, "ns", "lease", "c", lease_seconds=15, clock=clock)  # type: ignore[arg-type]
    assert not other.try_acquire_or_renew()
    clock.now += 15
    assert other.try_acquire_or_renew()


def test_without_a_standby_a_clean_shutdown_frees_the_lease() -> None:
    store, clock = LeaseStore(), Clock()
    leader = LeaseElector(store, "ns", "lease", "a", lease_seconds=15, clock=clock)  # type: ignore[arg-type]
    assert leader.try_acquire_or_renew()
    leader.step_down()
    assert store.lease is not None
    assert store.lease["spec"]["holderIdentity"] is None
    assert LeaseElector(store, "ns", "lease", "c", lease_seconds=15, clock=clock).try_acquire_or_renew()  # type: ignore[arg-type]
