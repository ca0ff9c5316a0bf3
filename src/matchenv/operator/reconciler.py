"""Converge and tear down one MatchEnvironment; re-check all of them against one broker snapshot per interval.

Handlers (create/update/resume/delete) and the resync loop both come here; a lock per environment keeps them from
working on the same one at once. Every step is idempotent: a second run against an unchanged world writes nothing.
A converge is four small steps over one parsed :class:`Context`: bounds and ownership, the worker's credentials,
the broker topology, the workers; then the status. A teardown runs in the order that loses nothing: unbind, stop
the workers (their in-flight messages finish), then drop the user, the Secret and (per policy) the queue.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from matchenv.contracts import DATABASE_KEY_SETS, WORKER_SECRET_PASSWORD
from matchenv.models import API_GROUP, KIND, DeletionPolicy, MatchEnvironmentSpec, Phase
from matchenv.naming import (
    AUTOSCALED_ANNOTATION,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    EnvironmentNames,
    archive_name,
    broker_secret_name,
    publisher_user_name,
)
from matchenv.operator import builders
from matchenv.operator.autoscaler import Autoscaler
from matchenv.operator.backfills import BackfillOutcome, Backfills, BackfillSecretNotOwned, job_state
from matchenv.operator.brokers import BrokerClients, BrokerConfigError, BrokerConnection, read_connection
from matchenv.operator.drift import Changed
from matchenv.operator.kube import Kube, Obj
from matchenv.operator.publisher import ensure_publisher
from matchenv.operator.settings import OperatorSettings
from matchenv.operator.status import (
    Observation,
    WorkersObservation,
    build_status,
    now_rfc3339,
    refresh_workers,
    status_changed,
)
from matchenv.operator.tenancy import bounds_refusal, not_owned, owned_by
from matchenv.topology.applier import apply_plan
from matchenv.topology.client import BrokerAuthError, BrokerConflict, BrokerError, BrokerUnreachable
from matchenv.topology.desired import DesiredArchive, DesiredTopology, desired_archive, desired_topology
from matchenv.topology.planner import (
    Action,
    Plan,
    QueueObservation,
    Refusal,
    check_ownership,
    observe,
    plan_archive,
    plan_archive_detach,
    plan_converge,
    plan_detach,
    plan_remove,
    plan_revoke,
)
from matchenv.topology.snapshot import BrokerSnapshot, Scope

log = logging.getLogger("matchenv.operator")

MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
ROTATE_ANNOTATION = f"{API_GROUP}/rotate-credentials"  # on the MatchEnvironment: a new value → a new password
ROTATED_ANNOTATION = f"{API_GROUP}/rotated-for"  # on the broker Secret: the rotation value it was minted for


class TeardownIncomplete(Exception):
    """A deletion step cannot finish yet (broker unreachable, workers still stopping); it is retried."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


def _error_reason(exc: Exception) -> str:
    if isinstance(exc, BrokerUnreachable):
        return "BrokerUnreachable"
    if isinstance(exc, BrokerAuthError):
        return "BrokerAuthFailed"
    if isinstance(exc, BrokerConflict):
        return "BrokerConflict"
    if isinstance(exc, BrokerConfigError):
        return "BrokerSecretInvalid"
    return "BrokerError"


@dataclass
class Prefetched:
    """What the resync loop read once for all environments, handed to each converge. ``secrets`` caches every
    Secret read during one pass (``None``: not in the list); ``snapshots`` one snapshot (or its error) per broker
    connection."""

    snapshots: dict[tuple[str, str, str], BrokerSnapshot | Exception] = field(default_factory=dict)
    deployments: dict[tuple[str, str], Obj] = field(default_factory=dict)
    secrets: dict[tuple[str, str], Obj | None] = field(default_factory=dict)
    started: float = 0.0  # when the pass began reading (clock): data older than any converge finished since
    archives: set[tuple[str, ...]] = field(default_factory=set)  # archives this pass has looked at


@dataclass
class ResyncReport:
    environments: int = 0
    management_calls: int = 0
    changes: int = 0
    failures: int = 0
    skipped: int = 0
    seconds: float = 0.0


@dataclass
class Context:
    """One environment, parsed once for all the steps of a converge or a teardown."""

    env: Obj
    spec: MatchEnvironmentSpec
    desired: DesiredTopology
    prefetched: Prefetched | None

    @property
    def meta(self) -> Obj:
        meta: Obj = self.env["metadata"]
        return meta

    @property
    def namespace(self) -> str:
        return str(self.meta["namespace"])

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def uid(self) -> str:
        return str(self.meta["uid"])

    @property
    def names(self) -> EnvironmentNames:
        return self.desired.names

    @property
    def old_status(self) -> Obj:
        status: Obj = self.env.get("status") or {}
        return status

    @property
    def owner_reference(self) -> Obj:
        return builders.owner_reference(self.name, self.uid)

    @property
    def own_broker(self) -> bool:
        """True when the environment uses the operator's broker Secret (so the operator's bounds apply)."""
        return self.spec.broker.connection_secret_ref is None


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

    @property
    def refused(self) -> bool:
        return self.refusal is not None


