"""Environments that expire: deleted as `kubectl delete` would once spec.expireAfter has passed (from the creation or
the last change of the spec), status.expiresAt saying when; never under hands off."""

from __future__ import annotations

import datetime as dt

import pytest

from matchenv.api import ExpireFrom, MatchEnvironmentSpec, duration_seconds
from matchenv.operator.handsoff import RECONCILE_ANNOTATION
from matchenv.operator.steps.expiry import expires_at
from tests.cases import environment
from tests.unit.world import World

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


def created(world: World, name: str, ago: dt.timedelta) -> None:
    world.kube.environments[("default", name)]["metadata"]["creationTimestamp"] = \
        (dt.datetime.now(dt.UTC) - ago).strftime("%Y-%m-%dT%H:%M:%SZ")


def deleting(world: World, name: str) -> bool:
    return bool(world.kube.environments[("default", name)]["metadata"].get("deletionTimestamp"))


def test_an_environment_is_deleted_once_expire_after_has_passed_since_its_creation(world: World) -> None:
    world.add("pr-17", expireAfter="30s", deletionPolicy="Delete")
    created(world, "pr-17", dt.timedelta(seconds=10))
    world.converge("pr-17")
    assert not deleting(world, "pr-17")
    when = dt.datetime.fromisoformat(world.status("pr-17")["expiresAt"].replace("Z", "+00:00"))
    assert dt.timedelta(seconds=15) < when - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=20)
    created(world, "pr-17", dt.timedelta(seconds=31))
    world.converge("pr-17")
    assert deleting(world, "pr-17")
    [said] = [m for _, r, m in world.kube.events if r == "Expired"]
    assert "expireAfter 30s from its creation" in said
    assert "deletionPolicy Delete" in said
    world.delete("pr-17")  # the finalizer's teardown, as for any deletion
    assert ("/", "matches.pr-17") not in world.broker.queues


def test_hands_off_keeps_an_expired_environment(world: World) -> None:
    world.add("pr-18", annotations={RECONCILE_ANNOTATION: "false"}, expireAfter="30s")
    created(world, "pr-18", dt.timedelta(hours=1))
    world.converge("pr-18")
    assert not deleting(world, "pr-18")


def test_without_expire_after_nothing_expires_and_removing_it_cancels(world: World) -> None:
    world.add("prod", expireAfter="1h")
    world.converge("prod")
    assert world.status("prod")["expiresAt"]
    world.kube.patch_environment("default", "prod", {"spec": {"expireAfter": None}})
    world.converge("prod")
    assert "expiresAt" not in world.status("prod")
    created(world, "prod", dt.timedelta(days=30))
    world.converge("prod")
    assert not deleting(world, "prod")


def test_last_change_counts_again_from_each_change_of_the_spec() -> None:
    spec = MatchEnvironmentSpec.model_validate(
        environment(expireAfter="2h", expireFrom="LastChange")["spec"])
    assert spec.expire_from is ExpireFrom.LAST_CHANGE
    meta = {"generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z"}
    first = expires_at(spec, meta, {}, NOW)
    assert first == NOW + dt.timedelta(hours=2)
    seen = {"expiresAt": "2026-12-03T14:00:00Z", "observedGeneration": 3}
    assert expires_at(spec, meta, seen, NOW + dt.timedelta(hours=1)) == first  # the same spec: kept
    later = NOW + dt.timedelta(hours=1)
    assert expires_at(spec, {**meta, "generation": 4}, seen, later) == later + dt.timedelta(hours=2)
    by_creation = spec.model_copy(update={"expire_from": ExpireFrom.CREATION})
    assert expires_at(by_creation, meta, seen, NOW) == dt.datetime(2026, 1, 1, 2, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("72h", 259200), ("1h30m", 5400), ("168h", 604800)])
def test_durations_read_as_kubectl_users_write_them(text: str, seconds: int) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "30 seconds", "7d", "-5m", "1.5h"])
def test_anything_else_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        duration_seconds(text)
