"""Step: an environment with ``spec.expireAfter`` is deleted once it expires, as `kubectl delete` would (its
finalizer's teardown then follows ``deletionPolicy``). Preview environments, one per pull request, end by themselves.

When: ``expireAfter`` after the creation, or (``expireFrom: LastChange``) after the first converge that saw the
spec's current generation; ``status.expiresAt`` says when. The resync pass converges every environment once an
interval, so it goes within one interval of that instant.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from matchenv.api import ExpireFrom, MatchEnvironmentSpec, duration_seconds
from matchenv.operator.context import Context, Services
from matchenv.operator.status import parse_rfc3339, rfc3339


def expires_at(spec: MatchEnvironmentSpec, meta: dict[str, Any], old_status: dict[str, Any],
               now: dt.datetime) -> dt.datetime | None:
    """When the environment expires; None without ``spec.expireAfter``."""
    if spec.expire_after is None:
        return None
    after = dt.timedelta(seconds=duration_seconds(spec.expire_after))
    if spec.expire_from is ExpireFrom.CREATION:
        return (parse_rfc3339(meta.get("creationTimestamp")) or now) + after
    # LastChange: kept while the generation that set it is the one observed, counted again from now on a change
    kept = parse_rfc3339(old_status.get("expiresAt"))
    if kept is not None and old_status.get("observedGeneration") == meta.get("generation"):
        return kept
    return now + after


def expire_if_due(s: Services, ctx: Context, now: dt.datetime) -> tuple[str | None, bool]:
    """``status.expiresAt`` (None without expiry) and whether the environment was deleted now, having expired."""
    when = expires_at(ctx.spec, ctx.meta, ctx.old_status, now)
    if when is None:
        return None, False
    if now < when:
        return rfc3339(when), False
    if s.kube.delete_environment(ctx.namespace, ctx.name, ctx.uid):
        since = "its creation" if ctx.spec.expire_from is ExpireFrom.CREATION else "its last change"
        s.event(ctx.env, "Expired", f"expireAfter {ctx.spec.expire_after} from {since} passed at {rfc3339(when)}: "
                f"deleted (deletionPolicy {ctx.spec.deletion_policy.value})")
    return rfc3339(when), True
