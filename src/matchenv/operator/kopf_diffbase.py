"""kopf's diff base (the last handled spec, kept in an annotation), built for MatchEnvironments alone.

kopf builds it at every event of every watched kind, a deep copy of the whole body less a few fields, to see
what changed since the last handled one. Only MatchEnvironments have change handlers (create, update, resume,
delete); the worker Deployments and backfill Jobs have event handlers alone, which never read it. During a burst
of new environments the Deployment controller sends several events per Deployment, and building their diff base
was ~5% of the operator's CPU: here those kinds get an empty one, as a kind with nothing stored there would.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import kopf

from matchenv.api import API_GROUP, KIND


def is_environment(body: kopf.Body) -> bool:
    """A MatchEnvironment's body (a watch event names its apiVersion and kind)."""
    api_version = str(body.get("apiVersion") or "")
    return api_version.split("/")[0] == API_GROUP and body.get("kind") == KIND


class EnvironmentDiffBase(kopf.AnnotationsDiffBaseStorage):
    """:class:`kopf.AnnotationsDiffBaseStorage` for MatchEnvironments; nothing built nor read for other kinds."""

    def build(self, *, body: kopf.Body,
              extra_fields: Iterable[kopf.FieldSpec] | None = None) -> kopf.BodyEssence:
        if not is_environment(body):
            return cast(kopf.BodyEssence, {})
        return super().build(body=body, extra_fields=extra_fields)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        if not is_environment(body):
            return None
        return super().fetch(body=body)
