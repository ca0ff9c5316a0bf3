"""kopf's diff base kept in memory for MatchEnvironments (their change handlers read it): the same causes as kopf's own
storage, nothing written to the object, none built for our Deployments."""

from __future__ import annotations

import copy
from typing import Any

import kopf

from matchenv.api import API_GROUP
from matchenv.operator.handlers import configure
from matchenv.operator.handsoff import RECONCILE_ANNOTATION
from matchenv.operator.kopf_diffbase import LEGACY_ANNOTATIONS, EnvironmentDiffBase, is_environment
from matchenv.operator.settings import OperatorSettings

KEY = "last-handled-configuration"


def environment(replicas: int, annotations: dict[str, str] | None = None, uid: str = "u1") -> kopf.Body:
    return kopf.Body({"apiVersion": f"{API_GROUP}/v1alpha1", "kind": "MatchEnvironment",
                      "metadata": {"name": "prod", "namespace": "default", "uid": uid,
                                   "annotations": annotations or {}},
                      "spec": {"workers": {"replicas": replicas}}, "status": {"phase": "Ready"}})


def deployment(annotations: dict[str, str] | None = None) -> kopf.Body:
    return kopf.Body({"apiVersion": "apps/v1", "kind": "Deployment",
                      "metadata": {"name": "prod-workers", "namespace": "default", "annotations": annotations or {}},
                      "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "worker"}]}}},
                      "status": {"observedGeneration": 1}})


def handled(storage: EnvironmentDiffBase, body: kopf.Body) -> dict[str, Any]:
    """What kopf would write to the object after handling ``body`` (its patch)."""
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence=storage.build(body=body))
    return dict(patch)


def test_a_changed_environment_spec_is_seen_and_nothing_is_written_for_it() -> None:
    storage = EnvironmentDiffBase()
    assert handled(storage, environment(1)) == {}  # no annotation patch after a handled change
    changed = environment(3)
    old, new = storage.fetch(body=changed), storage.build(body=changed)
    assert old is not None
    assert old["spec"] == {"workers": {"replicas": 1}}
    assert new["spec"] == {"workers": {"replicas": 3}}
    # the same essence as kopf's own storage builds, so the same causes
    assert new == kopf.AnnotationsDiffBaseStorage(prefix=API_GROUP, key=KEY).build(body=changed)
    assert storage.fetch(body=environment(3, uid="another")) is None  # another object: a creation


def test_the_operators_own_annotations_are_not_changes() -> None:
    storage = EnvironmentDiffBase()
    handled(storage, environment(1, {"team": "a"}))
    held = environment(1, {"team": "a", RECONCILE_ANNOTATION: "false"})
    assert storage.fetch(body=held) == storage.build(body=held)  # hands off has its own handler
    relabelled = environment(1, {"team": "b"})
    assert storage.fetch(body=relabelled) != storage.build(body=relabelled)


def test_the_annotations_of_earlier_versions_are_removed_and_not_read() -> None:
    old = kopf.AnnotationsDiffBaseStorage(prefix=API_GROUP, key=KEY)
    patch = kopf.Patch()
    old.store(body=environment(1), patch=patch, essence=old.build(body=environment(1)))
    written = dict(patch["metadata"]["annotations"])
    assert set(written) == set(LEGACY_ANNOTATIONS)
    storage = EnvironmentDiffBase()  # a new process: nothing handled yet, whatever the object carries
    body = environment(1, written)
    assert storage.fetch(body=body) is None
    assert handled(storage, body) == {"metadata": {"annotations": dict.fromkeys(LEGACY_ANNOTATIONS)}}
    assert storage.fetch(body=body) == storage.build(body=body)


def test_a_deleted_environment_is_forgotten() -> None:
    storage = EnvironmentDiffBase()
    handled(storage, environment(1))
    handled(storage, environment(1, uid="u2"))
    assert len(storage) == 2
    storage.forget("u1")
    assert len(storage) == 1
    deleting = dict(environment(2, uid="u2"))
    deleting["metadata"] = {**deleting["metadata"], "deletionTimestamp": "2026-12-06T12:00:00Z"}
    handled(storage, kopf.Body(deleting))
    assert len(storage) == 0


def test_a_deployment_gets_no_diff_base_built_or_read() -> None:
    storage = EnvironmentDiffBase()
    body = deployment()
    before = copy.deepcopy(dict(body))
    assert storage.build(body=body) == {}
    assert dict(body) == before
    assert handled(storage, body) == {}
    assert storage.fetch(body=body) is None
    assert len(storage) == 0


def test_only_matchenvironments_of_our_group_count() -> None:
    assert is_environment(environment(1))
    assert not is_environment(deployment())
    assert not is_environment(kopf.Body({"apiVersion": "example.com/v1", "kind": "MatchEnvironment"}))
    assert not is_environment(kopf.Body({"kind": "MatchEnvironment"}))


def test_a_handler_that_succeeds_at_once_writes_nothing_to_the_environment() -> None:
    """As the operator configures kopf: its progress record of a handler that succeeded at once is purged in the same
    patch, and no marker annotation is added (each had been one more write of every new environment)."""
    settings, memo = kopf.OperatorSettings(), kopf.Memo(settings=OperatorSettings(cluster_id="c1"))
    configure(settings, memo)
    body, patch = environment(1), kopf.Patch()
    progress = settings.persistence.progress_storage
    progress.store(key=kopf.HandlerId("converge"), record={"started": "2026-12-06T12:00:00", "success": True},
                   body=body, patch=patch)
    progress.purge(key=kopf.HandlerId("converge"), body=body, patch=patch)
    settings.persistence.diffbase_storage.store(body=body, patch=patch, essence=memo.diffbase.build(body=body))
    assert dict(patch) == {}  # no patch: no write
    assert memo.diffbase.fetch(body=body) is not None
