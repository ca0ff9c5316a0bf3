"""Step: the environment's place on the broker. Bounds and ownership first, then the worker's credentials, the
broker objects (queue, binding, dead letters, policy, users), a release of the previous place when it moved, the
administrator's length cap and the archive."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from matchenv.api import DeletionPolicy
from matchenv.connection import (
    BrokerConfigError,
    BrokerConnection,
    SecretDecodeError,
    decode_secret_data,
    worker_amqp_url,
)
from matchenv.contracts import WORKER_SECRET_PASSWORD, WORKER_SECRET_USERNAME
from matchenv.naming import LEGACY_LENGTH_CAP_POLICY, length_cap_policy_name
from matchenv.operator import builders
from matchenv.operator.context import Context, Services
from matchenv.operator.errors import broker_error_message, describe, error_reason
from matchenv.operator.extra_users import SecretNotOwned, extra_user_password
from matchenv.operator.steps.archive import ensure_archive
from matchenv.operator.steps.credentials import (
    credentials_status,
    ensure_credentials,
    holds_password,
    team_password,
)
from matchenv.operator.tenancy import bounds_refusal, not_owned, owned_by, tenant_broker_refusal
from matchenv.topology.client import BrokerError
from matchenv.topology.desired import desired_topology
from matchenv.topology.planner import (
    QueueObservation,
    Refusal,
    check_ownership,
    observe,
    plan_converge,
    plan_length_cap,
    plan_release,
    plan_revoke,
    previous_user,
)

log = logging.getLogger("matchenv.operator")


@dataclass
class TopologyOutcome:
    """What the broker steps did and saw."""

    observation: QueueObservation | None = None
    problems: tuple[str, ...] = ()
    refusal: Refusal | None = None
    error: str | None = None
    error_reason: str | None = None
    secret_data: dict[str, str] = field(default_factory=dict)  # the broker Secret as it stands after the step
    archive_problem: str | None = None  # why a backfill cannot read the archive
    backfill_published: int | None = None  # messages the backfill exchange took so far (its statistics)
    backfill_problem: str | None = None  # why the backfill cannot have its credentials
    placement: dict[str, str] | None = None  # status.placement to write; None: keep the one in status
    events_secret: str | None = None  # status.eventsSecret to write ("": none); None: keep the one in status
    events_problem: str | None = None  # why Flower's user cannot have its Secret
    probe_url: str | None = None  # the admin's AMQP URL of the queue's vhost, for the backlog probe
    previous_user: str | None = None  # a rotation's previous worker user, while it exists
    credentials: dict[str, Any] | None = None  # status.credentials; None: as it was

    @property
    def refused(self) -> bool:
        return self.refusal is not None


def converge_topology(s: Services, ctx: Context) -> TopologyOutcome:
    """Bounds, ownership, the worker's credentials and the broker objects, in that order. A broker or Secret
    failure is reported in the outcome (and once as a Warning event), never raised."""
    outcome = TopologyOutcome()
    if ctx.own_broker:
        outcome.refusal = bounds_refusal(ctx.desired, s.settings)
        if outcome.refusal:
            return outcome
    secret = s.secret(ctx.namespace, ctx.names.broker_secret, ctx.prefetched)
    if ctx.prefetched is not None and not holds_password(secret, ctx.uid):
        # read-your-writes: the pass's list may predate the Secret a handler wrote; never mint from it
        secret = s.secret(ctx.namespace, ctx.names.broker_secret, ctx.prefetched, fresh=True)
    if secret is not None and not owned_by(secret, ctx.uid):
        outcome.refusal = Refusal("SecretNotOwned", not_owned("Secret", ctx.namespace, ctx.names.broker_secret))
        return outcome
    given, problem = team_password(s, ctx)
    if problem is not None:
        outcome.refusal = Refusal("PasswordSecretInvalid", problem)
        return outcome
    try:
        outcome.secret_data = decode_secret_data((secret or {}).get("data"))
        conn = s.connection_for(ctx.env, ctx.spec, ctx.prefetched)
        if not ctx.own_broker:  # checked before any call to what a tenant's Secret names
            outcome.refusal = tenant_broker_refusal(conn.management_url, conn.url, s.settings)
            if outcome.refusal:
                return outcome
        _converge_broker(s, ctx, conn, secret, outcome, given)
    except (BrokerError, BrokerConfigError, SecretDecodeError) as exc:
        outcome.error = broker_error_message(exc, "/".join(s.broker_ref(ctx.env, ctx.spec)))
        outcome.error_reason = error_reason(exc)
        if ctx.old_status.get("lastError") != outcome.error:
            s.event(ctx.env, outcome.error_reason, outcome.error, "Warning")
    return outcome


def _converge_broker(s: Services, ctx: Context, conn: BrokerConnection, secret: Any,
                     outcome: TopologyOutcome, given: str | None = None) -> None:
    client = s.clients.get(conn)
    snapshot = s.snapshot(conn, client, ctx.prefetched, ctx.desired.scope())
    outcome.refusal = check_ownership(ctx.desired, snapshot)
    if outcome.refusal is not None:
        s.apply(ctx, client, plan_revoke(ctx.desired, snapshot))  # no access to what is not ours
        return
    names = ctx.names
    other = names.other_worker_user(names.worker_user_named(outcome.secret_data.get(WORKER_SECRET_USERNAME, "")))
    outcome.secret_data, secret = ensure_credentials(s, ctx, conn, secret, outcome.secret_data, given,
                                                     previous=other if other in snapshot.users else None)
    outcome.probe_url = worker_amqp_url(conn.url, conn.username, conn.password, ctx.desired.vhost)
    password = outcome.secret_data[WORKER_SECRET_PASSWORD]
    backfill_password = ""
    desired = dataclasses.replace(ctx.desired, worker_user=outcome.secret_data[WORKER_SECRET_USERNAME])
    outcome.previous_user = previous_user(desired, snapshot)
    outcome.credentials = credentials_status(ctx, secret, outcome.secret_data, outcome.previous_user)
    if desired.backfill is not None:
        try:
            backfill_password = s.backfills.password(ctx.env, ctx.names, ctx.owner_reference, conn.url,
                                                     ctx.spec.broker.vhost, ctx.uid)
        except SecretNotOwned as exc:  # the backfill waits; the environment goes on without it
            outcome.backfill_problem = str(exc)
            desired = dataclasses.replace(desired, backfill=None)
        replays = snapshot.exchanges.get((ctx.desired.vhost, ctx.names.backfill_exchange))
        outcome.backfill_published = replays.published if replays else None
    events_password = _events_password(s, ctx, conn, outcome)
    plan = plan_converge(desired, snapshot, password, backfill_password, events_password)
    outcome.problems = plan.problems
    if plan.actions:
        s.apply(ctx, client, plan.actions)
        snapshot = client.snapshot(ctx.desired.verification_scope())
        # verify: another environment may have declared the same queue at the same moment; the marker the broker
        # kept decides, and a loser gives its permissions back at once (this check reads no permissions: the
        # loser's, just granted, are read with the whole scope, only then)
        outcome.refusal = check_ownership(ctx.desired, snapshot)
        if outcome.refusal is not None:
            s.apply(ctx, client, plan_revoke(ctx.desired, client.snapshot(ctx.desired.scope())))
            return
    outcome.observation = observe(ctx.desired, snapshot)
    outcome.placement = release_previous(s, ctx, conn)
    if ctx.own_broker:
        ensure_length_cap(s, ctx, conn, client)
    if ctx.desired.backfill is not None or ctx.desired.detached or s.settings.archive == "always":
        # after: its exchange exists; an Unbind pause's catch-up replays it
        outcome.archive_problem = ensure_archive(s, ctx, conn, client)


def _events_password(s: Services, ctx: Context, conn: BrokerConnection, outcome: TopologyOutcome) -> str:
    """Flower's password, from Secret ``<env>-events`` (written first) with task events on ("" when that Secret is
    someone else's: a problem, the rest goes on); with them off, that Secret goes (the plan removes the user)."""
    if ctx.desired.events is None:
        if ctx.desired.events_leftover:
            secret = s.kube.get_secret(ctx.namespace, ctx.names.events_secret)
            if secret is not None and owned_by(secret, ctx.uid):  # ours only, and only that very object
                s.kube.delete_secret(ctx.namespace, ctx.names.events_secret, secret["metadata"]["uid"])
        outcome.events_secret = ""
        return ""
    try:
        password = extra_user_password(
            s.kube, ctx.namespace, ctx.names.events_secret, ctx.uid,
            lambda p: builders.build_events_secret(ctx.names, ctx.owner_reference, conn.url, p, ctx.spec.broker.vhost),
            "Flower")
    except SecretNotOwned as exc:
        outcome.events_problem = str(exc)
        return ""
    outcome.events_secret = ctx.names.events_secret
    return password


