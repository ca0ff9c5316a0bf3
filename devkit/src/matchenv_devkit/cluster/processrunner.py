"""Run pods' containers as local processes, for the test node agent (a kubelet without containers).

What it honours: ``command``/``args``; ``env`` from ``value``, ``secretKeyRef``, ``configMapKeyRef`` and the
pod's own name/namespace (``fieldRef``); ``envFrom`` Secrets and ConfigMaps; ``restartPolicy`` (with back-off);
HTTP and exec readiness probes; ``terminationGracePeriodSeconds``. What it ignores: the image (the project's code is
installed here already), volumes, resources, security contexts. Every pod shares the host's loopback, so each
container port gets a free host port, and an env value equal to a container port number is rewritten to it
(that is how ``MATCHENV_METRICS_PORT`` follows the worker's ``metrics`` port).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from matchenv_devkit.services.process import die_with_parent, free_port

log = logging.getLogger("matchenv.nodeagent")
Obj = dict[str, Any]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ConfigMissing(Exception):
    """A referenced Secret or ConfigMap (or key) does not exist yet: the container waits, as with a kubelet."""


@dataclass
class Container:
    name: str
    spec: Obj
    ports: dict[int | str, int] = field(default_factory=dict)  # container port (number and name) -> host port
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: str | None = None
    next_start: float = 0.0
    waiting_reason: str | None = "ContainerCreating"
    waiting_message: str = ""
    last_exit: int | None = None
    finished_at: str = ""
    env: dict[str, str] = field(default_factory=dict)  # as launched, for exec probes


@dataclass
class PodProcesses:
    uid: str
    namespace: str
    name: str
    restart_policy: str
    grace: float
    containers: list[Container]
    started_at: str = field(default_factory=_now)
    labels: dict[str, str] = field(default_factory=dict)
    # held while its containers are launched, relaunched or collected to stop: the node agent's status loop and its
    # watch (a new pod's start) run on two threads, and a container launched by both ran twice, one process untracked
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    stopped: bool = False  # stop() has collected its processes: nothing is launched for it any more


class ProcessRunner:
    """A ``PodRunner`` that starts real processes and restarts them per the pod's restart policy."""

    def __init__(self, api_client: client.ApiClient, log_dir: Path, max_grace: float = 30.0) -> None:
        self.core = client.CoreV1Api(api_client)
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.max_grace = max_grace
        self._pods: dict[str, PodProcesses] = {}
        self._lock = threading.Lock()

    # -- PodRunner -------------------------------------------------------------------------------------------
    def start(self, pod: Obj) -> None:
        spec = pod["spec"]
        containers = []
        for c in spec["containers"]:
            ports: dict[int | str, int] = {}
            for p in c.get("ports") or []:
                host = free_port()
                ports[p["containerPort"]] = host
                if p.get("name"):
                    ports[p["name"]] = host
            containers.append(Container(c["name"], c, ports))
        entry = PodProcesses(pod["metadata"]["uid"], pod["metadata"]["namespace"], pod["metadata"]["name"],
                             spec.get("restartPolicy", "Always"),
                             min(self.max_grace, float(spec.get("terminationGracePeriodSeconds", 30))), containers,
                             labels=dict(pod["metadata"].get("labels") or {}))
        with entry.lock:
            with self._lock:
                self._pods[entry.uid] = entry
            for container in containers:
                self._launch(entry, container)

    def stop(self, pod: Obj) -> None:
        with self._lock:
            entry = self._pods.pop(pod["metadata"]["uid"], None)
        if entry is None:
            return
        with entry.lock:  # a status read already in flight relaunches nothing after this
            entry.stopped = True
            procs = [c.proc for c in entry.containers if c.proc is not None and c.proc.poll() is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + entry.grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def ports(self, port_name: str) -> list[tuple[int, PodProcesses]]:
        """The host port each running pod's container port ``port_name`` got, with the pod (what a Prometheus
        PodMonitor would discover as ``<pod IP>:<port>``)."""
        with self._lock:
            pods = list(self._pods.values())
        return [(c.ports[port_name], pod) for pod in pods for c in pod.containers
                if port_name in c.ports and c.proc is not None and c.proc.poll() is None]

    def status(self, pod: Obj) -> Obj:
        with self._lock:
            entry = self._pods.get(pod["metadata"]["uid"])
        if entry is None:
            return {"phase": "Pending"}
        with entry.lock:
            statuses = [self._container_status(entry, c) for c in entry.containers]
        all_ready = all(s["ready"] for s in statuses)
        running = any("running" in s["state"] for s in statuses)
        ready = "True" if all_ready else "False"
        ended = [s["state"]["terminated"] for s in statuses if "terminated" in s["state"]]
        phase = "Running" if running else "Pending"
        if entry.restart_policy != "Always" and len(ended) == len(statuses):
            # a Job's pod: done when every container ended for good (OnFailure restarts the failed ones)
            phase = "Succeeded" if all(e["exitCode"] == 0 for e in ended) else "Failed"
        return {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": entry.started_at,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": entry.started_at},
                {"type": "Initialized", "status": "True", "lastTransitionTime": entry.started_at},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": entry.started_at},
                {"type": "Ready", "status": ready, "lastTransitionTime": entry.started_at},
            ],
            "containerStatuses": statuses,
        }

    # -- containers ------------------------------------------------------------------------------------------
    def _container_status(self, entry: PodProcesses, c: Container) -> Obj:
        proc = c.proc
        if proc is not None and proc.poll() is not None:
            c.last_exit = proc.returncode
            c.finished_at = _now()
            c.proc = None
            restart = entry.restart_policy == "Always" or (entry.restart_policy == "OnFailure" and proc.returncode)
            log.info("%s/%s container %s exited with %s%s", entry.namespace, entry.name, c.name, proc.returncode,
                     "; restarting" if restart else "")
            if restart:
                c.restarts += 1
                c.next_start = time.monotonic() + min(30.0, 2.0 ** min(c.restarts, 5))
                c.waiting_reason, c.waiting_message = "CrashLoopBackOff", f"exited with {proc.returncode}"
            else:
                c.waiting_reason = None
        if c.proc is None and c.waiting_reason and not entry.stopped and time.monotonic() >= c.next_start:
            self._launch(entry, c)
        base: Obj = {"name": c.name, "image": c.spec.get("image", ""), "imageID": "", "restartCount": c.restarts}
        if c.proc is not None:
            return {**base, "ready": self._probe(c), "started": True,
                    "state": {"running": {"startedAt": c.started_at}}}
        if c.waiting_reason is None:
            return {**base, "ready": False, "started": False,
                    "state": {"terminated": {"exitCode": c.last_exit or 0,
                                             "reason": "Error" if c.last_exit else "Completed",
                                             "finishedAt": c.finished_at}}}
        return {**base, "ready": False, "started": False,
                "state": {"waiting": {"reason": c.waiting_reason, "message": c.waiting_message}}}

    def _probe(self, c: Container) -> bool:
        readiness = c.spec.get("readinessProbe") or {}
        command = (readiness.get("exec") or {}).get("command")
        if command:  # run beside the container, with its environment, as the kubelet runs it inside
            try:
                return subprocess.run(command, env=c.env, stdin=subprocess.DEVNULL, capture_output=True,
                                      timeout=float(readiness.get("timeoutSeconds", 1)) + 2).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                return False
        probe = readiness.get("httpGet")
        if not probe:
            return True
        port = c.ports.get(probe.get("port"), probe.get("port"))
        try:
            return requests.get(f"http://127.0.0.1:{port}{probe.get('path', '/')}", timeout=1).status_code < 400
        except requests.RequestException:
            return False

    def _launch(self, entry: PodProcesses, c: Container) -> None:
        try:
            env = c.env = self._environment(entry, c)
        except (ConfigMissing, ApiException) as exc:
            c.waiting_reason, c.waiting_message = "CreateContainerConfigError", str(exc)
            c.next_start = time.monotonic() + 2
            return
        argv = [*(c.spec.get("command") or []), *(c.spec.get("args") or [])]
        if not argv:
            c.waiting_reason, c.waiting_message = "RunContainerError", "no command: images are not run here"
            c.next_start = time.monotonic() + 30
            return
        log_path = self.log_dir / f"{entry.namespace}_{entry.name}_{c.name}.log"
        with log_path.open("ab") as out:
            c.proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.log_dir,
                start_new_session=True, preexec_fn=die_with_parent,
            )
        c.started_at = _now()
        c.waiting_reason, c.waiting_message = "", ""
        log.info("%s/%s container %s started (pid %d): %s", entry.namespace, entry.name, c.name, c.proc.pid,
                 " ".join(argv))

    def _environment(self, entry: PodProcesses, c: Container) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(self.log_dir),
               "LANG": "C.UTF-8", "HOSTNAME": entry.name, "PYTHONUNBUFFERED": "1"}
        for source in c.spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                data = self._secret(entry.namespace, source["secretRef"]["name"], source["secretRef"].get("optional"))
            else:
                data = self._config_map(entry.namespace, source["configMapRef"]["name"],
                                        source["configMapRef"].get("optional"))
            env.update({prefix + k: v for k, v in data.items()})
        for var in c.spec.get("env") or []:
            value = self._value(entry, var)
            if value is not None:
                env[var["name"]] = value
        host_ports = {str(k): str(v) for k, v in c.ports.items() if isinstance(k, int)}
        return {k: host_ports.get(v, v) for k, v in env.items()}

    def _value(self, entry: PodProcesses, var: Obj) -> str | None:
        if "valueFrom" not in var:
            return str(var.get("value", ""))
        source = var["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = self._secret(entry.namespace, ref["name"], ref.get("optional"))
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = self._config_map(entry.namespace, ref["name"], ref.get("optional"))
        elif "fieldRef" in source:
            fields = {"metadata.name": entry.name, "metadata.namespace": entry.namespace,
                      "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1", "spec.nodeName": "matchenv-node"}
            return fields.get(source["fieldRef"]["fieldPath"], "")
        else:
            return None
        if ref["key"] not in data:
            if ref.get("optional"):
                return None
            raise ConfigMissing(f"key {ref['key']} not found in {ref['name']}")
        return data[ref["key"]]

    def _secret(self, namespace: str, name: str, optional: bool | None) -> dict[str, str]:
        raw = self._read("secret", self.core.read_namespaced_secret, namespace, name, optional)
        return {k: base64.b64decode(v).decode() for k, v in raw.items()}

    def _config_map(self, namespace: str, name: str, optional: bool | None) -> dict[str, str]:
        return self._read("configmap", self.core.read_namespaced_config_map, namespace, name, optional)

    @staticmethod
    def _read(kind: str, read: Callable[..., Any], namespace: str, name: str,
              optional: bool | None) -> dict[str, str]:
        """The ``data`` of a Secret or ConfigMap; {} for a missing optional one, ConfigMissing otherwise."""
        try:
            raw = json.loads(read(name, namespace, _request_timeout=10, _preload_content=False).data)
        except ApiException as exc:
            if exc.status == 404:
                if optional:
                    return {}
                raise ConfigMissing(f'{kind} "{name}" not found') from exc
            raise
        data: dict[str, str] = raw.get("data") or {}
        return data
