"""The pure parts of the kind path: the Docker engine's runtime wrapper and clean-up, kind's node configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from matchenv_devkit.cluster.dockerd import CAPABILITIES, docker_bridges, leftover_rules, runtime_wrapper
from matchenv_devkit.cluster.kind import cluster_config
from matchenv_devkit.cluster.kindimages import NODE_POD_RANGE, POD_SUBNET, cni_conflist, cri_base_spec, storage_manifest


def _bounding_set() -> set[str]:
    status = Path("/proc/self/status").read_text()
    bounding = int(next(line for line in status.splitlines() if line.startswith("CapBnd:")).split()[1], 16)
    return {"CAP_" + name for bit, name in enumerate(CAPABILITIES) if bounding >> bit & 1}


def _run_wrapper(tmp_path: Path, *args: str) -> list[str]:
    """Run the wrapper with a stand-in runc that records its arguments."""
    runc = tmp_path / "runc"
    runc.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/argv\n")
    runc.chmod(0o755)
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(runtime_wrapper(str(runc)))
    subprocess.run([sys.executable, str(wrapper), *args], check=True)
    return (tmp_path / "argv").read_text().split()


def test_the_runtime_wrapper_keeps_only_the_capabilities_this_machine_can_grant_and_runs_runc(
        tmp_path: Path) -> None:
    every = ["CAP_" + name for name in CAPABILITIES]
    config = {"process": {"capabilities": {"bounding": every, "effective": every, "permitted": ["CAP_CHOWN"]}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    argv = _run_wrapper(tmp_path, "--root", "/run/x", "create", "--bundle", str(tmp_path), "c1")
    assert argv == ["--root", "/run/x", "create", "--bundle", str(tmp_path), "c1"]
    kept = json.loads((tmp_path / "config.json").read_text())["process"]["capabilities"]
    assert set(kept["bounding"]) == set(kept["effective"]) == _bounding_set()
    assert kept["permitted"] == ["CAP_CHOWN"]  # held here: untouched


def test_the_runtime_wrapper_filters_a_docker_exec_process_file_too(tmp_path: Path) -> None:
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": ["cat"], "capabilities": {"effective": ["CAP_" + n for n in CAPABILITIES]}}))
    _run_wrapper(tmp_path, "exec", "--process", str(process), "c1")
    assert set(json.loads(process.read_text())["capabilities"]["effective"]) == _bounding_set()


def test_the_engines_leftovers_are_its_jumps_and_the_rules_naming_its_bridges_only() -> None:
    rules = [
        "-P FORWARD DROP",
        "-N DOCKER",
        "-A FORWARD -j DOCKER-USER",
        "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A FORWARD -i br-0123456789ab ! -o br-0123456789ab -j ACCEPT",
        "-A FORWARD -i mev0 -m comment --comment \"matchenv node: pod bridge\" -j ACCEPT",
        "-A DOCKER -d 172.18.0.2/32 -j ACCEPT",
        "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
        "-A FORWARD -i br-lan -j ACCEPT",
    ]
    assert leftover_rules(rules, ("DOCKER", "DOCKER-USER")) == [
        ["-D", "FORWARD", "-j", "DOCKER-USER"],
        ["-D", "FORWARD", "-o", "docker0", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
        ["-D", "FORWARD", "-i", "br-0123456789ab", "!", "-o", "br-0123456789ab", "-j", "ACCEPT"],
        ["-D", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE"],
    ]
    links = ["5: docker0: <BROADCAST,MULTICAST,UP> mtu 1500", "7: br-0123456789ab: <BROADCAST> mtu 1500",
             "9: mev0: <BROADCAST,UP> mtu 1500", "11: br-lan: <BROADCAST> mtu 1500"]
    assert docker_bridges(links) == ["docker0", "br-0123456789ab"]


def test_the_cluster_config_has_no_kindnetd_the_built_coredns_and_a_kubelet_for_cgroup_v1() -> None:
    config = cluster_config()
    assert config["networking"] == {"disableDefaultCNI": True, "podSubnet": POD_SUBNET}
    patches = [yaml.safe_load(p) for p in config["kubeadmConfigPatches"]]  # type: ignore[attr-defined]
    assert {"kind": "KubeletConfiguration", "failCgroupV1": False} in patches
    dns = next(p for p in patches if p["kind"] == "ClusterConfiguration")["dns"]
    assert dns["imageTag"].startswith("v")


def test_the_node_network_is_one_bridge_range_inside_the_pod_subnet() -> None:
    conf = json.loads(cni_conflist())
    bridge = conf["plugins"][0]
    assert bridge["type"] == "bridge"
    assert bridge["ipMasq"]
    assert bridge["ipam"]["ranges"] == [[{"subnet": NODE_POD_RANGE}]]
    assert NODE_POD_RANGE.split(".")[:2] == POD_SUBNET.split(".")[:2]


def test_the_cri_base_spec_adds_kinds_hook_and_drops_rlimits() -> None:
    spec = {"process": {"rlimits": [{"type": "RLIMIT_NOFILE"}], "cwd": "/"}, "hooks": {"createContainer": []}}
    result = cri_base_spec(spec)
    assert result["hooks"] == {"createContainer": [{"path": "/kind/bin/mount-product-files.sh"}]}
    assert result["process"] == {"cwd": "/"}
    assert spec["process"]["rlimits"]  # the input is left alone


UPSTREAM = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: local-path-provisioner, namespace: local-path-storage}
spec:
  template:
    spec:
      containers:
        - {name: local-path-provisioner, image: rancher/local-path-provisioner:v0.0.30}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: local-path}
provisioner: rancher.io/local-path
---
apiVersion: v1
kind: ConfigMap
metadata: {name: local-path-config, namespace: local-path-storage}
data:
  config.json: '{"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["/opt/x"]}]}'
  helperPod.yaml: |
    apiVersion: v1
    kind: Pod
    metadata: {name: helper-pod}
    spec:
      containers:
        - {name: helper-pod, image: busybox}
"""


def test_the_storage_manifest_is_the_default_standard_class_on_the_images_built_here() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all(storage_manifest(UPSTREAM, "local/prov:1", "local/helper:1"))}
    assert docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"] == "local/prov:1"
    cls = docs["StorageClass"]["metadata"]
    assert cls["name"] == "standard"
    assert cls["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    data = docs["ConfigMap"]["data"]
    assert json.loads(data["config.json"])["nodePathMap"][0]["paths"] == ["/var/local-path-provisioner"]
    assert yaml.safe_load(data["helperPod.yaml"])["spec"]["containers"][0]["image"] == "local/helper:1"
