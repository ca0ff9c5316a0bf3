"""kopf's diff base (the last handled essence of an object), kept in the operator's memory, for MatchEnvironments alone.

kopf compares each event's essence (spec, labels, annotations) with the last one handled to tell a creation, an
update or nothing. Its own storages write that essence into the object: an annotation patch after every handled
creation or update, a write the API server validates against the whole CRD (about as costly as the status write)
and one more watch event for every watcher of MatchEnvironments. Nothing needs it to outlive the process: the
operator acts only while it leads, and a new leader converges every environment when it starts, whatever changed
meanwhile (with no diff base kopf calls that a creation: the same converge its resume would have run). So it is
kept here, keyed by uid, and forgotten when the watch reports the environment deleted.

Only MatchEnvironments have change handlers (create, update, resume, delete); the worker Deployments and backfill
Jobs have event handlers alone, which never read it: they get an empty one, nothing built (their events during a
burst made building it ~5% of the operator's CPU).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import cast

import kopf

from matchenv.api import API_GROUP, KIND

# what kopf's annotation storage wrote on environments before: removed as each is first handled (the first start)
LEGACY_ANNOTATIONS = (f"{API_GROUP}/last-handled-configuration", f"{API_GROUP}/kopf-managed")


def is_environment(body: kopf.Body) -> bool:
    """A MatchEnvironment's body (a watch event names its apiVersion and kind)."""
    api_version = str(body.get("apiVersion") or "")
    return api_version.split("/")[0] == API_GROUP and body.get("kind") == KIND


class EnvironmentDiffBase(kopf.DiffBaseStorage):
    """The last handled essence of each MatchEnvironment, in memory (as compact JSON, ~1 KB each); nothing built nor
    read for other kinds. The operator's own annotations (``matchenv.io/...``: hands off, its controls) are not part
    of the essence, as with kopf's storage once it has marked the prefix: they have handlers of their own."""

    def __init__(self) -> None:
        super().__init__()
        self._handled: dict[str, str] = {}  # uid → essence

    def build(self, *, body: kopf.Body,
              extra_fields: Iterable[kopf.FieldSpec] | None = None) -> kopf.BodyEssence:
        if not is_environment(body):
            return cast(kopf.BodyEssence, {})
        essence = super().build(body=body, extra_fields=extra_fields)
        annotations = essence.get("metadata", {}).get("annotations") or {}
        for key in [k for k in annotations if k.startswith(f"{API_GROUP}/")]:
            del annotations[key]
        self.remove_empty_stanzas(essence)
        return essence

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        encoded = self._handled.get(body.metadata.uid or "") if is_environment(body) else None
        return None if encoded is None else cast(kopf.BodyEssence, json.loads(encoded))

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        if not is_environment(body) or not body.metadata.uid:
            return
        if body.metadata.deletion_timestamp:  # deleting: every event is its deletion, no diff needed again
            self._handled.pop(body.metadata.uid, None)
            return
        self._handled[body.metadata.uid] = json.dumps(essence, separators=(",", ":"))
        for key in LEGACY_ANNOTATIONS:
            if key in body.metadata.annotations:
                patch.metadata.annotations[key] = None

    def forget(self, uid: str) -> None:
        """The environment is gone: nothing of it is kept."""
        self._handled.pop(uid, None)

    def __len__(self) -> int:
        return len(self._handled)