def release_previous(s: Services, ctx: Context, conn: BrokerConnection) -> dict[str, str]:
    """Where the environment is now (status.placement); when that moved (queue name, vhost or broker) since the last
    converge, let go of the old place first (:func:`plan_release`). A release that cannot run yet (the old broker or
    its Secret away) is reported and tried again: the old place stays in status until then."""
    here = {"queue": ctx.names.queue, "vhost": ctx.desired.vhost,
            "brokerSecret": "/".join(s.broker_ref(ctx.env, ctx.spec))}
    before = ctx.old_status.get("placement")
    if not isinstance(before, dict) or before == here or not before.get("queue"):
        return here
    old_spec = ctx.spec.model_copy(deep=True)
    old_spec.queue.name, old_spec.broker.vhost, old_spec.backfill = before["queue"], before["vhost"], None
    old = desired_topology(s.cluster, ctx.namespace, ctx.name, old_spec)
    secret_ns, _, secret_name = str(before.get("brokerSecret", "")).partition("/")
    try:
        old_conn = s.connection_at(secret_ns, secret_name)
        same_broker = old_conn.management_url == conn.management_url
        if same_broker and (old.vhost, old.queue.name) == (ctx.desired.vhost, ctx.names.queue):
            return here  # another Secret for the same broker: the same place
        client = s.clients.get(old_conn)
        plan = plan_release(old, client.snapshot(old.scope()),
                            delete_queue=ctx.spec.deletion_policy is DeletionPolicy.DELETE,
                            drop_user=not same_broker, clear_permissions=old.vhost != ctx.desired.vhost)
        done = s.apply(ctx, client, plan.actions)
    except (BrokerError, BrokerConfigError, ApiException) as exc:
        message = (f"cannot let go of queue {old.queue.name} (vhost {old.vhost}, broker Secret "
                   f"{before.get('brokerSecret')}) yet: {describe(exc)}; tried again at the next converge")
        if ctx.old_status.get("lastError") != message:
            s.event(ctx.env, "ReleaseIncomplete", message, "Warning")
        log.warning("%s/%s: %s", ctx.namespace, ctx.name, message)
        return {k: str(v) for k, v in before.items()}
    kept = "" if ctx.spec.deletion_policy is DeletionPolicy.DELETE else \
        f" (kept with its messages: deletionPolicy {ctx.spec.deletion_policy.value})"
    what = f"the old queue {old.queue.name} in vhost {old.vhost}: {'; '.join(done) or 'nothing left'}{kept}"
    s.event(ctx.env, "Released" if plan.refusal is None else "QueueLeftAlone",
            what if plan.refusal is None else f"{plan.refusal.message}: left untouched")
    return here


def ensure_length_cap(s: Services, ctx: Context, conn: BrokerConnection, client: Any) -> None:
    """The administrator's maximum queue length on the environment's vhost (once per process and per pass, as the
    archive); a failure is logged and tried again next pass, the environment goes on."""
    key = ("max-length", *conn.key, ctx.desired.vhost)
    # without a maximum, once per process (an earlier one's cap removed); with one, also once per pass
    if s.ensured_already(ctx, key, per_pass=bool(s.settings.max_queue_length)):
        return
    try:
        policy = length_cap_policy_name(s.cluster)
        live = client.get_operator_policy(ctx.desired.vhost, policy)
        legacy = client.get_operator_policy(ctx.desired.vhost, LEGACY_LENGTH_CAP_POLICY)
        s.apply(ctx, client, plan_length_cap(ctx.desired.vhost, policy, s.settings.queue_pattern_any,
                                             s.settings.max_queue_length, live, legacy))
    except BrokerError as exc:
        if s.settings.max_queue_length:  # without a maximum, a broker user that may not read operator policies
            log.warning("the maximum queue length on vhost %s: %s", ctx.desired.vhost, exc)  # is fine
            return
    s.mark_ensured(ctx, key)
