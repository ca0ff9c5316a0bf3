"""What the real node is configured with: addresses, and the configuration of containerd, the kubelet, kube-proxy,
the CNI network and the cluster DNS. Pure builders; :mod:`matchenv_devkit.cluster.realnode` writes and runs them.

Every path the node writes is under its state directory, so ``down`` can find and remove all of it. One real node
per machine: the bridge name and the pod range are fixed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NODE_NAME = "matchenv-node"
BRIDGE = "mev0"
CNI_NETWORK = "matchenv"
POD_CIDR = "10.244.0.0/24"
# The bridge's own address: the node's InternalIP, and the address the API server advertises to pods (the
# ``kubernetes`` Service's endpoint); 127.0.0.1 would be each pod itself.
NODE_IP = "10.244.0.1"
CLUSTER_DNS_IP = "10.0.0.10"
CLUSTER_DOMAIN = "cluster.local"
DNS_PORT = 1053  # CoreDNS listens unprivileged; the kube-dns Service maps 53 to it

SOCKET_ROOT = Path("/run/matchenv")

Obj = dict[str, Any]


@dataclass(frozen=True)
class NodePaths:
    """Where the node keeps everything, under one directory."""

    root: Path

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def socket_dir(self) -> Path:
        """A short directory for sockets (a unix socket path has at most 104 characters): one per state directory."""
        return SOCKET_ROOT / hashlib.sha256(str(self.root).encode()).hexdigest()[:12]

    @property
    def containerd_socket(self) -> Path:
        return self.socket_dir / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd" / "config.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet-config.yaml"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def volumes(self) -> Path:
        return self.root / "volumes"

    @property
    def kube_proxy_config(self) -> Path:
        return self.root / "kube-proxy-config.yaml"


def containerd_config(paths: NodePaths, cni_bin_dir: Path, runc: Path, shim: Path, sandbox_image: str) -> str:
    """containerd's config (version 3 schema): private root, state and sockets, the CRI plugin with runc. The shim
    and runc by absolute path: another containerd's (Debian's containerd or docker.io puts a 1.x shim and runc in
    /usr/bin) answers this one's shim API with types it does not know."""
    return f"""\
version = 3
root = '{paths.containerd_root}'
state = '{paths.containerd_state}'
# No drop-in files from the host: this containerd is configured here only.
imports = []

[plugins.'io.containerd.server.v1.grpc']
  address = '{paths.containerd_socket}'

[plugins.'io.containerd.server.v1.ttrpc']
  address = '{paths.containerd_socket}.ttrpc'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  # No registry is reachable: the sandbox image is built locally and imported before the kubelet starts.
  sandbox = '{sandbox_image}'

[plugins.'io.containerd.cri.v1.runtime']
  # This VM forbids lowering oom_score_adj; runc init fails with "Permission denied" unless containerd keeps
  # every container's score at or above its own.
  restrict_oom_score_adj = true
  # Pod network namespaces are bind-mounted under the state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = 'io.containerd.runc.v2'
  runtime_path = '{shim}'

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = '{runc}'
  Root = '{paths.root / "runc"}'
  SystemdCgroup = false

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ['{cni_bin_dir}']
  conf_dir = '{paths.cni_conf_dir}'
  max_conf_num = 1
"""


def cni_conflist(paths: NodePaths) -> str:
    """One bridge network with host-local addresses; no masquerading: pod traffic never leaves this machine."""
    config = {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": True,
            "ipMasq": False,
            # a pod reaching itself through a Service address
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(paths.cni_ipam_dir),
            },
        }],
    }
    return json.dumps(config, indent=2)


def kubelet_config(paths: NodePaths, client_ca: Path, port: int, healthz_port: int) -> Obj:
    """The kubelet's KubeletConfiguration."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # These machines boot cgroup v1 (hybrid: an empty cgroup2 at /sys/fs/cgroup/unified). Since 1.35 the
        # kubelet refuses to start on cgroup v1 unless told otherwise (KEP-5573); v1 is deprecated, not gone.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",  # no systemd here
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "address": NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [CLUSTER_DNS_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        # The host's resolver is not reachable from pods (nothing is masqueraded): cluster names only.
        "resolvConf": "",
        "podLogsDir": str(paths.pod_logs),
        "volumePluginDir": str(paths.root / "volume-plugins"),
        # No registry to pull from again: images are never garbage-collected.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "failSwapOn": False,
        "serializeImagePulls": False,
        "syncFrequency": "10s",
        "nodeStatusReportFrequency": "10s",
    }


def kube_proxy_config(kubeconfig: Path, healthz_port: int, metrics_port: int) -> Obj:
    """kube-proxy in iptables mode, without touching the host's conntrack or localnet settings."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": NODE_NAME,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "iptables": {"localhostNodePorts": False},
        "conntrack": {"maxPerCore": 0, "min": 0},
    }


STORAGE_CLASS = "local-static"


def storage_manifests(volume_dir: Path, count: int, size: str = "10Gi") -> list[Obj]:
    """The default StorageClass and ``count`` host-path PersistentVolumes of it, made ahead of time (static
    provisioning): a PVC without a class, like the RabbitMQ StatefulSet's, binds to one when its pod is scheduled."""
    manifests: list[Obj] = [{
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS,
                     "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Retain",
    }]
    for index in range(count):
        manifests.append({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{NODE_NAME}-pv-{index}"},
            "spec": {
                "storageClassName": STORAGE_CLASS,
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(volume_dir / f"pv-{index}"), "type": "Directory"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}]}]}},
            },
        })
    return manifests


def coredns_manifests(image: str) -> list[Obj]:
    """CoreDNS as a Deployment behind the ``kube-dns`` Service (cluster names only; nothing is forwarded)."""
    labels = {"k8s-app": "kube-dns"}
    corefile = f"""\
.:{DNS_PORT} {{
    errors
    health :8080
    ready :8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
    loop
    reload
}}
"""
    meta = {"name": "coredns", "namespace": "kube-system"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system:coredns"},
         "rules": [
             {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
              "verbs": ["list", "watch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": corefile}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {**meta, "labels": labels},
         "spec": {
             "replicas": 1,
             "selector": {"matchLabels": labels},
             "template": {"metadata": {"labels": labels}, "spec": {
                 "serviceAccountName": "coredns",
                 "dnsPolicy": "Default",
                 "priorityClassName": "system-cluster-critical",
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                     "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{
                     "name": "coredns",
                     "image": image,
                     "imagePullPolicy": "Never",
                     "args": ["-conf", "/etc/coredns/Corefile"],
                     "ports": [{"name": "dns", "containerPort": DNS_PORT, "protocol": "UDP"},
                               {"name": "dns-tcp", "containerPort": DNS_PORT, "protocol": "TCP"}],
                     "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                     "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10},
                     "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                     "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                         "capabilities": {"drop": ["ALL"]}},
                     "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
                 }],
                 "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
             }},
         }},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system",
                                                              "labels": labels},
         "spec": {"selector": labels, "clusterIP": CLUSTER_DNS_IP, "ports": [
             {"name": "dns", "port": 53, "targetPort": DNS_PORT, "protocol": "UDP"},
             {"name": "dns-tcp", "port": 53, "targetPort": DNS_PORT, "protocol": "TCP"},
         ]}},
    ]
