"""Step: the environment's backfill Job (see :mod:`matchenv.operator.backfills`), started once its queue is bound."""

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
    bound = topology.observation is not None and topology.observation.bound and not topology.problems
    try:
        return s.backfills.converge(ctx.env, ctx.spec, ctx.names, ctx.owner_reference,
                                    archive_name(ctx.spec.exchange.name), bound, topology.backfill_published,
                                    topology.archive_problem, topology.backfill_problem)
    except ApiException as exc:
        message = f"cannot run the backfill Job: {exc.status} {exc.reason}"
        s.event(ctx.env, "BackfillFailed", message, "Warning")
        return BackfillOutcome(ctx.old_status.get("backfill"), False, "BackfillFailed", message)
