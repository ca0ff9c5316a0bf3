"""Step: the environment's replay Jobs (see :mod:`matchenv.operator.backfills`), spec.backfill's and a pause's
catch-up (:mod:`matchenv.operator.pause`), each started once its queue is bound."""

from __future__ import annotations

from kubernetes.client.exceptions import ApiException

from matchenv.naming import archive_name
from matchenv.operator.backfills import BackfillOutcome
from matchenv.operator.context import Context, Services
from matchenv.operator.steps.topology import TopologyOutcome


def run_backfill(s: Services, ctx: Context, topology: TopologyOutcome) -> BackfillOutcome | None:
    """Start, follow or end the backfill the spec asks for; None when there is none and never was. An API server
    that refuses the Job is reported (``BackfillFailed``), not raised."""
    if ctx.spec.backfill is None and not ctx.old_status.get("backfill"):
        return None
    try:
        return s.backfills.converge(ctx.env, ctx.spec, ctx.names, ctx.owner_reference,
                                    archive_name(ctx.spec.exchange.name), _bound(topology),
                                    topology.backfill_published,
                                    topology.archive_problem, topology.backfill_problem)
    except ApiException as exc:
        message = f"cannot run the backfill Job: {exc.status} {exc.reason}"
        s.event(ctx.env, "BackfillFailed", message, "Warning")
        return BackfillOutcome(ctx.old_status.get("backfill"), False, "BackfillFailed", message)


def run_catch_up(s: Services, ctx: Context, topology: TopologyOutcome) -> BackfillOutcome | None:
    """Start, follow or keep the record of a pause's catch-up; None when there is none on record."""
    plan = ctx.pause
    last = (plan.status or {}).get("catchUp")
    if plan.catch_up is None:
        return None if not last else BackfillOutcome(last, True, "Completed", str(last.get("message") or ""))
    # the replay exchange's count is this catch-up's only while no spec.backfill shares it
    delivered = topology.backfill_published if ctx.spec.backfill is None else None
    try:
        return s.backfills.catch_up(ctx.env, ctx.spec, ctx.names, ctx.owner_reference,
                                    archive_name(ctx.spec.exchange.name), plan.catch_up, _bound(topology),
                                    plan.detached, delivered, topology.archive_problem, topology.backfill_problem)
    except ApiException as exc:
        message = f"cannot run the catch-up Job: {exc.status} {exc.reason}"
        s.event(ctx.env, "CatchUpFailed", message, "Warning")
        return BackfillOutcome(plan.catch_up, False, "BackfillFailed", message)


def _bound(topology: TopologyOutcome) -> bool:
    """Whether the queue is bound as its spec asks and the broker holds nothing in the way: a replay may start."""
    return topology.observation is not None and topology.observation.bound and not topology.problems
