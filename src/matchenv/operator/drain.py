"""What a deletion does with the messages still in the queue.

``deletionPolicy: Drain`` unbinds the queue and lets the workers empty it before it is deleted (a paused
environment's workers are started for it): the deletion waits
(condition Drained False: ``Draining``, or ``NoConsumers`` when no worker reads it) until the broker's statistics
show it empty — the delete then asks the broker to refuse a queue that is not (``if-empty``), exact where the
statistics lag — or until ``drain.timeout`` has passed since the deletion was asked for; then ``drain.onTimeout``
says whether the queue is kept or deleted. ``deletionGuard.maxMessages`` keeps any deletion from dropping more
than that many messages unless ``matchenv.io/drop-messages`` is ``"true"``.
"""

from __future__ import annotations

import datetime as dt

from matchenv.api import API_GROUP, AfterDrain, DeletionPolicy, duration_seconds
from matchenv.operator.context import Context, Services
from matchenv.operator.errors import TeardownIncomplete
from matchenv.operator.status import condition_of, parse_rfc3339, rfc3339, set_condition
from matchenv.operator.tenancy import owned_by
from matchenv.topology.planner import observe
from matchenv.topology.snapshot import BrokerSnapshot

DROP_ANNOTATION = f"{API_GROUP}/drop-messages"
CONDITION = "Drained"
POLL_SECONDS = 5.0  # how often a draining deletion looks again (the broker's statistics interval)


def _wait(s: Services, ctx: Context, reason: str, message: str, delay: float | None = None) -> TeardownIncomplete:
    """Say why the deletion waits (the Drained condition and lastError), and the exception that makes it wait."""
    status = {"conditions": set_condition(ctx.old_status, CONDITION, False, reason, message), "lastError": message}
    if any(ctx.old_status.get(k) != v for k, v in status.items()):
        s.kube.patch_environment_status(ctx.namespace, ctx.name, status)
    return TeardownIncomplete(message, delay=delay)


def queue_fate(s: Services, ctx: Context, snapshot: BrokerSnapshot, now: dt.datetime) -> tuple[bool, bool]:
    """(delete the queue, only if the broker finds it empty) for this deletion. Raises
    :class:`TeardownIncomplete` while a Drain deletion waits for the workers."""
    policy = ctx.spec.deletion_policy
    if policy is not DeletionPolicy.DRAIN:
        return policy is DeletionPolicy.DELETE, False
    seen = observe(ctx.desired, snapshot)
    if not seen.exists:
        return True, True
    left = seen.messages
    if left == 0:
        return True, True
    began = parse_rfc3339(ctx.meta.get("deletionTimestamp")) or now
    deadline = began + dt.timedelta(seconds=duration_seconds(ctx.spec.drain.timeout))
    then = ctx.spec.drain.on_timeout.value
    if now < deadline:
        count = "an unknown number of" if left is None else str(left)
        _run_workers(s, ctx, left)
        if seen.consumers:
            reason, how = "Draining", f"{seen.consumers} consumer(s) reading it"
        else:
            reason, how = "NoConsumers", "no worker reads it (spec.paused, 0 replicas, or workers that cannot start)"
        raise _wait(s, ctx, reason, f"draining: {count} messages left in queue {ctx.names.queue}, {how}; the "
                    f"deletion waits until it is empty or until {rfc3339(deadline)} (drain.timeout "
                    f"{ctx.spec.drain.timeout}), then the queue is handled as drain.onTimeout says ({then})",
                    delay=POLL_SECONDS)
    message = (f"{left} messages still in queue {ctx.names.queue} after drain.timeout {ctx.spec.drain.timeout}: the "
               f"queue is handled as drain.onTimeout says ({then})")
    # once, however often the rest of the deletion is retried
    if condition_of(ctx.old_status, CONDITION).get("reason") != "TimedOut":
        s.event(ctx.env, "DrainTimedOut", message, "Warning")
        s.kube.patch_environment_status(ctx.namespace, ctx.name, {
            "conditions": set_condition(ctx.old_status, CONDITION, False, "TimedOut", message)})
    return ctx.spec.drain.on_timeout is AfterDrain.DELETE, False


def _run_workers(s: Services, ctx: Context, left: int | None) -> None:
    """Draining needs workers: a Deployment at 0 replicas (a paused environment, an autoscaler at its minimum) is
    scaled to spec.workers.replicas (at least 1) for the rest of the deletion."""
    live = s.kube.get_deployment(ctx.namespace, ctx.names.deployment)
    if live is None or not owned_by(live, ctx.uid) or live["metadata"].get("deletionTimestamp") or \
            (live.get("spec") or {}).get("replicas"):
        return
    replicas = max(1, ctx.spec.workers.replicas)
    s.kube.scale_deployment(ctx.namespace, ctx.names.deployment, replicas)
    s.event(ctx.env, "Draining", f"started {replicas} worker(s) (Deployment {ctx.names.deployment}) to empty queue "
            f"{ctx.names.queue} ({'an unknown number of' if left is None else left} messages) before it is deleted")


def guard(s: Services, ctx: Context, snapshot: BrokerSnapshot) -> None:
    """Raise :class:`TeardownIncomplete` when deleting the queue would drop more messages than
    ``deletionGuard.maxMessages`` (or an unknown number of them), unless the annotation allows it."""
    limit = ctx.spec.deletion_guard.max_messages
    if limit is None or ctx.annotations.get(DROP_ANNOTATION) == "true":
        return
    seen = observe(ctx.desired, snapshot)
    if not seen.exists or (seen.messages is not None and seen.messages <= limit):
        return
    count = "an unknown number of" if seen.messages is None else str(seen.messages)
    raise _wait(s, ctx, "TooManyToDrop", f"deleting queue {ctx.names.queue} would drop {count} messages, more than "
                f"deletionGuard.maxMessages ({limit}): the deletion waits. `kubectl annotate menv {ctx.name} "
                f"{DROP_ANNOTATION}=true` lets it drop them; deletionPolicy Retain keeps the queue")
