"""Step: the worker count from the queue's backlog, written to ``spec.workers.replicas`` (so ``kubectl get``
shows it) with the annotation that records the autoscaler set it; returns ``status.autoscaling``."""

from __future__ import annotations

from typing import Any

from matchenv.naming import AUTOSCALED_ANNOTATION
from matchenv.operator.backlog import Watch
from matchenv.operator.context import Context, Services
from matchenv.operator.status import now_rfc3339
from matchenv.topology.planner import QueueObservation


def autoscale(s: Services, ctx: Context, seen: QueueObservation | None, probe_url: str | None = None
              ) -> dict[str, Any] | None:
    """Set ``spec.workers.replicas`` from the backlog; return ``status.autoscaling``. Unknown counts hold the
    current size: never scale on a guess. Paused, or turned off, it forgets what it learnt. The backlog is the
    statistics' ready + unacknowledged, or the backlog probe's fresher ready count when that is larger (it only ever
    scales up sooner); with ``probe_url``, the probe watches the queue for a backlog that needs more workers."""
    spec = ctx.spec
    if not spec.autoscaling.enabled or spec.paused:
        _unwatch(s, ctx)
    if not spec.autoscaling.enabled:
        s.autoscaler.forget(ctx.uid)
        if AUTOSCALED_ANNOTATION in ctx.annotations:  # re-enabled later, a hand-set count is not an override
            s.kube.patch_environment(ctx.namespace, ctx.name,
                                     {"metadata": {"annotations": {AUTOSCALED_ANNOTATION: None}}})
        return None
    old: dict[str, Any] = ctx.old_status.get("autoscaling") or {}
    if spec.paused:  # the pause decides (0 workers); the autoscaler starts afresh on resume
        s.autoscaler.forget(ctx.uid)
        return {**old, "message": "paused (spec.paused): no workers run whatever the backlog"}
    asked = spec.workers.replicas
    recorded = _count(ctx.annotations.get(AUTOSCALED_ANNOTATION))
    counts = [n for n in (seen.messages if seen is not None else None,
                          s.backlog.ready(ctx.uid) if s.backlog is not None else None) if n is not None]
    if not counts:  # a new queue's statistics come after their first interval: the probe may know sooner
        _watch(s, ctx, probe_url, asked if recorded is None else recorded)
        return old or None
    backlog = max(counts)
    decision = s.autoscaler.review(ctx.uid, spec.autoscaling, backlog, asked, recorded, s.clock(),
                                   old.get("message"))
    wanted = decision.replicas
    _watch(s, ctx, probe_url, wanted)
    if wanted != asked or recorded != wanted:
        s.kube.patch_environment(ctx.namespace, ctx.name, {
            "metadata": {"annotations": {AUTOSCALED_ANNOTATION: str(wanted)}},
            "spec": {"workers": {"replicas": wanted}},
        })
        spec.workers.replicas = wanted  # the workers step builds the Deployment from it
    status = {"backlog": backlog, "replicas": wanted, "lastScaleTime": old.get("lastScaleTime"),
              "message": decision.message}
    if decision.overridden is not None:
        s.event(ctx.env, "ManualScaleReverted", decision.message, "Warning")
    elif decision.scaled_from is not None:
        s.event(ctx.env, "Scaled", decision.message)
    if wanted != asked:
        status["lastScaleTime"] = now_rfc3339()
    return status


def _watch(s: Services, ctx: Context, probe_url: str | None, replicas: int) -> None:
    """The probe wakes the environment when more ready messages wait than ``replicas`` workers take (at the
    maximum: never, there is nothing more to give)."""
    if s.backlog is None or probe_url is None:
        return
    scaling = ctx.spec.autoscaling
    wake_above = replicas * scaling.messages_per_replica if replicas < scaling.max_replicas else None
    s.backlog.watch(ctx.uid, Watch(ctx.namespace, ctx.name, probe_url, ctx.desired.queue.name, wake_above))


def _unwatch(s: Services, ctx: Context) -> None:
    if s.backlog is not None:
        s.backlog.forget(ctx.uid)


def _count(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
