"""The environment's finalizer: put on by its first converge before anything is made for it (no other finalizer
written over), never on one that is gone or going; kopf's delete handler runs for those that carry it."""

from __future__ import annotations

from typing import Any

import pytest

from matchenv.operator.steps.finalizer import FINALIZER, FinalizerConflict, has_finalizer, hold_deletion
from tests.unit.world import World


def finalizers(world: World, name: str) -> list[str]:
    return list(world.kube.environments[("default", name)]["metadata"].get("finalizers") or [])


def test_the_first_converge_puts_the_finalizer_on_before_anything_is_made(world: World) -> None:
    world.add("prod")
    seen: list[tuple[int, bool]] = []
    patch = world.kube.patch_environment

    def watched(namespace: str, name: str, body: dict[str, Any]) -> None:
        seen.append((len(world.broker.queues), ("default", "prod-broker") in world.kube.secrets))
        patch(namespace, name, body)

    world.kube.patch_environment = watched  # type: ignore[method-assign]
    world.converge("prod")
    assert seen == [(0, False)]  # one write, before any queue or Secret
    assert finalizers(world, "prod") == [FINALIZER]
    assert world.reason("prod") == "Converged"
    world.converge("prod")
    assert len(seen) == 1  # there already: not written again


def test_a_resync_pass_that_meets_an_environment_before_its_handler_puts_the_finalizer_on_first(world: World) -> None:
    """A pass lists environments kopf has not handled yet (in a burst, for seconds): what it makes for one is held by
    the finalizer too, so a deletion then cannot leave a bound queue and a broker user behind."""
    world.add("prod")
    world.reconciler.resync_all()
    assert ("/", "matches.prod") in world.broker.queues
    assert finalizers(world, "prod") == [FINALIZER]


def test_another_controllers_finalizer_is_kept_and_a_stale_read_is_retried(world: World) -> None:
    world.add("prod")
    stale = world.kube.environment("default", "prod")
    world.kube.patch_environment("default", "prod", {"metadata": {"finalizers": ["example.com/keep"]}})
    world.reconciler.converge(stale)  # its resourceVersion is older than the object's: 409, read again, written
    assert finalizers(world, "prod") == ["example.com/keep", FINALIZER]
    assert ("/", "matches.prod") in world.broker.queues


def test_nothing_is_made_for_an_environment_deleted_before_its_first_converge(world: World) -> None:
    world.add("gone")
    world.add("going")
    gone, going = world.kube.environment("default", "gone"), world.kube.environment("default", "going")
    world.kube.delete_environment("default", "gone", gone["metadata"]["uid"])  # no finalizer: gone at once
    assert ("default", "gone") not in world.kube.environments
    world.kube.patch_environment("default", "going", {"metadata": {"finalizers": ["example.com/keep"]}})
    world.kube.delete_environment("default", "going", going["metadata"]["uid"])  # another finalizer holds it
    calls = world.broker.calls
    world.reconciler.converge(gone)
    world.reconciler.converge(going)
    assert world.broker.calls == calls
    assert finalizers(world, "going") == ["example.com/keep"]
    assert not [key for key in world.kube.secrets if key[1] in ("gone-broker", "going-broker")]


def test_an_object_that_keeps_changing_under_the_write_is_an_error_kopf_retries(world: World) -> None:
    world.add("prod")
    ctx = world.context("prod")
    patch = world.kube.patch_environment

    def raced(namespace: str, name: str, body: dict[str, Any]) -> None:
        world.kube.patch_environment = patch  # type: ignore[method-assign]
        patch(namespace, name, {"metadata": {"labels": {"touched": "yes"}}})  # someone else writes first
        world.kube.patch_environment = raced  # type: ignore[method-assign]
        patch(namespace, name, body)

    world.kube.patch_environment = raced  # type: ignore[method-assign]
    with pytest.raises(FinalizerConflict, match="default/prod changed under each of 3 writes"):
        hold_deletion(world.services, ctx)
    assert not finalizers(world, "prod")


def test_kopf_tears_down_only_environments_that_carry_the_finalizer() -> None:
    assert has_finalizer({"metadata": {"finalizers": ["example.com/keep", FINALIZER]}})
    assert not has_finalizer({"metadata": {"finalizers": ["example.com/keep"]}})
    assert not has_finalizer({"metadata": {}})
