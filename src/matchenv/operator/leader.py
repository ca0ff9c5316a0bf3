"""Active/standby through a ``coordination.k8s.io/v1`` Lease (kopf's peering pauses peers; it does not elect).

The holder renews the Lease every ``lease_seconds / 5``, each renewal bounded by that period. A standby takes it
over when the record has not changed for ``lease_seconds`` by its own clock (it never trusts the other process's
timestamps), with an optimistic update so that two standbys cannot both win. The holder counts as leading only
until ``renew_deadline`` (two thirds of the Lease) after its last successful renewal: every write of the operator
asks :meth:`LeaseElector.write_budget` first and gets its deadline from it (never past nine tenths of the Lease
after that renewal), so a holder that stalled (a long GC pause, SIGSTOP, a partition) starts no write a third of a
Lease before anyone else can take over, has none under way when that happens, and steps down when it notices.

A standby names itself in the Lease's ``matchenv.io/standby`` annotation; a leader that shuts down cleanly hands
the Lease to that standby (holder set to it, renewed now) instead of leaving it free, so the warm standby leads at
its next poll and a replacement pod that starts meanwhile does not race it. If that standby is gone, the handed-over
record expires like any other and whoever polls next takes it.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException

from matchenv.operator.kube import Kube, Obj

log = logging.getLogger("matchenv.leader")
STANDBY_ANNOTATION = "matchenv.io/standby"


def _micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, lease_seconds: float = 15.0,
                 clock: Callable[[], float] = time.monotonic, owner: Obj | None = None) -> None:
        """``owner``: an ownerReference (the operator's Deployment) the Lease is created with, so that it goes
        with the installation."""
        self.kube = kube
        self.owner = owner
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.clock = clock
        self._observed: tuple[str | None, str | None] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self.last_renewed: float | None = None
        self.heartbeat = clock()  # the election loop is alive (for /healthz)
        self._registered = False  # this process has named itself the standby once
        self._stepped_down = False  # shutting down: no more election steps, no more writes

    @property
    def retry_period(self) -> float:
        return max(0.2, self.lease_seconds / 5)

    @property
    def renew_deadline(self) -> float:
        return self.lease_seconds * 2 / 3

    def leading(self) -> bool:
        """True while the last successful renewal is younger than the renew deadline (the write fence)."""
        return self.last_renewed is not None and self.clock() - self.last_renewed < self.renew_deadline

    def write_budget(self) -> float:
        """How long a write starting now may take and still land while this process holds the Lease: until
        nine tenths of a Lease (a tenth for the other replica's clock) after the last successful renewal, as
        timed before that renewal was sent; 0 when not leading (past the renew deadline, or stepped down). Every
        write's deadline is cut to it, so that none is still under way when a standby may take over."""
        if self._stepped_down or not self.leading() or self.last_renewed is None:
            return 0.0
        return max(0.0, self.last_renewed + self.lease_seconds * 0.9 - self.clock())

    def _body(self, current: Obj | None, transitions: int) -> Obj:
        now = _micro_now()
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_seconds),
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        held = current and (current.get("spec") or {}).get("holderIdentity") == self.identity
        spec["acquireTime"] = (current or {}).get("spec", {}).get("acquireTime", now) if held else now
        metadata: Obj = {"name": self.name, "namespace": self.namespace}
        if current is not None:  # a replace keeps what others set on the object (labels, owners, the standby)
            metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
            for key in ("annotations", "labels", "ownerReferences"):
                if current["metadata"].get(key):
                    metadata[key] = copy.deepcopy(current["metadata"][key])
        elif self.owner is not None:
            metadata["ownerReferences"] = [self.owner]
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def try_acquire_or_renew(self) -> bool:
        """One election step; True if this process holds the Lease afterwards."""
        self.heartbeat = self.clock()
        if self._stepped_down:
            return False
        try:
            current = self.kube.get_lease(self.namespace, self.name)
            if current is None:
                started = self.clock()
                self.kube.create_lease(self.namespace, self._body(None, 0))
                log.info("acquired lease %s/%s as %s", self.namespace, self.name, self.identity)
                self.last_renewed = started
                return True
            spec = current.get("spec") or {}
            holder = spec.get("holderIdentity")
            record = (holder, spec.get("renewTime"))
            now = self.clock()
            if record != self._observed:
                self._observed, self._observed_at = record, now
            transitions = int(spec.get("leaseTransitions") or 0)
            if holder == self.identity:
                if self.last_renewed is not None and now - self.last_renewed >= self.renew_deadline:
                    return False  # stalled past the deadline: another may be taking over; never renew blindly
                # (last_renewed None: the previous leader handed the Lease over to this standby, or this pod
                # restarted under the same name and its old process is gone)
                self.kube.replace_lease(self.namespace, self.name, self._body(current, transitions))
                self.last_renewed = now
                return True
            expired = not holder or now - self._observed_at >= self.lease_seconds
            if not expired:
                self._register_as_standby(current)
                return False
            self.kube.replace_lease(self.namespace, self.name, self._body(current, transitions + 1))
            log.info("took over lease %s/%s from %s", self.namespace, self.name, holder or "nobody")
            self.last_renewed = now
            return True
        except ApiException as exc:
            if exc.status in (409, 422):  # someone else won the race
                return False
            log.warning("lease %s/%s: %s %s", self.namespace, self.name, exc.status, exc.reason)
            return False
        except Exception as exc:  # the API server may be down: keep trying
            log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            return False

    def _register_as_standby(self, current: Obj) -> None:
        """Name this process in the Lease as the one to hand over to (once, or again when nobody is named)."""
        named = (current["metadata"].get("annotations") or {}).get(STANDBY_ANNOTATION)
        if named == self.identity or (named and self._registered):
            return
        body = copy.deepcopy(current)
        body["metadata"].setdefault("annotations", {})[STANDBY_ANNOTATION] = self.identity
        self.kube.replace_lease(self.namespace, self.name, body)  # a 409 (the holder renewed): next poll
        self._registered = True

    def wait_until_leader(self, stop: threading.Event) -> bool:
        """Block until this process holds the Lease (True) or ``stop`` is set (False)."""
        announced = False
        while not stop.is_set():
            if self.try_acquire_or_renew():
                return True
            if not announced:
                log.info("standing by: lease %s/%s is held by another replica", self.namespace, self.name)
                announced = True
            stop.wait(self.retry_period)
        return False

    def keep_renewing(self, lost: threading.Event, stop: threading.Event) -> None:
        """Renew until ``stop``; set ``lost`` once this process no longer leads (past the renew deadline)."""
        while not stop.wait(self.retry_period):
            if self.try_acquire_or_renew():
                continue
            if self._stepped_down:
                return
            if not self.leading():
                log.error("lost lease %s/%s: no renewal for %.1fs (deadline %.1fs); stepping down", self.namespace,
                          self.name, self.clock() - (self.last_renewed or 0.0), self.renew_deadline)
                lost.set()
                return

    def step_down(self) -> None:
        """On shutdown: close the write fence first (nothing is written as leader from now on), then release."""
        self._stepped_down = True
        self.last_renewed = None
        self.release()

    def release(self) -> None:
        """Give the Lease up on a clean shutdown: to the named standby, or free, so that one takes over at once."""
        try:
            current = self.kube.get_lease(self.namespace, self.name)
            if current and (current.get("spec") or {}).get("holderIdentity") == self.identity:
                transitions = int(current["spec"].get("leaseTransitions") or 0)
                body = self._body(current, transitions)
                standby = (body["metadata"].get("annotations") or {}).pop(STANDBY_ANNOTATION, None)
                if standby and standby != self.identity:
                    now = _micro_now()
                    body["spec"].update(holderIdentity=standby, acquireTime=now, renewTime=now,
                                        leaseTransitions=transitions + 1)
                    self.kube.replace_lease(self.namespace, self.name, body)
                    log.info("handed lease %s/%s over to the standby %s", self.namespace, self.name, standby)
                    return
                body["spec"]["holderIdentity"] = None
                body["spec"]["leaseDurationSeconds"] = 1
                self.kube.replace_lease(self.namespace, self.name, body)
                log.info("released lease %s/%s", self.namespace, self.name)
        except Exception as exc:
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc)
