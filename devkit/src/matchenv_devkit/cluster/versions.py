"""Pinned versions of the local control plane and where its build outputs are cached."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
# The etcd server release that Kubernetes v1.36.3's go.mod pins (go.etcd.io/etcd/server/v3).
ETCD_VERSION = "v3.6.8"

COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")

# matchenv supports the pinned minor and the three before it (docs/installing.md). The whole
# suite runs on the pinned one; the install (kustomize base, chart) and the operator are also checked against the
# oldest one's API server and kubectl, with the pinned etcd (etcd's API is the same for both).
SUPPORTED_MINORS = ("1.33", "1.34", "1.35", "1.36")
OLDEST_KUBERNETES_VERSION = "v1.33.13"
APISERVER_COMPONENTS = ("kube-apiserver", "kubectl")

# A real node. The 1.36 kubelet no longer supports containerd 1.x (Debian ships 1.6), Debian's crun is too old for
# containerd 2.4's OCI spec: all four are built from their Go modules, like the control plane.
NODE_COMPONENTS = ("kubelet", "kube-proxy")
CONTAINERD_VERSION = "v2.4.2"
CONTAINERD_COMMANDS = ("containerd", "containerd-shim-runc-v2", "ctr")
RUNC_VERSION = "v1.5.2"
COREDNS_VERSION = "v1.15.0"
# Helm, for the chart's tests (lint, template, install/upgrade/uninstall on the real node).
HELM_VERSION = "v4.3.1"
# the Prometheus Operator whose CRDs (PodMonitor, PrometheusRule) the monitoring component is checked against
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
# KEDA, whose ScaledObject and TriggerAuthentication CRDs check the documented way to autoscale with KEDA instead
# (docs/operating.md); its module asks for a newer Go than the one here, so it is read, not built
KEDA_VERSION = "v2.21.1"
KEDA_CRDS = ("scaledobjects", "triggerauthentications")
# The RabbitMQ messaging-topology-operator that `make bench` measures beside matchenv. Its go.mod wants
# github.com/rabbitmq/cluster-operator/v2 v2.22.3, which the module proxy here refuses: v2.19.0 stands in (the
# topology operator uses only its RabbitmqCluster types).
TOPOLOGY_OPERATOR_VERSION = "v1.20.1"
TOPOLOGY_CLUSTER_OPERATOR_VERSION = "v2.19.0"
# kind (`make e2e-kind`): its command, and what its node image needs beyond the real node's binaries: kubeadm and
# crictl. kindnetd's source is not in kind's module (and not served here), so the node image's CNI is the real
# node's bridge network; the local-path provisioner is rancher's module, as kind's own image builds it.
KIND_VERSION = "v0.33.0"
CRI_TOOLS_VERSION = "v1.37.0"
LOCAL_PATH_PROVISIONER_VERSION = "v0.0.30"
KIND_COMMANDS = ("kind", "kubeadm", "crictl", "local-path-provisioner")


def cache_root() -> Path:
    """Root of matchenv's build cache: ``$MATCHENV_CACHE`` or ``$XDG_CACHE_HOME/matchenv`` or ``~/.cache/matchenv``."""
    explicit = os.environ.get("MATCHENV_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "matchenv"


@dataclass(frozen=True)
class CachedBinaries:
    """A cache directory of built binaries, keyed by the versions in its name."""

    root: Path

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    def path(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def all_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def missing(self) -> list[str]:
        return [n for n in self.all_names if not os.access(self.path(n), os.X_OK)]


@dataclass(frozen=True)
class ControlPlaneBinaries(CachedBinaries):
    """Where the binaries of one pinned control-plane version live."""

    @classmethod
    def default(cls) -> ControlPlaneBinaries:
        return cls(cache_root() / f"k8s-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}")

    @property
    def all_names(self) -> tuple[str, ...]:
        return (*COMPONENTS, "etcd")


@dataclass(frozen=True)
class ApiServerBinaries(CachedBinaries):
    """The API server and kubectl of another Kubernetes release (the oldest supported one, by default)."""

    version: str = OLDEST_KUBERNETES_VERSION

    @classmethod
    def for_version(cls, version: str = OLDEST_KUBERNETES_VERSION) -> ApiServerBinaries:
        return cls(cache_root() / f"k8s-{version}-apiserver", version)

    @property
    def all_names(self) -> tuple[str, ...]:
        return APISERVER_COMPONENTS


@dataclass(frozen=True)
class HelmBinaries(CachedBinaries):
    """The pinned helm."""

    @classmethod
    def default(cls) -> HelmBinaries:
        return cls(cache_root() / f"helm-{HELM_VERSION}")

    @property
    def all_names(self) -> tuple[str, ...]:
        return ("helm",)


@dataclass(frozen=True)
class NodeBinaries(CachedBinaries):
    """Where the binaries of one pinned node (kubelet, kube-proxy, containerd, runc, CoreDNS) live."""

    @classmethod
    def default(cls) -> NodeBinaries:
        return cls(cache_root() / f"node-k8s-{KUBERNETES_VERSION}-containerd-{CONTAINERD_VERSION}-runc-{RUNC_VERSION}"
                                  f"-coredns-{COREDNS_VERSION}")

    @property
    def all_names(self) -> tuple[str, ...]:
        return (*NODE_COMPONENTS, *CONTAINERD_COMMANDS, "runc", "coredns")


@dataclass(frozen=True)
class TopologyOperatorBinaries(CachedBinaries):
    """The messaging-topology-operator's binary, and its CRDs (with the cluster operator's RabbitmqCluster CRD, which
    it needs installed) in ``crds/``."""

    @classmethod
    def default(cls) -> TopologyOperatorBinaries:
        return cls(cache_root() / f"topology-operator-{TOPOLOGY_OPERATOR_VERSION}"
                                  f"-cluster-operator-{TOPOLOGY_CLUSTER_OPERATOR_VERSION}")

    @property
    def all_names(self) -> tuple[str, ...]:
        return ("topology-operator",)

    @property
    def crd_dir(self) -> Path:
        return self.root / "crds"

    def missing(self) -> list[str]:
        crds = [] if self.crd_dir.is_dir() and any(self.crd_dir.glob("*.yaml")) else ["crds"]
        return super().missing() + crds


@dataclass(frozen=True)
class KindBinaries(CachedBinaries):
    """kind, and the binaries its node image adds to the real node's: kubeadm, crictl, the local-path provisioner."""

    @classmethod
    def default(cls) -> KindBinaries:
        return cls(cache_root() / f"kind-{KIND_VERSION}-k8s-{KUBERNETES_VERSION}-crictl-{CRI_TOOLS_VERSION}"
                                  f"-local-path-{LOCAL_PATH_PROVISIONER_VERSION}")

    @property
    def all_names(self) -> tuple[str, ...]:
        return KIND_COMMANDS
