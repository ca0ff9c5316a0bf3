"""Run a real, local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

Everything listens on loopback with TLS and RBAC on. State (PKI, etcd data, logs, kubeconfig, pids) lives in one
directory. A :class:`LocalCluster` used as a context manager stops its processes on exit and they die with the
Python process that started them; ``detached=True`` (``matchenv-dev cluster up``) leaves them running for a later
``matchenv-dev cluster down``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
import yaml

from matchenv_devkit.cluster.build import ensure_apiserver_binaries, ensure_binaries
from matchenv_devkit.cluster.nodeconfig import NODE_NAME
from matchenv_devkit.cluster.pki import CertPair, Pki
from matchenv_devkit.cluster.versions import ApiServerBinaries, ControlPlaneBinaries
from matchenv_devkit.services.process import Daemons, free_port, process_alive

SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"
ADMIN_USER = "matchenv-admin"
# The real node's identities: kubeconfigs are written for these; the API server's own client cert for kubelets.
NODE_CLIENTS: dict[str, tuple[str, str | None]] = {
    "kubelet": (f"system:node:{NODE_NAME}", "system:nodes"),
    "kube-proxy": ("system:kube-proxy", None),
}
KUBELET_CLIENT: dict[str, tuple[str, str | None]] = {
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters"),
}
_STOP_ORDER = ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")


class ClusterError(RuntimeError):
    """The control plane did not start or stop; the message says which component and shows its log."""


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig_for(server: str, ca: Path, client: CertPair, user: str) -> dict[str, Any]:
    """A kubeconfig with everything embedded, so it works from any directory."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "matchenv-local", "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": user, "user": {"client-certificate-data": _b64(client.cert),
                                          "client-key-data": _b64(client.key)}}],
        "contexts": [{"name": "matchenv-local", "context": {"cluster": "matchenv-local", "user": user,
                                                             "namespace": "default"}}],
        "current-context": "matchenv-local",
    }


@dataclass
class ClusterState:
    """What ``cluster up`` leaves in ``state.json`` for ``cluster down`` and ``cluster status``."""

    api_port: int
    etcd_port: int
    kubeconfig: str
    pids: dict[str, int] = field(default_factory=dict)
    binaries: dict[str, str] = field(default_factory=dict)
    node_ip: str | None = None


