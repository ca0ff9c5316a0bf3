"""A test node agent for the local control plane: registers a Ready node and answers for the pods bound to it.

It does a kubelet's bookkeeping (node heartbeat Lease, pod status, final deletion of terminating pods) and hands
the pods themselves to a :class:`PodRunner`. ``ReadyRunner`` only reports each pod Running and Ready, which is
enough to exercise an operator's Deployments; a runner that starts the containers as local processes plugs into
the same interface.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("matchenv.nodeagent")
Obj = dict[str, Any]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PodRunner(Protocol):
    """Runs (or pretends to run) the containers of pods bound to the node."""

    def start(self, pod: Obj) -> None: ...
    def stop(self, pod: Obj) -> None: ...
    def status(self, pod: Obj) -> Obj: ...  # a pod ``status`` patch


class ReadyRunner:
    """Runs nothing: every pod is Running and Ready as soon as it is bound."""

    def __init__(self) -> None:
        self._started: dict[str, str] = {}

    def start(self, pod: Obj) -> None:
        self._started[pod["metadata"]["uid"]] = _now()

    def stop(self, pod: Obj) -> None:
        self._started.pop(pod["metadata"]["uid"], None)

    def status(self, pod: Obj) -> Obj:
        started = self._started.get(pod["metadata"]["uid"], _now())
        containers = [
            {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True, "restartCount": 0,
             "started": True, "state": {"running": {"startedAt": started}}}
            for c in pod["spec"]["containers"]
        ]
        return {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": started,
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": started}
                for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
            "containerStatuses": containers,
        }


class NodeAgent:
    """Registers node ``name`` and keeps its pods' status; runs in a background thread until :meth:`stop`."""

    def __init__(self, api_client: client.ApiClient, name: str = "matchenv-node",
                 runner: PodRunner | None = None, status_every: float = 2.0,
                 on_error: Callable[[Exception], None] | None = None) -> None:
        self.core = client.CoreV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self.name = name
        self.runner: PodRunner = runner or ReadyRunner()
        self.status_every = status_every
        self.on_error = on_error
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pods: dict[str, Obj] = {}
        self._pushed: dict[str, Obj] = {}
        self._stopping: dict[str, threading.Thread] = {}  # uid → the thread stopping that pod's containers
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> NodeAgent:
        self._register()
        for target, label in ((self._heartbeat, "heartbeat"), (self._watch_pods, "pods"),
                              (self._report, "status")):
            thread = threading.Thread(target=self._guard(target), name=f"nodeagent-{label}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        with self._lock:
            pods = list(self._pods.values())
        for pod in pods:  # all at once, as a kubelet does: each pod's grace period runs alongside the others'
            self._stop_pod(pod, delete=False)
        with self._lock:
            stopping = list(self._stopping.values())
        for thread in stopping:
            thread.join(timeout=60)

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    target()
                except Exception as exc:  # the API server may restart; keep going
                    log.warning("node agent %s: %s", target.__name__, exc)
                    if self.on_error:
                        self.on_error(exc)
                    self._stop.wait(1)
        return run

    # -- node ------------------------------------------------------------------------------------------------
    def _node_status(self) -> Obj:
        now = _now()
        capacity = {"cpu": "32", "memory": "64Gi", "pods": "250", "ephemeral-storage": "100Gi"}
        conditions = [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "matchenv node agent",
                       "lastHeartbeatTime": now, "lastTransitionTime": now}]
        for kind in ("MemoryPressure", "DiskPressure", "PIDPressure"):
            conditions.append({"type": kind, "status": "False", "reason": f"KubeletHasNo{kind}", "message": "",
                               "lastHeartbeatTime": now, "lastTransitionTime": now})
        return {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "v1.36.3",
                         "kubeProxyVersion": "", "containerRuntimeVersion": "matchenv://local", "osImage": "local",
                         "kernelVersion": "", "bootID": "", "machineID": "", "systemUUID": ""},
        }

    def _register(self) -> None:
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": {"kubernetes.io/hostname": self.name,
                                                           "kubernetes.io/os": "linux",
                                                           "kubernetes.io/arch": "amd64"}}}
        try:
            self.core.create_node(cast(Any, body), _request_timeout=10)
        except ApiException as exc:
            if exc.status != 409:
                raise
        self._patch_node_status()

    def _patch_node_status(self) -> None:
        self.core.patch_node_status(self.name, {"status": self._node_status()}, _request_timeout=10,
                                    _content_type="application/strategic-merge-patch+json")

    def _heartbeat(self) -> None:
        lease_ns = "kube-node-lease"
        while not self._stop.is_set():
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": lease_ns},
                    "spec": {"holderIdentity": self.name, "leaseDurationSeconds": 40, "renewTime": _micro_now()}}
            try:
                self.coordination.patch_namespaced_lease(self.name, lease_ns, {"spec": body["spec"]},
                                                         _request_timeout=10,
                                                         _content_type="application/merge-patch+json")
            except ApiException as exc:
                if exc.status != 404:
                    raise
                self.coordination.create_namespaced_lease(lease_ns, cast(Any, body), _request_timeout=10)
            self._patch_node_status()
            self._stop.wait(10)

    # -- pods ------------------------------------------------------------------------------------------------
    def _watch_pods(self) -> None:
        selector = f"spec.nodeName={self.name}"
        listing = self.core.list_pod_for_all_namespaces(field_selector=selector, _request_timeout=30,
                                                        _preload_content=False)
        data = json.loads(cast(Any, listing).data)
        seen = set()
        for pod in data.get("items", []):
            seen.add(pod["metadata"]["uid"])
            self._on_pod("ADDED", pod)
        with self._lock:
            gone = [p for uid, p in self._pods.items() if uid not in seen]
        for pod in gone:
            self._stop_pod(pod, delete=False)
        stream = watch.Watch()
        for event in stream.stream(self.core.list_pod_for_all_namespaces, field_selector=selector,
                                   resource_version=data["metadata"]["resourceVersion"], timeout_seconds=30,
                                   _request_timeout=60):
            if self._stop.is_set():
                stream.stop()
                return
            obj = event["raw_object"] if "raw_object" in event else event["object"]
            self._on_pod(event["type"], obj)

    def _on_pod(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        if kind == "DELETED" or pod["metadata"].get("deletionTimestamp"):
            self._stop_pod(pod, delete=kind != "DELETED")
            return
        with self._lock:
            known = uid in self._pods
            self._pods[uid] = pod
        if not known:
            self.runner.start(pod)
            self._push_status(pod)

    def _stop_pod(self, pod: Obj, delete: bool) -> None:
        """Stop the pod's containers on a thread of its own (its grace period must not hold up the watch, nor the
        other pods' stops), then (``delete``) remove the pod for good, as the kubelet does once they are gone."""
        uid = pod["metadata"]["uid"]
        with self._lock:
            known = self._pods.pop(uid, None)
            self._pushed.pop(uid, None)
            if uid in self._stopping:
                return

            def run() -> None:
                try:
                    if known is not None:
                        self.runner.stop(known)
                    if delete:
                        self.core.delete_namespaced_pod(pod["metadata"]["name"], pod["metadata"]["namespace"],
                                                        grace_period_seconds=0, _request_timeout=10)
                except ApiException as exc:
                    if exc.status != 404:
                        log.warning("node agent: removing pod %s: %s", pod["metadata"]["name"], exc)
                except Exception as exc:  # the next watch event or the status loop tries again
                    log.warning("node agent: stopping pod %s: %s", pod["metadata"]["name"], exc)
                finally:
                    with self._lock:
                        self._stopping.pop(uid, None)

            thread = threading.Thread(target=run, name=f"stop-{pod['metadata']['name']}", daemon=True)
            self._stopping[uid] = thread
        thread.start()

    def _push_status(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        status = self.runner.status(pod)
        if self._pushed.get(uid) == status:
            return
        try:
            self.core.patch_namespaced_pod_status(pod["metadata"]["name"], pod["metadata"]["namespace"],
                                                  {"status": status}, _request_timeout=10,
                                                  _content_type="application/strategic-merge-patch+json")
        except ApiException as exc:
            if exc.status != 404:
                raise
            return
        self._pushed[uid] = status

    def _report(self) -> None:
        while not self._stop.wait(self.status_every):
            with self._lock:
                pods = list(self._pods.values())
            for pod in pods:
                self._push_status(pod)


def wait_for_node_ready(core: client.CoreV1Api, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            node = core.read_node(name, _request_timeout=5)
            conditions = (node.status.conditions if node.status else None) or []
            if any(c.type == "Ready" and c.status == "True" for c in conditions):
                return
        except ApiException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"node {name} not Ready after {timeout:.0f}s")
