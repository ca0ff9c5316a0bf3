"""What every reconcile step shares: one environment parsed once (:class:`Context`), what a resync pass read once for
all of them (:class:`Prefetched`), and the operator's services (:class:`Services`): the API seam, the broker
clients, events, the Secret and snapshot caches, and the fenced apply of a broker plan."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from matchenv.api import BackfillPhase, MatchEnvironmentSpec
from matchenv.connection import BrokerConnection, read_connection
from matchenv.naming import EnvironmentNames
from matchenv.operator import builders
from matchenv.operator.autoscaler import Autoscaler
from matchenv.operator.backfills import Backfills, request_digest
from matchenv.operator.backlog import BacklogProbe
from matchenv.operator.brokers import BrokerClients
from matchenv.operator.coalesce import Coalesced
from matchenv.operator.kube import Kube, Obj
from matchenv.operator.pause import PausePlan, plan_pause
from matchenv.operator.settings import OperatorSettings
from matchenv.topology.applier import apply_plan
from matchenv.topology.client import BrokerError
from matchenv.topology.desired import DesiredTopology, desired_topology
from matchenv.topology.planner import Action, Plan
from matchenv.topology.snapshot import BrokerSnapshot, Scope

log = logging.getLogger("matchenv.operator")


@dataclass
class Prefetched:
    """What the resync loop read once for all environments, handed to each converge. ``secrets`` caches every
    Secret read during one pass (``None``: not in the list); ``snapshots`` one snapshot (or its error) per broker
    connection."""

    snapshots: dict[tuple[str, str, str], BrokerSnapshot | Exception] = field(default_factory=dict)
    deployments: Mapping[tuple[str, str], Obj] = field(default_factory=dict)
    secrets: dict[tuple[str, str], Obj | None] = field(default_factory=dict)
    started: float = 0.0  # when the pass began reading (clock): data older than any converge finished since
    ensured: set[tuple[str, ...]] = field(default_factory=set)  # archives and length caps this pass looked at


@dataclass
class Context:
    """One environment, parsed once for all the steps of a converge or a teardown."""

    env: Obj
    spec: MatchEnvironmentSpec
    desired: DesiredTopology
    prefetched: Prefetched | None
    pause: PausePlan = field(default_factory=lambda: PausePlan(False, None, None))

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
    def annotations(self) -> dict[str, str]:
        annotations: dict[str, str] = self.meta.get("annotations") or {}
        return annotations

    @property
    def owner_reference(self) -> Obj:
        return builders.owner_reference(self.name, self.uid)

    @property
    def own_broker(self) -> bool:
        """True when the environment uses the operator's broker Secret (so the operator's bounds apply)."""
        return self.spec.broker.connection_secret_ref is None


class Services:
    """The operator's seams and caches, shared by every step of every environment."""

    def __init__(self, kube: Kube, settings: OperatorSettings, clients: BrokerClients | None = None,
                 autoscaler: Autoscaler | None = None, clock: Callable[[], float] = time.monotonic,
                 owner: Obj | None = None) -> None:
        if not settings.cluster_id:
            raise ValueError("the operator's settings name no cluster identity (see matchenv.identity)")
        self.kube = kube
        self.settings = settings
        self.cluster = settings.cluster_id  # in every marker and broker user name this operator makes
        self.clients = clients or BrokerClients(settings.broker_timeout, write_budget=kube.write_budget,
                                                  check_send=kube.send_check)
        self.autoscaler = autoscaler or Autoscaler()
        self.backlog: BacklogProbe | None = None  # the fresh ready counts, once the operator has started it
        self.clock = clock
        self.owner = owner  # the operator's Deployment: owns what the operator makes for itself (publisher Secret)
        self.backfills = Backfills(kube, self.event)
        # (broker key..., vhost, exchange) whose archive is in place, ("max-length", broker key..., vhost) capped
        self.ensured: set[tuple[str, ...]] = set()
        self.releases = Coalesced()  # the teardowns' checks of whether an archive still has anything to follow
        # uid → (resourceVersion, what it was built from) of the worker Deployment last found as built
        self.workers_in_sync: dict[str, tuple[Any, tuple[Any, ...]]] = {}

    def context(self, env: Obj, prefetched: Prefetched | None) -> Context:
        """``env`` parsed (raises pydantic's ValidationError for a spec the schema let through but the model
        refuses); a backfill that completed leaves the broker's desired state, though ``spec.backfill`` stays."""
        spec = MatchEnvironmentSpec.model_validate(env.get("spec") or {})
        meta = env["metadata"]
        state = (env.get("status") or {}).get("backfill") or {}
        broker_spec = spec
        if spec.backfill is not None and state.get("phase") == BackfillPhase.COMPLETE.value \
                and state.get("request") == request_digest(spec.backfill):
            # done: its user (which may read the whole archive, more than a subset environment's own feed) and
            # its exchange go; a changed request makes them again
            broker_spec = spec.model_copy(update={"backfill": None})
        events_were_on = bool((env.get("status") or {}).get("eventsSecret"))
        last_pause = (env.get("status") or {}).get("pause") or {}
        pause = plan_pause(spec, last_pause, dt.datetime.now(dt.UTC), archive=self.settings.archive != "off")
        return Context(env, spec, desired_topology(self.cluster, meta["namespace"], meta["name"], broker_spec,
                                                   backfill_ran=bool(state) or bool(last_pause.get("catchUp")),
                                                   events_were_on=events_were_on,
                                                   # its user (which may read the whole archive) only from the
                                                   # resume on, when its Job runs
                                                   replaying=pause.catch_up is not None and not pause.detached,
                                                   detached=pause.detached),
                       prefetched, pause)

    def event(self, env: Obj, reason: str, message: str, type_: str = "Normal") -> None:
        """Log and post an event on ``env``; an API server that refuses it costs the event only."""
        meta = env["metadata"]
        log.info("%s/%s %s: %s", meta["namespace"], meta["name"], reason, message)
        try:
            self.kube.post_event(env, reason, message, type_)
        except ApiException as exc:
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc.reason)

    def secret(self, namespace: str, name: str, prefetched: Prefetched | None, fresh: bool = False) -> Obj | None:
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

    def broker_ref(self, env: Obj, spec: MatchEnvironmentSpec) -> tuple[str, str]:
        """The broker Secret (namespace, name) an environment uses: its own, else the operator's."""
        ref = spec.broker.connection_secret_ref
        return (env["metadata"]["namespace"], ref.name) if ref else self.settings.broker_secret_ref

    def connection_for(self, env: Obj, spec: MatchEnvironmentSpec,
                       prefetched: Prefetched | None = None) -> BrokerConnection:
        return self.connection_at(*self.broker_ref(env, spec), prefetched)

    def connection_at(self, namespace: str, name: str, prefetched: Prefetched | None = None) -> BrokerConnection:
        """The broker connection broker Secret ``namespace/name`` holds (read as :meth:`secret` reads it)."""
        return read_connection(self.secret(namespace, name, prefetched), namespace, name)

    def snapshot(self, conn: BrokerConnection, client: Any, prefetched: Prefetched | None,
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

    def apply(self, ctx: Context, client: Any, actions: tuple[Action, ...], announce: bool = True) -> list[str]:
        """Apply ``actions`` (each asking the leader fence first); one event lists what was done, also when a
        later action failed (one per action made eight writes to the API server for each new environment), unless
        the caller says it itself (``announce=False``)."""
        done: list[str] = []
        try:
            return apply_plan(client, Plan(actions), self._guard, done.append)
        finally:
            if done and announce:
                self.event(ctx.env, "BrokerChanged", "; ".join(done))

    def _guard(self, action: Action) -> None:
        self.kube.may_write(action.describe(), "broker")

    def ensured_already(self, ctx: Context, key: tuple[str, ...], per_pass: bool = True) -> bool:
        """Whether a shared object (an archive, a length cap) was looked at already: once per process, and with
        ``per_pass`` once per resync pass (its snapshot shows drift), never once per environment."""
        return key in (self.ensured if ctx.prefetched is None or not per_pass else ctx.prefetched.ensured)

    def mark_ensured(self, ctx: Context, key: tuple[str, ...]) -> None:
        self.ensured.add(key)
        if ctx.prefetched is not None:
            ctx.prefetched.ensured.add(key)

    def length_cap(self, ctx: Context) -> int:
        """The administrator's maximum queue length that binds this environment (its own broker's only), 0: none."""
        return self.settings.max_queue_length if ctx.own_broker else 0
