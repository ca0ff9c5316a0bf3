"""Thin kopf handlers: read, hand to the reconciler, translate its outcome into kopf's retry semantics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf

from matchenv.api import API_GROUP, API_VERSION, PLURAL
from matchenv.naming import BACKFILL_COMPONENT, COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from matchenv.operator import metrics
from matchenv.operator.backlog import BacklogProbe
from matchenv.operator.drift import BrokerEvents, Changed, Repairs
from matchenv.operator.errors import TeardownIncomplete
from matchenv.operator.fair import FairPool, flow_of
from matchenv.operator.handsoff import switched
from matchenv.operator.kopf_diffbase import EnvironmentDiffBase
from matchenv.operator.kopf_login import fenced_session
from matchenv.operator.kube import Obj
from matchenv.operator.memory import give_back
from matchenv.operator.reconciler import Reconciler
from matchenv.operator.settings import OperatorSettings
from matchenv.operator.steps.finalizer import FINALIZER, has_finalizer

RESOURCE = (API_GROUP, API_VERSION, PLURAL)
log = logging.getLogger("matchenv.operator")


def plain(value: Any) -> Any:
    """kopf's body views → plain dicts and lists the reconciler can keep and modify."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def raw_object(event: kopf.RawEvent) -> Obj:
    """The object a watch event brought, as decoded: plain dicts and lists already, a new one at each event (kopf
    never changes it). Copying kopf's body view of it instead (:func:`plain`) was ~4% of the operator's CPU during
    a burst, at each of the Deployment controller's events."""
    return cast(Obj, event["object"])


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ours: OperatorSettings = memo.settings
    # Progress and diff-base in annotations: the CRD's status schema would prune kopf's own status fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = EnvironmentDiffBase(prefix=API_GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = FINALIZER  # put on by the converge itself (steps/finalizer.py)
    settings.posting.level = logging.WARNING  # our own events say what changed; kopf's would repeat it
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = max(30.0, ours.api_timeout * 3)
    settings.networking.connect_timeout = 10
    settings.execution.max_workers = 8
    if ours.namespaces:
        # namespaced install: the listed namespaces are exact names; kopf needs no cluster-wide read of namespaces
        # or CRDs (its Roles are in the watched namespaces only)
        settings.scanning.disabled = True


@kopf.on.login()
async def login(memo: kopf.Memo, logger: kopf.Logger, settings: kopf.OperatorSettings,
                **kwargs: Any) -> kopf.AiohttpSession | None:
    """kopf's default login (the client library's in-cluster or kubeconfig credentials) in a session whose writes
    ask the leader fence (:mod:`matchenv.operator.kopf_login`)."""
    info = kopf.login_via_client(logger=logger, settings=settings, **kwargs)
    if info is None:
        return None
    return fenced_session(info, memo.reconciler.kube.send_check)


@kopf.on.startup()
async def start_resync(memo: kopf.Memo, **_: Any) -> None:
    memo.resync_task = asyncio.create_task(resync_forever(memo.reconciler, memo.settings.resync_seconds))


@kopf.on.startup()
def follow_broker_events(memo: kopf.Memo, **_: Any) -> None:
    """The leader repairs what the broker says was deleted at once (see :mod:`matchenv.operator.drift`)."""
    settings: OperatorSettings = memo.settings
    if not settings.broker_events:
        return
    reconciler: Reconciler = memo.reconciler
    stop = threading.Event()

    def repair(namespace: str, name: str) -> None:
        metrics.DRIFT_REPAIRS.inc()
        if namespace:
            reconciler.repair(namespace, name)
        else:
            reconciler.repair_publisher()

    repairs = Repairs(repair, stop).start()

    def on_change(what: Changed) -> None:
        metrics.BROKER_EVENTS.inc()
        if reconciler.is_publisher(what):
            repairs.add("", "")
        elif (owner := reconciler.owner_of(what)) is not None:
            repairs.add(*owner)

    memo.broker_events_stop = stop
    memo.broker_events = BrokerEvents(reconciler.events_url, on_change, stop, settings.broker_timeout).start()