class Reconciler:
    def __init__(self, kube: Kube, settings: OperatorSettings, clients: BrokerClients | None = None,
                 autoscaler: Autoscaler | None = None, clock: Callable[[], float] = time.monotonic,
                 stop_wait: float = 20.0, owner: Obj | None = None) -> None:
        self.kube = kube
        self.owner = owner  # the operator's Deployment: owns what the operator makes for itself (publisher Secret)
        self.stop_wait = stop_wait  # how long one teardown call waits for the workers before it is retried
        self.settings = settings
        self.clients = clients or BrokerClients(settings.broker_timeout)
        self.autoscaler = autoscaler or Autoscaler()
        self.clock = clock
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        self._converged_at: dict[str, float] = {}  # uid → when a converge last finished (clock)
        # uid → when its teardown finished (None: under way). A deleted environment is never converged again: a
        # resync pass that listed it before its deletion would otherwise put back what the teardown removed.
        self._torn_down: dict[str, float | None] = {}
        self._workers_seen: dict[str, tuple[Any, ...]] = {}  # Deployment uid → what of it WorkersReady reads
        # what each environment on the operator's broker owns there → (namespace, name): a broker event names one
        self._owned: dict[Changed, tuple[str, str]] = {}
        self._owns: dict[str, tuple[Changed, ...]] = {}  # uid → its keys in _owned
        self._jobs_seen: dict[str, str] = {}  # backfill Job uid → Running, Complete or Failed
        self._archives: set[tuple[str, ...]] = set()  # (broker key..., vhost, exchange) whose archive is in place
        self.backfills = Backfills(kube, self._event)

    def _lock(self, uid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks[uid]

    # -- helpers ---------------------------------------------------------------------------------------------
    def _event(self, env: Obj, reason: str, message: str, type_: str = "Normal") -> None:
        meta = env["metadata"]
        log.info("%s/%s %s: %s", meta["namespace"], meta["name"], reason, message)
        try:
            self.kube.post_event(env, reason, message, type_)
        except ApiException as exc:
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc.reason)

    def _secret(self, namespace: str, name: str, prefetched: Prefetched | None, fresh: bool = False) -> Obj | None:
        """A Secret: from the pass's cache, or read now (``fresh``: always read now, for read-your-writes)."""
        if prefetched is None or fresh:
            secret = self.kube.get_secret(namespace, name)
            if prefetched is not None:
                prefetched.secrets[(namespace, name)] = secret
            return secret
        key = (namespace, name)
        if key not in prefetched.secrets:
            prefetched.secrets[key] = self.kube.get_secret(namespace, name)
        return prefetched.secrets[key]

    def connection_for(self, env: Obj, spec: MatchEnvironmentSpec,
                       prefetched: Prefetched | None = None) -> BrokerConnection:
        ref = spec.broker.connection_secret_ref
        namespace, name = (env["metadata"]["namespace"], ref.name) if ref else self.settings.broker_secret_ref
        return read_connection(self._secret(namespace, name, prefetched), namespace, name)

    def _snapshot(self, conn: BrokerConnection, client: Any, prefetched: Prefetched | None,
                  scope: Scope | None = None) -> BrokerSnapshot:
        """The pass's snapshot of this broker (taken once per pass and connection), or a fresh one of ``scope``."""
        if prefetched is None:
            snapshot: BrokerSnapshot = client.snapshot(scope)
            return snapshot
        if conn.key not in prefetched.snapshots:
            try:
                prefetched.snapshots[conn.key] = client.snapshot()
            except BrokerError as exc:
                prefetched.snapshots[conn.key] = exc
        cached = prefetched.snapshots[conn.key]
        if isinstance(cached, Exception):
            raise cached
        return cached

    def _database_problem(self, ctx: Context) -> tuple[Refusal | None, Obj | None]:
        name = ctx.spec.workers.database_secret_ref.name
        secret = self._secret(ctx.namespace, name, ctx.prefetched)
        if secret is None:
            return Refusal("DatabaseSecretInvalid", f"database Secret {name} not found"), None
        keys = set((secret.get("data") or {}).keys())
        if not any(set(option) <= keys for option in DATABASE_KEY_SETS):
            return Refusal("DatabaseSecretInvalid", f"database Secret {name} needs DATABASE_URL, or SUPABASE_URL "
                           "with SUPABASE_KEY or SUPABASE_SERVICE_KEY"), secret
        return None, secret

    def _context(self, env: Obj, prefetched: Prefetched | None) -> Context:
        spec = MatchEnvironmentSpec.model_validate(env.get("spec") or {})
        meta = env["metadata"]
        ran = bool((env.get("status") or {}).get("backfill"))
        return Context(env, spec, desired_topology(meta["namespace"], meta["name"], spec, backfill_ran=ran),
                       prefetched)

    # -- converge --------------------------------------------------------------------------------------------
    def converge(self, env: Obj, prefetched: Prefetched | None = None) -> Obj | None:
        """Make broker and cluster match ``env``; write and return its status. With a resync pass's
        ``prefetched`` reads, returns None (and does nothing) when a handler converged the environment after the
        pass began reading: acting on the older reads could only undo that (e.g. set a password again). Returns None
        too once the environment's teardown has begun."""
        uid = env["metadata"]["uid"]
        with self._lock(uid):
            if uid in self._torn_down:
                return None
            if prefetched is not None and self._converged_at.get(uid, prefetched.started - 1) > prefetched.started:
                return None
            try:
                return self._converge(env, prefetched)
            finally:
                self._converged_at[uid] = self.clock()

    def _converge(self, env: Obj, prefetched: Prefetched | None) -> Obj:
        try:
            ctx = self._context(env, prefetched)
        except ValidationError as exc:
            meta = env["metadata"]
            first = exc.errors()[0]
            status = {"phase": Phase.DEGRADED.value, "lastError": f"invalid spec: {first['loc']}: {first['msg']}"}
            self.kube.patch_environment_status(meta["namespace"], meta["name"], status)
            return status
        self._remember(ctx)
        topology = self._converge_topology(ctx)
        autoscaling = None if topology.refused else self._autoscale(ctx, topology.observation)
        workers, worker_problem = self._converge_workers(ctx, topology)
        backfill = None if topology.refused else self._backfill(ctx, topology)
        return self._write_status(ctx, topology, workers, worker_problem, autoscaling, backfill)

    def _backfill(self, ctx: Context, topology: TopologyOutcome) -> BackfillOutcome | None:
        if ctx.spec.backfill is None and not ctx.old_status.get("backfill"):
            return None
        bound = topology.observation is not None and topology.observation.bound and not topology.problems
        try:
            return self.backfills.converge(ctx.env, ctx.spec, ctx.names, ctx.owner_reference,
                                           archive_name(ctx.spec.exchange.name), bound, topology.backfill_published,
                                           topology.archive_problem, topology.backfill_problem)
        except ApiException as exc:
            message = f"cannot run the backfill Job: {exc.status} {exc.reason}"
            self._event(ctx.env, "BackfillFailed", message, "Warning")
            return BackfillOutcome(ctx.old_status.get("backfill"), False, "BackfillFailed", message)

    def _converge_topology(self, ctx: Context) -> TopologyOutcome:
        """Bounds, ownership, the worker's credentials and the broker objects, in that order."""
        outcome = TopologyOutcome()
        if ctx.own_broker:
            outcome.refusal = bounds_refusal(ctx.desired, self.settings)
            if outcome.refusal:
                return outcome
        secret = self._secret(ctx.namespace, ctx.names.broker_secret, ctx.prefetched)
        if ctx.prefetched is not None and not _holds_password(secret, ctx.uid):
            # read-your-writes: the pass's list may predate the Secret a handler wrote; never mint from it
            secret = self._secret(ctx.namespace, ctx.names.broker_secret, ctx.prefetched, fresh=True)
        if secret is not None and not owned_by(secret, ctx.uid):
            outcome.refusal = Refusal("SecretNotOwned", not_owned("Secret", ctx.namespace, ctx.names.broker_secret))
            return outcome
        try:
            outcome.secret_data = builders.decode_secret_data((secret or {}).get("data"))
            conn = self.connection_for(ctx.env, ctx.spec, ctx.prefetched)
            client = self.clients.get(conn)
            snapshot = self._snapshot(conn, client, ctx.prefetched, ctx.desired.scope())
            outcome.refusal = check_ownership(ctx.desired, snapshot)
            if outcome.refusal is not None:
                self._apply(ctx, client, plan_revoke(ctx.desired, snapshot))  # no access to what is not ours
                return outcome
            self._ensure_credentials(ctx, conn, secret, outcome)
            password = outcome.secret_data[WORKER_SECRET_PASSWORD]
            backfill_password = ""
            desired = ctx.desired
            if desired.backfill is not None:
                try:
                    backfill_password = self.backfills.password(ctx.env, ctx.names, ctx.owner_reference, conn.url,
                                                                ctx.spec.broker.vhost, ctx.uid)
                except BackfillSecretNotOwned as exc:  # the backfill waits; the environment goes on without it
                    outcome.backfill_problem = str(exc)
                    desired = dataclasses.replace(desired, backfill=None)
                replays = snapshot.exchanges.get((ctx.desired.vhost, ctx.names.backfill_exchange))
                outcome.backfill_published = replays.published if replays else None
            plan = plan_converge(desired, snapshot, password, backfill_password)
            outcome.problems = plan.problems
            if plan.actions:
                self._apply(ctx, client, plan.actions)
                snapshot = client.snapshot(ctx.desired.verification_scope())
                # verify: another environment may have declared the same queue at the same moment; the marker
                # the broker kept decides, and a loser gives its permissions back at once
                outcome.refusal = check_ownership(ctx.desired, snapshot)
                if outcome.refusal is not None:
                    self._apply(ctx, client, plan_revoke(ctx.desired, snapshot))
                    return outcome
            outcome.observation = observe(ctx.desired, snapshot)
            if ctx.desired.backfill is not None or self.settings.archive == "always":
                outcome.archive_problem = self._ensure_archive(ctx, conn, client)  # after: its exchange exists
        except (BrokerError, BrokerConfigError, builders.SecretDecodeError) as exc:
            outcome.error, outcome.error_reason = str(exc), _error_reason(exc)
            if ctx.old_status.get("lastError") != outcome.error:
                self._event(ctx.env, outcome.error_reason, outcome.error, "Warning")
        return outcome

    def _ensure_archive(self, ctx: Context, conn: BrokerConnection, client: Any) -> str | None:
        """The archive of the environment's exchange (once per broker, vhost and exchange, and at each resync
        pass); why a backfill cannot use it, if so."""
        if self.settings.archive == "off":
            return "the operator keeps no archive (MATCHENV_ARCHIVE=off): there is nothing to backfill from"
        archive = self._archive_of(ctx)
        key = (*conn.key, archive.vhost, archive.exchange)
        # once per process, and once per resync pass (its snapshot shows drift), never once per environment
        done = self._archives if ctx.prefetched is None else ctx.prefetched.archives
        if key in done:
            return None
        try:
            snapshot = self._snapshot(conn, client, ctx.prefetched, archive.scope())
            plan = plan_archive(archive, snapshot)
            if plan.actions:
                self._apply(ctx, client, plan.actions)
        except BrokerError as exc:
            log.warning("the archive %s: %s", archive.name, exc)
            return f"cannot keep the archive {archive.name}: {exc}"
        if plan.problems:
            return "; ".join(plan.problems)
        self._archives.add(key)
        if ctx.prefetched is not None:
            ctx.prefetched.archives.add(key)
        return None

    def _release_archive(self, ctx: Context, conn: BrokerConnection, client: Any) -> list[str]:
        """When the last environment of an exchange goes, the archive stops following it (and keeps what it
        holds): with no environment bound, a publish is reported unroutable, as it should be."""
        if self.settings.archive == "off":
            return []
        mine = (ctx.spec.exchange.name, ctx.spec.broker.vhost, self._broker_ref(ctx.env, ctx.spec))
        namespaces: list[str | None] = list(self.settings.namespaces) or [None]
        for ns in namespaces:
            for other in self.kube.list_environments(ns):
                if other["metadata"]["uid"] == ctx.uid or other["metadata"].get("deletionTimestamp"):
                    continue
                try:
                    spec = MatchEnvironmentSpec.model_validate(other.get("spec") or {})
                except ValidationError:
                    continue
                if (spec.exchange.name, spec.broker.vhost, self._broker_ref(other, spec)) == mine:
                    return []
        archive = self._archive_of(ctx)
        self._archives.discard((*conn.key, archive.vhost, archive.exchange))
        return self._apply(ctx, client, plan_archive_detach(archive, client.snapshot(archive.scope())).actions)

    def _archive_of(self, ctx: Context) -> DesiredArchive:
        s = self.settings
        return desired_archive(ctx.spec.broker.vhost, ctx.spec.exchange.name, ctx.spec.exchange.type.value,
                               s.archive_max_age, s.archive_max_bytes, s.archive_segment_bytes)

    def _broker_ref(self, env: Obj, spec: MatchEnvironmentSpec) -> tuple[str, str]:
        ref = spec.broker.connection_secret_ref
        return (env["metadata"]["namespace"], ref.name) if ref else self.settings.broker_secret_ref

    def _guard(self, action: Action) -> None:
        self.kube.may_write(action.describe(), "broker")

    def _apply(self, ctx: Context, client: Any, actions: tuple[Action, ...]) -> list[str]:
        """Apply ``actions`` (each asking the leader fence first); one event lists what was done, also when a
        later action failed (one per action made eight writes to the API server for each new environment)."""
        done: list[str] = []
        try:
            return apply_plan(client, Plan(actions), self._guard, done.append)
        finally:
            if done:
                self._event(ctx.env, "BrokerChanged", "; ".join(done))

    def _ensure_credentials(self, ctx: Context, conn: BrokerConnection, secret: Obj | None,
                            outcome: TopologyOutcome) -> None:
        """The broker Secret with the worker's password: kept as it is, minted once (only when a fresh read says
        there is none), or minted anew when ``matchenv.io/rotate-credentials`` asks for it. Written before the
        broker user is set, so a crash between the two never leaves a user whose password nobody knows; the plan
        then sets the user's password whenever the broker's hash does not match the Secret."""
        current = outcome.secret_data
        rotation = (ctx.meta.get("annotations") or {}).get(ROTATE_ANNOTATION) or ""
        rotated_for = ((secret or {}).get("metadata", {}).get("annotations") or {}).get(ROTATED_ANNOTATION) or ""
        password = current.get(WORKER_SECRET_PASSWORD) or ""
        rotate = bool(password) and rotation != rotated_for
        if not password or rotate:
            password = secrets.token_urlsafe(24)
        body = builders.build_broker_secret(ctx.names, ctx.owner_reference, conn.url, password, ctx.spec.broker.vhost,
                                            annotations={ROTATED_ANNOTATION: rotation} if rotation else None)
        if current != body["stringData"] or rotation != rotated_for:
            self.kube.apply_secret(body)
            what = ("BrokerCredentialsRotated" if rotate else
                    "BrokerSecretUpdated" if current.get(WORKER_SECRET_PASSWORD) else "BrokerSecretCreated")
            self._event(ctx.env, what, f"wrote Secret {ctx.names.broker_secret} for broker user "
                        f"{ctx.names.broker_user}" + (" with a new password" if rotate else ""))
        outcome.secret_data = body["stringData"]

    def _converge_workers(self, ctx: Context, topology: TopologyOutcome
                          ) -> tuple[WorkersObservation, Refusal | None]:
        """The worker Deployment: ours only (an ownerReference to this environment), no pods while the topology is
        refused, and an API refusal reported rather than retried blindly."""
        names = ctx.names
        db_problem, db_secret = self._database_problem(ctx)
        live = ctx.prefetched.deployments.get((ctx.namespace, names.deployment)) if ctx.prefetched else None
        if live is None:
            live = self.kube.get_deployment(ctx.namespace, names.deployment)
        if live is not None and not owned_by(live, ctx.uid):
            return WorkersObservation(exists=False), Refusal("DeploymentNotOwned",
                                                              not_owned("Deployment", ctx.namespace, names.deployment))
        replicas = 0 if topology.refused or ctx.spec.paused else ctx.spec.workers.replicas
        secrets_hash = builders.secret_data_hash(topology.secret_data, (db_secret or {}).get("data"))
        deployment = builders.build_deployment(names, ctx.spec, ctx.owner_reference, replicas, secrets_hash)
        # list responses carry no apiVersion/kind on their items: compare what we own, metadata and spec
        differs = None if live is None else builders.drift(
            {"metadata": deployment["metadata"], "spec": deployment["spec"]}, live
        )
        if live is None or differs:
            try:
                applied = self.kube.apply_deployment(deployment)
            except ApiException as exc:
                if exc.status not in (400, 422):
                    raise
                # reported (status and a Warning event) like every refusal, by _write_status
                message = f"the API server refused Deployment {names.deployment}: {_api_message(exc)}"
                return _workers(live), Refusal("DeploymentRefused", message)
            if live is None:
                self._event(ctx.env, "DeploymentCreated", f"created Deployment {names.deployment}")
            elif differs == ".spec.replicas":  # kubectl scale on the Deployment: say where its size comes from
                owner = "the autoscaler sets (autoscaling.enabled)" if ctx.spec.autoscaling.enabled else \
                    f"kubectl scale menv/{ctx.name} changes"
                self._event(ctx.env, "DeploymentRescaled", f"set Deployment {names.deployment} back to {replicas} "
                            f"replicas: its size is the MatchEnvironment's spec.workers.replicas, which {owner}",
                            "Warning")
            elif applied["metadata"].get("resourceVersion") != live["metadata"].get("resourceVersion"):
                self._event(ctx.env, "DeploymentUpdated", f"updated Deployment {names.deployment} ({differs} differed)")
            live = applied
        return _workers(live), db_problem

    def _write_status(self, ctx: Context, topology: TopologyOutcome, workers: WorkersObservation,
                      worker_problem: Refusal | None, autoscaling: dict[str, Any] | None = None,
                      backfill: BackfillOutcome | None = None) -> Obj:
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
        )
        old = ctx.old_status
        status = build_status(seen, old)
        for refusal in (topology.refusal, worker_problem):
            if refusal is not None and refusal.message not in (old.get("lastError") or ""):
                self._event(ctx.env, refusal.reason, refusal.message, "Warning")
        if status_changed(status, old):
            self.kube.patch_environment_status(ctx.namespace, ctx.name, status)
            if status["phase"] != old.get("phase"):
                log.info("%s/%s phase %s -> %s", ctx.namespace, ctx.name, old.get("phase"), status["phase"])
                if status["phase"] == Phase.PAUSED.value:
                    self._event(ctx.env, "Paused", f"workers stopped; messages wait in queue {ctx.names.queue}"
                                + _bound(ctx.spec))
                elif old.get("phase") == Phase.PAUSED.value:
                    self._event(ctx.env, "Resumed", f"workers started again on queue {ctx.names.queue}")
        return status

    def _autoscale(self, ctx: Context, seen: QueueObservation | None) -> dict[str, Any] | None:
        """Set ``spec.workers.replicas`` from the backlog (with the annotation that records it was the autoscaler);
        return ``status.autoscaling``. Unknown counts hold the current size: never scale on a guess."""
        spec = ctx.spec
        annotations = ctx.meta.get("annotations") or {}
        if not spec.autoscaling.enabled:
            self.autoscaler.forget(ctx.uid)
            if AUTOSCALED_ANNOTATION in annotations:  # re-enabled later, a hand-set count is not an override
                self.kube.patch_environment(ctx.namespace, ctx.name,
                                            {"metadata": {"annotations": {AUTOSCALED_ANNOTATION: None}}})
            return None
        old: dict[str, Any] = ctx.old_status.get("autoscaling") or {}
        if spec.paused:  # the pause decides (0 workers); the autoscaler starts afresh on resume
            self.autoscaler.forget(ctx.uid)
            return {**old, "message": "paused (spec.paused): no workers run whatever the backlog"}
        if seen is None or seen.messages is None:
            return old or None
        asked = spec.workers.replicas
        recorded = _count(annotations.get(AUTOSCALED_ANNOTATION))
        decision = self.autoscaler.review(ctx.uid, spec.autoscaling, seen.messages, asked, recorded, self.clock(),
                                          old.get("message"))
        wanted = decision.replicas
        if wanted != asked or recorded != wanted:
            self.kube.patch_environment(ctx.namespace, ctx.name, {
                "metadata": {"annotations": {AUTOSCALED_ANNOTATION: str(wanted)}},
                "spec": {"workers": {"replicas": wanted}},
            })
            spec.workers.replicas = wanted
        status = {"backlog": seen.messages, "replicas": wanted, "lastScaleTime": old.get("lastScaleTime"),
                  "message": decision.message}
        if decision.overridden is not None:
            self._event(ctx.env, "ManualScaleReverted", decision.message, "Warning")
        elif decision.scaled_from is not None:
            self._event(ctx.env, "Scaled", decision.message)
        if wanted != asked:
            status["lastScaleTime"] = now_rfc3339()
        return status

    # -- drift the broker told of -----------------------------------------------------------------------------
    def _remember(self, ctx: Context) -> None:
        """Index what this environment owns on the operator's broker, for :meth:`owner_of`."""
        self._forget(ctx.uid)
        if not ctx.own_broker:
            return
        scope = ctx.desired.scope()
        keys = (*(Changed("queue", scope.vhost, q) for q in scope.queues),
                # its dead-letter exchange only: the shared exchange's deletion also deletes each queue's binding
                *((Changed("exchange", scope.vhost, ctx.names.dead_letter_exchange),) if ctx.spec.queue.dead_letter
                  else ()),
                # the shared topic exchange of a subset: any one of its environments' converges puts it back
                *(Changed("exchange", scope.vhost, e) for e in scope.exchange_bindings),
                *(Changed("policy", scope.vhost, p) for p in scope.policies),
                *(Changed("user", "", u) for u in scope.users))
        self._owns[ctx.uid] = keys
        for key in keys:
            self._owned[key] = (ctx.namespace, ctx.name)

    def _forget(self, uid: str) -> None:
        for key in self._owns.pop(uid, ()):
            self._owned.pop(key, None)

    def owner_of(self, what: Changed) -> tuple[str, str] | None:
        """The environment (namespace, name) a removed broker object belonged to, if any."""
        return self._owned.get(what)

    def is_publisher(self, what: Changed) -> bool:
        return bool(self.settings.publisher_secret) and what.kind == "user" and \
            what.name == publisher_user_name(self.settings.operator_namespace)

    def repair(self, namespace: str, name: str, uid: str | None = None) -> Obj | None:
        """Converge one environment now (a broker event said something of it went, or its Deployment moved);
        nothing when it is gone, being deleted, or (``uid``) no longer the object that asked."""
        env = self._current(namespace, name, uid)
        return None if env is None else self.converge(env)

    def _current(self, namespace: str, name: str, uid: str | None) -> Obj | None:
        """The environment as it is now; None when gone, being deleted, or (``uid``) no longer that object."""
        env = self.kube.get_environment(namespace, name)
        if env is None or env["metadata"].get("deletionTimestamp") or uid not in (None, env["metadata"].get("uid")):
            return None
        return env

    def events_url(self) -> str:
        """The AMQP URL (vhost /, where ``amq.rabbitmq.event`` is) of the operator's broker, as its admin."""
        namespace, name = self.settings.broker_secret_ref
        conn = read_connection(self.kube.get_secret(namespace, name), namespace, name)
        return builders.worker_amqp_url(conn.url, conn.username, conn.password, "/")

    def repair_publisher(self) -> None:
        self._ensure_publisher(Prefetched(started=self.clock()))

    # -- the workers' Deployments, watched ---------------------------------------------------------------------
    def workers_changed(self, deployment: Obj, deleted: bool = False) -> Obj | None:
        """A Deployment of ours changed: converge its environment when what WorkersReady reads moved (its pods
        became ready, a rollout ended) or when it was deleted (put back at once), so status follows the pods
        without waiting for the resync. The first sight of each (the watch starting) only records it: the resume
        handlers converge everything then."""
        meta = deployment.get("metadata") or {}
        owner, uid = _environment_owner(meta), meta.get("uid", "")
        if owner is None or not uid:
            return None
        status = deployment.get("status") or {}
        seen = (meta.get("generation"), (deployment.get("spec") or {}).get("replicas"), status.get("replicas"),
                status.get("readyReplicas"), status.get("updatedReplicas"), status.get("availableReplicas"),
                status.get("observedGeneration"))
        before = self._workers_seen.get(uid)
        if deleted:
            self._workers_seen.pop(uid, None)
        elif before is None or before == seen:
            self._workers_seen[uid] = seen
            return None
        else:
            self._workers_seen[uid] = seen
        namespace, name, owner_uid = meta.get("namespace", ""), owner.get("name", ""), owner.get("uid", "")
        if deleted or before is None or before[0] != seen[0]:  # gone, or its spec changed (maybe by hand): converge
            return self.repair(namespace, name, uid=owner_uid)
        return self._follow_workers(namespace, name, owner_uid, deployment)

    def backfill_changed(self, job: Obj, deleted: bool = False) -> Obj | None:
        """A backfill Job of ours ended (or went): converge its environment now, so status and the next attempt
        do not wait for the resync."""
        meta = job.get("metadata") or {}
        owner, uid = _environment_owner(meta), meta.get("uid", "")
        if owner is None or not uid:
            return None
        state = "Deleted" if deleted else job_state(job)
        before = self._jobs_seen.get(uid)
        if deleted:
            self._jobs_seen.pop(uid, None)
        else:
            self._jobs_seen[uid] = state
        # the first sight (the watch starting) only records it: the resume handlers converge everything then
        if before is None or state in ("Running", before):
            return None
        return self.repair(meta.get("namespace", ""), owner.get("name", ""), uid=owner.get("uid", ""))

    def _follow_workers(self, namespace: str, name: str, uid: str, deployment: Obj) -> Obj | None:
        """Status follows the Deployment's pods without a converge (no broker call, no Secret read): one read of
        the environment and, when it changed, one status write. A status this cannot follow (another generation's,
        a problem) gets the full converge, as does a Deployment that no longer matches what was built (drift)."""
        env = self._current(namespace, name, uid)
        if env is None:
            return None
        with self._lock(uid):
            if uid in self._torn_down:
                return None
            old = env.get("status") or {}
            spec = env.get("spec") or {}
            wanted = (spec.get("workers") or {}).get("replicas")
            status = refresh_workers(old, _workers(deployment), env["metadata"].get("generation"))
            if status is not None and wanted == (deployment.get("spec") or {}).get("replicas"):
                if status_changed(status, old):
                    self.kube.patch_environment_status(namespace, name, status)
                return status
        return self.converge(env)  # the read above is fresh: no second one

    # -- teardown --------------------------------------------------------------------------------------------
    def teardown(self, env: Obj) -> list[str]:
        """Unbind; stop the workers and wait for them; then drop the user and the Secret, and the queue only
        under ``deletionPolicy: Delete``. Only what this environment owns is touched: nothing of a queue outside
        the operator's bounds or owned by another. Raises :class:`TeardownIncomplete` while a step has to wait;
        calling again resumes where it stopped."""
        with self._lock(env["metadata"]["uid"]):
            ctx = self._context(env, None)
            self._torn_down[ctx.uid] = None
            names = ctx.names
            if ctx.old_status.get("phase") != Phase.DELETING.value:
                self.kube.patch_environment_status(ctx.namespace, ctx.name, {"phase": Phase.DELETING.value})
            done: list[str] = []
            out_of_bounds = bounds_refusal(ctx.desired, self.settings) if ctx.own_broker else None
            try:
                conn = self.connection_for(ctx.env, ctx.spec)
                client = self.clients.get(conn)
                if out_of_bounds is None:
                    done += self._apply(ctx, client, plan_detach(ctx.desired,
                                                                 client.snapshot(ctx.desired.scope())).actions)
                if ctx.spec.backfill is not None or ctx.old_status.get("backfill"):
                    done += self.backfills.stop(ctx.env, names)
                self._stop_workers(ctx)
                # out of bounds: its own user at most (delete_queue=False leaves every queue alone)
                delete_queue = out_of_bounds is None and ctx.spec.deletion_policy is DeletionPolicy.DELETE
                remove = plan_remove(ctx.desired, client.snapshot(ctx.desired.scope()), delete_queue=delete_queue)
                done += self._apply(ctx, client, remove.actions)
                done += self._release_archive(ctx, conn, client)
            except (BrokerError, BrokerConfigError, builders.SecretDecodeError) as exc:
                message = f"cannot remove the broker topology yet: {exc}"
                self._event(ctx.env, _error_reason(exc), message, "Warning")
                self.kube.patch_environment_status(ctx.namespace, ctx.name, {"lastError": message})
                raise TeardownIncomplete(message) from exc
            refusal = out_of_bounds or remove.refusal
            if refusal is not None:
                self._event(ctx.env, "QueueLeftAlone", f"{refusal.message}: left untouched")
            elif ctx.spec.deletion_policy is DeletionPolicy.RETAIN:
                self._event(ctx.env, "QueueRetained", f"kept queue {names.queue} and its messages (deletionPolicy "
                            "Retain)")
            secret = self.kube.get_secret(ctx.namespace, names.broker_secret)
            if owned_by(secret, ctx.uid) and secret is not None and \
                    self.kube.delete_secret(ctx.namespace, names.broker_secret, secret["metadata"]["uid"]):
                done.append(f"deleted Secret {names.broker_secret}")
            self.autoscaler.forget(ctx.uid)
            self._forget(ctx.uid)
            self._converged_at.pop(ctx.uid, None)
            self._torn_down[ctx.uid] = self.clock()
            log.info("%s/%s torn down: %s", ctx.namespace, ctx.name, "; ".join(done) or "nothing to do")
            return done

    def _stop_workers(self, ctx: Context) -> None:
        """Delete the worker Deployment (foreground) and wait until its pods are gone, so that every worker ends
        its in-flight message with its credentials still valid."""
        live = self.kube.get_deployment(ctx.namespace, ctx.names.deployment)
        if live is None or not owned_by(live, ctx.uid):
            return
        if not live["metadata"].get("deletionTimestamp"):
            self.kube.delete_deployment(ctx.namespace, ctx.names.deployment, live["metadata"]["uid"])
            self._event(ctx.env, "WorkersStopping", f"deleting Deployment {ctx.names.deployment}; the broker user "
                        "is removed once its pods have finished")
        deadline = self.clock() + self.stop_wait
        while self.clock() < deadline:  # most workers finish within seconds: wait here rather than retry
            time.sleep(0.5)
            if self.kube.get_deployment(ctx.namespace, ctx.names.deployment) is None:
                return
        raise TeardownIncomplete(f"waiting for the pods of Deployment {ctx.names.deployment} to finish", delay=2.0)

    # -- resync ----------------------------------------------------------------------------------------------
    def resync_all(self) -> ResyncReport:
        """Re-check every environment: one broker snapshot per broker connection, one Deployment and one Secret
        list. One environment's failure (a bad Secret, a broker that answers nonsense) is its own: the pass goes on."""
        started = self.clock()
        calls_before = self.clients.total_calls()
        # a pass that begins after a teardown finished lists that environment deleted or not at all
        for uid, finished in list(self._torn_down.items()):
            if finished is not None and finished < started:
                self._torn_down.pop(uid, None)
        namespaces: list[str | None] = list(self.settings.namespaces) or [None]
        envs = [e for ns in namespaces for e in self.kube.list_environments(ns)]
        envs = [e for e in envs if not e["metadata"].get("deletionTimestamp")]
        prefetched = Prefetched(started=started)
        for ns in namespaces:
            for d in self.kube.list_deployments(MANAGED_SELECTOR, ns):
                prefetched.deployments[(d["metadata"]["namespace"], d["metadata"]["name"])] = d
            for s in self.kube.list_secrets(MANAGED_SELECTOR, ns):
                prefetched.secrets[(s["metadata"]["namespace"], s["metadata"]["name"])] = s
        report = ResyncReport(environments=len(envs))
        for env in envs:
            meta = env["metadata"]
            # a broker Secret the list did not return is not known to exist (read again before minting)
            prefetched.secrets.setdefault((meta["namespace"], broker_secret_name(meta["name"])), None)
            before = env.get("status")
            try:
                after = self.converge(env, prefetched)
            except Exception as exc:  # isolate: the next environment must still be checked
                report.failures += 1
                log.warning("resync of %s/%s failed: %s", meta["namespace"], meta["name"], _describe(exc))
                continue
            if after is None:
                report.skipped += 1
            else:
                report.changes += int(status_changed(after, before))
        if self.settings.publisher_secret:
            self._ensure_publisher(prefetched)
        report.management_calls = self.clients.total_calls() - calls_before
        report.seconds = self.clock() - started
        return report

    def _ensure_publisher(self, prefetched: Prefetched) -> None:
        """The scraper's publish-only user on the operator's broker (its own failure stalls no environment)."""
        try:
            namespace, name = self.settings.broker_secret_ref
            conn = read_connection(self._secret(namespace, name, prefetched), namespace, name)
            client = self.clients.get(conn)
            secret = self._secret(self.settings.operator_namespace, self.settings.publisher_secret, prefetched)
            ensure_publisher(self.kube, self.settings, conn, client, secret,
                             lambda: self._snapshot(conn, client, prefetched), owner=self.owner)
        except (BrokerError, BrokerConfigError, builders.SecretDecodeError, ApiException) as exc:
            log.warning("publisher credentials: %s", _describe(exc))


