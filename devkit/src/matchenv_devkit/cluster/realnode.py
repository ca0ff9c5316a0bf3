"""A real node for the local control plane: containerd + runc run pods as containers, the kubelet registers the
node, kube-proxy programs Services in iptables, CoreDNS answers cluster names, pods get addresses on a bridge.

Needs root. Everything the node makes is recorded or lives under its state directory, and :meth:`RealNode.stop`
removes it: processes (the kubelet, kube-proxy, containerd, its shims and every container), mounts (the kubelet's
root, overlay root filesystems, network namespaces), the bridge and its veths, kube-proxy's iptables chains, the
kubelet's cgroups, and the two kernel settings it changed. :func:`leftovers` lists whatever of that still exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from matchenv_devkit.cluster.build import ensure_node_binaries
from matchenv_devkit.cluster.cluster import LocalCluster
from matchenv_devkit.cluster.images import COREDNS_IMAGE, PAUSE_IMAGE, BuiltImage, ImageBuilder
from matchenv_devkit.cluster.kubectl import Kubectl
from matchenv_devkit.cluster.nodecleanup import (
    CNI_CACHE,
    CONTAINER_LOG_LINKS,
    FIXED_DIRS,
    IPTABLES,
    SHIM_SOCKETS,
    container_pids,
    foreign_node,
    kill_all,
    kubepods_cgroups,
    link_exists,
    mounts_under,
    remove_cgroup,
    remove_chains,
    remove_newer,
    shim_pids,
)
from matchenv_devkit.cluster.nodeconfig import (
    BRIDGE,
    CNI_NETWORK,
    NODE_IP,
    NODE_NAME,
    POD_CIDR,
    SOCKET_ROOT,
    NodePaths,
    cni_conflist,
    containerd_config,
    coredns_manifests,
    kube_proxy_config,
    kubelet_config,
    storage_manifests,
)
from matchenv_devkit.cluster.versions import NodeBinaries
from matchenv_devkit.services.process import Daemons, free_port, process_alive

CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
# Kernel settings the node needs: forwarding between pods and Services, and bridged traffic through iptables.
SYSCTLS = {"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1"}
_STOP_ORDER = ("kubelet", "kube-proxy")
# The node's accept rules in the host's FORWARD chain: to and from its pod bridge, nothing else
FORWARD_RULES = tuple((flag, BRIDGE, "-m", "comment", "--comment", "matchenv node: pod bridge", "-j", "ACCEPT")
                      for flag in ("-i", "-o"))
VOLUMES = 8  # host-path PersistentVolumes made ahead of time


MIN_FREE_BYTES = 6 * 2**30  # the images unpacked (~2.5 GiB) and pods' writable layers, with room to spare
MAX_SOCKET_PATH = 107  # bytes of a unix socket's path (sun_path holds 108 with its NUL)


class NodeError(RuntimeError):
    """The node did not start; the message says which part and shows its log."""


@dataclass
class NodeState:
    """What a started node leaves in ``node.json`` so a later ``down`` (or the next ``up``) can remove it."""

    pids: dict[str, int] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    created_dirs: list[str] = field(default_factory=list)
    started_at: float = 0.0


class RealNode:
    """The real node of ``cluster``; its state lives in ``<cluster state dir>/node``."""

    def __init__(self, cluster: LocalCluster, binaries: NodeBinaries | None = None,
                 images: Sequence[BuiltImage] | None = None, detached: bool = False,
                 log: Callable[[str], None] = lambda _msg: None) -> None:
        if cluster.node_ip != NODE_IP:
            raise NodeError(f"the control plane must be started with node_ip={NODE_IP} for a real node")
        self.cluster = cluster
        self.binaries = binaries or NodeBinaries.default()
        self.images = images
        self.detached = detached
        self.log = log
        self.paths = NodePaths(cluster.state_dir / "node")
        self.logs_dir = self.paths.root / "logs"
        self.state = NodeState()
        self.daemons = Daemons(self.logs_dir, self.paths.root, detached, NodeError)

    @property
    def _state_file(self) -> Path:
        return self.paths.root / "node.json"

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> RealNode:
        """Start containerd, import the images, start the kubelet and kube-proxy, deploy CoreDNS; return when the
        node is Ready and cluster DNS answers."""
        if os.geteuid() != 0:
            raise NodeError("a real node needs root (containers, mounts, network namespaces, iptables)")
        ensure_node_binaries(self.binaries)
        images = list(self.images) if self.images is not None else ImageBuilder().all()
        if self._state_file.exists():
            RealNode.attach(self.cluster).stop()
        foreign = foreign_node()
        if foreign:
            raise NodeError(f"{foreign}: another node (this kit's from another state directory, or a Kubernetes "
                            "node this machine already is) owns it; its pods and Service rules are not this node's "
                            "to take over or remove. Stop it first (`matchenv-dev cluster down --state-dir ...`).")
        state_root = self.cluster.state_dir
        state_root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(state_root).free
        if free < MIN_FREE_BYTES:
            raise NodeError(f"only {free / 2**30:.1f} GiB free under {state_root}: a node needs at least "
                            f"{MIN_FREE_BYTES / 2**30:.0f} GiB there (its images are unpacked there; near a full disk "
                            "the kubelet taints the node, evicts its pods and deletes their images)")
        # the kubelet binds unix sockets under its root dir (pod-resources/<10 digits>): a socket path is at most
        # 107 bytes, and a longer one fails deep in the kubelet's start as "bind: invalid argument"
        longest = self.paths.kubelet_root / "pod-resources" / ("0" * 10)
        if len(str(longest)) > MAX_SOCKET_PATH:
            raise NodeError(f"the state directory {state_root} is too deep for the kubelet's sockets ({longest} is "
                            f"{len(str(longest))} bytes, at most {MAX_SOCKET_PATH}): choose a shorter --state-dir")
        started = time.monotonic()
        self.state.started_at = time.time()
        self.state.created_dirs = [str(d) for d in FIXED_DIRS if not d.exists()]
        paths = self.paths
        for directory in (self.logs_dir, paths.socket_dir, paths.cni_conf_dir, paths.kubelet_root, paths.pod_logs):
            directory.mkdir(parents=True, exist_ok=True)
        try:
            self._set_sysctls()
            self._run(["ip", "link", "add", BRIDGE, "type", "bridge"])
            self._run(["ip", "addr", "add", f"{NODE_IP}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE])
            self._run(["ip", "link", "set", BRIDGE, "up"])
            for rule in FORWARD_RULES:  # a host whose FORWARD policy is DROP (Docker sets it) still forwards pods'
                self._run(["iptables", "-I", "FORWARD", *rule])  # traffic, and only theirs
            self._write_configs()
            self._spawn("containerd", [str(self.binaries.path("containerd")),
                                       f"--config={self.paths.containerd_config}"])
            self.daemons.wait(lambda: self._ctr_ok("version"), "containerd", started + timeout)
            with ThreadPoolExecutor(max_workers=len(images) or 1) as pool:  # the largest takes most of the time
                list(pool.map(lambda image: self._run(self._ctr("images", "import", "--local", str(image.archive)),
                                                      timeout=600), images))
            self.log(f"containerd ready with {len(images)} images")
            cluster_dir = self.cluster.state_dir
            self._spawn("kubelet", [
                str(self.binaries.path("kubelet")), f"--config={self.paths.kubelet_config}",
                f"--kubeconfig={cluster_dir / 'kubelet.kubeconfig'}", f"--root-dir={self.paths.kubelet_root}",
                f"--node-ip={NODE_IP}", f"--hostname-override={NODE_NAME}", "--v=1",
            ])
            self._spawn("kube-proxy", [str(self.binaries.path("kube-proxy")),
                                       f"--config={self.paths.kube_proxy_config}", "--v=1"])
            api = config.new_client_from_config(str(self.cluster.kubeconfig))
            core = client.CoreV1Api(api)
            self.daemons.wait(lambda: _node_ready(core), "kubelet", started + timeout)
            kubectl = Kubectl(self.cluster)
            for index in range(VOLUMES):
                volume = self.paths.volumes / f"pv-{index}"
                volume.mkdir(parents=True, exist_ok=True)
                volume.chmod(0o777)  # any pod's user may write: no fsGroup for host paths
            kubectl.apply(yaml.safe_dump_all([*coredns_manifests(COREDNS_IMAGE),
                                              *storage_manifests(self.paths.volumes, VOLUMES)]))
            kubectl.run("rollout", "status", "-n", "kube-system", "deployment/coredns",
                        f"--timeout={max(10, int(started + timeout - time.monotonic()))}s", timeout=timeout)
        except BaseException:
            self.stop()
            raise
        self.log(f"node {NODE_NAME} ready at {NODE_IP} in {time.monotonic() - started:.1f}s "
                 f"(logs in {self.logs_dir})")
        return self

    def stop(self) -> None:
        """Stop everything the node started and remove what it made; safe to call more than once. Without this
        node's state file (never started, or already stopped) nothing machine-wide is touched: the pods, bridge and
        chains there would be another node's."""
        if not self._state_file.exists():
            return
        for name in _STOP_ORDER:
            self._terminate(name)
        kube_proxy = self.binaries.path("kube-proxy")
        if kube_proxy.exists():
            subprocess.run([str(kube_proxy), "--cleanup"], capture_output=True, timeout=60)
        kill_all(container_pids())
        kill_all(shim_pids(self.paths.containerd_socket))
        self._terminate("containerd")
        kill_all(shim_pids(self.paths.containerd_socket))
        for mount in sorted(mounts_under(self.paths.root), key=len, reverse=True):
            if subprocess.run(["umount", mount], capture_output=True).returncode != 0:
                subprocess.run(["umount", "--lazy", mount], capture_output=True)
        if link_exists(BRIDGE):
            subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
        for cgroup in kubepods_cgroups():
            remove_cgroup(cgroup)
        for binary in IPTABLES:
            remove_chains(binary, "KUBE-")  # the kubelet's own (KUBE-FIREWALL, canaries); kube-proxy's are gone
        for rule in FORWARD_RULES:
            while subprocess.run(["iptables", "-D", "FORWARD", *rule], capture_output=True).returncode == 0:
                pass
        for link in CONTAINER_LOG_LINKS.glob("*.log") if CONTAINER_LOG_LINKS.is_dir() else []:
            with contextlib.suppress(OSError):
                if str(self.paths.pod_logs) in os.readlink(link):
                    link.unlink()
        for pattern in (f"{CNI_NETWORK}-*", "cni-loopback-*"):
            remove_newer(CNI_CACHE.glob(pattern), self.state.started_at)
        remove_newer(SHIM_SOCKETS.glob("*"), self.state.started_at)
        for directory in self.state.created_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        # the unpacked images and containers' layers (~2.5 GiB): every start imports the images afresh, so a stopped
        # node keeps only its logs, configs and volumes
        shutil.rmtree(self.paths.root / "containerd", ignore_errors=True)
        shutil.rmtree(self.paths.socket_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            SOCKET_ROOT.rmdir()  # when no other node's sockets are there
        self._restore_sysctls()
        self.state.pids.clear()
        self._state_file.unlink(missing_ok=True)

    @classmethod
    def attach(cls, cluster: LocalCluster, log: Callable[[str], None] = lambda _msg: None) -> RealNode:
        """A handle on the node a detached ``cluster up`` left running."""
        node = cls.__new__(cls)
        RealNode.__init__(node, cluster, images=[], detached=True, log=log)
        if node._state_file.exists():
            node.state = NodeState(**json.loads(node._state_file.read_text()))
        return node

    def container_pid(self, container_id: str) -> int:
        """The host PID of a container's main process (``containerd://<id>`` or ``<id>``, as a pod's status has it)."""
        wanted = container_id.removeprefix("containerd://")
        for line in self._run(self._ctr("tasks", "ls")).splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 2 and fields[0] == wanted:
                return int(fields[1])
        raise NodeError(f"no running task for container {wanted}")

    def running(self) -> bool:
        return bool(self.state.pids) and all(process_alive(pid) for pid in self.state.pids.values())

    # -- helpers -----------------------------------------------------------------------------------------------
    def _write_configs(self) -> None:
        paths = self.paths
        paths.containerd_config.parent.mkdir(parents=True, exist_ok=True)
        paths.containerd_config.write_text(containerd_config(paths, CNI_BIN_DIR, self.binaries.path("runc"),
                                                             self.binaries.path("containerd-shim-runc-v2"),
                                                             PAUSE_IMAGE))
        (paths.cni_conf_dir / f"10-{CNI_NETWORK}.conflist").write_text(cni_conflist(paths))
        kubelet = kubelet_config(paths, self.cluster.pki.ca.cert, port=free_port(), healthz_port=free_port())
        paths.kubelet_config.write_text(yaml.safe_dump(kubelet))
        proxy = kube_proxy_config(self.cluster.state_dir / "kube-proxy.kubeconfig", healthz_port=free_port(),
                                  metrics_port=free_port())
        paths.kube_proxy_config.write_text(yaml.safe_dump(proxy))

    def _set_sysctls(self) -> None:
        for key, value in SYSCTLS.items():
            path = Path("/proc/sys") / key
            previous = path.read_text().strip()
            if previous != value:
                self.state.sysctls.setdefault(key, previous)
                self._save_state()  # before the change: a crash right after it still restores it
                path.write_text(value)
        self._save_state()

    def _restore_sysctls(self) -> None:
        for key, previous in self.state.sysctls.items():
            with contextlib.suppress(OSError):
                (Path("/proc/sys") / key).write_text(previous)
        self.state.sysctls.clear()

    def _ctr(self, *args: str) -> list[str]:
        return [str(self.binaries.path("ctr")), f"--address={self.paths.containerd_socket}", "--namespace=k8s.io",
                *args]

    def _ctr_ok(self, *args: str) -> bool:
        return subprocess.run(self._ctr(*args), capture_output=True, timeout=10).returncode == 0

    @staticmethod
    def _run(cmd: Sequence[str], timeout: float = 60) -> str:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise NodeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def _spawn(self, name: str, argv: list[str]) -> None:
        # the node's own binaries first, whatever the host's PATH holds (e.g. the kubelet's mount helpers stay the
        # host's; a shim or runc of another containerd is never found before the node's)
        path = os.pathsep.join([str(self.binaries.bin_dir), os.environ.get("PATH", os.defpath)])
        self.state.pids[name] = pid = self.daemons.spawn(name, argv, env={**os.environ, "PATH": path})
        self._save_state()
        self.log(f"started {name} (pid {pid})")

    def _terminate(self, name: str) -> None:
        pid = self.state.pids.pop(name, None)
        if pid is not None:
            self.daemons.terminate(name, pid, timeout=15)

    def log_tail(self, name: str, lines: int = 40) -> str:
        return self.daemons.log_tail(name, lines)

    def _save_state(self) -> None:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(json.dumps(asdict(self.state), indent=2))


def _node_ready(core: client.CoreV1Api) -> bool:
    try:
        node = core.read_node(NODE_NAME, _request_timeout=5)
    except ApiException:
        return False
    conditions = (node.status.conditions if node.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)