class LocalCluster:
    """One local control plane in ``state_dir``."""

    def __init__(
        self,
        state_dir: Path,
        binaries: ControlPlaneBinaries | None = None,
        detached: bool = False,
        log: Callable[[str], None] = lambda _msg: None,
        node_ip: str | None = None,
        apiserver: ApiServerBinaries | None = None,
    ) -> None:
        """``node_ip``: for a real node, the address pods reach the API server at (it is advertised as the
        ``kubernetes`` Service's endpoint) and the node's address the API server reaches the kubelet at.
        ``apiserver``: only etcd and this (another release's) API server, with its kubectl: no controllers, no
        scheduler, for checks of what that release's API accepts."""
        self.state_dir = state_dir.resolve()
        self.node_ip = node_ip
        self.binaries = binaries or ControlPlaneBinaries.default()
        self.apiserver = apiserver
        self.detached = detached
        self.log = log
        self.pki = Pki(self.state_dir / "pki")
        self.logs_dir = self.state_dir / "logs"
        self.daemons = Daemons(self.logs_dir, self.state_dir, detached, ClusterError)
        self.state: ClusterState | None = None

    # -- paths -------------------------------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def kubectl(self) -> Path:
        return self._binary("kubectl")

    def _binary(self, name: str) -> Path:
        if self.apiserver is not None and name in self.apiserver.all_names:
            return self.apiserver.path(name)
        return self.binaries.path(name)

    @property
    def server(self) -> str:
        assert self.state is not None, "cluster not started"
        return f"https://127.0.0.1:{self.state.api_port}"

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "state.json"

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> LocalCluster:
        """Start etcd, the API server, controller-manager and scheduler; return when the API is ready."""
        ensure_binaries(self.binaries)
        if self.apiserver is not None:
            ensure_apiserver_binaries(self.apiserver)
        if self._state_file.exists():
            previous = LocalCluster.attach(self.state_dir)
            if previous.running():
                raise ClusterError(f"a cluster is already running from {self.state_dir}; stop it first")
            previous.stop()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        started = time.monotonic()
        clients: dict[str, tuple[str, str | None]] = {"admin": (ADMIN_USER, "system:masters")}
        if self.apiserver is None:
            clients["controller-manager"] = ("system:kube-controller-manager", None)
            clients["scheduler"] = ("system:kube-scheduler", None)
        if self.node_ip:
            clients.update(NODE_CLIENTS)
        self.pki.create({**clients, **KUBELET_CLIENT} if self.node_ip else clients, SERVICE_IP,
                        extra_ips=(self.node_ip,) if self.node_ip else ())
        self.state = ClusterState(api_port=free_port(), etcd_port=free_port(), kubeconfig=str(self.kubeconfig),
                                  binaries={n: str(self._binary(n)) for n in self.binaries.all_names},
                                  node_ip=self.node_ip)
        for name, (user, _) in clients.items():
            config = kubeconfig_for(self.server, self.pki.ca.cert, self.pki.client(name), user)
            path = self.kubeconfig if name == "admin" else self.state_dir / f"{name}.kubeconfig"
            path.write_text(yaml.safe_dump(config))
            path.chmod(0o600)
        try:
            self._spawn("etcd", self._etcd_args())
            self.daemons.wait(lambda: self._etcd_healthy(), "etcd", deadline=started + timeout)
            self._spawn("kube-apiserver", self._apiserver_args())
            self.daemons.wait(lambda: self._api_ok("/readyz"), "kube-apiserver", deadline=started + timeout)
            if self.apiserver is not None:
                self._save_state()
                self.log(f"API server {self.apiserver.version} ready at {self.server}; KUBECONFIG={self.kubeconfig}")
                return self
            self._spawn("kube-controller-manager", self._controller_manager_args())
            self._spawn("kube-scheduler", self._scheduler_args())
            # The default ServiceAccount appears once the controller-manager works; pods need it.
            self.daemons.wait(lambda: self._api_ok("/api/v1/namespaces/default/serviceaccounts/default"),
                       "kube-controller-manager", deadline=started + timeout)
        except BaseException:
            self.stop()
            raise
        self._save_state()
        self.log(f"control plane ready at {self.server} in {time.monotonic() - started:.1f}s; "
                 f"KUBECONFIG={self.kubeconfig}")
        return self

    def stop(self) -> None:
        """Stop every component (TERM, then KILL after 10 s) and forget the state file."""
        pids = dict(self.state.pids) if self.state else {}
        for name in _STOP_ORDER:
            if name in pids:
                self.daemons.terminate(name, pids[name], timeout=10)
        if self.state:
            self.state.pids.clear()
        self._state_file.unlink(missing_ok=True)

    def running(self) -> bool:
        """Whether every component recorded in the state file is still alive."""
        return bool(self.state and self.state.pids) and all(
            process_alive(pid) for pid in (self.state.pids.values() if self.state else [])
        )

    @classmethod
    def attach(cls, state_dir: Path, log: Callable[[str], None] = lambda _msg: None) -> LocalCluster:
        """A handle on a cluster that ``cluster up`` started earlier from ``state_dir``."""
        cluster = cls(state_dir, detached=True, log=log)
        state_file = cluster._state_file
        if state_file.exists():
            cluster.state = ClusterState(**json.loads(state_file.read_text()))
            cluster.node_ip = cluster.state.node_ip
        return cluster

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- helpers -----------------------------------------------------------------------------------------------
    def kubectl_cmd(self, *args: str) -> list[str]:
        return [str(self.kubectl), f"--kubeconfig={self.kubeconfig}", *args]

    def _save_state(self) -> None:
        assert self.state is not None
        self._state_file.write_text(json.dumps(asdict(self.state), indent=2))

    def _spawn(self, name: str, args: Sequence[str]) -> None:
        assert self.state is not None
        self.state.pids[name] = pid = self.daemons.spawn(name, [str(self._binary(name)), *args])
        self._save_state()
        self.log(f"started {name} (pid {pid})")

    def log_tail(self, name: str, lines: int = 40) -> str:
        return self.daemons.log_tail(name, lines)

    def _etcd_healthy(self) -> bool:
        assert self.state is not None
        try:
            return requests.get(f"http://127.0.0.1:{self.state.etcd_port}/health", timeout=2).ok
        except requests.RequestException:
            return False

    def _api_ok(self, path: str) -> bool:
        admin = self.pki.client("admin")
        try:
            response = requests.get(self.server + path, timeout=2, verify=str(self.pki.ca.cert),
                                    cert=(str(admin.cert), str(admin.key)))
        except requests.RequestException:
            return False
        return response.status_code == 200

    def _etcd_args(self) -> list[str]:
        assert self.state is not None
        url = f"http://127.0.0.1:{self.state.etcd_port}"
        peer = f"http://127.0.0.1:{free_port()}"
        return [
            "--name=matchenv", f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=matchenv={peer}", "--unsafe-no-fsync", "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        assert self.state is not None
        pki = self.pki
        if self.node_ip:
            kubelet_client = pki.client("apiserver-kubelet-client")
            # Pods reach the API server through the `kubernetes` Service, whose endpoint is the advertised address.
            network = [
                "--bind-address=0.0.0.0", f"--advertise-address={self.node_ip}", "--endpoint-reconciler-type=lease",
                f"--kubelet-client-certificate={kubelet_client.cert}", f"--kubelet-client-key={kubelet_client.key}",
                "--kubelet-preferred-address-types=InternalIP",
            ]
        else:
            network = ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none"]
        return [
            f"--etcd-servers=http://127.0.0.1:{self.state.etcd_port}",
            f"--secure-port={self.state.api_port}",
            *network,
            f"--cert-dir={pki.dir}",
            f"--tls-cert-file={pki.serving.cert}",
            f"--tls-private-key-file={pki.serving.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--profiling=false",
            "--v=1",
        ]

    def _controller_manager_args(self) -> list[str]:
        kubeconfig = self.state_dir / "controller-manager.kubeconfig"
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--service-account-private-key-file={self.pki.sa_key}",
            f"--root-ca-file={self.pki.ca.cert}",
            "--use-service-account-credentials=true",
            "--controllers=*",
            "--leader-elect=false",
            "--secure-port=0",
            "--profiling=false",
            "--v=1",
        ]

    def _scheduler_args(self) -> list[str]:
        kubeconfig = self.state_dir / "scheduler.kubeconfig"
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
            "--profiling=false",
            "--v=1",
        ]
