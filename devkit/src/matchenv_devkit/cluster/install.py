"""matchenv installed the way users install it: ``kubectl apply -k`` of a kustomize overlay, the scraper run as a Job
from its CronJob, every part (operator, RabbitMQ, the databases) a pod. ``matchenv-dev demo`` and the install tests
drive it.

The overlay is applied from a copy of ``manifests/`` whose git-ignored, user-filled files (``broker.env``,
``database.env``) get generated passwords, as a user would fill them; the repository's tree is never written.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matchenv.topology.client import ManagementClient
from matchenv_devkit.cluster.images import REPO_ROOT
from matchenv_devkit.cluster.kubectl import Kubectl, KubectlError
from matchenv_devkit.cluster.stack import count_duplicates, count_rows
from matchenv_devkit.services.process import free_port, wait_for

SYSTEM = "matchenv-system"
OPERATOR_SELECTOR = "app.kubernetes.io/name=matchenv,app.kubernetes.io/component=operator"
ENVIRONMENTS = ("prod", "dev", "staging")
# what kubectl says when a kind's CRD was created by the same apply and is not served yet
_CRD_NOT_SERVED = ("ensure CRDs are installed first", "There can be a delay between when CustomResourceDefinitions")


def fill_env_files(manifests: Path, environments: tuple[str, ...] = ENVIRONMENTS) -> dict[str, str]:
    """Write the files a user fills (broker.env, the broker cluster's erlang-cookie.env, each environment's
    database.env) with generated secrets, from their ``*.env.example``; return the passwords by name (``broker``,
    and each environment)."""
    passwords = {"broker": secrets.token_urlsafe(18)}
    (manifests / "components/rabbitmq/broker.env").write_text(
        f"username=matchenv-admin\npassword={passwords['broker']}\n")
    (manifests / "components/rabbitmq-cluster/erlang-cookie.env").write_text(f"cookie={secrets.token_hex(32)}\n")
    for env in environments:
        passwords[env] = secrets.token_urlsafe(18)
        example = (manifests / "environments" / env / "database.env.example").read_text()
        lines = [f"PGPASSWORD={passwords[env]}" if line.startswith("PGPASSWORD=") else line
                 for line in example.splitlines()]
        (manifests / "environments" / env / "database.env").write_text("\n".join(lines) + "\n")
    return passwords


@dataclass
class Installation:
    """One overlay of a private copy of ``manifests/`` on the cluster ``kubectl`` reaches."""

    kubectl: Kubectl
    workdir: Path
    overlay: str = "overlays/local"
    namespace: str = "default"  # where the environments and their databases live (the overlay names none)
    log: Callable[[str], None] = lambda _msg: None
    passwords: dict[str, str] = field(default_factory=dict)
    # Service ClusterIPs answer from this host on the real node (kube-proxy's rules are the host's); elsewhere
    # (kind) the broker and databases are reached through `kubectl port-forward`
    port_forward: bool = False
    # (namespace, Service, port) -> the port-forward, its local port, the ready pods it could hold when started
    _forwards: dict[tuple[str, str, int], tuple[subprocess.Popen[bytes], int, frozenset[str]]] = field(
        default_factory=dict)

    @property
    def manifests(self) -> Path:
        return self.workdir / "manifests"

    def prepare(self) -> Installation:
        shutil.rmtree(self.manifests, ignore_errors=True)
        shutil.copytree(REPO_ROOT / "manifests", self.manifests,
                        ignore=shutil.ignore_patterns("*.env"))  # never a developer's own filled-in files
        self.passwords = fill_env_files(self.manifests)
        return self

    def build(self) -> str:
        """``kubectl kustomize`` of the overlay: the YAML that ``apply -k`` sends."""
        return self.kubectl.run("kustomize", str(self.manifests / self.overlay)).stdout

    def apply(self, manifest: str | None = None, timeout: float = 90) -> None:
        """``kubectl apply -k`` of the overlay (or ``-f -`` of ``manifest``). A first apply on an empty cluster
        cannot create MatchEnvironments before their CRD is served; as a user would, apply again until it is."""
        args = ("apply", "-f", "-") if manifest is not None else ("apply", "-k", str(self.manifests / self.overlay))
        deadline = time.monotonic() + timeout
        while True:
            result = self.kubectl.run(*args, stdin=manifest, check=False, timeout=120)
            if result.returncode == 0:
                return
            if not any(m in result.stderr for m in _CRD_NOT_SERVED) or time.monotonic() > deadline:
                raise KubectlError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
            self.log("MatchEnvironments are not served yet (the CRD was just created): applying again")
            time.sleep(2)

    def wait_installed(self, timeout: float = 300) -> None:
        """The operator Deployment, RabbitMQ and every database rolled out."""
        self.kubectl.run("rollout", "status", "-n", SYSTEM, "deployment/matchenv-operator",
                         f"--timeout={int(timeout)}s", timeout=timeout + 30)
        self.kubectl.run("rollout", "status", "-n", SYSTEM, "statefulset/rabbitmq", f"--timeout={int(timeout)}s",
                         timeout=timeout + 30)
        for env in self.passwords:
            if env != "broker":
                self.kubectl.run("rollout", "status", "-n", self.namespace, f"statefulset/postgres-{env}",
                                 f"--timeout={int(timeout)}s", timeout=timeout + 30)

    def wait_ready(self, *names: str, timeout: float = 300) -> None:
        targets = [f"menv/{n}" for n in names] or ["menv", "--all"]
        self.kubectl.run("wait", "-n", self.namespace, "--for=condition=Ready", *targets, f"--timeout={int(timeout)}s",
                         timeout=timeout + 30)

    # -- the operator ----------------------------------------------------------------------------------------
    def operator_pods(self) -> list[dict[str, Any]]:
        pods: list[dict[str, Any]] = self.kubectl.get_json("pods", "-n", SYSTEM, "-l", OPERATOR_SELECTOR)["items"]
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def leader(self) -> str | None:
        """The pod named in the Lease (None while nobody holds it)."""
        lease = self.kubectl.get_json("lease", "-n", SYSTEM, "matchenv-operator")
        return str(lease["spec"].get("holderIdentity") or "") or None

    def operator_logs(self) -> str:
        return self.kubectl.run("logs", "-n", SYSTEM, "-l", OPERATOR_SELECTOR, "--tail=-1", "--prefix",
                                check=False).stdout

    # -- the scraper -----------------------------------------------------------------------------------------
    def scrape_job(self, name: str, wait: bool = True, timeout: float = 600) -> dict[str, Any]:
        """``kubectl create job --from=cronjob/matchenv-scrape <name>``; with ``wait``, until it completes (a failed
        Job raises, with its pod's log)."""
        self.kubectl.run("create", "job", "-n", SYSTEM, "--from=cronjob/matchenv-scrape", name)
        return self.wait_job(name, timeout) if wait else self.kubectl.get_json("job", "-n", SYSTEM, name)

    def wait_job(self, name: str, timeout: float = 600) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            job = self.kubectl.get_json("job", "-n", SYSTEM, name)
            done = {c["type"] for c in job["status"].get("conditions", []) if c["status"] == "True"}
            return job if done & {"Complete", "Failed"} else None

        job: dict[str, Any] = wait_for(finished, timeout=timeout, what=f"Job {name} to finish")
        if not job["status"].get("succeeded"):
            raise AssertionError(f"Job {name} failed: {job['status']}\n{self.job_log(name)}")
        return job

    def job_log(self, name: str) -> str:
        return self.kubectl.run("logs", "-n", SYSTEM, f"job/{name}", "--tail=50", check=False).stdout

    # -- the broker and the databases, from this host --------------------------------------------------------
    def reach(self, namespace: str, service: str, port: int) -> str:
        """``host:port`` at which this host reaches a Service's port."""
        if not self.port_forward:
            ip = self.kubectl.get_json("service", "-n", namespace, service)["spec"]["clusterIP"]
            return f"{ip}:{port}"
        key = (namespace, service, port)
        forward = self._forwards.get(key)
        ready = self._ready_pods(namespace, service)
        # `kubectl port-forward service/...` holds one pod: when that pod is gone (deleted, restarted under the same
        # name) the forward answers nothing, so a forward is kept only while a pod it could hold is still ready
        if forward is None or forward[0].poll() is not None or not forward[2] & ready:
            if forward is not None:
                forward[0].terminate()
            local = free_port()
            proc = subprocess.Popen(self.kubectl.cluster.kubectl_cmd(
                "port-forward", "-n", namespace, f"service/{service}", f"{local}:{port}"),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda: _listening(local), timeout=30, what=f"port-forward to {namespace}/{service}")
            self._forwards[key] = forward = (proc, local, ready)
        return f"127.0.0.1:{forward[1]}"

    def _ready_pods(self, namespace: str, service: str) -> frozenset[str]:
        """The uids of the pods behind a Service that are ready now (its EndpointSlices)."""
        slices = self.kubectl.get_json("endpointslices", "-n", namespace, "-l",
                                       f"kubernetes.io/service-name={service}")["items"]
        return frozenset(endpoint["targetRef"]["uid"] for eps in slices for endpoint in eps.get("endpoints") or []
                         if endpoint.get("conditions", {}).get("ready") and endpoint.get("targetRef", {}).get("uid"))

    def close(self) -> None:
        """Stop the port-forwards."""
        for proc, _, _ in self._forwards.values():
            proc.terminate()
        self._forwards.clear()

    def broker(self) -> ManagementClient:
        return ManagementClient(f"http://{self.reach(SYSTEM, 'rabbitmq', 15672)}", "matchenv-admin",
                                self.passwords["broker"])

    def database_url(self, env: str, namespace: str | None = None) -> str:
        where = self.reach(namespace or self.namespace, f"postgres-{env}", 5432)
        return f"postgresql://postgres:{self.passwords[env]}@{where}/postgres"

    def rows(self, env: str) -> int:
        return count_rows(self.database_url(env))

    def duplicates(self, env: str) -> int:
        return count_duplicates(self.database_url(env))

    def wait_rows(self, expected: dict[str, int], timeout: float = 300) -> None:
        last: dict[str, int] = {}

        def reached() -> bool:
            last.update({e: self.rows(e) for e in expected})
            return last == expected

        started = time.monotonic()
        try:
            wait_for(reached, timeout=timeout, what=f"rows {expected}", every=1.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; rows now {last}") from None
        self.log(f"rows {expected} after {time.monotonic() - started:.0f}s")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
