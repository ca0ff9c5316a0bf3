"""Step: the environment's status, built from what the other steps saw (:func:`matchenv.operator.status.build_status`)
and written only when it changed; a Warning event for each new refusal, and events when the phase pauses or
resumes."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from matchenv.api import MatchEnvironmentSpec, Phase
from matchenv.operator.backfills import BackfillOutcome
from matchenv.operator.context import Context, Services
from matchenv.operator.kube import Obj
from matchenv.operator.status import Observation, WorkersObservation, build_status, status_changed
from matchenv.operator.steps.topology import TopologyOutcome
from matchenv.topology.planner import Refusal

log = logging.getLogger("matchenv.operator")


def write_status(s: Services, ctx: Context, topology: TopologyOutcome, workers: WorkersObservation,
                 worker_problem: Refusal | None, autoscaling: dict[str, Any] | None = None,
                 backfill: BackfillOutcome | None = None, expires_at: str | None = None,
                 dead_letter_request: dict[str, Any] | None = None, catch_up: BackfillOutcome | None = None,
                 credentials: dict[str, Any] | None = None) -> Obj:
    """Build the status from what the steps saw, write it when it changed, and return it."""
    cap = s.length_cap(ctx)
    pause = ctx.pause.status
    if pause is not None and catch_up is not None and catch_up.status is not None:
        pause = {**pause, "catchUp": catch_up.status}
    seen = Observation(
        generation=ctx.meta.get("generation"), exchange=ctx.desired.binding_source, queue=ctx.names.queue,
        selector=ctx.names.selector, topology=topology.observation, workers=workers, problems=topology.problems,
        broker_error=topology.error, error_reason=topology.error_reason, refusal=topology.refusal,
        worker_problem=worker_problem, autoscaling=autoscaling, paused=ctx.spec.paused,
        subset_of=ctx.desired.exchange if ctx.desired.subset_exchange else None,
        routing_keys=tuple(ctx.spec.queue.routing_keys or ()),
        backfill=backfill.status if backfill else None,
        backfill_condition=(backfill.ok, backfill.reason, backfill.message) if backfill and backfill.status
        else None,
        length_cap=cap,
        placement=topology.placement,
        events_secret=topology.events_secret,
        events_problem=topology.events_problem,
        expires_at=expires_at,
        dead_letter_request=dead_letter_request,
        pause=pause,
        detached=ctx.pause.detached,
        credentials=credentials,
    )
    old = ctx.old_status
    status = build_status(seen, old)
    for refusal in (topology.refusal, worker_problem):
        if refusal is not None and refusal.message not in (old.get("lastError") or ""):
            s.event(ctx.env, refusal.reason, refusal.message, "Warning")
    if status_changed(status, old):
        s.kube.patch_environment_status(ctx.namespace, ctx.name, status)
        if status["phase"] != old.get("phase"):
            log.info("%s/%s phase %s -> %s", ctx.namespace, ctx.name, old.get("phase"), status["phase"])
            if status["phase"] == Phase.PAUSED.value:
                s.event(ctx.env, "Paused", f"workers stopped; queue {ctx.names.queue} unbound from the feed, what "
                        "it misses replayed from the archive on resume" if ctx.pause.detached else
                        f"workers stopped; messages wait in queue {ctx.names.queue}" + bound(ctx.spec, cap))
            elif old.get("phase") == Phase.PAUSED.value:
                s.event(ctx.env, "Resumed", f"workers started again on queue {ctx.names.queue}")
    return status


def bound(spec: MatchEnvironmentSpec, cap: int = 0) -> str:
    """How many messages the queue keeps while no worker reads it, and what then, in words."""
    limits = [n for n in (spec.queue.max_length, cap) if n]
    if not limits:
        return " (unbounded: set queue.maxLength to bound it)"
    overflow = spec.queue.overflow.value if spec.queue.overflow and spec.queue.max_length == min(limits) \
        else "drop-head"
    return f" (at most {min(limits)}, then {overflow})"


def invalid_spec_status(exc: ValidationError) -> Obj:
    """The status of an environment whose spec the model refuses: Degraded, naming the first field."""
    first = exc.errors()[0]
    return {"phase": Phase.DEGRADED.value, "lastError": f"invalid spec: {first['loc']}: {first['msg']}"}
