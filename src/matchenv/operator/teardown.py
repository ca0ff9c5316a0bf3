"""Tear one environment down in the order that loses nothing: unbind, (``Drain``: let the workers empty the queue,
:mod:`matchenv.operator.drain`), stop the workers (their in-flight messages finish), then drop the user, the Secret
and (per ``deletionPolicy`` and ``deletionGuard``) the queue. Only what the environment owns is
touched. A broker or Secret that is gone for good lets the deletion end only when the user says so
(``matchenv.io/abandon-broker``)."""

from __future__ import annotations

import datetime as dt

from matchenv.api import API_GROUP, DeletionPolicy, Phase
from matchenv.connection import BrokerConfigError, SecretDecodeError
from matchenv.operator.context import Context, Services
from matchenv.operator.drain import guard, queue_fate
from matchenv.operator.errors import TeardownIncomplete, error_reason
from matchenv.operator.steps.archive import release_archive
from matchenv.operator.steps.workers import stop_workers
from matchenv.operator.tenancy import bounds_refusal, owned_by, tenant_broker_refusal
from matchenv.topology.client import BrokerError
from matchenv.topology.planner import Plan, plan_detach, plan_remove

# on the MatchEnvironment: "true" lets a deletion end without cleaning the broker, when the broker or its
# connection Secret is gone for good (a namespace being deleted with the Secret in it, a decommissioned broker)
ABANDON_ANNOTATION = f"{API_GROUP}/abandon-broker"


def teardown(s: Services, ctx: Context, stop_wait: float) -> list[str]:
    """Unbind; stop the workers and wait for them; then drop the user and the Secret, and the queue only under
    ``deletionPolicy: Delete``. Nothing of a queue outside the operator's bounds or owned by another is touched.
    Raises :class:`TeardownIncomplete` while a step has to wait (the phase then reads Deleting); calling again
    resumes where it stopped. Returns what was done, also said in one Event (``BrokerChanged`` before a wait,
    ``TornDown`` at the end: an Event per step made four for each environment, and a namespace of 650 deleted at
    once overflowed the operator's Event backlog)."""
    done: list[str] = []
    try:
        _teardown(s, ctx, stop_wait, done)
    except TeardownIncomplete:
        if done:
            s.event(ctx.env, "BrokerChanged", "; ".join(done))
        # only a deletion that waits is seen in between: one that ends at once needs no status write
        if ctx.old_status.get("phase") != Phase.DELETING.value:
            s.kube.patch_environment_status(ctx.namespace, ctx.name, {"phase": Phase.DELETING.value})
        raise
    s.event(ctx.env, "TornDown", "; ".join(done) or "nothing to remove")
    return done


def _teardown(s: Services, ctx: Context, stop_wait: float, done: list[str]) -> None:
    names = ctx.names
    kept = True
    out_of_bounds = bounds_refusal(ctx.desired, s.settings) if ctx.own_broker else None
    remove: Plan | None
    try:
        conn = s.connection_for(ctx.env, ctx.spec)
        forbidden = None if ctx.own_broker else tenant_broker_refusal(conn.management_url, conn.url, s.settings)
        if forbidden is not None:  # never a call to a broker the administrator does not allow
            raise BrokerConfigError(forbidden.message)
        client = s.clients.get(conn)
        snapshot = client.snapshot(ctx.desired.scope())
        if out_of_bounds is None:
            done += s.apply(ctx, client, plan_detach(ctx.desired, snapshot).actions, announce=False)
        if ctx.spec.backfill is not None or ctx.old_status.get("backfill"):
            done += s.backfills.stop(ctx.env, names)
        # out of bounds: its own user at most (delete_queue=False leaves every queue alone); Drain waits here
        delete_queue, if_empty = (False, False) if out_of_bounds is not None else \
            queue_fate(s, ctx, snapshot, dt.datetime.now(dt.UTC))
        if stop_workers(s, ctx, stop_wait):  # its workers ran until now: read what they left
            snapshot = client.snapshot(ctx.desired.scope())
        if delete_queue and not if_empty:
            guard(s, ctx, snapshot)
        remove = plan_remove(ctx.desired, snapshot, delete_queue=delete_queue, if_empty=if_empty)
        kept = not delete_queue
        done += s.apply(ctx, client, remove.actions, announce=False)
        done += release_archive(s, ctx, conn, client)
    except (BrokerError, BrokerConfigError, SecretDecodeError) as exc:
        if ctx.annotations.get(ABANDON_ANNOTATION) != "true":
            message = (f"cannot remove the broker topology yet: {exc}; the deletion waits for it. If the broker or "
                       f"its connection Secret is gone for good, `kubectl annotate menv {ctx.name} "
                       f"{ABANDON_ANNOTATION}=true` lets it end without cleaning the broker")
            s.event(ctx.env, error_reason(exc), message, "Warning")
            s.kube.patch_environment_status(ctx.namespace, ctx.name, {"lastError": message})
            raise TeardownIncomplete(message) from exc
        stop_workers(s, ctx, stop_wait)
        s.event(ctx.env, "BrokerAbandoned", f"deleted without cleaning the broker ({ABANDON_ANNOTATION}): {exc}. "
                f"Left on it, in vhost {ctx.desired.vhost}: queue {names.queue} with its messages and binding, "
                f"{names.dead_letter_queue}, {names.dead_letter_exchange}, policy {names.policy}, user "
                f"{names.broker_user}", "Warning")
        remove = None
    refusal = out_of_bounds or (remove.refusal if remove is not None else None)
    if refusal is not None:
        s.event(ctx.env, "QueueLeftAlone", f"{refusal.message}: left untouched")
    elif remove is not None and kept:
        done.append(f"kept queue {names.queue} and its messages (deletionPolicy {ctx.spec.deletion_policy.value}"
                    + (", drain.onTimeout Retain)" if ctx.spec.deletion_policy is DeletionPolicy.DRAIN else ")"))
    secret = s.kube.get_secret(ctx.namespace, names.broker_secret)
    if owned_by(secret, ctx.uid) and secret is not None and \
            s.kube.delete_secret(ctx.namespace, names.broker_secret, secret["metadata"]["uid"]):
        done.append(f"deleted Secret {names.broker_secret}")
    s.autoscaler.forget(ctx.uid)
    if s.backlog is not None:
        s.backlog.forget(ctx.uid)
