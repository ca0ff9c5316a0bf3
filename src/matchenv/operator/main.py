"""``matchenv operator run``: metrics, leader election, then kopf until stopped or the Lease is lost."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import ssl
import sys
import threading
import time
from types import FrameType
from typing import NoReturn

import kopf
from kubernetes import client
from prometheus_client import REGISTRY

from matchenv import health
from matchenv.identity import ClusterIdentityError, cluster_identity
from matchenv.operator import metrics
from matchenv.operator.environment_metrics import EnvironmentMetrics
from matchenv.operator.fair import FairPool
from matchenv.operator.kube import Kube, new_api_client
from matchenv.operator.leader import LeaseElector
from matchenv.operator.memory import tune_malloc
from matchenv.operator.metrics_access import CertificateMissing, MetricsAccess, tls_context
from matchenv.operator.reconciler import Reconciler
from matchenv.operator.settings import OperatorSettings

log = logging.getLogger("matchenv.operator")


def installation_owner(kube: Kube, settings: OperatorSettings) -> dict[str, object] | None:
    """An ownerReference to the operator's own Deployment, for what it creates outside any MatchEnvironment."""
    if not settings.owner_deployment:
        return None
    try:
        deployment = kube.get_deployment(settings.operator_namespace, settings.owner_deployment)
    except Exception as exc:  # the operator runs on; only the clean-up on uninstall is lost
        log.warning("could not read Deployment %s/%s (%s): its Lease and publisher Secret will not be owned by it",
                    settings.operator_namespace, settings.owner_deployment, exc)
        return None
    if deployment is None:
        log.warning("Deployment %s/%s not found: the Lease and publisher Secret will not be owned by it",
                    settings.operator_namespace, settings.owner_deployment)
        return None
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": settings.owner_deployment,
            "uid": deployment["metadata"]["uid"]}


def run(settings: OperatorSettings, verbose: bool = False) -> int:
    """Run the operator; the exit code is 1 when leadership was lost (so the pod restarts into standby)."""
    tune_malloc()  # before any thread starts
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1` dumps every thread's stack to stderr
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if settings.log_json else kopf.LogFormat.FULL)
    logging.getLogger("matchenv").setLevel(logging.DEBUG if verbose else logging.INFO)
    api = new_api_client(settings.kubeconfig)
    try:
        identity = cluster_identity(client.CoreV1Api(api), settings.cluster_id, settings.api_timeout)
        settings = settings.model_copy(update={"cluster_id": identity})
    except ClusterIdentityError as exc:
        log.error("%s", exc)
        return 2
    log.info("cluster identity %s (in every ownership marker and broker user name this operator makes)",
             settings.cluster_id)
    owner = installation_owner(Kube(api, timeout=settings.api_timeout), settings)
    # the election's own calls are bounded by its retry period, so a renewal cannot outlast the renew deadline
    elector = LeaseElector(Kube(api, timeout=max(0.5, min(settings.api_timeout, settings.lease_seconds / 5))),
                           settings.operator_namespace, settings.lease_name, settings.identity,
                           settings.lease_seconds, owner=owner)
    # the operator's writes go through a client of their own: with election, each is checked again at the socket
    kube = Kube(new_api_client(settings.kubeconfig) if settings.leader_election else api, timeout=settings.api_timeout,
                fence=elector.write_budget if settings.leader_election else None)
    metrics.LEADING.set_function(lambda: float(elector.leading() if settings.leader_election else 1))
    if settings.archive_max_age_seconds is not None:
        metrics.ARCHIVE_MAX_AGE.set(settings.archive_max_age_seconds)
    environments = EnvironmentMetrics()
    REGISTRY.register(environments)
    reconciler = Reconciler(kube, settings, owner=owner, environments=environments)
    REGISTRY.register(metrics.ManagementCallsCollector(reconciler.services.clients.total_calls))
    if settings.metrics_port:
        if settings.metrics_secure:  # every replica answers scrapers, leading or not: reviews are no writes
            try:
                tls = tls_context(settings.metrics_cert_dir)
            except (CertificateMissing, ssl.SSLError, OSError) as exc:
                log.error("cannot serve the secured metrics: %s", exc)
                return 2
            access = MetricsAccess(Kube(api, timeout=min(settings.api_timeout, 5.0)))
            health.serve(settings.metrics_port, metrics=True, tls=tls, access=access.check)
        else:
            health.serve(settings.metrics_port, metrics=True)
    if settings.health_port:
        # alive while the election loop (standby) or the renewals (leader) keep beating
        health.serve(settings.health_port, lambda: time.monotonic() - elector.heartbeat < 3 * settings.lease_seconds
                     or not settings.leader_election)

    stop = threading.Event()
    halt = threading.Event()  # kopf's stop flag: a signal, or the lease lost
    lost = threading.Event()
    if settings.leader_election:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            if not elector.wait_until_leader(stop):
                return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("leading as %s", settings.identity)

        def watch_lease() -> None:
            elector.keep_renewing(lost, stop)
            if lost.is_set():
                halt.set()

        threading.Thread(target=watch_lease, name="lease", daemon=True).start()

    import matchenv.operator.handlers  # noqa: F401 - registers the handlers with kopf

    namespaces = settings.namespaces
    try:
        kopf.run(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            memo=kopf.Memo(reconciler=reconciler, settings=settings, halt=halt, fair=FairPool(),
                           step_down=elector.step_down if settings.leader_election else None),
            stop_flag=halt,
        )
    finally:
        stop.set()
        if settings.leader_election and not lost.is_set():
            elector.step_down()
    _leave(1 if lost.is_set() else 0)


def _leave(code: int) -> NoReturn:
    """End the process with ``code`` now. The daemon threads (broker events and their repairs, the resync's tenant
    pool) may be in the middle of an HTTPS call: letting the interpreter finalize around them once aborted the old
    leader (exit -6 instead of 1, caught by CI). Its writes are fenced already; its logs are flushed first."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
