"""Pieces the operator e2e tests assemble: the operator as a real process with the ServiceAccount's token, and a
management-API reader that does not go through the operator's own client code."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
import yaml

from matchenv.devservices.process import die_with_parent, free_port, process_alive
from matchenv.devservices.rabbitmq import RabbitMQNode
from tests.e2e.conftest import Kubectl


def wait_for(check: Callable[[], Any], timeout: float = 30, what: str = "condition", every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # a check may race a restart; keep trying until the deadline
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def service_account_kubeconfig(kubectl: Kubectl, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig that authenticates as ``namespace/name`` with a fresh token: exactly that SA's RBAC."""
    token = kubectl.run("create", "token", name, "-n", namespace, "--duration=10h").stdout.strip()
    admin = yaml.safe_load(kubectl.cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": name}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


class OperatorProcess:
    """``matchenv operator run`` as a child process; its output goes to a log file the tests can read."""

    def __init__(self, kubeconfig: Path, log_path: Path, resync_seconds: float = 2.0, lease_seconds: float = 6.0,
                 identity: str = "operator-a") -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.resync_seconds = resync_seconds
        self.lease_seconds = lease_seconds
        self.identity = identity
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "MATCHENV_LEASE_SECONDS": str(self.lease_seconds),
            "POD_NAME": self.identity,
            "PYTHONUNBUFFERED": "1",
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "matchenv.cli", "operator", "run", "--verbose",
                 "--resync-seconds", str(self.resync_seconds), "--operator-namespace", "matchenv-system",
                 "--metrics-port", str(self.metrics_port), "--health-port", "0"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and process_alive(self.proc.pid)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: no cleanup, no lease release, as a crashed pod."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metric(self, name: str) -> float | None:
        try:
            text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        except requests.RequestException:
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None


class ManagementReader:
    """Reads the broker through the management API directly (not through matchenv's client)."""

    def __init__(self, node: RabbitMQNode) -> None:
        self.base = node.endpoints.management_url
        self.auth = (node.endpoints.username, node.endpoints.password)

    def get(self, path: str) -> Any:
        response = requests.get(self.base + path, auth=self.auth, timeout=5)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def queue(self, name: str, vhost: str = "/") -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.get(f"/api/queues/{quote(vhost, safe='')}/{quote(name, safe='')}")
        return result

    def bindings(self, exchange: str, queue: str, vhost: str = "/") -> list[dict[str, Any]]:
        path = f"/api/bindings/{quote(vhost, safe='')}/e/{quote(exchange, safe='')}/q/{quote(queue, safe='')}"
        return self.get(path) or []

    def user(self, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.get(f"/api/users/{quote(name, safe='')}")
        return result

    def policy(self, name: str, vhost: str = "/") -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.get(f"/api/policies/{quote(vhost, safe='')}/{quote(name, safe='')}")
        return result

    def delete(self, path: str) -> None:
        requests.delete(self.base + path, auth=self.auth, timeout=5).raise_for_status()


def secret_value(kubectl: Kubectl, namespace: str, name: str, key: str) -> str:
    data = kubectl.get_json("secret", name, "-n", namespace)["data"]
    return base64.b64decode(data[key]).decode()
