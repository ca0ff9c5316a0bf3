"""``matchenv operator run`` as a child process with a ServiceAccount's token (exactly its RBAC), for tests and
the demo."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from matchenv_devkit.cluster.kubectl import Kubectl
from matchenv_devkit.services.process import ChildProcess, free_port


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


class OperatorProcess(ChildProcess):
    """``matchenv operator run`` as a child process; its output goes to a log file the tests can read."""

    def __init__(self, kubeconfig: Path, log_path: Path, resync_seconds: float = 2.0, lease_seconds: float = 6.0,
                 identity: str = "operator-a", health_port: bool = False, namespaces: tuple[str, ...] = (),
                 verbose: bool = True, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(log_path)
        self.kubeconfig = kubeconfig
        self.resync_seconds = resync_seconds
        self.lease_seconds = lease_seconds
        self.identity = identity
        self.metrics_port = free_port()
        self.health_port = free_port() if health_port else 0
        self.namespaces = namespaces
        self.verbose = verbose
        self.extra_env = extra_env or {}

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/healthz"

    def start(self) -> OperatorProcess:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "MATCHENV_LEASE_SECONDS": str(self.lease_seconds),
            "POD_NAME": self.identity,
            "PYTHONUNBUFFERED": "1",
        }
        if self.namespaces:
            env["MATCHENV_NAMESPACES"] = ",".join(self.namespaces)
        env.update(self.extra_env)
        self.spawn([sys.executable, "-m", "matchenv.cli", "operator", "run", *(["--verbose"] if self.verbose else []),
                    "--resync-seconds", str(self.resync_seconds), "--operator-namespace", "matchenv-system",
                    "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port)], env)
        return self

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The value of the series ``name`` whose labels include ``labels``; None when there is none (or no answer)."""
        return self.metrics(name, labels=labels)[name]

    def metrics(self, *names: str, labels: dict[str, str] | None = None) -> dict[str, float | None]:
        """Each of ``names`` (its first series whose labels include ``labels``) from one scrape: a scrape costs the
        operator (its /metrics grows with the environments: ~0.2 CPU s at 2,000), so a measure reads them together."""
        found: dict[str, float | None] = dict.fromkeys(names)
        try:
            text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        except requests.RequestException:
            return found
        wanted = (labels or {}).items()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in found and found[sample.name] is None and wanted <= sample.labels.items():
                    found[sample.name] = float(sample.value)
        return found
