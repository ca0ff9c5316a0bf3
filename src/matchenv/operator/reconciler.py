"""The orchestrator: converge and tear down one MatchEnvironment, run the resync pass, answer the watches.

Handlers (create/update/resume/delete), the watches and the resync pass all come here; a lock per environment keeps
them from working on the same one at once. Under the hands-off annotation (:mod:`matchenv.operator.handsoff`) a
converge only says so in status. A converge runs the steps of :mod:`matchenv.operator.steps` over one
parsed :class:`~matchenv.operator.context.Context`::

    expiry       an environment past spec.expireAfter is deleted (its teardown follows), nothing else runs
    topology     bounds, ownership, the worker's credentials, the broker objects, the archive
    autoscaling  the worker count from the backlog (skipped while the topology is refused)
    workers      the worker Deployment
    rotation     a rotation's previous broker user removed, once no worker pod runs with it
    backfill     the backfill Job and a pause's catch-up Job (skipped while the topology is refused)
    deadletters  spec.deadLetterRequest, carried out once per id with the operator's broker credentials
    status       what they saw, written when it changed

Every step is idempotent: a second run against an unchanged world writes nothing. A teardown
(:mod:`matchenv.operator.teardown`) runs in the order that loses nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from pydantic import ValidationError

from matchenv.connection import worker_amqp_url
from matchenv.naming import publisher_user_name
from matchenv.operator import metrics
from matchenv.operator.autoscaler import Autoscaler
from matchenv.operator.backfills import Backfills
from matchenv.operator.brokers import BrokerClients
from matchenv.operator.context import Prefetched, Services
from matchenv.operator.deployment_cache import DeploymentCache
from matchenv.operator.drift import Changed
from matchenv.operator.environment_metrics import EnvironmentMetrics
from matchenv.operator.errors import TeardownIncomplete
from matchenv.operator.handsoff import DELETE_WAITS, MESSAGE, hands_off, held, held_status
from matchenv.operator.kube import Kube, Obj
from matchenv.operator.resync import Resync, ResyncReport
from matchenv.operator.settings import OperatorSettings
from matchenv.operator.status import now_rfc3339, refresh_workers, status_changed
from matchenv.operator.steps.autoscaling import autoscale
from matchenv.operator.steps.backfill import run_backfill, run_catch_up
from matchenv.operator.steps.deadletters import carry_out
from matchenv.operator.steps.expiry import expire_if_due
from matchenv.operator.steps.finalizer import hold_deletion
from matchenv.operator.steps.rotation import retire_previous_user
from matchenv.operator.steps.status import invalid_spec_status, write_status
from matchenv.operator.steps.topology import converge_topology
from matchenv.operator.steps.workers import converge_workers, observe_workers
from matchenv.operator.teardown import teardown
from matchenv.operator.watches import Follow, OwnerIndex, Sightings

log = logging.getLogger("matchenv.operator")


class Reconciler:
    def __init__(self, kube: Kube, settings: OperatorSettings, clients: BrokerClients | None = None,
                 autoscaler: Autoscaler | None = None, clock: Callable[[], float] = time.monotonic,
                 stop_wait: float = 20.0, owner: Obj | None = None,
                 environments: EnvironmentMetrics | None = None) -> None:
        self.services = Services(kube, settings, clients, autoscaler, clock, owner)
        # the per-environment series (main.py registers them; a test reads its own)
        self.environments = environments or EnvironmentMetrics()
        self.kube = kube
        self.stop_wait = stop_wait  # how long one teardown call waits for the workers before it is retried
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        self._converged_at: dict[str, float] = {}  # uid → when a converge last finished (clock)
        # uid → when its teardown finished (None: under way). A deleted environment is never converged again: a
        # resync pass that listed it before its deletion would otherwise put back what the teardown removed.
        self._torn_down: dict[str, float | None] = {}
        # environments a handler's converge waits for on the pool: a pass leaves them to it (in a burst the pass
        # converged what the handlers were about to, and they read it all again)
        self._awaiting: set[str] = set()
        # uid → "held" or "resumed", as last said in an Event: each said once (a pass's list may predate a status
        # written a moment ago)
        self._announced: dict[str, str] = {}
        self._owners = OwnerIndex()
        self._sightings = Sightings()
        self.deployments = DeploymentCache()  # what the watch reports, for the resync passes
        self._resync = Resync(self.services, self.converge, self.deployments)

    @property
    def settings(self) -> OperatorSettings:
        return self.services.settings

    @property
    def backfills(self) -> Backfills:
        return self.services.backfills

    def _lock(self, uid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks[uid]

    # -- converge --------------------------------------------------------------------------------------------
    def will_converge(self, uid: str) -> None:
        """A handler's converge of ``uid`` is queued: resync passes leave it alone until that begins."""
        with self._locks_guard:
            self._awaiting.add(uid)

    def converge(self, env: Obj, prefetched: Prefetched | None = None) -> Obj | None:
        """Make broker and cluster match ``env``; write and return its status. With a resync pass's
        ``prefetched`` reads, returns None (and does nothing) when a handler converged the environment after the
        pass began reading: acting on the older reads could only undo that (e.g. set a password again). Returns None
        too once the environment's teardown has begun, and while a handler's converge of it is queued."""
        uid = env["metadata"]["uid"]
        with self._locks_guard:
            if prefetched is None:
                self._awaiting.discard(uid)
            elif uid in self._awaiting:
                return None
        with self._lock(uid):
            if uid in self._torn_down:
                return None
            if prefetched is not None and self._converged_at.get(uid, prefetched.started - 1) > prefetched.started:
                return None
            try:
                with self.kube.events_held():  # sent once its status is written
                    return self._hold(env, MESSAGE) if hands_off(env) else self._converge(env, prefetched)
            finally:
                self._converged_at[uid] = self.services.clock()

    def _converge(self, env: Obj, prefetched: Prefetched | None) -> Obj:
        s = self.services
        namespace, name = env["metadata"]["namespace"], env["metadata"]["name"]
        with metrics.CONVERGE_SECONDS.time():
            try:
                ctx = s.context(env, prefetched)
            except ValidationError as exc:
                status = invalid_spec_status(exc)
                self.kube.patch_environment_status(namespace, name, status)
                self.environments.record(namespace, name, status, None, None, time.time(), converged=False)
                return status
            self._owners.remember(ctx)
            expires, deleted = expire_if_due(s, ctx, dt.datetime.now(dt.UTC))
            if deleted:  # its teardown (the delete handler) follows deletionPolicy
                return ctx.old_status
            if not hold_deletion(s, ctx):  # gone, or going before its first converge: nothing is made for it
                return ctx.old_status
            topology = converge_topology(s, ctx)
            autoscaling = None if topology.refused else autoscale(s, ctx, topology.observation, topology.probe_url)
            workers, worker_problem = converge_workers(s, ctx, topology)
            credentials = retire_previous_user(s, ctx, topology)
            backfill = None if topology.refused else run_backfill(s, ctx, topology)
            catch_up = None if topology.refused else run_catch_up(s, ctx, topology)
            exists = topology.observation is not None and topology.observation.exists and not topology.refused
            dead_letters = carry_out(s, ctx, topology.probe_url if exists else None)
            status = write_status(s, ctx, topology, workers, worker_problem, autoscaling, backfill, expires,
                                  dead_letters, catch_up, credentials)
            said = self._announced.get(ctx.uid)
            if said == "held" or (said is None and held(ctx.old_status)):
                self._announced[ctx.uid] = "resumed"
                s.event(env, "ReconciliationResumed", "the operator manages this environment again: what was "
                        "changed by hand meanwhile is repaired")
        self.environments.record(namespace, name, status, topology.observation, topology.error_reason, time.time(),
                                 converged=not topology.refused)
        return status

    def _hold(self, env: Obj, message: str) -> Obj:
        """Hands off (:mod:`matchenv.operator.handsoff`): say so in status and, when it begins, in an Event; change
        nothing else."""
        namespace, name, uid = env["metadata"]["namespace"], env["metadata"]["name"], env["metadata"]["uid"]
        old = env.get("status") or {}
        status = held_status(old, now_rfc3339(), message)
        if status_changed(status, old):
            self.kube.patch_environment_status(namespace, name, {"conditions": status["conditions"]})
        if self._announced.get(uid) != "held" and not held(old):
            self.services.event(env, "ReconciliationPaused", message)
        self._announced[uid] = "held"
        self.environments.record_status(namespace, name, status)  # the condition's series for the one on call
        return status

    # -- teardown --------------------------------------------------------------------------------------------
    def teardown(self, env: Obj) -> list[str]:
        """Tear ``env`` down (:func:`matchenv.operator.teardown.teardown`); never converged again after this
        begins. Raises :class:`~matchenv.operator.errors.TeardownIncomplete` while a step has to wait, and while
        the operator's hands are off the environment (nothing is removed then)."""
        if hands_off(env):
            with self._lock(env["metadata"]["uid"]):
                self._hold(env, DELETE_WAITS)
            raise TeardownIncomplete(DELETE_WAITS, delay=self.settings.resync_seconds)
        with self._lock(env["metadata"]["uid"]):
            ctx = self.services.context(env, None)
            self._torn_down[ctx.uid] = None
            # what the teardown removes is not drift: the broker's events of it repair nothing (each was a read
            # of the environment, several per teardown, when 2,000 went at once)
            self._owners.forget(ctx.uid)
            self.services.workers_in_sync.pop(ctx.uid, None)
            done = teardown(self.services, ctx, self.stop_wait)
            self._announced.pop(ctx.uid, None)
            self.environments.forget(ctx.namespace, ctx.name)
            self._converged_at.pop(ctx.uid, None)
            self._torn_down[ctx.uid] = self.services.clock()
            log.info("%s/%s torn down: %s", ctx.namespace, ctx.name, "; ".join(done) or "nothing to do")
            return done

    # -- resync ----------------------------------------------------------------------------------------------
    def resync_all(self) -> ResyncReport:
        """One resync pass (:class:`~matchenv.operator.resync.Resync`)."""
        began = self.services.clock()
        # a pass that begins after a teardown finished lists that environment deleted or not at all
        for uid, finished in list(self._torn_down.items()):
            if finished is not None and finished < began:
                self._torn_down.pop(uid, None)
        return self._resync.run()

    def repair_publisher(self) -> None:
        self._resync.keep_publisher(Prefetched(started=self.services.clock()))

    # -- the watches -----------------------------------------------------------------------------------------
    def owner_of(self, what: Changed) -> tuple[str, str] | None:
        """The environment (namespace, name) a removed broker object belonged to, if any."""
        return self._owners.owner_of(what)

    def is_publisher(self, what: Changed) -> bool:
        return bool(self.settings.publisher_secret) and what.kind == "user" and \
            what.name == publisher_user_name(self.services.cluster, self.settings.operator_namespace)

    def events_url(self) -> str:
        """The AMQP URL (vhost /, where ``amq.rabbitmq.event`` is) of the operator's broker, as its admin."""
        conn = self.services.connection_at(*self.settings.broker_secret_ref)
        return worker_amqp_url(conn.url, conn.username, conn.password, "/")

    def repair(self, namespace: str, name: str, uid: str | None = None) -> Obj | None:
        """Converge one environment now (a broker event said something of it went, or its Deployment moved);
        nothing when it is gone, being deleted, or (``uid``) no longer the object that asked."""
        if uid is not None and uid in self._torn_down:  # its own teardown moved it (a Deployment it deleted)
            return None
        env = self._current(namespace, name, uid)
        return None if env is None else self.converge(env)

    def workers_changed(self, deployment: Obj, deleted: bool = False) -> Obj | None:
        """A Deployment of ours changed: status follows its pods without waiting for the resync, and a deleted or
        hand-edited one is put back at once (:meth:`Sightings.deployment`)."""
        self.deployments.seen(deployment, deleted)
        follow = self._sightings.deployment(deployment, deleted)
        if follow is None:
            return None
        if follow.how == "converge":
            return self.repair(follow.namespace, follow.name, uid=follow.uid)
        return self._refresh_workers(follow, deployment)

    def backfill_changed(self, job: Obj, deleted: bool = False) -> Obj | None:
        """A backfill Job of ours ended (or went): converge its environment now."""
        follow = self._sightings.job(job, deleted)
        return None if follow is None else self.repair(follow.namespace, follow.name, uid=follow.uid)

    def _refresh_workers(self, follow: Follow, deployment: Obj) -> Obj | None:
        """Status follows the Deployment's pods without a converge (no broker call, no Secret read): one read of
        the environment and, when it changed, one status write. A status this cannot follow (another generation's,
        a problem) gets the full converge, as does a Deployment that no longer matches what was built (drift). The
        environment is read under its lock: a converge under way (whose Deployment moved) has written its status
        by then, and this follows it rather than converging it again."""
        with self._lock(follow.uid):
            env = self._current(follow.namespace, follow.name, follow.uid)
            if env is None or follow.uid in self._torn_down:
                return None
            old = env.get("status") or {}
            wanted = ((env.get("spec") or {}).get("workers") or {}).get("replicas")
            status = refresh_workers(old, observe_workers(self.services, deployment),
                                     env["metadata"].get("generation"))
            if status is not None and wanted == (deployment.get("spec") or {}).get("replicas"):
                if status_changed(status, old):
                    self.kube.patch_environment_status(follow.namespace, follow.name, status)
                self.environments.record_status(follow.namespace, follow.name, status)
                return status
        return self.converge(env)  # the read above is fresh: no second one

    def _current(self, namespace: str, name: str, uid: str | None) -> Obj | None:
        """The environment as it is now; None when gone, being deleted, or (``uid``) no longer that object."""
        env = self.kube.get_environment(namespace, name)
        if env is None or env["metadata"].get("deletionTimestamp") or uid not in (None, env["metadata"].get("uid")):
            return None
        return env
