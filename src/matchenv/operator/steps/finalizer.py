"""Step: the environment's finalizer (``matchenv.io/finalizer``) goes on before anything is made for it, so that its
deletion waits for the teardown.

The converge puts it on itself, as its first write, whichever path converges (a handler, a resync pass, a repair).
kopf added it only before calling its own handler, so a resync pass that met a new environment first (in a burst,
kopf's queue holds environments for seconds) made its queue, binding and broker user with nothing holding its
deletion: deleted then, it left them behind. kopf still runs the teardown and removes the finalizer once that
succeeded: its delete handler matches only environments that carry it (:func:`has_finalizer`), so kopf never adds it
and never takes it off one that has not been torn down. An environment deleted before its first converge was never
given anything: it goes at once, and the converge then finds it gone or going and makes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from matchenv.api import API_GROUP
from matchenv.operator.context import Context, Services

FINALIZER = f"{API_GROUP}/finalizer"
ATTEMPTS = 3  # writes raced by another writer of the object (409): read it again and retry this often


class FinalizerConflict(RuntimeError):
    """The finalizer could not be put on: the object kept changing under the write."""


def has_finalizer(body: Mapping[str, Any], **_: Any) -> bool:
    """Whether the environment carries the finalizer (kopf's ``when=`` filter of the delete handler)."""
    return FINALIZER in ((body.get("metadata") or {}).get("finalizers") or ())


def hold_deletion(s: Services, ctx: Context) -> bool:
    """Put the finalizer on the environment unless it is there; False when it is gone or being deleted (nothing may
    be made for it then). The write names the resourceVersion it read, so no other finalizer is written over."""
    env: Mapping[str, Any] = ctx.env
    for _ in range(ATTEMPTS):
        meta = env["metadata"]
        if has_finalizer(env):
            return True
        if meta.get("deletionTimestamp") or meta.get("uid") != ctx.uid:
            return False
        write: dict[str, Any] = {"finalizers": [*(meta.get("finalizers") or ()), FINALIZER]}
        if meta.get("resourceVersion"):
            write["resourceVersion"] = meta["resourceVersion"]
        try:
            s.kube.patch_environment(ctx.namespace, ctx.name, {"metadata": write})
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            if exc.status not in (409, 422):  # 422: deleted meanwhile (no finalizer may be added then)
                raise
        fresh = s.kube.get_environment(ctx.namespace, ctx.name)
        if fresh is None:
            return False
        env = fresh
    raise FinalizerConflict(f"{ctx.namespace}/{ctx.name} changed under each of {ATTEMPTS} writes of its finalizer")
