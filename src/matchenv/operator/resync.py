"""The resync pass: every environment re-checked against one broker snapshot per broker connection, one Deployment
and one Secret list, at each interval. One environment's failure (a bad Secret, a broker that answers nonsense) is
its own; one broker's slowness delays only its own environments."""

from __future__ import annotations

import functools
import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from matchenv.api import MatchEnvironmentSpec
from matchenv.connection import BrokerConfigError, SecretDecodeError
from matchenv.naming import MANAGED_BY, MANAGED_BY_LABEL, broker_secret_name
from matchenv.operator.context import Prefetched, Services
from matchenv.operator.deployment_cache import DeploymentCache
from matchenv.operator.errors import describe
from matchenv.operator.kube import Obj
from matchenv.operator.publisher import ensure_publisher
from matchenv.operator.status import status_changed
from matchenv.topology.client import BrokerError
from matchenv.topology.tally import CallTally, carried, tallying

log = logging.getLogger("matchenv.operator")

MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
BROKERS_AT_ONCE = 4  # tenants' brokers the resync works on side by side


@dataclass
class ResyncReport:
    environments: int = 0
    management_calls: int = 0
    changes: int = 0
    failures: int = 0
    skipped: int = 0
    seconds: float = 0.0


class Resync:
    """Runs passes; ``converge(env, prefetched)`` is the orchestrator's (None: it skipped the environment);
    ``deployments`` is what the watch reported of the worker Deployments."""

    def __init__(self, s: Services, converge: Callable[[Obj, Prefetched], Obj | None],
                 deployments: DeploymentCache) -> None:
        self.s = s
        self.converge = converge
        self.deployments = deployments
        # the work on tenants' brokers (environments with broker.connectionSecretRef): one group per broker Secret
        # under way at most, each on its own, so that a slow one delays nobody else's
        self._pool = ThreadPoolExecutor(max_workers=BROKERS_AT_ONCE, thread_name_prefix="resync")
        self._groups: dict[tuple[str, str], Future[None]] = {}
        # a pass's three lists, and the snapshot of the operator's own broker read beside them
        self._lists = ThreadPoolExecutor(max_workers=4, thread_name_prefix="resync-list")
        self._lock = threading.RLock()  # a group done already runs its callback at once, in the lock
        self._own_last = 0  # environments on the operator's own broker in the last pass

    def run(self) -> ResyncReport:
        """One pass. The operator's own broker's environments by the pass itself, tenants' brokers side by side (at
        most BROKERS_AT_ONCE), waited for at most one interval: a tenant's group still under way then goes on by
        itself, and the passes that begin meanwhile leave that broker to it."""
        with tallying(CallTally()) as tally:
            report = self._run()
        report.management_calls = tally.count  # the pass's own: the handlers' calls meanwhile are theirs
        return report

    def _run(self) -> ResyncReport:
        s = self.s
        prefetched = Prefetched(started=s.clock())
        # the operator's own broker is known before the lists say who uses it: its snapshot is read beside them
        # when the pass will want it (the last pass had environments there, or the publisher's user is kept);
        # otherwise no call for a broker nobody uses
        wanted = self._own_last or s.settings.publisher_secret
        snapshot = self._lists.submit(carried(functools.partial(self._own_snapshot, prefetched))) if wanted else None
        envs = self._read(prefetched)
        if snapshot is not None:
            snapshot.result()  # in the pass's cache before any converge asks for it
        report = ResyncReport(environments=len(envs))
        groups: dict[tuple[str, str], list[Obj]] = defaultdict(list)
        for env in envs:
            groups[self._broker_group(env)].append(env)
        own = groups.pop(s.settings.broker_secret_ref, [])
        self._own_last = len(own)
        report_lock = threading.Lock()
        tenants: list[Future[None]] = []
        with self._lock:
            for key, group in groups.items():
                if key in self._groups:  # the previous pass's work on that broker is still under way
                    report.skipped += len(group)
                    continue
                # on a pool thread, its calls counted as the pass's
                future = self._pool.submit(carried(functools.partial(self._resync_group, group, prefetched, report,
                                                                     report_lock)))
                self._groups[key] = future
                future.add_done_callback(functools.partial(self._done, key))
                tenants.append(future)
        self._resync_group(own, prefetched, report, report_lock)
        wait(tenants, timeout=max(0.0, s.settings.resync_seconds - (s.clock() - prefetched.started)))
        s.clients.evict_idle(max(600.0, 10 * s.settings.resync_seconds))
        if s.settings.publisher_secret:
            self.keep_publisher(prefetched)
        report.seconds = s.clock() - prefetched.started
        return report

    def _own_snapshot(self, prefetched: Prefetched) -> None:
        """The operator's own broker's snapshot, into the pass's cache; a failure is left to the converges that
        need it (they report it, as without this head start)."""
        try:
            conn = self.s.connection_at(*self.s.settings.broker_secret_ref, prefetched)
            self.s.snapshot(conn, self.s.clients.get(conn), prefetched)
        except (BrokerError, BrokerConfigError, SecretDecodeError, ApiException) as exc:
            log.debug("the snapshot of the operator's broker, read beside the lists: %s", describe(exc))

    def _read(self, prefetched: Prefetched) -> list[Obj]:
        """The environments not being deleted, and the pass's Deployments and Secrets: the lists read side by side
        (at 2,000 environments they are ~30 MB of JSON, and the API server encodes one while we decode another);
        the Deployments from what the watch reported, listed only now and then (:mod:`deployment_cache`)."""
        kube = self.s.kube
        namespaces: list[str | None] = list(self.s.settings.namespaces) or [None]
        watched, mark = self.deployments.view()
        reads: list[tuple[Callable[..., list[Obj]], tuple[Any, ...]]] = [
            (kube.list_environments, ()), (kube.list_secrets, (MANAGED_SELECTOR,)),
            *([(kube.list_deployments, (MANAGED_SELECTOR,))] if watched is None else [])]
        lists = [[self._lists.submit(read, *args, ns) for ns in namespaces] for read, args in reads]
        envs_read, secrets, *listed = ([o for f in futures for o in f.result()] for futures in lists)
        envs = [e for e in envs_read if not e["metadata"].get("deletionTimestamp")]
        # read as each environment is converged, not as the pass began (:mod:`deployment_cache`)
        prefetched.deployments = self.deployments.listed(listed[0], mark) if watched is None else watched
        for secret in secrets:
            prefetched.secrets[(secret["metadata"]["namespace"], secret["metadata"]["name"])] = secret
        for env in envs:
            meta = env["metadata"]
            # a broker Secret the list did not return is not known to exist (read again before minting)
            prefetched.secrets.setdefault((meta["namespace"], broker_secret_name(meta["name"])), None)
        return envs

    def _resync_group(self, group: list[Obj], prefetched: Prefetched, report: ResyncReport,
                      report_lock: threading.Lock) -> None:
        for env in group:
            meta, before = env["metadata"], env.get("status")
            try:
                after = self.converge(env, prefetched)
            except Exception as exc:  # isolate: the next environment must still be checked
                with report_lock:
                    report.failures += 1
                log.warning("resync of %s/%s failed: %s", meta["namespace"], meta["name"], describe(exc))
                continue
            with report_lock:
                if after is None:
                    report.skipped += 1
                else:
                    report.changes += int(status_changed(after, before))

    def _done(self, key: tuple[str, str], _done: Future[None]) -> None:
        with self._lock:
            self._groups.pop(key, None)

    def _broker_group(self, env: Obj) -> tuple[str, str]:
        """The broker Secret an environment names (its resync group); an unreadable spec goes with the operator's."""
        try:
            return self.s.broker_ref(env, MatchEnvironmentSpec.model_validate(env.get("spec") or {}))
        except ValidationError:
            return self.s.settings.broker_secret_ref

    def keep_publisher(self, prefetched: Prefetched) -> None:
        """The scraper's publish-only user on the operator's broker (its own failure stalls no environment)."""
        s = self.s
        try:
            conn = s.connection_at(*s.settings.broker_secret_ref, prefetched)
            client = s.clients.get(conn)
            secret = s.secret(s.settings.operator_namespace, s.settings.publisher_secret, prefetched)
            ensure_publisher(s.kube, s.settings, conn, client, secret,
                             lambda: s.snapshot(conn, client, prefetched), owner=s.owner)
        except (BrokerError, BrokerConfigError, SecretDecodeError, ApiException) as exc:
            log.warning("publisher credentials: %s", describe(exc))
