"""The watch handlers of our Deployments and Jobs hand the reconciler the event's object as plain dicts."""

from __future__ import annotations

from typing import Any

import kopf

from matchenv.operator.handlers import backfill_changed, workers_changed


class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[str, Any, bool]] = []

    def workers_changed(self, deployment: Any, deleted: bool = False) -> None:
        self.got.append(("workers", deployment, deleted))

    def backfill_changed(self, job: Any, deleted: bool = False) -> None:
        self.got.append(("backfill", job, deleted))


def event(kind: str, kind_type: str) -> kopf.RawEvent:
    return {"type": kind_type,  # type: ignore[typeddict-item]
            "object": {"apiVersion": "apps/v1", "kind": kind,
                       "metadata": {"name": "prod-workers", "namespace": "default", "labels": {"a": "b"}},
                       "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "worker"}]}}},
                       "status": {"readyReplicas": 1}}}


def test_each_handler_passes_the_object_as_plain_dicts_and_says_whether_it_was_deleted() -> None:
    memo = kopf.Memo(reconciler=Recorder())
    for handler, kind in ((workers_changed, "Deployment"), (backfill_changed, "Job")):
        for kind_type in ("MODIFIED", "DELETED"):
            raw = event(kind, kind_type)
            handler(body=kopf.Body(raw["object"]), event=raw, memo=memo)
    got = memo.reconciler.got
    assert [(what, deleted) for what, _, deleted in got] == [
        ("workers", False), ("workers", True), ("backfill", False), ("backfill", True)]
    for _, obj, _ in got:
        # what the reconciler may keep: dicts and lists all the way down, nothing of kopf's views
        assert type(obj) is dict
        assert type(obj["metadata"]["labels"]) is dict
        assert type(obj["spec"]["template"]["spec"]["containers"]) is list
        assert obj["status"] == {"readyReplicas": 1}
