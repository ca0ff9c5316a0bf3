"""The real node's configuration and the dev kit's image keys: pure functions, no root, no processes."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from matchenv_devkit.cluster.images import content_key, debian_mirror, tree_inputs
from matchenv_devkit.cluster.nodecleanup import chain_removal
from matchenv_devkit.cluster.nodeconfig import (
    BRIDGE,
    NODE_IP,
    POD_CIDR,
    NodePaths,
    cni_conflist,
    containerd_config,
    kube_proxy_config,
    kubelet_config,
    storage_manifests,
)

PATHS = NodePaths(Path("/tmp/some/very/long/state/directory/that/goes/on/and/on/for/a/while/cluster/node"))


def test_containerd_keeps_everything_under_the_node_and_sockets_short() -> None:
    config = tomllib.loads(containerd_config(PATHS, Path("/usr/lib/cni"), Path("/cache/runc"),
                                             Path("/cache/containerd-shim-runc-v2"), "localhost/pause:1"))
    assert config["version"] == 3
    assert config["imports"] == []  # no drop-ins from the host
    plugins = config["plugins"]
    runtime = plugins["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["netns_mounts_under_state_dir"] is True
    assert runtime["containerd"]["runtimes"]["runc"]["options"]["BinaryName"] == "/cache/runc"
    # the node's own shim, never one a host's other containerd put on PATH
    assert runtime["containerd"]["runtimes"]["runc"]["runtime_path"] == "/cache/containerd-shim-runc-v2"
    assert plugins["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] == "localhost/pause:1"
    for path in (config["root"], config["state"], runtime["cni"]["conf_dir"],
                 runtime["containerd"]["runtimes"]["runc"]["options"]["Root"]):
        assert path.startswith(str(PATHS.root))
    socket = plugins["io.containerd.server.v1.grpc"]["address"]
    assert len(socket) + len(".ttrpc") < 104  # the limit of a unix socket path
    assert plugins["io.containerd.server.v1.ttrpc"]["address"] == socket + ".ttrpc"


def test_the_kubelet_accepts_cgroup_v1_and_talks_to_this_containerd() -> None:
    config = kubelet_config(PATHS, Path("/pki/ca.crt"), port=1234, healthz_port=1235)
    assert config["failCgroupV1"] is False
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["containerRuntimeEndpoint"] == f"unix://{PATHS.containerd_socket}"
    assert config["address"] == NODE_IP
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook"
    assert config["imageGCHighThresholdPercent"] == 100  # nothing could be pulled back
    assert config["podLogsDir"].startswith(str(PATHS.root))


def test_the_pod_network_is_one_bridge_without_masquerading() -> None:
    config = json.loads(cni_conflist(PATHS))
    (bridge,) = config["plugins"]
    assert bridge["bridge"] == BRIDGE
    assert bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"] == [[{"subnet": POD_CIDR, "gateway": NODE_IP}]]
    assert bridge["ipam"]["dataDir"].startswith(str(PATHS.root))


def test_kube_proxy_leaves_host_settings_alone() -> None:
    config = kube_proxy_config(Path("/kp.kubeconfig"), healthz_port=1, metrics_port=2)
    assert config["mode"] == "iptables"
    assert config["iptables"]["localhostNodePorts"] is False  # no route_localnet
    assert config["conntrack"]["maxPerCore"] == 0  # the host's conntrack limit is kept
    assert config["clusterCIDR"] == POD_CIDR


def test_static_volumes_sit_behind_the_default_storage_class() -> None:
    storage_class, *volumes = storage_manifests(Path("/v"), 3)
    assert storage_class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert storage_class["volumeBindingMode"] == "WaitForFirstConsumer"
    assert [v["spec"]["hostPath"]["path"] for v in volumes] == ["/v/pv-0", "/v/pv-1", "/v/pv-2"]
    assert {v["spec"]["storageClassName"] for v in volumes} == {storage_class["metadata"]["name"]}


DUMP = """\
*filter
:INPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:MINE - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -j MINE
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -j DROP
COMMIT
*mangle
:KUBE-IPTABLES-HINT - [0:0]
COMMIT
"""


def test_chain_removal_unhooks_then_flushes_then_deletes_only_the_prefix() -> None:
    commands = chain_removal(DUMP, "KUBE-")
    assert commands == [
        ["-t", "filter", "-D", "INPUT", "-j", "KUBE-FIREWALL"],
        ["-t", "filter", "-F", "KUBE-FIREWALL"], ["-t", "filter", "-F", "KUBE-KUBELET-CANARY"],
        ["-t", "mangle", "-F", "KUBE-IPTABLES-HINT"],
        ["-t", "filter", "-X", "KUBE-FIREWALL"], ["-t", "filter", "-X", "KUBE-KUBELET-CANARY"],
        ["-t", "mangle", "-X", "KUBE-IPTABLES-HINT"],
    ]
    assert not any("MINE" in c for command in commands for c in command)


def test_an_image_key_changes_with_any_input_but_not_with_bytecode(tmp_path: Path) -> None:
    (tmp_path / "src" / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    (tmp_path / "src" / "pkg" / "a.py").write_text("A = 1\n")
    key = content_key(tree_inputs(tmp_path, ["Dockerfile", "src"]))
    (tmp_path / "src" / "pkg" / "__pycache__" / "a.pyc").write_bytes(b"\0")
    assert content_key(tree_inputs(tmp_path, ["Dockerfile", "src"])) == key
    (tmp_path / "src" / "pkg" / "a.py").write_text("A = 2\n")
    assert content_key(tree_inputs(tmp_path, ["Dockerfile", "src"])) != key


def test_the_debian_mirror_comes_from_apts_sources(tmp_path: Path) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    legacy = tmp_path / "sources.list"
    legacy.write_text("# old style\ndeb [arch=amd64] http://legacy.example/debian bookworm main\n")
    assert debian_mirror((deb822, legacy)) == "http://mirror.example/debian"
    assert debian_mirror((tmp_path / "missing", legacy)) == "http://legacy.example/debian"
    assert debian_mirror((tmp_path / "missing",)) == "http://deb.debian.org/debian"


def test_a_host_service_is_a_selectorless_service_with_one_endpoint_on_the_bridge() -> None:
    from matchenv_devkit.cluster.stack import BROKER_SERVICE, host_service

    service, endpoints = host_service(BROKER_SERVICE, 41234)
    assert "selector" not in service["spec"]
    assert service["spec"]["ports"][0]["port"] == 5672
    assert endpoints["metadata"]["labels"]["kubernetes.io/service-name"] == "rabbitmq"
    assert endpoints["endpoints"] == [{"addresses": [NODE_IP], "conditions": {"ready": True}}]
    assert endpoints["ports"][0]["port"] == 41234


def test_the_process_node_stops_deleted_pods_in_parallel() -> None:
    import threading
    import time
    from typing import Any

    from kubernetes import client

    from matchenv_devkit.cluster.nodeagent import NodeAgent

    running = {"now": 0, "most": 0}
    lock = threading.Lock()

    class SlowRunner:
        """Each pod takes a while to stop, like a worker finishing its batch within its grace period."""

        def start(self, pod: dict[str, Any]) -> None:
            pass

        def stop(self, pod: dict[str, Any]) -> None:
            with lock:
                running["now"] += 1
                running["most"] = max(running["most"], running["now"])
            time.sleep(0.5)
            with lock:
                running["now"] -= 1

        def status(self, pod: dict[str, Any]) -> dict[str, Any]:
            return {"phase": "Running"}

    class NoApi:
        def delete_namespaced_pod(self, *args: Any, **kwargs: Any) -> None:
            pass

        def patch_namespaced_pod_status(self, *args: Any, **kwargs: Any) -> None:
            pass

    agent = NodeAgent(client.ApiClient(), runner=SlowRunner())
    agent.core = NoApi()  # type: ignore[assignment]
    pods = [{"metadata": {"uid": f"u{i}", "name": f"p{i}", "namespace": "default"}} for i in range(3)]
    for pod in pods:
        agent._on_pod("ADDED", pod)
    for pod in pods:  # the watch hands over each deletion at once: none waits for the one before
        agent._on_pod("MODIFIED", {**pod, "metadata": {**pod["metadata"], "deletionTimestamp": "now"}})
    agent.stop()
    assert running["most"] == 3
    assert running["now"] == 0
