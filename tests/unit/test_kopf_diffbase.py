"""kopf's diff base kept for MatchEnvironments (their change handlers read it), none built for our Deployments."""

from __future__ import annotations

import copy
from typing import Any

import kopf

from matchenv.api import API_GROUP
from matchenv.operator.kopf_diffbase import EnvironmentDiffBase, is_environment

KEY = "last-handled-configuration"


def environment(replicas: int, annotations: dict[str, str] | None = None) -> kopf.Body:
    return kopf.Body({"apiVersion": f"{API_GROUP}/v1alpha1", "kind": "MatchEnvironment",
                      "metadata": {"name": "prod", "namespace": "default", "annotations": annotations or {}},
                      "spec": {"workers": {"replicas": replicas}}, "status": {"phase": "Ready"}})


def deployment(annotations: dict[str, str] | None = None) -> kopf.Body:
    return kopf.Body({"apiVersion": "apps/v1", "kind": "Deployment",
                      "metadata": {"name": "prod-workers", "namespace": "default", "annotations": annotations or {}},
                      "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "worker"}]}}},
                      "status": {"observedGeneration": 1}})


def stored(storage: EnvironmentDiffBase, body: kopf.Body) -> dict[str, str]:
    """The annotations kopf would write after handling ``body``."""
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence=storage.build(body=body))
    annotations: dict[str, Any] = dict(patch["metadata"]["annotations"])
    return annotations


def test_a_changed_environment_spec_is_still_seen() -> None:
    storage = EnvironmentDiffBase(prefix=API_GROUP, key=KEY)
    handled = stored(storage, environment(1))
    changed = environment(3, handled)
    old, new = storage.fetch(body=changed), storage.build(body=changed)
    assert old is not None
    assert old["spec"] == {"workers": {"replicas": 1}}
    assert new["spec"] == {"workers": {"replicas": 3}}
    # the same as kopf's own storage builds
    plain = kopf.AnnotationsDiffBaseStorage(prefix=API_GROUP, key=KEY)
    assert new == plain.build(body=changed)
    assert old == plain.fetch(body=changed)


def test_a_deployment_gets_no_diff_base_built_or_read() -> None:
    storage = EnvironmentDiffBase(prefix=API_GROUP, key=KEY)
    body = deployment()
    before = copy.deepcopy(dict(body))
    assert storage.build(body=body) == {}
    assert dict(body) == before
    # even one carrying the annotation (written by hand) is not read
    assert storage.fetch(body=deployment(stored(kopf.AnnotationsDiffBaseStorage(prefix=API_GROUP, key=KEY),
                                                deployment()))) is None


def test_only_matchenvironments_of_our_group_count() -> None:
    assert is_environment(environment(1))
    assert not is_environment(deployment())
    assert not is_environment(kopf.Body({"apiVersion": "example.com/v1", "kind": "MatchEnvironment"}))
    assert not is_environment(kopf.Body({"kind": "MatchEnvironment"}))
