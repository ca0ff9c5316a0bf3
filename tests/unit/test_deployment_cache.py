"""The resync pass takes the worker Deployments from what the watch reported, and lists them itself only every
few passes: the list is the safety net for what a watch that was away never reports (a deletion)."""

from __future__ import annotations

import copy
from typing import Any

from matchenv.operator.deployment_cache import RELIST_EVERY, DeploymentCache
from tests.unit.world import World


def deployment(name: str, replicas: int = 1, version: str = "1") -> dict[str, Any]:
    return {"metadata": {"namespace": "default", "name": name, "resourceVersion": version,
                         "managedFields": [{"manager": "matchenv-operator"}]},
            "spec": {"replicas": replicas}}


def test_the_view_is_whole_only_after_a_list_and_is_listed_again_every_few_passes() -> None:
    cache = DeploymentCache(relist_every=3)
    cache.seen(deployment("a"))
    assert cache.view()[0] is None  # not listed since the start: a Deployment may exist that no event named yet
    assert cache.view()[0] is None  # ... until a list is done
    cache.listed([deployment("a"), deployment("b")], cache.view()[1])
    views = [cache.view()[0] for _ in range(3)]
    assert [sorted(v) if v is not None else None for v in views] == [
        [("default", "a"), ("default", "b")], [("default", "a"), ("default", "b")], None]
    assert "managedFields" not in views[0][("default", "a")]["metadata"]  # type: ignore[index]


def test_what_the_watch_reported_during_a_list_wins_and_a_deletion_it_missed_is_seen_by_the_list() -> None:
    cache = DeploymentCache(relist_every=2)
    cache.listed([deployment("kept"), deployment("missed"), deployment("deleted")], 0)
    _, mark = cache.view()
    # the list begins at ``mark``; meanwhile the watch reports a change and a deletion
    cache.seen(deployment("kept", replicas=3, version="2"))
    cache.seen(deployment("deleted"), deleted=True)
    listed_then = [deployment("kept"), deployment("deleted"), deployment("new")]  # "missed" went during a gap
    assert cache.view()[0] is None
    cache.listed(listed_then, mark)
    view, _ = cache.view()
    assert view is not None
    assert sorted(name for _, name in view) == ["kept", "new"]
    assert view[("default", "kept")]["spec"]["replicas"] == 3  # the watch's newer report, not the older list


def test_passes_between_lists_read_no_deployment_list_and_a_deleted_one_the_watch_missed_comes_back(
        world: World) -> None:
    world.add("dev")
    world.converge("dev")
    listed: list[int] = []
    real = world.kube.list_deployments

    def counting(label_selector: str, namespace: str | None = None) -> list[dict[str, Any]]:
        listed.append(1)
        return real(label_selector, namespace)

    world.kube.list_deployments = counting  # type: ignore[method-assign]
    world.reconciler.resync_all()  # the first pass lists
    # the watch reports the Deployment as the operator made it
    world.reconciler.deployments.seen(copy.deepcopy(world.kube.deployments[("default", "dev-workers")]))
    del world.kube.deployments[("default", "dev-workers")]  # deleted while the watch was away: never reported
    for _ in range(RELIST_EVERY - 1):
        world.reconciler.resync_all()
    assert len(listed) == 1  # six passes, one list
    assert ("default", "dev-workers") not in world.kube.deployments  # the view still says it is there
    world.reconciler.resync_all()  # the next one lists: the safety net
    assert len(listed) == 2
    assert ("default", "dev-workers") in world.kube.deployments
