"""The one Kubernetes client seam of the operator: plain dicts in and out, a timeout on every call.

Writes of owned objects are server-side applies (field manager ``matchenv-operator``, forced): applying an
unchanged object changes nothing on the server, so reconciles stay idempotent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from matchenv.api import API_GROUP, API_VERSION, KIND, PLURAL
from matchenv.operator import metrics
from matchenv.operator.builders import FIELD_MANAGER
from matchenv.write_fence import NotLeading as NotLeading  # raised by the operator's writes; re-exported
from matchenv.write_fence import SendCheck
from matchenv.write_fence import fence as fence_sends

log = logging.getLogger("matchenv.operator")
Obj = dict[str, Any]
# The generated client types bodies as its own models; it validates plain dicts into them, which is what we pass.
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
EVENT_BACKLOG = 1000  # events waiting to be sent at most
EVENT_SENDERS = 4  # threads sending them: a loaded API server answers a create in tens of ms, so one fell behind
MIN_WRITE_SECONDS = 0.5  # less than this left of the Lease: no write starts
MIN_SEND_SECONDS = 0.1  # less than this left when a started write is about to be sent: it is not (a stall between)


LIST_PAGE = 500  # objects per list request: one call per list up to 500 objects, pages beyond


def _json(response: Any) -> Obj:
    data: Obj = json.loads(response.data or b"{}")
    return data


def _drain(response: Any) -> None:
    """Read an answer we do not need: only a response read to its end gives its connection back to the pool
    (unread ones made each write open, and TLS-handshake, a new connection: a third of the operator's CPU during
    a burst of creations)."""
    response.data  # noqa: B018 - reading is the point
    response.release_conn()


def _unless_missing(call: Callable[[], Any]) -> Obj | None:
    """The object ``call`` reads, or None on 404."""
    try:
        return _json(call())
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def new_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    configuration.retries = 1
    # handlers, the resync, the events and the Deployment watch share it: enough pooled connections that none opens
    # (and TLS-handshakes) a new one per request (seen in a profile of 500 environments applied at once)
    configuration.connection_pool_maxsize = 32
    return client.ApiClient(configuration)


class Kube:
    """Typed-enough access to what the operator reads and writes."""

    def __init__(self, api_client: client.ApiClient, timeout: float = 10.0,
                 fence: Callable[[], float] | None = None) -> None:
        """With a ``fence``, every write sent through ``api_client`` asks it again at the socket
        (:mod:`matchenv.write_fence`), so the client must be this one's alone: the election's own Lease calls and
        the metrics' access reviews go through another."""
        self.api_client = api_client
        self.timeout = timeout
        # the seconds a write may take from now and still land while this process leads (leader election); None:
        # no election, every write may take ``timeout``
        self.fence = fence
        if fence is not None:
            fence_sends(api_client.rest_client.pool_manager, self.check_send)
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self._events: queue.Queue[Obj] = queue.Queue(maxsize=EVENT_BACKLOG)
        self._events_lock = threading.Lock()
        self._events_threads: list[threading.Thread] = []
        self._held = threading.local()  # .events: what this thread's converge posted, sent when it ends

    def _opts(self) -> dict[str, Any]:
        return {"_request_timeout": self.timeout, "_preload_content": False}

    def write_budget(self) -> float | None:
        """How long a write may take from now and still land while this process leads; None without election."""
        return None if self.fence is None else self.fence()

    def may_write(self, what: str, target: str = "kubernetes") -> float:
        """Every write asks first; the answer is its deadline: the request timeout, cut to what is left of the
        Lease, so that no write lands after another replica may have taken over. Raises :class:`NotLeading` when
        less than ``MIN_WRITE_SECONDS`` is left (past the renew deadline, stepped down)."""
        budget = self._fenced(what, MIN_WRITE_SECONDS)
        metrics.WRITES.labels(target=target).inc()
        log.debug("write: %s", what)
        return self.timeout if budget is None else min(self.timeout, budget)

    @property
    def send_check(self) -> SendCheck | None:
        """:meth:`check_send` for the clients that send writes beside this one (the management sessions, kopf's);
        None without election."""
        return self.check_send if self.fence is not None else None

    def check_send(self, what: str) -> None:
        """The last check of a write, right before its first byte is sent: a process stalled since
        :meth:`may_write` (SIGSTOP, a long pause) sends nothing once it may no longer lead."""
        self._fenced(f"to send {what}", MIN_SEND_SECONDS)
        log.debug("sending %s", what)

    def _fenced(self, what: str, minimum: float) -> float | None:
        """What is left of the Lease (None: no election); under ``minimum``, :class:`NotLeading` (counted, logged)."""
        budget = self.write_budget()
        if budget is not None and budget < minimum:
            metrics.FENCED_WRITES.inc()
            log.warning("not leading: refused %s", what)
            raise NotLeading(f"not leading: refused {what}")
        return budget

    def _write(self, what: str) -> dict[str, Any]:
        """The options of one write (see :meth:`may_write`)."""
        return {"_request_timeout": self.may_write(what), "_preload_content": False}

    def _list(self, namespaced: Callable[..., Any], everywhere: Callable[..., Any], label_selector: str,
              namespace: str | None) -> list[Obj]:
        """Items with ``label_selector`` in ``namespace``, or in all namespaces when it is None."""
        if namespace:
            return self._paged(namespaced, namespace, label_selector=label_selector)
        return self._paged(everywhere, label_selector=label_selector)

    def _paged(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Obj]:
        """Every item of a list call, ``LIST_PAGE`` at a time, each kept without ``managedFields`` (nothing here
        reads them, and they are often the larger half of an object): a pass over thousands of environments never
        holds a whole list's JSON at once."""
        items: list[Obj] = []
        token = ""
        while True:
            page = _json(call(*args, limit=LIST_PAGE, **({"_continue": token} if token else {}), **kwargs,
                              **self._opts()))
            for item in page.get("items") or []:
                (item.get("metadata") or {}).pop("managedFields", None)
                items.append(item)
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return items

    # -- MatchEnvironments -----------------------------------------------------------------------------------
    def list_environments(self, namespace: str | None = None) -> list[Obj]:
        if namespace:
            return self._paged(self.custom.list_namespaced_custom_object, API_GROUP, API_VERSION, namespace, PLURAL)
        return self._paged(self.custom.list_cluster_custom_object, API_GROUP, API_VERSION, PLURAL)

    def get_environment(self, namespace: str, name: str) -> Obj | None:
        return _unless_missing(lambda: self.custom.get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, name, **self._opts()))

    def patch_environment_status(self, namespace: str, name: str, status: Obj) -> None:
        opts = self._write(f"status of {namespace}/{name}")
        _drain(self.custom.patch_namespaced_custom_object_status(
            API_GROUP, API_VERSION, namespace, PLURAL, name, {"status": status}, _content_type=MERGE, **opts
        ))

    def patch_environment(self, namespace: str, name: str, patch: Obj) -> None:
        """A merge patch of the MatchEnvironment itself (the autoscaler: replicas and the annotation recording them,
        in one write)."""
        opts = self._write(f"{namespace}/{name}")
        _drain(self.custom.patch_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, name, patch, _content_type=MERGE, **opts
        ))

    def delete_environment(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the MatchEnvironment ``uid`` (never one made under its name meanwhile), as `kubectl delete` would:
        its finalizer then runs the teardown."""
        opts = self._write(f"delete of {namespace}/{name}")
        return _unless_missing(lambda: self.custom.delete_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, name, body=cast(Any, {"preconditions": {"uid": uid}}),
            **opts)) is not None

    # -- who is asking (the metrics' token check; reviews change nothing: no write fence) ---------------------
    def review_token(self, token: str) -> Obj:
        """The API server's TokenReview of ``token``: its ``status`` (authenticated, user)."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        review = _json(client.AuthenticationV1Api(self.api_client).create_token_review(
            cast(Any, body), **self._opts()))
        status: Obj = review.get("status") or {}
        return status

    def may_get_path(self, user: Obj, path: str) -> tuple[bool, str]:
        """Whether ``user`` (a TokenReview's status.user) may GET the non-resource URL ``path``; the reason."""
        spec: Obj = {"user": user.get("username"), "groups": user.get("groups") or [], "uid": user.get("uid"),
                     "extra": user.get("extra") or {}, "nonResourceAttributes": {"path": path, "verb": "get"}}
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        review = _json(client.AuthorizationV1Api(self.api_client).create_subject_access_review(
            cast(Any, body), **self._opts()))
        status = review.get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason") or "")

    # -- Secrets ---------------------------------------------------------------------------------------------
    def get_secret(self, namespace: str, name: str) -> Obj | None:
        return _unless_missing(lambda: self.core.read_namespaced_secret(name, namespace, **self._opts()))

    def list_secrets(self, label_selector: str, namespace: str | None = None) -> list[Obj]:
        return self._list(self.core.list_namespaced_secret, self.core.list_secret_for_all_namespaces,
                          label_selector, namespace)

    def apply_secret(self, body: Obj) -> Obj:
        opts = self._write(f"Secret {body['metadata']['namespace']}/{body['metadata']['name']}")
        meta = body["metadata"]
        return _json(self.core.patch_namespaced_secret(meta["name"], meta["namespace"], body,
                                                       field_manager=FIELD_MANAGER, force=True, _content_type=APPLY,
                                                       **opts))

    def delete_secret(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the Secret only if it is still the object ``uid`` (never one made in its place meanwhile)."""
        opts = self._write(f"delete of Secret {namespace}/{name}")
        return _unless_missing(lambda: self.core.delete_namespaced_secret(
            name, namespace, body=cast(Any, {"preconditions": {"uid": uid}}), **opts)) is not None

    # -- Deployments -----------------------------------------------------------------------------------------
    def list_deployments(self, label_selector: str, namespace: str | None = None) -> list[Obj]:
        return self._list(self.apps.list_namespaced_deployment, self.apps.list_deployment_for_all_namespaces,
                          label_selector, namespace)

    def get_deployment(self, namespace: str, name: str) -> Obj | None:
        return _unless_missing(lambda: self.apps.read_namespaced_deployment(name, namespace, **self._opts()))

    def apply_deployment(self, body: Obj) -> Obj:
        opts = self._write(f"Deployment {body['metadata']['namespace']}/{body['metadata']['name']}")
        meta = body["metadata"]
        return _json(self.apps.patch_namespaced_deployment(meta["name"], meta["namespace"], body,
                                                           field_manager=FIELD_MANAGER, force=True,
                                                           _content_type=APPLY, **opts))

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        """Set the Deployment's replicas alone (a deletion's drain starts a paused environment's workers)."""
        opts = self._write(f"scale of Deployment {namespace}/{name}")
        _drain(self.apps.patch_namespaced_deployment(name, namespace, {"spec": {"replicas": replicas}},
                                                     _content_type=MERGE, **opts))

    def delete_deployment(self, namespace: str, name: str, uid: str, foreground: bool = True) -> bool:
        """Delete the Deployment ``uid``. Foreground: it stays until its pods have terminated (their grace period
        included), so the caller can wait for the workers to finish before taking their credentials. Background
        (for one with no pod): it is gone at once, and the garbage collector removes its ReplicaSets afterwards."""
        opts = self._write(f"delete of Deployment {namespace}/{name}")
        policy = "Foreground" if foreground else "Background"
        return _unless_missing(lambda: self.apps.delete_namespaced_deployment(
            name, namespace, body=cast(Any, {"preconditions": {"uid": uid}, "propagationPolicy": policy}),
            **opts)) is not None

    # -- Jobs (backfills) and their pods ---------------------------------------------------------------------
    def list_jobs(self, namespace: str, label_selector: str) -> list[Obj]:
        return self._paged(self.batch.list_namespaced_job, namespace, label_selector=label_selector)

    def create_job(self, body: Obj) -> Obj:
        meta = body["metadata"]
        opts = self._write(f"Job {meta['namespace']}/{meta['name']}")
        return _json(self.batch.create_namespaced_job(meta["namespace"], cast(Any, body), field_manager=FIELD_MANAGER,
                                                      **opts))

    def delete_job(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the Job ``uid`` and its pods (background: its pod is stopped by the garbage collector)."""
        opts = self._write(f"delete of Job {namespace}/{name}")
        return _unless_missing(lambda: self.batch.delete_namespaced_job(
            name, namespace, body=cast(Any, {"preconditions": {"uid": uid}, "propagationPolicy": "Background"}),
            **opts)) is not None

    def list_pods(self, namespace: str, label_selector: str) -> list[Obj]:
        return self._paged(self.core.list_namespaced_pod, namespace, label_selector=label_selector)

    def list_events(self, namespace: str, field_selector: str) -> list[Obj]:
        """Events of ``namespace`` that ``field_selector`` picks (e.g. one pod's ``reason=Unhealthy``)."""
        return self._paged(self.core.list_namespaced_event, namespace, field_selector=field_selector)

    # -- Events ----------------------------------------------------------------------------------------------
    def post_event(self, env: Obj, reason: str, message: str, type_: str = "Normal") -> None:
        """A core/v1 Event on the MatchEnvironment (``kubectl describe menv`` shows it). Sent by a thread of its own
        (a converge does not wait for its events: eight of them were ~40 ms of each new environment's
        TopologyReady), ``EVENT_SENDERS`` at once; at most ``EVENT_BACKLOG`` wait, beyond that one is dropped and
        logged."""
        self.may_write(f"event {reason} on {env['metadata']['name']}")
        meta = env["metadata"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": "matchenv-operator"},
            "reportingComponent": "matchenv-operator",
        }
        held: list[Obj] | None = getattr(self._held, "events", None)
        if held is not None:
            held.append(body)
            return
        self._enqueue_event(body)

    @contextlib.contextmanager
    def events_held(self) -> Iterator[None]:
        """The events this thread posts meanwhile are sent when the block ends: a converge's, after its status (on
        the API server they were beside the converge's own writes: the status patch of a new environment took
        twice its quiet time). Within a block already holding, the outer one sends them."""
        if getattr(self._held, "events", None) is not None:
            yield
            return
        self._held.events = []
        try:
            yield
        finally:
            held, self._held.events = self._held.events, None
            for body in held:
                self._enqueue_event(body)

    def _enqueue_event(self, body: Obj) -> None:
        meta = body["involvedObject"]
        with self._events_lock:
            while len(self._events_threads) < EVENT_SENDERS:
                sender = threading.Thread(target=self._send_events, daemon=True,
                                          name=f"matchenv-events-{len(self._events_threads)}")
                sender.start()
                self._events_threads.append(sender)
        try:
            self._events.put_nowait(body)
        except queue.Full:
            log.warning("dropped event %s on %s/%s: %d events wait to be sent", body["reason"], meta["namespace"],
                        meta["name"], EVENT_BACKLOG)

    def _send_events(self) -> None:
        while True:
            body = self._events.get()
            try:
                budget = self.write_budget()
                if budget is None or budget >= MIN_WRITE_SECONDS:
                    timeout = self.timeout if budget is None else min(self.timeout, budget)
                    _drain(self.core.create_namespaced_event(body["metadata"]["namespace"], cast(Any, body),
                                                             _request_timeout=timeout, _preload_content=False))
            except Exception as exc:  # an event is informational: never retried, never fatal
                log.info("event %s not sent: %s", body["reason"], exc)
            finally:
                self._events.task_done()

    def wait_for_events(self, timeout: float = 5.0) -> None:
        """Until the events posted so far are sent (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self._events.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    # -- Leases ----------------------------------------------------------------------------------------------
    def get_lease(self, namespace: str, name: str) -> Obj | None:
        return _unless_missing(lambda: self.coordination.read_namespaced_lease(name, namespace, **self._opts()))

    def create_lease(self, namespace: str, body: Obj) -> Obj:
        return _json(self.coordination.create_namespaced_lease(namespace, cast(Any, body), **self._opts()))

    def replace_lease(self, namespace: str, name: str, body: Obj) -> Obj:
        """Optimistic update: fails with 409 if ``body.metadata.resourceVersion`` is stale."""
        return _json(self.coordination.replace_namespaced_lease(name, namespace, cast(Any, body), **self._opts()))
