"""Converge and tear down one MatchEnvironment; re-check all of them against one broker snapshot per interval.

Handlers (create/update/resume/delete) and the resync loop both come here; a lock per environment keeps them from
working on the same one at once. Every step is idempotent: a second run against an unchanged world writes nothing.
"""

from __future__ import annotations

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

from matchenv.models import DeletionPolicy, MatchEnvironmentSpec, Phase
from matchenv.naming import MANAGED_BY, broker_secret_name
from matchenv.operator import builders
from matchenv.operator.autoscaler import Autoscaler
from matchenv.operator.brokers import BrokerClients, BrokerConfigError, BrokerConnection, read_connection
from matchenv.operator.kube import Kube, Obj
from matchenv.operator.settings import OperatorSettings
from matchenv.operator.status import Observation, WorkersObservation, build_status, status_changed
from matchenv.topology.applier import apply_plan
from matchenv.topology.client import BrokerAuthError, BrokerConflict, BrokerError, BrokerUnreachable
from matchenv.topology.desired import desired_topology
from matchenv.topology.planner import observe, plan_converge, plan_teardown
from matchenv.topology.snapshot import BrokerSnapshot

log = logging.getLogger("matchenv.operator")

MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
DATABASE_KEYS = (("DATABASE_URL",), ("SUPABASE_URL", "SUPABASE_KEY"), ("SUPABASE_URL", "SUPABASE_SERVICE_KEY"))


