"""A kind cluster on this machine for ``make e2e-kind``: created in the project's Docker engine from the node image
built here (:mod:`matchenv_devkit.cluster.kindimages`), with images loaded from their docker-archives."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from matchenv_devkit.cluster.build import ensure_kind_binaries
from matchenv_devkit.cluster.dockerd import DockerEngine
from matchenv_devkit.cluster.images import BuiltImage
from matchenv_devkit.cluster.kindimages import POD_SUBNET
from matchenv_devkit.cluster.versions import COREDNS_VERSION

CLUSTER_NAME = "matchenv-e2e"
Progress = Callable[[str], None]


class KindError(RuntimeError):
    """A kind command failed; the message has its output's tail."""


def cluster_config() -> dict[str, object]:
    """kind's cluster configuration: one node, no kindnetd (the node image carries a bridge CNI), CoreDNS at the
    version built here, and a kubelet that starts on a cgroup v1 host (refused by default since 1.35)."""
    return {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "networking": {"disableDefaultCNI": True, "podSubnet": POD_SUBNET},
        "kubeadmConfigPatches": [
            yaml.safe_dump({"kind": "ClusterConfiguration", "dns": {"imageTag": COREDNS_VERSION}}),
            yaml.safe_dump({"kind": "KubeletConfiguration", "failCgroupV1": False}),
        ],
    }


@dataclass
class KindCluster:
    """One kind cluster in ``engine``; ``kubeconfig`` is written when it is created."""

    engine: DockerEngine
    state_dir: Path
    name: str = CLUSTER_NAME
    progress: Progress = lambda _msg: None

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / f"kind-{self.name}.kubeconfig"

    @property
    def kind(self) -> str:
        return str(ensure_kind_binaries().path("kind"))

    def create(self, node_image: str, timeout: float = 300) -> KindCluster:
        """Create the cluster from ``node_image`` unless it exists; write its kubeconfig."""
        if self.name not in self._kind("get", "clusters").split():
            config = self.state_dir / f"kind-{self.name}.yaml"
            config.write_text(yaml.safe_dump(cluster_config()))
            started = time.monotonic()
            self._kind("create", "cluster", "--name", self.name, "--image", node_image, "--config", str(config),
                       "--wait", f"{int(timeout)}s", "--kubeconfig", str(self.kubeconfig), timeout=timeout + 120)
            self.progress(f"kind cluster {self.name} created in {time.monotonic() - started:.0f}s")
        self.kubeconfig.write_text(self._kind("get", "kubeconfig", "--name", self.name))
        return self

    def load(self, images: list[BuiltImage]) -> None:
        """Load docker-archives into the cluster's nodes."""
        for image in images:
            self._kind("load", "image-archive", str(image.archive), "--name", self.name, timeout=900)
            self.progress(f"loaded {image.name}")

    def delete(self) -> None:
        self._kind("delete", "cluster", "--name", self.name, timeout=300)
        self.progress(f"kind cluster {self.name} deleted")

    def _kind(self, *args: str, timeout: float = 120) -> str:
        proc = subprocess.run([self.kind, *args], capture_output=True, text=True, env=self.engine.env,
                              timeout=timeout)
        if proc.returncode != 0:
            raise KindError(f"kind {' '.join(args[:2])} failed ({proc.returncode}):\n"
                            f"{(proc.stdout + proc.stderr)[-4000:]}")
        return proc.stdout