def _workers(deployment: Obj | None) -> WorkersObservation:
    if deployment is None:
        return WorkersObservation(exists=False)
    spec: dict[str, Any] = deployment.get("spec") or {}
    status: dict[str, Any] = deployment.get("status") or {}
    generation_seen = status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
    return WorkersObservation(
        exists=True,
        replicas=int(spec.get("replicas", 0)),
        ready_replicas=int(status.get("readyReplicas", 0)),
        updated_replicas=int(status.get("updatedReplicas", 0)) if generation_seen else 0,
    )


def _bound(spec: MatchEnvironmentSpec) -> str:
    if spec.queue.max_length is None:
        return " (unbounded: set queue.maxLength to bound it)"
    overflow = spec.queue.overflow.value if spec.queue.overflow else "drop-head"
    return f" (at most {spec.queue.max_length}, then {overflow})"


def _count(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _environment_owner(meta: Obj) -> Obj | None:
    """The ownerReference to the MatchEnvironment an object of ours belongs to, if any."""
    return next((r for r in meta.get("ownerReferences") or [] if r.get("kind") == KIND), None)


def _holds_password(secret: Obj | None, uid: str) -> bool:
    return owned_by(secret, uid) and bool(((secret or {}).get("data") or {}).get(WORKER_SECRET_PASSWORD))


def _api_message(exc: ApiException) -> str:
    import json

    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)[:1000]
    except ValueError:
        return str(exc.reason)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return f"{exc.__class__.__name__}: {str(exc)[:300]}"