class TeardownIncomplete(Exception):
    """The broker part of a deletion could not be done yet; the finalizer stays and the delete is retried."""


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
    Secret read during one pass (``None``: known to be missing)."""

    snapshots: dict[tuple[str, str], BrokerSnapshot | Exception] = field(default_factory=dict)
    deployments: dict[tuple[str, str], Obj] = field(default_factory=dict)
    secrets: dict[tuple[str, str], Obj | None] = field(default_factory=dict)


@dataclass
class ResyncReport:
    environments: int = 0
    management_calls: int = 0
    changes: int = 0
    seconds: float = 0.0


class Reconciler:
    def __init__(self, kube: Kube, settings: OperatorSettings, clients: BrokerClients | None = None,
                 autoscaler: Autoscaler | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.settings = settings
        self.clients = clients or BrokerClients(settings.broker_timeout)
        self.autoscaler = autoscaler or Autoscaler()
        self.clock = clock
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()

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

    def _secret(self, namespace: str, name: str, prefetched: Prefetched | None) -> Obj | None:
        if prefetched is None:
            return self.kube.get_secret(namespace, name)
        key = (namespace, name)
        if key not in prefetched.secrets:
            prefetched.secrets[key] = self.kube.get_secret(namespace, name)
        return prefetched.secrets[key]

    def connection_for(self, env: Obj, spec: MatchEnvironmentSpec,
                       prefetched: Prefetched | None = None) -> BrokerConnection:
        ref = spec.broker.connection_secret_ref
        namespace, name = (env["metadata"]["namespace"], ref.name) if ref else self.settings.broker_secret_ref
        return read_connection(self._secret(namespace, name, prefetched), namespace, name)

    def _database_problem(self, namespace: str, spec: MatchEnvironmentSpec,
                          prefetched: Prefetched | None) -> tuple[str | None, Obj | None]:
        name = spec.workers.database_secret_ref.name
        secret = self._secret(namespace, name, prefetched)
        if secret is None:
            return f"database Secret {name} not found", None
        keys = set((secret.get("data") or {}).keys())
        if not any(set(option) <= keys for option in DATABASE_KEYS):
            return (f"database Secret {name} needs DATABASE_URL, or SUPABASE_URL with SUPABASE_KEY or "
                    "SUPABASE_SERVICE_KEY"), secret
        return None, secret

    # -- converge --------------------------------------------------------------------------------------------
    def converge(self, env: Obj, prefetched: Prefetched | None = None) -> Obj:
        """Make broker and cluster match ``env``; write and return its status."""
        with self._lock(env["metadata"]["uid"]):
            return self._converge(env, prefetched)

    def _converge(self, env: Obj, prefetched: Prefetched | None) -> Obj:
        meta = env["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        old_status: Obj = env.get("status") or {}
        try:
            spec = MatchEnvironmentSpec.model_validate(env.get("spec") or {})
        except ValidationError as exc:
            message = f"invalid spec: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
            status = {"phase": Phase.DEGRADED.value, "lastError": message}
            self.kube.patch_environment_status(namespace, name, status)
            return status
        desired = desired_topology(namespace, name, spec)
        names = desired.names
        owner = builders.owner_reference(name, meta["uid"])

        broker_error: str | None = None
        error_reason: str | None = None
        problems: tuple[str, ...] = ()
        topology = None
        # what the broker Secret holds now; it feeds the pod-template hash even when the broker connection cannot
        # be read, so a missing admin Secret does not roll the workers
        current = builders.decode_secret_data((self._secret(namespace, names.broker_secret, prefetched) or {})
                                              .get("data"))
        broker_secret_data = current
        try:
            conn = self.connection_for(env, spec, prefetched)
            client = self.clients.get(conn)
            # 1. the worker's credentials: keep the password the Secret holds, or mint one (Secret first, so a
            #    crash between the two steps cannot leave a broker user whose password nobody knows)
            password = current.get("password") or secrets.token_urlsafe(24)
            reset_password = "password" not in current
            secret_body = builders.build_broker_secret(names, owner, conn.url, password, spec.broker.vhost)
            if current != secret_body["stringData"]:
                self.kube.apply_secret(secret_body)
                self._event(env, "BrokerSecretUpdated" if current else "BrokerSecretCreated",
                            f"wrote Secret {names.broker_secret} for broker user {names.broker_user}")
            broker_secret_data = secret_body["stringData"]
            # 2. the broker topology
            cached = prefetched.snapshots.get(conn.key) if prefetched else None
            if isinstance(cached, Exception):
                raise cached
            snapshot = cached or client.snapshot()
            plan = plan_converge(desired, snapshot, password, previous_exchange=old_status.get("exchange"),
                                 reset_password=reset_password)
            problems = plan.problems
            if plan.actions:
                done = apply_plan(client, plan)
                for what in done:
                    self._event(env, "BrokerChanged", what)
                snapshot = client.snapshot()
            topology = observe(desired, snapshot)
        except (BrokerError, BrokerConfigError) as exc:
            broker_error, error_reason = str(exc), _error_reason(exc)
            if old_status.get("lastError") != broker_error:
                self._event(env, error_reason, broker_error, "Warning")

        # 3. the workers
        db_problem, db_secret = self._database_problem(namespace, spec, prefetched)
        secrets_hash = builders.secret_data_hash(broker_secret_data, (db_secret or {}).get("data"))
        deployment = builders.build_deployment(names, spec, owner, spec.workers.replicas, secrets_hash)
        live = prefetched.deployments.get((namespace, names.deployment)) if prefetched else None
        if live is None:
            live = self.kube.get_deployment(namespace, names.deployment)
        # list responses carry no apiVersion/kind on their items: compare what we own, metadata and spec
        differs = None if live is None else builders.drift(
            {"metadata": deployment["metadata"], "spec": deployment["spec"]}, live
        )
        if live is None or differs:
            applied = self.kube.apply_deployment(deployment)
            if live is None:
                self._event(env, "DeploymentCreated", f"created Deployment {names.deployment}")
            elif applied["metadata"].get("resourceVersion") != live["metadata"].get("resourceVersion"):
                self._event(env, "DeploymentUpdated", f"updated Deployment {names.deployment} ({differs} differed)")
            else:
                log.debug("%s/%s Deployment differs at %s but applying changed nothing", namespace, name, differs)
            live = applied
        workers = _workers(live)

        seen = Observation(
            generation=meta.get("generation"), exchange=spec.exchange.name, queue=names.queue,
            selector=names.selector, topology=topology, workers=workers, problems=problems,
            broker_error=broker_error, error_reason=error_reason,
            worker_problems=(db_problem,) if db_problem else (),
        )
        status = build_status(seen, old_status)
        if status_changed(status, old_status):
            self.kube.patch_environment_status(namespace, name, status)
            if status["phase"] != old_status.get("phase"):
                log.info("%s/%s phase %s -> %s", namespace, name, old_status.get("phase"), status["phase"])
        return status

    # -- teardown --------------------------------------------------------------------------------------------
    def teardown(self, env: Obj) -> list[str]:
        """Unbind and drop the user always; the queue only under ``deletionPolicy: Delete``; then the workers."""
        with self._lock(env["metadata"]["uid"]):
            meta = env["metadata"]
            namespace, name = meta["namespace"], meta["name"]
            spec = MatchEnvironmentSpec.model_validate(env.get("spec") or {})
            desired = desired_topology(namespace, name, spec)
            names = desired.names
            self.kube.patch_environment_status(namespace, name, {"phase": Phase.DELETING.value})
            done: list[str] = []
            try:
                conn = self.connection_for(env, spec)
                client = self.clients.get(conn)
                plan = plan_teardown(desired, client.snapshot(),
                                     delete_queue=spec.deletion_policy is DeletionPolicy.DELETE,
                                     previous_exchange=(env.get("status") or {}).get("exchange"))
                done = apply_plan(client, plan)
            except (BrokerError, BrokerConfigError) as exc:
                message = f"cannot remove the broker topology yet: {exc}"
                self._event(env, _error_reason(exc), message, "Warning")
                self.kube.patch_environment_status(namespace, name, {"lastError": message})
                raise TeardownIncomplete(message) from exc
            for what in done:
                self._event(env, "BrokerChanged", what)
            if spec.deletion_policy is DeletionPolicy.RETAIN:
                self._event(env, "QueueRetained", f"kept queue {names.queue} and its messages (deletionPolicy Retain)")
            if self.kube.delete_deployment(namespace, names.deployment):
                done.append(f"deleted Deployment {names.deployment}")
            if self.kube.delete_secret(namespace, names.broker_secret):
                done.append(f"deleted Secret {names.broker_secret}")
            self.autoscaler.forget(meta["uid"])
            log.info("%s/%s torn down: %s", namespace, name, "; ".join(done) or "nothing to do")
            return done

    # -- resync ----------------------------------------------------------------------------------------------
    def resync_all(self) -> ResyncReport:
        """Re-check every environment: one broker snapshot per broker, one Deployment and one Secret list."""
        started = self.clock()
        calls_before = self.clients.total_calls()
        namespaces: list[str | None] = list(self.settings.namespaces) or [None]
        envs = [e for ns in namespaces for e in self.kube.list_environments(ns)]
        envs = [e for e in envs if not e["metadata"].get("deletionTimestamp")]
        prefetched = Prefetched()
        for ns in namespaces:
            for d in self.kube.list_deployments(MANAGED_SELECTOR, ns):
                prefetched.deployments[(d["metadata"]["namespace"], d["metadata"]["name"])] = d
            for s in self.kube.list_secrets(MANAGED_SELECTOR, ns):
                prefetched.secrets[(s["metadata"]["namespace"], s["metadata"]["name"])] = s
        report = ResyncReport(environments=len(envs))
        for env in envs:
            meta = env["metadata"]
            spec_raw = env.get("spec") or {}
            # an environment's broker Secret that the list did not return is known to be missing
            prefetched.secrets.setdefault((meta["namespace"], broker_secret_name(meta["name"])), None)
            spec: MatchEnvironmentSpec | None = None
            conn: BrokerConnection | None = None
            try:
                spec = MatchEnvironmentSpec.model_validate(spec_raw)
                conn = self.connection_for(env, spec, prefetched)
            except (ValidationError, BrokerConfigError, ApiException):
                pass
            if conn is not None and conn.key not in prefetched.snapshots:
                try:
                    prefetched.snapshots[conn.key] = self.clients.get(conn).snapshot()
                except BrokerError as exc:
                    prefetched.snapshots[conn.key] = exc
            if spec is not None:
                self._autoscale(env, spec, prefetched, conn)
            before = env.get("status")
            try:
                after = self.converge(env, prefetched)
            except ApiException as exc:
                log.warning("resync of %s/%s failed: %s %s", env["metadata"]["namespace"], env["metadata"]["name"],
                            exc.status, exc.reason)
                continue
            report.changes += int(status_changed(after, before))
        report.management_calls = self.clients.total_calls() - calls_before
        report.seconds = self.clock() - started
        return report

    def _autoscale(self, env: Obj, spec: MatchEnvironmentSpec, prefetched: Prefetched,
                   conn: BrokerConnection | None) -> None:
        if not spec.autoscaling.enabled or conn is None:
            return
        snapshot = prefetched.snapshots.get(conn.key)
        if not isinstance(snapshot, BrokerSnapshot):
            return  # never scale on a guess while the broker cannot be read
        meta = env["metadata"]
        seen = observe(desired_topology(meta["namespace"], meta["name"], spec), snapshot)
        current = spec.workers.replicas
        wanted = self.autoscaler.decide(meta["uid"], spec.autoscaling, seen.messages, current, self.clock())
        if wanted != current:
            self.kube.scale_environment(meta["namespace"], meta["name"], wanted)
            env.setdefault("spec", {}).setdefault("workers", {})["replicas"] = wanted
            self._event(env, "Scaled", f"workers {current} -> {wanted} for a backlog of {seen.messages} messages")


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