@kopf.on.startup()
def probe_backlogs(memo: kopf.Memo, **_: Any) -> None:
    """Autoscaled queues' fresh ready counts, a converge as soon as one asks for more workers (see
    :mod:`matchenv.operator.backlog`)."""
    settings: OperatorSettings = memo.settings
    if not settings.backlog_probe:
        return
    reconciler: Reconciler = memo.reconciler
    stop = threading.Event()

    def scale_up(namespace: str, name: str) -> None:
        metrics.BACKLOG_WAKES.inc()
        reconciler.repair(namespace, name)

    repairs = Repairs(scale_up, stop).start()
    memo.backlog_stop = stop
    reconciler.services.backlog = BacklogProbe(repairs.add, stop).start()


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    # Shutting down (SIGTERM): stop leading at once, so the standby takes over within its retry period instead of
    # after kopf has wound down its watches (seconds). The fence closes before the Lease is released.
    step_down = getattr(memo, "step_down", None)
    if step_down is not None:
        await asyncio.to_thread(memo.reconciler.kube.wait_for_events, 1.0)  # while it may still write them
        await asyncio.to_thread(step_down)
    # kopf waits for its stop flag in an executor thread; setting it lets that thread (and the process) end
    # when kopf stops for another reason, such as SIGTERM.
    halt = getattr(memo, "halt", None)
    if halt is not None:
        halt.set()
    pool = getattr(memo, "fair", None)
    if pool is not None:
        pool.stop()
    for name in ("broker_events_stop", "backlog_stop"):
        threads_stop = getattr(memo, name, None)
        if threads_stop is not None:
            threads_stop.set()
    task = getattr(memo, "resync_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def resync_forever(reconciler: Reconciler, interval: float) -> None:
    """Every ``interval`` seconds: one broker snapshot per broker, repair drift, refresh status, autoscale."""
    while True:
        await asyncio.sleep(interval)
        metrics.RESYNCS.inc()
        try:
            with metrics.RESYNC_SECONDS.time():
                report = await asyncio.to_thread(reconciler.resync_all)
        except Exception as exc:  # the API server may be away; the next pass tries again
            metrics.RESYNC_ERRORS.inc()
            log.warning("resync failed: %s", exc)
            continue
        await asyncio.to_thread(give_back)  # the pages the pass (or a burst before it) freed leave the RSS
        metrics.MANAGEMENT_CALLS.set(report.management_calls)
        metrics.ENVIRONMENTS.set(report.environments)
        metrics.STATUS_CHANGES.inc(report.changes)
        level = logging.INFO if report.changes else logging.DEBUG
        log.log(level, "resync: %d environments, %d management calls, %d status changes, %.2fs",
                report.environments, report.management_calls, report.changes, report.seconds)


async def fairly(memo: kopf.Memo, body: kopf.Body, work: Callable[[Obj], Any]) -> Any:
    """``work(body)`` on the pool that takes turns between namespaces and writers (:mod:`matchenv.operator.fair`):
    one team's or one tool's burst never queues in front of another's environment."""
    env = plain(body)
    pool: FairPool = memo.fair
    return await asyncio.wrap_future(pool.submit(flow_of(env), lambda: work(env)))


@kopf.on.resume(*RESOURCE, errors=kopf.ErrorsMode.TEMPORARY, backoff=5)
@kopf.on.create(*RESOURCE, errors=kopf.ErrorsMode.TEMPORARY, backoff=5)
@kopf.on.update(*RESOURCE, errors=kopf.ErrorsMode.TEMPORARY, backoff=5)
async def converge(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Broker problems end in a Degraded status (the resync loop heals them); API errors are retried by kopf."""
    memo.reconciler.will_converge(body["metadata"]["uid"])
    await fairly(memo, body, memo.reconciler.converge)


@kopf.on.event(*RESOURCE, when=lambda body, **_: switched(body))
def reconcile_switched(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The hands-off annotation was set or removed (kopf's update handler does not see annotations under the
    operator's own prefix): converge now, which holds or repairs (:mod:`matchenv.operator.handsoff`)."""
    env = plain(body)
    namespace, name = env["metadata"]["namespace"], env["metadata"]["name"]
    pool: FairPool = memo.fair
    pool.submit(flow_of(env), lambda: memo.reconciler.repair(namespace, name, uid=env["metadata"]["uid"]))


@kopf.on.event("apps", "v1", "deployments", labels={MANAGED_BY_LABEL: MANAGED_BY})
def workers_changed(body: kopf.Body, event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Our worker Deployments, watched (no state stored on them): WorkersReady follows the pods at once."""
    try:
        memo.reconciler.workers_changed(raw_object(event), deleted=event.get("type") == "DELETED")
    except Exception as exc:  # the resync loop repairs whatever this missed
        log.warning("workers of %s/%s: %s", body.get("metadata", {}).get("namespace"),
                    body.get("metadata", {}).get("name"), exc)


@kopf.on.event("batch", "v1", "jobs", labels={MANAGED_BY_LABEL: MANAGED_BY, COMPONENT_LABEL: BACKFILL_COMPONENT})
def backfill_changed(body: kopf.Body, event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Our backfill Jobs, watched (no state stored on them): their end shows in status at once."""
    try:
        memo.reconciler.backfill_changed(raw_object(event), deleted=event.get("type") == "DELETED")
    except Exception as exc:  # the resync loop catches up
        log.warning("backfill Job %s/%s: %s", body.get("metadata", {}).get("namespace"),
                    body.get("metadata", {}).get("name"), exc)


@kopf.on.delete(*RESOURCE, errors=kopf.ErrorsMode.TEMPORARY, backoff=5, when=has_finalizer)
async def teardown(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    try:
        await fairly(memo, body, memo.reconciler.teardown)
    except TeardownIncomplete as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay or memo.settings.resync_seconds) from exc
